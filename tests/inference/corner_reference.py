"""The corner post-processing's original implementations, the references its faster steps are tested against.

Test-only code, moved here unchanged from ``monai_spine/inference/corners.py``: the whole-canvas
:func:`~monai_spine.codecs.corner_maps.localize_corners`, the map-by-map
:func:`~monai_spine.inference.corners.remove_background`, the patch-by-patch
:func:`~monai_spine.codecs.corner_maps.accumulate_patches` and
:func:`~monai_spine.inference.corners.corners_from_patches` built from them. ``conftest.py`` puts this
folder on ``sys.path`` (the suite runs with ``--import-mode=importlib``).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from monai_spine.codecs.corner_maps import _PIXEL_VAR, CornerLocalization, _canvas_points, _climb, quadrant_masks
from monai_spine.data.patches import patch_footprint
from monai_spine.inference.corners import CornerPrior, VertebraCorners, sigma_px_to_mm

__all__ = [
    "_localize_corners_reference",
    "_remove_background_reference",
    "_accumulate_patches_reference",
    "_corners_from_patches_reference",
]


def _localize_corners_reference(
    accumulated_map: np.ndarray,
    centre_px: Sequence[float],
    orientation: float,
    prior: CornerPrior | None,
    size_px: float | None = None,
    origin_px: Sequence[float] = (0, 0),
    level: str | None = None,
    weight_by_prior: bool = True,
    prior_scale: float = 1.0,
    prior_radius: float = 3.5,
    max_radius_frac: float | None = None,
    min_mass_frac: float = 0.05,
    window_frac: float = 0.2,
    refine: bool = True,
) -> CornerLocalization:
    """The original whole-canvas :func:`localize_corners` (reference for the equivalence tests)."""
    acc = np.asarray(accumulated_map, dtype=np.float64)
    if acc.ndim != 2:
        raise ValueError(f"accumulated_map must be (H, W), got {acc.shape}")
    acc = np.where(np.isfinite(acc) & (acc > 0), acc, 0.0)
    if size_px is not None and not (np.isfinite(size_px) and size_px > 0):
        raise ValueError(f"size_px must be positive, got {size_px!r}")
    use_prior = prior is not None and size_px is not None
    pts = _canvas_points(acc.shape, origin_px)
    quadrants = quadrant_masks(acc.shape, centre_px, orientation, origin_px)
    regions = quadrants.copy()
    weights = np.ones((4,) + acc.shape)
    if use_prior:
        m2 = prior.mahalanobis2(pts, centre_px, orientation, size_px, level, prior_scale)  # (H, W, 4)
        regions &= np.moveaxis(m2 <= prior_radius**2, -1, 0)
        if weight_by_prior:
            weights = np.moveaxis(np.exp(-0.5 * (m2 - m2.min(axis=(0, 1)))), -1, 0)
    if max_radius_frac is not None and size_px is not None:
        r = np.linalg.norm(pts - np.asarray(centre_px, np.float64), axis=-1)
        regions &= (r <= max_radius_frac * size_px)[None]
    masses = np.array([acc[r].sum() for r in regions])
    best = masses.max() if masses.size else 0.0
    corners = np.full((4, 2), np.nan)
    sigma = np.full(4, np.nan)
    used = np.zeros(4, bool)
    for k in range(4):
        if best > 0 and masses[k] >= min_mass_frac * best:
            score = np.where(regions[k], acc * weights[k], -1.0)
            idx = np.unravel_index(int(np.argmax(score)), acc.shape)
            if score[idx] <= 0:  # prior weight underflow: take the plain map maximum
                idx = np.unravel_index(int(np.argmax(np.where(regions[k], acc, -1.0))), acc.shape)
            if refine:
                idx = _climb(acc, quadrants[k], idx)
            p = pts[idx]
            win = quadrants[k] & (acc > 0)
            if size_px is not None:
                win &= np.linalg.norm(pts - p, axis=-1) <= window_frac * size_px
            w = acc[win]
            d2 = np.sum((pts[win] - p) ** 2, axis=-1)
            corners[k] = p
            sigma[k] = np.sqrt(np.sum(w * d2) / (2.0 * max(w.sum(), 1e-300)) + _PIXEL_VAR)
        elif use_prior:
            corners[k] = prior.mean_px(centre_px, orientation, size_px, level)[k]
            sigma[k] = prior.sigma_px(size_px, level)[k] * prior_scale
            used[k] = True
    return CornerLocalization(corners, sigma, used)


def _otsu(values: np.ndarray, bins: int) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _mode_foot(values: np.ndarray, bins: int, tail_frac: float) -> float:
    hist, edges = np.histogram(values, bins=bins)
    m = int(np.argmax(hist))
    j = m + 1
    while j < len(hist) and hist[j] >= tail_frac * hist[m]:
        j += 1
    return float(edges[min(j, len(hist))])


def _remove_background_reference(
    prob_map: np.ndarray, method: str = "mode", bins: int = 64, tail_frac: float = 0.1, renormalize: str = "max"
) -> np.ndarray:
    """The original map-by-map :func:`remove_background` (reference for the equivalence tests)."""
    m = np.asarray(prob_map, dtype=np.float64)
    if m.ndim == 3:
        return np.stack([_remove_background_reference(x, method, bins, tail_frac, renormalize) for x in m])
    if m.ndim != 2:
        raise ValueError(f"prob_map must be (S, S) or (P, S, S), got {m.shape}")
    if method not in ("mode", "otsu", "none") or renormalize not in ("max", "sum", "none"):
        raise ValueError(f"bad method {method!r} or renormalize {renormalize!r}")
    m = np.where(np.isfinite(m), m, 0.0)
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        return np.zeros_like(m)
    if method == "none":
        t = lo
    elif method == "otsu":
        t = _otsu(m.ravel(), bins)
    else:
        t = _mode_foot(m.ravel(), bins, tail_frac)
    out = np.clip(m - t, 0.0, None)
    if renormalize == "max" and out.max() > 0:
        out = out / out.max()
    elif renormalize == "sum" and out.sum() > 0:
        out = out / out.sum()
    return out


def _accumulate_patches_reference(
    maps: np.ndarray, affines: np.ndarray, origin_px: Sequence[int], canvas_shape: Sequence[int], density: bool = False
) -> np.ndarray:
    """The original patch-by-patch :func:`accumulate_patches` (reference for the equivalence tests)."""
    mp = np.asarray(maps, dtype=np.float32)
    af = np.asarray(affines, dtype=np.float64)
    if mp.ndim != 3 or af.shape != (len(mp), 3, 3):
        raise ValueError(f"maps must be (P, S, S) and affines (P, 3, 3), got {mp.shape}, {af.shape}")
    h, w = int(canvas_shape[0]), int(canvas_shape[1])
    canvas = np.zeros((h, w), np.float64)
    shift = np.eye(3)
    shift[:2, 2] = -np.asarray(origin_px, dtype=np.float64)
    for m, a in zip(mp, af):
        to_canvas = shift @ a  # patch px -> canvas px
        fp = patch_footprint(to_canvas, m.shape[0])
        x0 = int(np.clip(np.floor(fp[:, 0].min()) - 1, 0, w))
        x1 = int(np.clip(np.ceil(fp[:, 0].max()) + 2, 0, w))
        y0 = int(np.clip(np.floor(fp[:, 1].min()) - 1, 0, h))
        y1 = int(np.clip(np.ceil(fp[:, 1].max()) + 2, 0, h))
        if x1 <= x0 or y1 <= y0:
            continue
        sub = to_canvas.copy()
        sub[:2, 2] -= (x0, y0)
        # canvas px -> patch px, sampled bilinearly; 0 outside the patch
        warped = cv2.warpAffine(
            m, np.linalg.inv(sub)[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
        )
        if density:
            warped = warped / abs(np.linalg.det(a[:2, :2]))
        canvas[y0:y1, x0:x1] += warped
    return canvas


def _corners_from_patches_reference(
    maps: np.ndarray, affines: np.ndarray, vertebra_index: np.ndarray, centres_px: np.ndarray,
    orientations_deg: np.ndarray, sizes_px: np.ndarray, prior: CornerPrior | None,
    levels: Sequence[str | None] | None = None, spacing_mm: Sequence[float] | None = None, background: str = "mode",
    renormalize: str = "max", image_shape: Sequence[int] | None = None, return_canvases: bool = False,
    **localize_kwargs,
) -> VertebraCorners:
    """:func:`corners_from_patches` with the original step implementations (reference for the equivalence tests)."""
    mp = np.asarray(maps)
    if mp.ndim == 4 and mp.shape[1] == 1:
        mp = mp[:, 0]
    af = np.asarray(affines, dtype=np.float64)
    owner = np.asarray(vertebra_index).astype(np.int64).reshape(-1)
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    nv = len(c)
    ori = np.broadcast_to(np.asarray(orientations_deg, dtype=np.float64), (nv,))
    size = np.broadcast_to(np.asarray(sizes_px, dtype=np.float64), (nv,))
    if mp.ndim != 3 or af.shape != (len(mp), 3, 3) or owner.shape != (len(mp),):
        raise ValueError(f"maps (P, S, S), affines (P, 3, 3), vertebra_index (P,) expected; got {mp.shape}, {af.shape}, {owner.shape}")
    if len(owner) and (owner.min() < 0 or owner.max() >= nv):
        raise ValueError(f"vertebra_index values must lie in [0, {nv}), got {owner.min()}..{owner.max()}")
    if levels is not None and len(levels) != nv:
        raise ValueError(f"levels has {len(levels)} entries for {nv} vertebrae")
    cleaned = _remove_background_reference(mp, method=background, renormalize=renormalize) if len(mp) else mp
    corners = np.full((nv, 4, 2), np.nan)
    sigma = np.full((nv, 4), np.nan)
    used = np.zeros((nv, 4), bool)
    canvases: list = []
    for v in range(nv):
        lvl = None if levels is None else levels[v]
        sel = np.nonzero(owner == v)[0]
        if len(sel) == 0:
            if prior is not None:
                corners[v] = prior.mean_px(c[v], ori[v], size[v], lvl)
                sigma[v] = prior.sigma_px(size[v], lvl) * localize_kwargs.get("prior_scale", 1.0)
                used[v] = True
            canvases.append(None)
            continue
        fps = np.concatenate([patch_footprint(a, mp.shape[-1]) for a in af[sel]])
        x0, y0 = np.floor(fps.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(fps.max(axis=0)).astype(int) + 2
        if image_shape is not None:
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(x1, int(image_shape[1])), min(y1, int(image_shape[0]))
        if x1 <= x0 or y1 <= y0:
            canvas = np.zeros((1, 1))
            x0, y0 = int(round(c[v, 0])), int(round(c[v, 1]))
        else:
            canvas = _accumulate_patches_reference(cleaned[sel], af[sel], (x0, y0), (y1 - y0, x1 - x0), density=renormalize == "sum")
        res = _localize_corners_reference(canvas, c[v], float(ori[v]), prior, float(size[v]), (x0, y0), lvl, **localize_kwargs)
        corners[v], sigma[v], used[v] = res
        canvases.append((canvas, (int(x0), int(y0))))
    return VertebraCorners(corners, sigma, used, sigma_px_to_mm(sigma, spacing_mm), canvases if return_canvases else None)
