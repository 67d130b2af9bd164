"""How many crop re-cuts (``refine_passes``) the regressor needs in a detector's boxes, and the split
folders the README-style ``predict`` / ``report`` commands of docs/results.md run on.

The regressor learnt crops cut from annotation boxes; a detector frames vertebrae differently, so
:class:`~monai_spine.inference.regressor.KeypointPredictor` can re-cut each crop around its own
keypoints (``refine_passes``). :func:`refine_table` measures every pass count on one split of the
benchmark's synthetic set with the boxes of a trained detector, so the count is chosen on the
validation films, not the test films.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["RefineRow", "refine_errors", "refine_table", "export_split"]


class RefineRow:
    """Point errors (mm) of one pass count over the matched visible points of a split.

    Attributes:
        passes: re-cuts after the first prediction.
        errors_mm: (P,) point errors of the vertebrae the detector found at their level.
        seconds_per_film: regressor wall seconds per film (detection excluded).
    """

    def __init__(self, passes: int, errors_mm: np.ndarray, seconds_per_film: float) -> None:
        self.passes = int(passes)
        self.errors_mm = np.asarray(errors_mm, dtype=np.float64)
        self.seconds_per_film = float(seconds_per_film)

    def cells(self) -> list[str]:
        e = self.errors_mm
        if not e.size:
            return [str(self.passes), "0", "—", "—", "—", "—"]
        return [str(self.passes), str(e.size), f"{e.mean():.2f}", f"{np.median(e):.2f}", f"{np.percentile(e, 90):.2f}",
                f"{self.seconds_per_film:.2f}"]


def refine_errors(labels: Sequence[str], regressor_dir: str | os.PathLike, detector_dir: str | os.PathLike,
                  passes: Sequence[int] = (0, 1, 2, 3), mc_samples: int = 10, seed: int = 0) -> list[RefineRow]:
    """Point errors of the regressor in the detector's boxes for each pass count.

    Args:
        labels: annotation files of the films (``.json`` beside their image).
        regressor_dir: the regressor's model folder (its spec's own ``refine_passes`` is overridden).
        detector_dir: the detector's model folder.
        passes: pass counts to measure.
        mc_samples: MC-dropout passes T per prediction.
        seed: dropout-mask seed.

    Returns:
        one :class:`RefineRow` per pass count, errors over the visible annotated points of the vertebrae
        whose level the detector output (inferred levels included, as ``predict`` gives them).

    Raises:
        ValueError: a film has no pixel spacing (errors must be in mm).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.readers import read_xray
    from monai_spine.inference.detector import VertebraDetector
    from monai_spine.inference.regressor import KeypointPredictor

    detector = VertebraDetector.from_checkpoint(detector_dir)
    films = []
    for lab in labels:
        ann = read_annotation(lab)
        if ann.spacing_mm is None:
            raise ValueError(f"{lab}: no pixel spacing; refine_errors reports mm")
        img = read_xray(ann.image).channel_first().astype(np.float32)
        det = detector.detect(img, ann.spacing_mm)
        films.append((ann, img, det))
    rows = []
    for r in passes:
        predictor = KeypointPredictor.from_checkpoint(regressor_dir, refine_passes=int(r), num_samples=mc_samples,
                                                      seed=seed)
        errs, t = [], 0.0
        for ann, img, det in films:
            t0 = time.perf_counter()
            pred = predictor.predict(img, det.boxes_px, ann.spacing_mm)
            t += time.perf_counter() - t0
            at = {lev: i for i, lev in enumerate(ann.levels)}
            for j, lev in enumerate(det.levels):
                i = at.get(lev)
                if i is None:
                    continue
                vis = np.asarray(ann.visible[i], bool)
                d = (pred.keypoints_px[j] - ann.keypoints_px[i]) * np.asarray(ann.spacing_mm, np.float64)
                errs.extend(np.linalg.norm(d, axis=-1)[vis].tolist())
        rows.append(RefineRow(int(r), np.asarray(errs), t / max(len(films), 1)))
    return rows


def refine_table(rows: Sequence[RefineRow]) -> str:
    """Markdown table of :func:`refine_errors` rows."""
    head = "| refine passes | points | mean mm | median mm | p90 mm | regressor s / film |\n|---:|---:|---:|---:|---:|---:|"
    return "\n".join([head] + ["| " + " | ".join(r.cells()) + " |" for r in rows])


def export_split(labels: Sequence[str], out: str | os.PathLike) -> Path:
    """Symbolic links to the films and annotations of a split (``predict`` / ``report`` read the folder).

    Raises:
        ValueError: ``out`` exists and is not an empty folder.
    """
    from monai_spine.data.annotation import read_annotation

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    for lab in labels:
        image = Path(read_annotation(lab).image)
        for f in (Path(lab), image):
            (out / f.name).symlink_to(f.resolve())
    return out
