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
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["RefineRow", "refine_errors", "refine_table", "export_split", "recut_shift_signal", "recut_shift_table"]


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


def _detected_films(labels: Sequence[str], detector_dir: str | os.PathLike, caller: str) -> Iterator[tuple[Any, np.ndarray, Any]]:
    """``(annotation, (1, H, W) image, detection)`` of each film, the detector's boxes at the film's spacing.

    Raises:
        ValueError: a film has no pixel spacing (``caller`` reports mm).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.readers import read_xray
    from monai_spine.inference.detector import VertebraDetector

    detector = VertebraDetector.from_checkpoint(detector_dir)
    for lab in labels:
        ann = read_annotation(lab)
        if ann.spacing_mm is None:
            raise ValueError(f"{lab}: no pixel spacing; {caller} reports mm")
        img = read_xray(ann.image).channel_first().astype(np.float32)
        yield ann, img, detector.detect(img, ann.spacing_mm)


def _same_levels(ann: Any, det: Any) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(detected row j, annotated row i, (K,) visible mask)`` of every level the detector output and the film annotates."""
    at = {lev: i for i, lev in enumerate(ann.levels)}
    for j, lev in enumerate(det.levels):
        i = at.get(lev)
        if i is not None:
            yield j, i, np.asarray(ann.visible[i], bool)


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
    from monai_spine.inference.regressor import KeypointPredictor

    films = list(_detected_films(labels, detector_dir, "refine_errors"))
    rows = []
    for r in passes:
        predictor = KeypointPredictor.from_checkpoint(regressor_dir, refine_passes=int(r), num_samples=mc_samples,
                                                      seed=seed)
        errs, t = [], 0.0
        for ann, img, det in films:
            t0 = time.perf_counter()
            boxes, angles = predictor.vertebra_boxes(det.boxes_px, det.centres_px, det.levels)
            pred = predictor.predict(img, boxes, ann.spacing_mm, angles_rad=angles)
            t += time.perf_counter() - t0
            for j, i, vis in _same_levels(ann, det):
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


def recut_shift_signal(labels: Sequence[str], regressor_dir: str | os.PathLike, detector_dir: str | os.PathLike,
                       mc_samples: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Errors, sigmas and re-cut shifts of the regressor's points in a detector's boxes (issue 14's Spearman).

    The regressor predicts with its spec's pass count ``P`` (as ``predict`` does) and with ``P - 1`` and
    ``P + 1``; a point's *shift* is how far it moves between two consecutive passes, a test-time signal
    of how settled the crop is.

    Returns:
        dict of (M,) arrays over the visible annotated points of the vertebrae the detector put at a
        level: ``error_mm`` (pass ``P``), ``sigma_<kind>_mm`` for aleatoric / epistemic / total (pass
        ``P``), ``shift_prev_mm`` (``P - 1`` -> ``P``; 0 when ``P = 0``) and ``shift_next_mm`` (``P`` -> ``P + 1``).

    Raises:
        ValueError: a film has no pixel spacing (errors must be in mm).
    """
    from monai_spine.inference.regressor import KeypointPredictor

    p = KeypointPredictor.from_checkpoint(regressor_dir).refine_passes
    preds = [KeypointPredictor.from_checkpoint(regressor_dir, refine_passes=r, num_samples=mc_samples, seed=seed)
             for r in (max(p - 1, 0), p, p + 1)]
    out: dict[str, list] = {k: [] for k in ("error_mm", "sigma_aleatoric_mm", "sigma_epistemic_mm", "sigma_total_mm",
                                            "shift_prev_mm", "shift_next_mm")}
    for ann, img, det in _detected_films(labels, detector_dir, "recut_shift_signal"):
        sp = np.asarray(ann.spacing_mm, np.float64)
        prev, now, nxt = (q.predict(img, det.boxes_px, ann.spacing_mm) for q in preds)
        for j, i, vis in _same_levels(ann, det):
            dist = lambda a, b: np.linalg.norm((a - b) * sp, axis=-1)[vis]  # noqa: E731
            out["error_mm"] += dist(now.keypoints_px[j], ann.keypoints_px[i]).tolist()
            for kind in ("aleatoric", "epistemic", "total"):
                out[f"sigma_{kind}_mm"] += np.asarray(now.sigma_mm[kind][j])[vis].tolist()
            out["shift_prev_mm"] += (dist(now.keypoints_px[j], prev.keypoints_px[j]) if p > 0
                                     else np.zeros(int(vis.sum()))).tolist()
            out["shift_next_mm"] += dist(nxt.keypoints_px[j], now.keypoints_px[j]).tolist()
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def recut_shift_table(signal: dict[str, np.ndarray], weights: Sequence[float] = (0.5, 1.0, 2.0, 4.0)) -> str:
    """Markdown table: Spearman(signal, error) for each sigma kind, each shift, and ``sqrt(sigma_total^2 + c shift^2)``."""
    from monai_spine.uncertainty.quality import spearman

    err = signal["error_mm"]
    rows = [(f"σp {k}", signal[f"sigma_{k}_mm"]) for k in ("total", "aleatoric", "epistemic")]
    rows += [("shift, previous re-cut", signal["shift_prev_mm"]), ("shift, next re-cut", signal["shift_next_mm"])]
    for c in weights:
        for name, key in (("previous", "shift_prev_mm"), ("next", "shift_next_mm")):
            rows.append((f"sqrt(σp total² + {c:g} shift {name}²)",
                         np.sqrt(signal["sigma_total_mm"] ** 2 + c * signal[key] ** 2)))
    lines = [f"{err.size} points, mean error {float(np.mean(err)):.3f} mm" if err.size else "no points", "",
             "| signal | Spearman with the error |", "|---|---:|"]
    lines += [f"| {name} | {spearman(err, s)['rho']:+.3f} |" for name, s in rows]
    return "\n".join(lines)

