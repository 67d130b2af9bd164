"""Glue between the bundle's ``inference.json`` and the whole-radiograph pipeline.

``inference.json`` predicts films nobody annotated: the vertebra detector finds and labels the
vertebrae, the BayeRegX regressor predicts their keypoints from the detected boxes, and
:class:`~monai_spine.inference.pipeline.SpinePipeline` writes one prediction file per film
(``<stem>.keypoints.json``, format ``monai-spine-prediction``; read back with
:func:`monai_spine.data.prediction.read_prediction`) with its 3D Slicer markups and overlay. This
module only loads the detector for the bundle's region, lists the films and runs the pipeline on
each; the prediction code itself lives in :mod:`~monai_spine.inference.pipeline`,
:mod:`~monai_spine.inference.detector` and :mod:`~monai_spine.inference.regressor`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["load_detector", "split_films", "predict_films"]

logger = logging.getLogger(__name__)

Films = str | os.PathLike | Sequence[str | os.PathLike]


def load_detector(detector_dir: str | os.PathLike, region: str, device: Any = "cpu") -> Any:
    """The vertebra detector of a model folder, checked against the bundle's region.

    Args:
        detector_dir: a detector model folder (``model.pt`` + ``detector_model.json``; the shipped
            ones are ``bundle/models/<region>/detector``).
        region: the region the regressor was trained for (``cervical``, ``lumbar`` or ``ap``).
        device: torch device.

    Returns:
        a :class:`~monai_spine.inference.detector.VertebraDetector`.

    Raises:
        FileNotFoundError: no detector in ``detector_dir`` (the message says which override to set).
        ValueError: the detector was trained for another region (the message names its spec file).
    """
    from monai_spine.inference.detector import CHECKPOINT_FILE, SPEC_FILE, VertebraDetector

    folder = Path(detector_dir)
    if not (folder / CHECKPOINT_FILE).is_file() or not (folder / SPEC_FILE).is_file():
        raise FileNotFoundError(
            f"{folder}: no vertebra detector ({CHECKPOINT_FILE} and {SPEC_FILE}); train one with "
            f"configs/detector_train.json or pass --detector_dir")
    detector = VertebraDetector.from_checkpoint(folder, device=device)
    if detector.spec.region != region:
        raise ValueError(f"{folder / SPEC_FILE}: the detector was trained for region {detector.spec.region!r}, "
                         f"the regressor for {region!r} (--region or --detector_dir)")
    return detector


def split_films(label_paths: Sequence[str | os.PathLike]) -> list[str]:
    """The radiographs of annotation files (only their image paths: the annotations are not used).

    Raises:
        ValueError: an annotation names no image (the message names the file).
    """
    from monai_spine.data.annotation import read_annotation

    films = []
    for label in label_paths:
        image = read_annotation(label).image
        if image is None:
            raise ValueError(f"{label}: the annotation names no image")
        films.append(str(image))
    return films


def predict_films(pipeline: Any, films: Films, output_dir: str | os.PathLike,
                  spacing_mm: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Predict every film and write its prediction file, markups and overlay into ``output_dir``.

    A film that fails does not stop the others; the failures are raised together at the end.

    Args:
        pipeline: a :class:`~monai_spine.inference.pipeline.SpinePipeline` (detector + regressor).
        films: a folder (searched recursively for DICOM, PNG, JPEG, TIFF, NIfTI, NRRD), a file, or a
            list of them. The spacing comes from the DICOM header or ``<film>.spacing.json``; mm
            values are null when it is unknown.
        output_dir: output folder (created); files inside it are never taken as input.
        spacing_mm: ``(sx, sy)`` mm per pixel overriding every film's spacing.

    Returns:
        one dict per predicted film: ``image``, ``vertebrae`` (how many) and the paths written
        (``keypoints``, ``markups``, ``overlay``).

    Raises:
        FileNotFoundError: no film found.
        RuntimeError: some films failed (each named with its error), after the others were written.
    """
    from monai_spine.inference.pipeline import expand_inputs, output_stem

    paths = [films] if isinstance(films, (str, os.PathLike)) else list(films)
    files = expand_inputs(paths, exclude=output_dir)
    if not files:
        raise FileNotFoundError(f"no film found in {', '.join(map(str, paths)) or '(no paths)'} (--films)")
    stems: dict[str, int] = {}
    done: list[dict[str, Any]] = []
    failures: list[str] = []
    for f in files:
        stem = output_stem(f)
        if stem in stems:  # same name in two folders or formats: keep both
            stems[stem] += 1
            stem = f"{stem}-{stems[stem]}"
        else:
            stems[stem] = 0
        try:
            res = pipeline.predict_file(f, output_dir, stem=stem, spacing_mm=spacing_mm)
        except Exception as e:  # go on with the next film; every failure is raised at the end
            failures.append(f"{f}: {type(e).__name__}: {e}")
            continue
        done.append({"image": str(f), "vertebrae": len(res.result["vertebrae"]), **res.files})
    logger.info("predicted %d of %d film(s) into %s", len(done), len(files), output_dir)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(files)} film(s) failed:\n  " + "\n  ".join(failures))
    return done
