"""Predict and measure the selected radiograph, writing the JSON, overlay and measurement files (no SDK import).

:func:`predict_and_measure` is what the deploy application's inference operator does: it runs the
project's :class:`~monai_spine.inference.pipeline.SpinePipeline` on the chosen DICOM file (writing
``<stem>.keypoints.json``, ``<stem>.mrk.json`` and ``<stem>.overlay.png``), then measures the
prediction with :mod:`monai_spine.measure.io` (``measurements.json`` and ``measurements.csv``, with
Monte-Carlo intervals from the predicted point sigmas).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BLANK_SPAN_FRAC", "DeployResult", "MEASUREMENT_SEED", "blank_image_warning", "output_stem_for",
           "predict_and_measure"]

#: Seed of the Monte-Carlo measurement uncertainty (the same input gives the same intervals).
MEASUREMENT_SEED = 0


@dataclass
class DeployResult:
    """What one run produced.

    Attributes:
        stem: output name of the radiograph.
        prediction: the pipeline's JSON record (``<stem>.keypoints.json``).
        measurements: the ``monai-spine-measurements`` record (``measurements.json``).
        rows: the measurements flattened (:func:`monai_spine.measure.io.results_to_rows`).
        files: output kind -> path (in the folder written to).
        notes: warnings about the result (a blank image, ...).
    """

    stem: str
    prediction: dict[str, Any]
    measurements: dict[str, Any]
    rows: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: An image whose 1st-99th percentile span is below this share of its stored range is "blank".
BLANK_SPAN_FRAC = 0.01


def blank_image_warning(dataset: Any, n_vertebrae: int) -> str | None:
    """A warning when the radiograph is (nearly) uniform, so that vertebrae "found" on it cannot be real.

    Blank: the 1st-99th percentile span of the stored values is below :data:`BLANK_SPAN_FRAC` of
    ``2 ** BitsStored`` (8 bits when absent).
    """
    import numpy as np

    try:
        arr = np.asarray(dataset.pixel_array, dtype=np.float64)
    except Exception:  # noqa: BLE001 - the pipeline read it already; no warning rather than a new failure
        return None
    if arr.size == 0:
        return None
    lo, hi = np.percentile(arr, [1, 99])
    full = float(2 ** int(dataset.get("BitsStored", 8) or 8))
    if hi - lo >= BLANK_SPAN_FRAC * full:
        return None
    found = f"the {n_vertebrae} vertebra(e) found on it cannot be trusted" if n_vertebrae else "no vertebra found"
    return (f"warning: the image is nearly blank (1st-99th percentile span {hi - lo:g} of {full:g} stored values); "
            f"{found}")


def output_stem_for(path: str | os.PathLike, sop_instance_uid: str) -> str:
    """The output name: the DICOM file's name without ``.dcm``, or its SOP Instance UID when the path is unknown."""
    from monai_spine.outputs import output_stem

    return output_stem(path) if str(path) else str(sop_instance_uid)


def predict_and_measure(
    selected: Any, pipeline: Any, out_dir: str | os.PathLike, stem: str | None = None
) -> DeployResult:
    """Run the pipeline on the selected radiograph and measure it; all files go into ``out_dir``.

    Args:
        selected: a :class:`~monai_spine.apps.deploy.selection.SelectedImage` (its ``path`` must exist).
        pipeline: a :class:`~monai_spine.inference.pipeline.SpinePipeline` with a regressor.
        out_dir: folder to write into (the application's staging folder).
        stem: output name (default :func:`output_stem_for`).

    Raises:
        DeployInputError: the image's spacing turned out unknown (measurements need millimetres).
        FileNotFoundError: the selected image has no file.
    """
    from monai_spine.apps.deploy.selection import DeployInputError
    from monai_spine.measure.io import (
        MEASUREMENTS_FORMAT,
        MEASUREMENTS_VERSION,
        read_keypoint_file,
        results_to_rows,
        write_measurements,
    )
    from monai_spine.measure.measurements import measure_record

    out = Path(out_dir)
    if not selected.path or not Path(selected.path).is_file():
        raise FileNotFoundError(
            f"selected radiograph {selected.sop_instance_uid} has no readable file ({selected.path!r})"
        )
    stem = stem or output_stem_for(selected.path, selected.sop_instance_uid)
    res = pipeline.predict_file(selected.path, out, stem=stem)
    pred = res.result
    if pred.get("spacing_mm") is None:
        raise DeployInputError(f"{selected.path}: pixel spacing unknown; refusing to report pixels as millimetres")
    rec = read_keypoint_file(res.files["keypoints"])
    rec.source = Path(res.files["keypoints"]).name  # a name that stays valid after the output folder moves
    case = measure_record(rec, seed=MEASUREMENT_SEED)
    measurements = {
        "format": MEASUREMENTS_FORMAT,
        "version": MEASUREMENTS_VERSION,
        "cases": [case],
        "motion": [],
        "cobb_summary": None,
        "failures": [],
        "outputs": {"json": "measurements.json", "csv": "measurements.csv"},
    }
    json_path, csv_path = write_measurements(out, measurements)
    files = dict(res.files)
    files["measurements_json"] = str(json_path)
    files["measurements_csv"] = str(csv_path)
    notes = [n for n in [blank_image_warning(selected.dataset, len(pred.get("vertebrae", [])))] if n]
    return DeployResult(stem, pred, measurements, results_to_rows(measurements), files, notes)
