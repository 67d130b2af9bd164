"""The vertebra detector's own metrics: per-level matching of one radiograph's detections with its
annotation (:func:`match_detections`) and their summary over many radiographs (:class:`DetectionAccumulator`).

Used by the evaluator's key metric (:class:`monai_spine.handlers.detection.DetectionErrorHandler`) and by
the evaluation of a trained detector (:mod:`monai_spine.evaluation.detector`).

Metric definitions (per radiograph, per level of the region):

* a level is **present** when the annotation has that vertebra (a finite centre and box);
* it is **detected** when the decoding gives it a centre with a score ``>= score_threshold``;
* a present level is **found** when it is detected, the predicted centre of *that level* lies inside
  the level's ground-truth box (edges included) or, with ``match_radius`` given, within that distance
  of the true centre, and the level's true centre is the nearest of the image's true centres to it
  (boxes around keypoints reach over the neighbour below under a spinous process: a neighbour's centre
  in that overlap is not a find). A vertebra found under the wrong level label is therefore a miss
  (and the label it was found under is mislocated or a false positive);
* ``recall`` = found / present; ``precision`` = found / detected; ``false_positives_per_image``:
  detected levels that are not present;
* ``centre_error_*``: distance between the predicted and true centre of the found vertebrae, in mm
  (``_mm``) when every image has a known spacing, else in pixels (``_px``);
* ``penalised_error_{u}``: the mean over present vertebrae of the centre error, where a vertebra that
  is not found counts as its box diagonal (more than any centre inside the box can be off): one
  number, lower is better, that rewards recall first and precision of the centres second; the
  bundle's key metric;
* ``box_iou_mean``: IoU of predicted and true boxes of the found vertebrae;
* ``images_all_found``: share of images whose every present vertebra is found;
  ``images_exact``: ... and that have no false positive;
* ``recall/<level>``: recall per level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_spine.codecs.detection import _np

__all__ = ["box_iou", "match_detections", "DetectionAccumulator"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes ``(..., 4)`` ``(x0, y0, x1, y1)`` (continuous edges); NaN for NaN boxes."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.where(np.isnan(union), np.nan, 0.0))


def _spacing(spacing_mm: Any) -> np.ndarray | None:
    if spacing_mm is None:
        return None
    sp = np.asarray(_np(spacing_mm), dtype=np.float64).reshape(-1)
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        return None
    return sp


def match_detections(
    pred_centres_px: Any,
    scores: Any,
    gt_centres_px: Any,
    gt_boxes_px: Any,
    present: Any,
    spacing_mm: Any = None,
    score_threshold: float = 0.2,
    match_radius: float | None = None,
    pred_boxes_px: Any = None,
) -> dict[str, Any]:
    """Compare one radiograph's per-level predictions with its annotation (see the module docstring).

    Args:
        pred_centres_px: ``(L, 2)`` predicted centres, image pixels (NaN: no prediction).
        scores: ``(L,)`` level scores.
        gt_centres_px, gt_boxes_px, present: ``(L, 2)``, ``(L, 4)``, ``(L,)`` ground truth.
        spacing_mm: ``(sx, sy)``, None/NaN when unknown (errors then in pixels only).
        score_threshold: detection threshold on the scores.
        match_radius: also count a detection as found within this distance of the true centre, in mm
            when the spacing is known, else in pixels; None: the box criterion alone.
        pred_boxes_px: ``(L, 4)`` predicted boxes for the IoU (None: IoU NaN).

    Returns:
        dict with ``(L,)`` arrays ``present``, ``detected``, ``found``, ``false_positive``,
        ``mislocated`` (present and detected but not found), ``error_px`` / ``error_mm`` (centre
        distance of detected present levels, NaN elsewhere; ``error_mm`` NaN without spacing),
        ``diag_px`` / ``diag_mm`` (true box diagonals), ``iou``; and ``unit`` (``"mm"`` or ``"px"``).
    """
    pc = np.asarray(_np(pred_centres_px), dtype=np.float64)
    sc = np.asarray(_np(scores), dtype=np.float64).reshape(-1)
    gc = np.asarray(_np(gt_centres_px), dtype=np.float64)
    gb = np.asarray(_np(gt_boxes_px), dtype=np.float64)
    pres = np.asarray(_np(present), dtype=bool).reshape(-1)
    n_lev = pres.shape[0]
    for name, arr, shape in (("pred_centres_px", pc, (n_lev, 2)), ("scores", sc, (n_lev,)),
                             ("gt_centres_px", gc, (n_lev, 2)), ("gt_boxes_px", gb, (n_lev, 4))):
        if arr.shape != shape:
            raise ValueError(f"match_detections: {name} must have shape {shape}, got {arr.shape}")
    pres = pres & np.all(np.isfinite(gc), -1) & np.all(np.isfinite(gb), -1)
    detected = (sc >= score_threshold) & np.all(np.isfinite(pc), -1)
    sp = _spacing(spacing_mm)
    d = pc - gc
    err_px = np.hypot(d[:, 0], d[:, 1])
    wh = gb[:, 2:] - gb[:, :2]
    diag_px = np.hypot(wh[:, 0], wh[:, 1])
    if sp is not None:
        err_mm, diag_mm = np.hypot(d[:, 0] * sp[0], d[:, 1] * sp[1]), np.hypot(wh[:, 0] * sp[0], wh[:, 1] * sp[1])
    else:
        err_mm, diag_mm = np.full(n_lev, np.nan), np.full(n_lev, np.nan)
    with np.errstate(invalid="ignore"):
        inside = (pc[:, 0] >= gb[:, 0]) & (pc[:, 0] <= gb[:, 2]) & (pc[:, 1] >= gb[:, 1]) & (pc[:, 1] <= gb[:, 3])
        if match_radius is not None:
            inside |= (err_mm if sp is not None else err_px) <= float(match_radius)
    # the own true centre must be the nearest one (in mm when known: the same metric as the errors)
    scale = sp if sp is not None else np.ones(2)
    if pres.any():
        dist = np.linalg.norm((pc[:, None, :] - gc[None, pres, :]) * scale, axis=-1)  # (L, n_present)
        nearest = np.full(n_lev, -1)
        finite = np.all(np.isfinite(pc), -1)
        nearest[finite] = np.flatnonzero(pres)[np.argmin(dist[finite], axis=1)]
        inside &= nearest == np.arange(n_lev)
    both = pres & detected
    found = both & inside
    iou = np.full(n_lev, np.nan)
    if pred_boxes_px is not None:
        pb = np.asarray(_np(pred_boxes_px), dtype=np.float64)
        if pb.shape != (n_lev, 4):
            raise ValueError(f"match_detections: pred_boxes_px must have shape ({n_lev}, 4), got {pb.shape}")
        iou = np.where(both, box_iou(pb, gb), np.nan)
    return {
        "present": pres, "detected": detected, "found": found, "false_positive": detected & ~pres,
        "mislocated": both & ~inside,
        "error_px": np.where(both, err_px, np.nan), "error_mm": np.where(both, err_mm, np.nan),
        "diag_px": np.where(pres, diag_px, np.nan), "diag_mm": np.where(pres, diag_mm, np.nan),
        "iou": iou, "unit": "mm" if sp is not None else "px",
    }


class DetectionAccumulator:
    """Collects :func:`match_detections` results of many radiographs and summarises them.

    Args:
        levels: names of the L levels (for ``recall/<level>``); None: no per-level keys.
    """

    _ARRAYS = ("present", "detected", "found", "false_positive", "mislocated", "error_px", "error_mm", "diag_px",
               "diag_mm", "iou")

    def __init__(self, levels: Sequence[str] | None = None) -> None:
        self.levels = list(levels) if levels is not None else None
        self.reset()

    def reset(self) -> None:
        self.image_ids: list[int] = []
        self.units: list[str] = []
        self.rows: dict[str, list[np.ndarray]] = {k: [] for k in self._ARRAYS}

    def add(self, image_id: int, match: Mapping[str, Any]) -> None:
        """Add the result of one radiograph."""
        for k in self._ARRAYS:
            self.rows[k].append(np.asarray(match[k]))
        self.image_ids.append(int(image_id))
        self.units.append(str(match["unit"]))

    @property
    def unit(self) -> str:
        """``"mm"`` when every image so far has a spacing, else ``"px"``."""
        return "mm" if self.units and all(u == "mm" for u in self.units) else "px"

    def arrays(self) -> dict[str, np.ndarray]:
        """``(num_images, L)`` stacks of every per-level array."""
        return {k: np.stack(v) if v else np.zeros((0, 0)) for k, v in self.rows.items()}

    def summary(self) -> dict[str, float]:
        """The metrics of the module docstring (NaN where undefined, e.g. precision with no detection)."""
        u = self.unit
        nan = float("nan")
        if not self.image_ids:
            return {"images": 0.0, "vertebrae": 0.0, "recall": nan, f"penalised_error_{u}": nan, "spacing_known": nan}
        a = self.arrays()
        pres, found, det = a["present"], a["found"], a["detected"]
        err, diag = a[f"error_{u}"], a[f"diag_{u}"]
        n_pres, n_found, n_det = int(pres.sum()), int(found.sum()), int(det.sum())
        fe = err[found]
        pen = np.where(found, err, diag)[pres]
        out = {
            "images": float(len(self.image_ids)),
            "vertebrae": float(n_pres),
            "detections": float(n_det),
            "recall": n_found / n_pres if n_pres else nan,
            "precision": n_found / n_det if n_det else nan,
            "false_positives_per_image": float(a["false_positive"].sum()) / len(self.image_ids),
            "mislocated": float(a["mislocated"].sum()),
            f"centre_error_mean_{u}": float(fe.mean()) if fe.size else nan,
            f"centre_error_median_{u}": float(np.median(fe)) if fe.size else nan,
            f"centre_error_max_{u}": float(fe.max()) if fe.size else nan,
            f"penalised_error_{u}": float(pen.mean()) if pen.size else nan,
            "box_iou_mean": float(np.nanmean(a["iou"][found])) if np.isfinite(a["iou"][found]).any() else nan,
            "images_all_found": float(np.mean([(f | ~p).all() for f, p in zip(found, pres)])),
            "images_exact": float(np.mean([(f | ~p).all() and not fp.any()
                                           for f, p, fp in zip(found, pres, a["false_positive"])])),
            "spacing_known": 1.0 if u == "mm" else 0.0,
        }
        if self.levels is not None and len(self.levels) == pres.shape[1]:
            for j, lev in enumerate(self.levels):
                n = int(pres[:, j].sum())
                out[f"recall/{lev}"] = float(found[:, j].sum()) / n if n else nan
        return out
