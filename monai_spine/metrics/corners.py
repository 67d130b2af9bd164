"""Corner errors of the probabilistic spatial regressor (Al Arif et al., BMVC 2017), per image and summarised.

* :func:`corner_errors`: point-to-point (P2P) and point-to-curve (P2C, distance to the annotated
  vertebral-body outline) errors of the four corners of each vertebra of one image, in px and, when the
  spacing is known, in mm;
* :class:`CornerErrorAccumulator`: collects them (with the patch-level Bhattacharyya coefficients and
  the prior-fallback masks) over many images and summarises them in one unit (mm when every image had
  a spacing, else px), the P2P part via :func:`monai_spine.metrics.keypoint_error.summarize_errors`.

Used by the evaluator's key metric (:class:`monai_spine.handlers.corners.CornerErrorHandler`) and by
:func:`monai_spine.evaluation.corners.evaluate_corner_model`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_spine.data.keypoints import px_to_mm
from monai_spine.metrics.keypoint_error import DEFAULT_THRESHOLDS_MM, summarize_errors

__all__ = ["point_to_curve_distance", "corner_errors", "CornerErrorAccumulator"]


def point_to_curve_distance(points: np.ndarray, curve: np.ndarray, closed: bool = True) -> np.ndarray:
    """Distance of each point to a polyline (the paper's P2C metric against a vertebra outline).

    Args:
        points: ``(M, 2)`` points.
        curve: ``(C, 2)`` polyline vertices (``C >= 1``), same units as ``points``.
        closed: also use the segment from the last vertex back to the first.

    Returns:
        ``(M,)`` distance to the nearest segment (to the vertex when ``C == 1``).
    """
    p = np.asarray(points, dtype=np.float64)
    cv = np.asarray(curve, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or cv.ndim != 2 or cv.shape[1] != 2 or len(cv) < 1:
        raise ValueError(f"points must be (M, 2) and curve (C >= 1, 2), got {p.shape}, {cv.shape}")
    a = cv if closed else cv[:-1]
    b = np.roll(cv, -1, axis=0) if closed else cv[1:]
    if len(a) == 0:  # one vertex, open curve
        a, b = cv, cv
    ab = b - a  # (S, 2)
    ap = p[:, None, :] - a[None]  # (M, S, 2)
    denom = np.sum(ab * ab, axis=-1)
    t = np.where(denom > 0, np.sum(ap * ab, axis=-1) / np.where(denom > 0, denom, 1.0), 0.0)
    t = np.clip(t, 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    return np.min(np.linalg.norm(p[:, None, :] - nearest, axis=-1), axis=1)


def corner_errors(
    pred_px: np.ndarray,
    gt_px: np.ndarray,
    visible: np.ndarray | None = None,
    outlines_px: Sequence[np.ndarray] | None = None,
    spacing_mm: Sequence[float] | None = None,
) -> dict[str, np.ndarray | None]:
    """P2P and P2C errors of the corners of ``V`` vertebrae of one image.

    Args:
        pred_px: ``(V, 4, 2)`` predicted corners (NaN = not found).
        gt_px: ``(V, 4, 2)`` annotated corners.
        visible: ``(V, 4)`` mask of annotated corners (None: finite ones).
        outlines_px: ``V`` outlines ``(M, 2)`` (closed polylines; empty = none).
        spacing_mm: ``(sx, sy)`` or None.

    Returns:
        ``p2p_px``, ``p2c_px`` ``(V, 4)`` and ``p2p_mm``, ``p2c_mm`` (None when the spacing is unknown):
        NaN where not counted (corner invisible; no outline for P2C), +inf where a visible corner
        was not predicted.
    """
    p = np.asarray(pred_px, dtype=np.float64)
    g = np.asarray(gt_px, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[1:] != (4, 2):
        raise ValueError(f"pred_px and gt_px must both be (V, 4, 2), got {p.shape}, {g.shape}")
    vis = np.all(np.isfinite(g), axis=-1) if visible is None else np.asarray(visible, bool) & np.all(np.isfinite(g), -1)
    found = np.all(np.isfinite(p), axis=-1)
    out: dict[str, np.ndarray | None] = {}
    for unit, sp in (("px", None), ("mm", spacing_mm)):
        if unit == "mm" and sp is None:
            out["p2p_mm"] = out["p2c_mm"] = None
            continue
        ps = p if sp is None else px_to_mm(p, sp)
        gs = g if sp is None else px_to_mm(g, sp)
        p2p = np.linalg.norm(ps - gs, axis=-1)
        p2c = np.full(p.shape[:2], np.nan)
        for v in range(len(p)):
            o = None if outlines_px is None else np.asarray(outlines_px[v], dtype=np.float64).reshape(-1, 2)
            if o is None or len(o) == 0 or not vis[v].any():
                continue
            os_ = o if sp is None else px_to_mm(o, sp)
            d = np.full(4, np.inf)
            if found[v].any():
                d[found[v]] = point_to_curve_distance(ps[v][found[v]], os_, closed=True)
            p2c[v] = d
        p2p = np.where(found, p2p, np.inf)
        p2p[~vis] = np.nan
        p2c[~vis] = np.nan
        out[f"p2p_{unit}"], out[f"p2c_{unit}"] = p2p, p2c
    return out


class CornerErrorAccumulator:
    """Collects per-image corner errors (and patch BCs) and summarises them in one unit.

    The unit is mm when every image added had a spacing, else px (never a mix).

    Args:
        thresholds_mm: SDR thresholds; fit_failure_mm: fit failure threshold (paper: 3 mm);
        scan_threshold_mm: threshold on a scan's mean error (all in the unit of the errors).
    """

    def __init__(self, thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM, fit_failure_mm: float = 3.0,
                 scan_threshold_mm: float = 2.0) -> None:
        self.thresholds_mm = tuple(thresholds_mm)
        self.fit_failure_mm = float(fit_failure_mm)
        self.scan_threshold_mm = float(scan_threshold_mm)
        self.reset()

    def reset(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._bc: list[np.ndarray] = []

    def add(self, image_id: int, errors: Mapping[str, np.ndarray | None], used_prior: np.ndarray | None = None,
            sigma_px: np.ndarray | None = None, spacing_mm: Sequence[float] | None = None) -> None:
        """Add one image's :func:`corner_errors` output, its ``(V, 4)`` prior-fallback mask and corner sigmas (px)."""
        n = np.asarray(errors["p2p_px"]).shape[0]
        sig = np.full((n, 4), np.nan) if sigma_px is None else np.asarray(sigma_px, dtype=np.float64).reshape(n, 4)
        sig_mm = None
        if spacing_mm is not None:
            sig_mm = sig * float(np.sqrt(np.mean(np.square(np.asarray(spacing_mm, dtype=np.float64)))))
        self._rows.append({"image_id": int(image_id), **errors, "sigma_px": sig, "sigma_mm": sig_mm,
                           "used_prior": np.zeros((n, 4), bool) if used_prior is None else np.asarray(used_prior, bool)})

    def add_bc(self, bc: np.ndarray) -> None:
        """Add patch-level Bhattacharyya coefficients ``(P,)``."""
        self._bc.append(np.asarray(bc, dtype=np.float64).reshape(-1))

    @property
    def unit(self) -> str:
        """``"mm"`` when every image had a spacing (or nothing was added), else ``"px"``."""
        return "mm" if all(r["p2p_mm"] is not None for r in self._rows) else "px"

    def errors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """``(p2p (N, 4), p2c (N, 4), image_ids (N,), unit)`` over every vertebra added."""
        u = self.unit
        if not self._rows:
            return np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0), u
        p2p = np.concatenate([r[f"p2p_{u}"] for r in self._rows])
        p2c = np.concatenate([r[f"p2c_{u}"] for r in self._rows])
        ids = np.concatenate([np.full(len(r[f"p2p_{u}"]), r["image_id"]) for r in self._rows])
        return p2p, p2c, ids, u

    def sigmas(self) -> np.ndarray:
        """``(N, 4)`` corner sigmas in the unit of :meth:`errors` (NaN where not given)."""
        u = self.unit
        if not self._rows:
            return np.zeros((0, 4))
        return np.concatenate([r[f"sigma_{u}"] if r[f"sigma_{u}"] is not None else r["sigma_px"] for r in self._rows])

    def summary(self) -> dict[str, float]:
        """Flat dict: ``p2p_*`` (:func:`summarize_errors` keys), ``p2c_count/mean/median/std_{u}``,
        ``bc_mean``, ``bc_median``, ``bc_count``, ``prior_fallback``, ``spacing_known``."""
        p2p, p2c, ids, u = self.errors()
        out = {f"p2p_{k}": v for k, v in summarize_errors(
            p2p, ids, unit=u, thresholds_mm=self.thresholds_mm, scan_threshold_mm=self.scan_threshold_mm,
            fit_failure_mm=self.fit_failure_mm).items()}
        c = p2c[~np.isnan(p2c)]
        with np.errstate(invalid="ignore"):
            out["p2c_count"] = float(c.size)
            out[f"p2c_mean_{u}"] = float(np.mean(c)) if c.size else float("nan")
            out[f"p2c_median_{u}"] = float(np.median(c)) if c.size else float("nan")
            out[f"p2c_std_{u}"] = float(np.std(c)) if c.size else float("nan")
        bc = np.concatenate(self._bc) if self._bc else np.zeros(0)
        out["bc_count"] = float(bc.size)
        out["bc_mean"] = float(np.mean(bc)) if bc.size else float("nan")
        out["bc_median"] = float(np.median(bc)) if bc.size else float("nan")
        counted = ~np.isnan(p2p)
        used = np.concatenate([r["used_prior"] for r in self._rows]) if self._rows else np.zeros((0, 4), bool)
        out["prior_fallback"] = float(np.mean(used[counted])) if counted.any() else float("nan")
        out["spacing_known"] = 1.0 if u == "mm" else 0.0
        return out
