"""Post-processing of the probabilistic spatial regressor (Al Arif et al. 2017, Sec. 3.3): corners from patch maps.

Pipeline (:func:`corners_from_patches`), for each vertebra:

1. **Residual background removal** (:func:`remove_background`). The paper: "The range of values for
   the residual probability in each patch can be found by analysing its histogram. ... we remove
   these residual probabilities from the background and re-normalize the distributions to have a
   range between 0 and 1." Default ``method="mode"``: the background is the most frequent value
   range, so the threshold is the right foot of the histogram's mode: the upper edge of the first
   bin right of the most populated bin that holds fewer than ``tail_frac`` times its count.
   ``method="otsu"`` uses Otsu's threshold instead. The threshold is subtracted and negatives
   clipped to 0; the map is then divided by its maximum (``renormalize="max"``, the paper's 0..1
   range) or by its sum (``"sum"``).
2. **Back to the image** (:func:`accumulate_patches`): every patch map is warped with its
   patch-to-image affine into a vertebra-local canvas (canvas pixel ``(i, j)`` = image pixel
   ``(x0 + j, y0 + i)``) and summed. With ``renormalize="sum"`` a map is a probability per patch
   pixel, so it is divided by the area scale ``s^2`` (image px per patch px, squared) to stay a
   probability per image pixel (each patch then adds a total mass of 1); max-normalised maps are
   scores and are warped as they are.
3. **Prior** (:class:`CornerPrior`): "The resultant distribution for each vertebra is then weighted
   by a prior corner distribution for that vertebrae learned from the training examples." Each
   corner's prior is a Gaussian of its offset from the vertebra centre in the vertebra's frame
   (rotated by the orientation), divided by the vertebra size.
4. **Quadrant maxima** (:func:`localize_corners`). Paper: "the vertebral corners are localized by
   finding the maximum in each of four quadrants of each vertebra. The quadrants are defined using
   the manually clicked center points." Quadrants are split by the centre along the vertebra's
   axes, in corner order (top-left, top-right, bottom-left, bottom-right) of the displayed
   vertebra: ``lateral5`` (AS, PS, AI, PI) with anterior on the left, ``ap4`` (TL, TR, BL, BR).
   Patch maps hold the corners of the neighbouring vertebrae too, as strong as the vertebra's own,
   so the prior is what tells them apart: only the prior's ``prior_radius``-sigma ellipse of each
   corner (inside its quadrant) is searched. "In case the algorithm does not find any probability
   distribution for a corner, ... it uses this prior distribution of corners": a corner whose
   search region holds less than ``min_mass_frac`` of the best corner's mass falls back to the
   prior mean (``used_prior``).
   Beyond the paper, the maximum of the prior-weighted map only picks the peak; the corner is then
   moved by steepest ascent to the top of that peak in the unweighted map (``refine=True``),
   because the product of a broad peak and the prior is biased towards the prior mean (AASCE
   labels, perfect maps: 4.4 px mean error without the ascent, 0.5 px with it).

Beyond the paper, each corner gets an uncertainty ``sigma_px``: the RMS per-axis spread of the
accumulated (not prior-weighted) map around the chosen corner, within the corner's quadrant (not
the prior-limited search region) and a window of radius ``window_frac * size`` around it, plus the
1/12 px^2 of a pixel box: ``sigma = sqrt(sum w |p - p_k|^2 / (2 sum w) + 1/12)``. A prior fallback
reports the prior's own spread (times ``prior_scale``). :func:`sigma_px_to_mm` converts it with the
RMS of the two spacings.

Maps are numpy arrays (move network outputs to the CPU first).

Implementation: the steps work on whole stacks and bounded regions: :func:`remove_background`
builds the histograms of a whole ``(P, S, S)`` stack at once (numpy's binning, reproduced exactly),
:func:`accumulate_patches` warps each map only into its footprint's box with all affine bookkeeping
batched, and :func:`localize_corners` evaluates each corner's prior term, region and window only
inside their bounding boxes. They give the results of the original one-map / one-patch /
whole-canvas versions, which stay here as private ``_*_reference`` functions that the tests compare
against.
"""

from __future__ import annotations

import json
import math
import os
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from monai_spine.data.annotation import atomic_write_text
from monai_spine.data.keypoints import validate_keypoints
from monai_spine.data.patches import patch_footprint, vertebra_geometry

__all__ = [
    "PRIOR_FORMAT",
    "CornerPrior",
    "CornerLocalization",
    "VertebraCorners",
    "remove_background",
    "accumulate_patches",
    "quadrant_masks",
    "localize_corners",
    "corners_from_patches",
    "sigma_px_to_mm",
    "point_to_curve_distance",
]

PRIOR_FORMAT = "monai-spine-corner-prior"
_PIXEL_VAR = 1.0 / 12.0
#: sign of (u, v) in the vertebra frame for (top-left, top-right, bottom-left, bottom-right)
_QUADRANT_SIGNS = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]])


def _rot(angle_deg: float) -> np.ndarray:
    a = np.radians(float(angle_deg))
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _to_frame(points_px: np.ndarray, centre_px: Sequence[float], orientation_deg: float, size_px: float) -> np.ndarray:
    """Image px ``(..., 2)`` -> vertebra frame ``R(-angle) (p - c) / size`` (u right, v down)."""
    d = np.asarray(points_px, dtype=np.float64) - np.asarray(centre_px, dtype=np.float64)
    return d @ _rot(orientation_deg) / float(size_px)  # d @ R == (R^T d^T)^T


def _from_frame(q: np.ndarray, centre_px: Sequence[float], orientation_deg: float, size_px: float) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) * float(size_px) @ _rot(orientation_deg).T + np.asarray(centre_px, np.float64)


class CornerPrior:
    """Gaussian prior of the four corner positions in the vertebra frame.

    A corner ``p`` of a vertebra with centre ``c``, orientation ``a`` and size ``s`` (see
    :func:`monai_spine.data.patches.vertebra_geometry`: centre = mean of the corners, size =
    (width + height) / 2) has normalised offset ``q = R(-a) (p - c) / s``; the prior of corner ``k``
    is ``N(q; mean[k], cov[k])``, optionally per vertebra level.

    Args:
        mean: ``(4, 2)`` mean offsets.
        cov: ``(4, 2, 2)`` covariances.
        count: number of vertebrae fitted.
        levels: optional ``{level: (mean, cov, count)}``.
    """

    def __init__(
        self, mean: np.ndarray, cov: np.ndarray, count: int = 0,
        levels: dict[str, tuple[np.ndarray, np.ndarray, int]] | None = None,
    ) -> None:
        self.mean, self.cov = self._check(mean, cov, "mean/cov")
        self.count = int(count)
        self.levels = {}
        for name, (m, c, n) in (levels or {}).items():
            mm, cc = self._check(m, c, f"level {name}")
            self.levels[str(name)] = (mm, cc, int(n))

    @staticmethod
    def _check(mean: np.ndarray, cov: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        m, c = np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)
        if m.shape != (4, 2) or c.shape != (4, 2, 2):
            raise ValueError(f"CornerPrior {what}: expected mean (4, 2) and cov (4, 2, 2), got {m.shape}, {c.shape}")
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(c)) and np.all(np.linalg.det(c) > 0)):
            raise ValueError(f"CornerPrior {what}: non-finite values or a covariance that is not positive definite")
        return m, c

    @classmethod
    def fit(
        cls,
        keypoints_px: np.ndarray | Sequence[np.ndarray],
        visible: np.ndarray | Sequence[np.ndarray] | None = None,
        corner_indices: Sequence[int] = (0, 1, 2, 3),
        levels: Sequence[str] | Sequence[Sequence[str]] | None = None,
        min_count: int = 5,
        reg: float = 1e-4,
    ) -> "CornerPrior":
        """Fit from training annotations (vertebrae with all four corners visible and finite).

        Args:
            keypoints_px: ``(M, K, 2)`` or a list of per-image ``(N_i, K, 2)`` arrays.
            visible: matching ``(M, K)`` mask(s) or None.
            corner_indices: (top-left, top-right, bottom-left, bottom-right) among the K points.
            levels: level name per vertebra, nested like ``keypoints_px`` (a list of names for one
                array, a list of per-image lists for a list of arrays); a level with at least
                ``min_count`` vertebrae gets its own Gaussian.
            min_count: minimum vertebrae for the pooled fit (and for a level).
            reg: added to the covariance diagonals (normalised units^2).

        Raises:
            ValueError: fewer than ``min_count`` usable vertebrae.
        """
        if isinstance(keypoints_px, np.ndarray) and keypoints_px.ndim == 3:
            kps, viss = [keypoints_px], [visible]
            lvls = [levels] if levels is not None else None
        else:
            kps = list(keypoints_px)
            viss = list(visible) if visible is not None else [None] * len(kps)
            lvls = list(levels) if levels is not None else None
        if lvls is not None and (len(lvls) != len(kps) or any(isinstance(x, str) or len(x) != len(k) for x, k in zip(lvls, kps))):
            raise ValueError("CornerPrior.fit: levels must hold one name per vertebra, nested like keypoints_px")
        offsets, names = [], []
        for i, (kp, vis) in enumerate(zip(kps, viss)):
            kp, vis = validate_keypoints(kp, vis, name=f"keypoints_px[{i}]")
            c = kp[:, list(corner_indices)]
            ok = np.all(vis[:, list(corner_indices)], axis=1) & np.all(np.isfinite(c), axis=(1, 2))
            g = vertebra_geometry(c)
            for n in np.nonzero(ok & (g.size > 0))[0]:
                offsets.append(_to_frame(c[n], g.centre[n], g.angle_deg[n], g.size[n]))
                names.append(None if lvls is None else str(lvls[i][n]))
        if len(offsets) < max(min_count, 2):
            raise ValueError(f"CornerPrior.fit: {len(offsets)} usable vertebrae, need at least {max(min_count, 2)}")
        q = np.stack(offsets)  # (M, 4, 2)

        def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = x.mean(axis=0)
            d = x - m
            return m, np.einsum("mki,mkj->kij", d, d) / max(len(x) - 1, 1) + reg * np.eye(2)

        mean, cov = stats(q)
        per_level = {}
        if lvls is not None:
            arr = np.array(names, dtype=object)
            for name in sorted(set(names)):
                sel = arr == name
                if sel.sum() >= max(min_count, 2):
                    m, c = stats(q[sel])
                    per_level[name] = (m, c, int(sel.sum()))
        return cls(mean, cov, len(q), per_level)

    def params(self, level: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(mean (4, 2), cov (4, 2, 2))`` of ``level`` if fitted, else the pooled ones."""
        if level is not None and str(level) in self.levels:
            m, c, _ = self.levels[str(level)]
            return m, c
        return self.mean, self.cov

    def mean_px(self, centre_px: Sequence[float], orientation_deg: float, size_px: float, level: str | None = None) -> np.ndarray:
        """Prior mean corners in image px, ``(4, 2)``."""
        return _from_frame(self.params(level)[0], centre_px, orientation_deg, size_px)

    def sigma_px(self, size_px: float, level: str | None = None) -> np.ndarray:
        """Per-axis RMS spread of each corner's prior in px, ``sqrt(trace(cov) / 2) * size``, ``(4,)``."""
        cov = self.params(level)[1]
        return np.sqrt(np.trace(cov, axis1=1, axis2=2) / 2.0) * float(size_px)

    def mahalanobis2(
        self, points_px: np.ndarray, centre_px: Sequence[float], orientation_deg: float, size_px: float,
        level: str | None = None, scale: float = 1.0,
    ) -> np.ndarray:
        """Squared Mahalanobis distance of ``points_px (..., 2)`` to each corner's prior, ``(..., 4)``;
        ``scale`` multiplies the prior's standard deviations."""
        mean, cov = self.params(level)
        q = _to_frame(points_px, centre_px, orientation_deg, size_px)[..., None, :] - mean  # (..., 4, 2)
        ci = np.linalg.inv(cov * float(scale) ** 2)  # (4, 2, 2)
        q0, q1 = q[..., 0], q[..., 1]
        return ci[:, 0, 0] * q0 * q0 + 2 * ci[:, 0, 1] * q0 * q1 + ci[:, 1, 1] * q1 * q1

    def density(
        self, points_px: np.ndarray, centre_px: Sequence[float], orientation_deg: float, size_px: float,
        corner: int | None = None, level: str | None = None, scale: float = 1.0,
    ) -> np.ndarray:
        """Prior density of each corner at ``points_px (..., 2)``, per image px^2.

        Returns:
            ``(..., 4)``, or ``(...)`` for one ``corner``; each integrates to 1 over the image plane.
        """
        cov = self.params(level)[1] * float(scale) ** 2
        m2 = self.mahalanobis2(points_px, centre_px, orientation_deg, size_px, level, scale)
        norm = 2 * np.pi * np.sqrt(np.linalg.det(cov)) * float(size_px) ** 2
        d = np.exp(-0.5 * m2) / norm
        return d if corner is None else d[..., int(corner)]

    def to_dict(self) -> dict:
        """JSON-able dict (format ``monai-spine-corner-prior`` version 1)."""
        return {
            "format": PRIOR_FORMAT, "version": 1,
            "frame": "q = R(-orientation) (corner - centre) / size; centre = mean of 4 corners, size = (width + height) / 2",
            "corner_order": ["top-left", "top-right", "bottom-left", "bottom-right"],
            "count": self.count, "mean": self.mean.tolist(), "cov": self.cov.tolist(),
            "levels": {k: {"count": n, "mean": m.tolist(), "cov": c.tolist()} for k, (m, c, n) in self.levels.items()},
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "CornerPrior":
        """Inverse of :meth:`to_dict`; ``ValueError`` naming ``source`` on a malformed record."""
        if not isinstance(d, dict) or d.get("format") != PRIOR_FORMAT:
            raise ValueError(f"{source}: not a {PRIOR_FORMAT} record")
        try:
            lv = {k: (v["mean"], v["cov"], v.get("count", 0)) for k, v in d.get("levels", {}).items()}
            return cls(d["mean"], d["cov"], d.get("count", 0), lv)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: malformed corner prior: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CornerPrior":
        """Read a file written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON: {e}") from None
        return cls.from_dict(d, str(path))


def _histograms(m: np.ndarray, bins: int, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``np.histogram(row, bins)`` of ``m (P, N)`` float64, vectorised.

    ``lo``/``hi`` are the rows' minima and maxima (``hi > lo``). Reproduces numpy's uniform-bin
    algorithm (``linspace`` edges, the scaled index ``(x - lo) / (hi - lo) * bins``, its one-ulp
    corrections against the edges, the right edge in the last bin), so the counts are the ones
    ``np.histogram`` gives for each row on its own. The corrections are only evaluated for values
    whose scaled index lies within a bound of the rounding error (a thousand ulps of
    ``bins * max(|lo|, |hi|) / (hi - lo)``) of an integer; any other value is strictly inside its bin.

    Returns:
        ``(hist (P, bins) int64, edges (P, bins + 1) float64)``.
    """
    p, n = m.shape
    edges = np.linspace(lo, hi, bins + 1, axis=-1)  # (P, bins + 1), equal to per-row np.linspace
    f = m - lo[:, None]
    f /= (hi - lo)[:, None]
    f *= bins
    frac, whole = np.modf(f)  # f >= 0: whole = the truncation numpy's astype(intp) gives
    idx = whole.astype(np.intp)
    tol = 1024 * np.finfo(np.float64).eps * bins * (1.0 + np.maximum(np.abs(lo), np.abs(hi)) / (hi - lo))
    frac -= 0.5
    np.abs(frac, out=frac)
    near = np.flatnonzero(frac >= (0.5 - tol)[:, None])  # within tol of an integer (a possible edge)
    if len(near):
        r, col = np.divmod(near, n)
        x, i = m[r, col], idx[r, col]
        i[i == bins] -= 1
        i -= x < edges[r, i]
        i += (x >= edges[r, i + 1]) & (i != bins - 1)
        idx[r, col] = i
    idx += (np.arange(p, dtype=np.intp) * bins)[:, None]
    hist = np.bincount(idx.ravel(), minlength=p * bins).reshape(p, bins)
    return hist, edges


def _otsu_thresholds(hist: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Otsu's threshold of each histogram row (an upper bin edge), ``(P,)``; row-wise :func:`_otsu`."""
    centres = 0.5 * (edges[:, :-1] + edges[:, 1:])
    w0 = np.cumsum(hist, axis=1).astype(np.float64)
    w1 = w0[:, -1:] - w0
    m0 = np.cumsum(hist * centres, axis=1)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[:, -1:] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return np.take_along_axis(edges, np.argmax(between[:, :-1], axis=1)[:, None] + 1, axis=1)[:, 0]


def _mode_foot_thresholds(hist: np.ndarray, edges: np.ndarray, tail_frac: float) -> np.ndarray:
    """Right foot of each histogram row's mode, ``(P,)``; row-wise :func:`_mode_foot`."""
    n = hist.shape[1]
    mode = np.argmax(hist, axis=1)
    low = (np.arange(n) > mode[:, None]) & (hist < tail_frac * hist[np.arange(len(hist)), mode][:, None])
    j = np.where(low.any(axis=1), np.argmax(low, axis=1), n)
    return np.take_along_axis(edges, j[:, None], axis=1)[:, 0]


#: maps per block in :func:`remove_background` (bounds the temporaries to a few MB)
_BLOCK_MAPS = 32


def remove_background(
    prob_map: np.ndarray, method: str = "mode", bins: int = 64, tail_frac: float = 0.1, renormalize: str = "max"
) -> np.ndarray:
    """Remove a patch map's residual background and renormalise (see the module docstring).

    A ``(P, S, S)`` stack is processed as a whole (one batched histogram per block of maps) and
    gives, map by map, what each map gives on its own.

    Args:
        prob_map: ``(S, S)`` (or ``(P, S, S)``, each map on its own) network output.
        method: ``"mode"`` (right foot of the histogram mode), ``"otsu"`` or ``"none"``.
        bins: histogram bins over the map's value range.
        tail_frac: for ``"mode"``: the foot is the first bin right of the mode below this fraction of its count.
        renormalize: ``"max"`` (range 0..1), ``"sum"`` (sum 1) or ``"none"``.

    Returns:
        float64 array like ``prob_map``; a map with nothing above the threshold becomes all zeros.
    """
    m = np.asarray(prob_map)
    if m.ndim not in (2, 3):
        raise ValueError(f"prob_map must be (S, S) or (P, S, S), got {m.shape}")
    if method not in ("mode", "otsu", "none") or renormalize not in ("max", "sum", "none"):
        raise ValueError(f"bad method {method!r} or renormalize {renormalize!r}")
    if int(bins) < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    bins = int(bins)
    if m.ndim == 2:
        return remove_background(m[None], method, bins, tail_frac, renormalize)[0]
    out = np.empty(m.shape, np.float64)
    if out.size == 0:
        return out
    flat_out = out.reshape(len(m), -1)
    for b in range(0, len(m), _BLOCK_MAPS):
        x = m[b : b + _BLOCK_MAPS].reshape(-1, flat_out.shape[1]).astype(np.float64)  # a copy, worked on in place
        if not np.isfinite(x.sum()):  # a finite sum means finite values
            x[~np.isfinite(x)] = 0.0
        lo, hi = x.min(axis=1), x.max(axis=1)
        flat = ~(hi > lo)  # nothing to threshold: all zeros
        if method == "none":
            t = lo
        else:
            hist, edges = _histograms(x, bins, lo, np.where(flat, lo + 1.0, hi))
            t = _otsu_thresholds(hist, edges) if method == "otsu" else _mode_foot_thresholds(hist, edges, tail_frac)
        x -= t[:, None]
        np.maximum(x, 0.0, out=x)
        if renormalize != "none":
            d = x.max(axis=1) if renormalize == "max" else x.sum(axis=1)
            x /= np.where(d > 0, d, 1.0)[:, None]
        x[flat] = 0.0
        flat_out[b : b + len(x)] = x
    return out


def _footprints(affines: np.ndarray, out_size: int) -> np.ndarray:
    """:func:`~monai_spine.data.patches.patch_footprint` of each of ``affines (P, 3, 3)``, ``(P, 4, 2)``
    (the same matrix product, batched, so the same numbers)."""
    e = np.array([[-0.5, -0.5], [out_size - 0.5, -0.5], [-0.5, out_size - 0.5], [out_size - 0.5, out_size - 0.5]])
    return e @ affines[:, :2, :2].transpose(0, 2, 1) + affines[:, None, :2, 2]


def accumulate_patches(
    maps: np.ndarray, affines: np.ndarray, origin_px: Sequence[int], canvas_shape: Sequence[int], density: bool = False
) -> np.ndarray:
    """Warp patch maps back to the image and sum them in a canvas.

    Each map is warped (bilinear, ``cv2.warpAffine``) only into the bounding box of its footprint
    in the canvas; the footprints, boxes, inverse affines and area scales of all patches are
    computed at once.

    Args:
        maps: ``(P, S, S)`` patch maps ``map[v, u]``.
        affines: ``(P, 3, 3)`` patch-to-image affines.
        origin_px: ``(x0, y0)`` integer image px of canvas pixel ``(0, 0)``.
        canvas_shape: ``(H, W)`` of the canvas.
        density: maps are probabilities per patch pixel: divide by the area scale ``|det A|`` so
            each stays a probability per image pixel (mass preserved up to resampling).

    Returns:
        ``(H, W)`` float64 canvas, ``canvas[i, j]`` at image pixel ``(x0 + j, y0 + i)``.
    """
    mp = np.asarray(maps, dtype=np.float32)
    af = np.asarray(affines, dtype=np.float64)
    if mp.ndim != 3 or af.shape != (len(mp), 3, 3):
        raise ValueError(f"maps must be (P, S, S) and affines (P, 3, 3), got {mp.shape}, {af.shape}")
    h, w = int(canvas_shape[0]), int(canvas_shape[1])
    canvas = np.zeros((h, w), np.float64)
    if len(mp) == 0:
        return canvas
    to_canvas = af.copy()  # patch px -> canvas px (the shift by -origin, exactly)
    to_canvas[:, :2, 2] -= np.asarray(origin_px, dtype=np.float64)
    fp = _footprints(to_canvas, mp.shape[1])
    lo, hi = fp.min(axis=1), fp.max(axis=1)  # (P, 2)
    x0 = np.clip(np.floor(lo[:, 0]) - 1, 0, w).astype(int)
    x1 = np.clip(np.ceil(hi[:, 0]) + 2, 0, w).astype(int)
    y0 = np.clip(np.floor(lo[:, 1]) - 1, 0, h).astype(int)
    y1 = np.clip(np.ceil(hi[:, 1]) + 2, 0, h).astype(int)
    ok = (x1 > x0) & (y1 > y0) & np.all(np.isfinite(fp), axis=(1, 2))
    if not ok.any():
        return canvas
    sub = to_canvas[ok]
    sub[:, 0, 2] -= x0[ok]
    sub[:, 1, 2] -= y0[ok]
    inv = np.linalg.inv(sub)[:, :2]  # canvas box px -> patch px
    scale = np.abs(np.linalg.det(af[ok, :2, :2])) if density else None
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for n, i in enumerate(np.nonzero(ok)[0]):
        # canvas px -> patch px, sampled bilinearly; 0 outside the patch
        warped = cv2.warpAffine(mp[i], inv[n], (int(x1[i] - x0[i]), int(y1[i] - y0[i])), flags=flags,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        if density:
            warped = warped / scale[n]
        view = canvas[y0[i] : y1[i], x0[i] : x1[i]]
        added = cv2.accumulate(warped, view)  # view += warped (float64), in place and faster than numpy's mixed-type add
        if added is not view:
            view[...] = added
    return canvas


def quadrant_masks(
    shape: Sequence[int], centre_px: Sequence[float], orientation_deg: float, origin_px: Sequence[float] = (0, 0)
) -> np.ndarray:
    """``(4, H, W)`` bool masks of the (top-left, top-right, bottom-left, bottom-right) quadrants.

    A canvas pixel belongs to the quadrant given by the signs of its offset from the centre along the
    vertebra's axes (``u`` along the endplate, ``v`` down the wall); ``u = 0`` counts as right and
    ``v = 0`` as bottom.
    """
    return _quadrants(_canvas_frame(shape, centre_px, orientation_deg, origin_px, 1.0))


def _quadrants(frame: np.ndarray) -> np.ndarray:
    """Quadrant masks ``(4, ...)`` from vertebra-frame coordinates ``(..., 2)`` (any positive scale)."""
    right, bottom = frame[..., 0] >= 0, frame[..., 1] >= 0
    return np.stack([~right & ~bottom, right & ~bottom, ~right & bottom, right & bottom])


def _canvas_points(shape: Sequence[int], origin_px: Sequence[float]) -> np.ndarray:
    h, w = int(shape[0]), int(shape[1])
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs + float(origin_px[0]), ys + float(origin_px[1])], axis=-1).astype(np.float64)


def _canvas_frame(shape, centre_px, orientation_deg, origin_px, size_px) -> np.ndarray:
    return _to_frame(_canvas_points(shape, origin_px), centre_px, orientation_deg, size_px)


class CornerLocalization(NamedTuple):
    """``corners_px (4, 2)``, ``sigma_px (4,)`` and ``used_prior (4,)`` bool, corner order TL, TR, BL, BR."""

    corners_px: np.ndarray
    sigma_px: np.ndarray
    used_prior: np.ndarray


def localize_corners(
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
    """Four corners of one vertebra from its accumulated map.

    Each corner ``k`` is searched in its quadrant (:func:`quadrant_masks`), restricted, when a prior
    and ``size_px`` are given, to the prior's ellipse of squared Mahalanobis radius ``prior_radius^2``
    and, when ``max_radius_frac`` is set, to ``max_radius_frac * size_px`` from the centre. The corner
    is the maximum of ``map * prior density_k`` (of ``map`` without a prior or with
    ``weight_by_prior=False``), then, with ``refine``, the local maximum of ``map`` reached from there
    by steepest ascent over 8-neighbours. If the region's map mass is below ``min_mass_frac`` of the largest
    region's mass (or the map is empty), the corner is the prior mean (``used_prior``; NaN without a
    prior). ``sigma_px`` is described in the module docstring.

    Args:
        accumulated_map: ``(H, W)`` canvas, ``map[i, j]`` at image px ``(x0 + j, y0 + i)``; negatives count as 0.
        centre_px: ``(x, y)`` vertebra centre in image px.
        orientation: vertebra orientation in degrees (0 = upright, module conventions of
            :mod:`monai_spine.data.patches`).
        prior: fitted :class:`CornerPrior` or None.
        size_px: vertebra size in px (needed for the prior, the window and ``max_radius_frac``).
        origin_px: ``(x0, y0)`` of the canvas.
        level: vertebra level for a per-level prior.
        weight_by_prior: multiply the map by the prior before taking maxima.
        prior_scale: multiplies the prior's standard deviations (>1 trusts the network more).
        prior_radius: search-region radius in prior standard deviations (``inf`` for the whole quadrant).
        max_radius_frac: optional radius limit as a fraction of the size.
        min_mass_frac: relative mass below which a corner counts as not found.
        window_frac: radius (fraction of the size) of the window for ``sigma_px``; whole region when
            ``size_px`` is None.
        refine: climb from the maximum of ``map * prior`` to the top of its hill in ``map`` (within
            the quadrant), so the prior chooses the peak but does not pull the corner off it.

    Returns:
        :class:`CornerLocalization` (image px).
    """
    acc = np.asarray(accumulated_map, dtype=np.float64)
    if acc.ndim != 2:
        raise ValueError(f"accumulated_map must be (H, W), got {acc.shape}")
    acc = np.where(np.isfinite(acc) & (acc > 0), acc, 0.0)
    if size_px is not None and not (np.isfinite(size_px) and size_px > 0):
        raise ValueError(f"size_px must be positive, got {size_px!r}")
    use_prior = prior is not None and size_px is not None
    h, w = acc.shape
    origin = (float(origin_px[0]), float(origin_px[1]))
    c = np.asarray(centre_px, dtype=np.float64)
    pts = _canvas_points(acc.shape, origin)
    frame_px = (pts - c) @ _rot(orientation)  # vertebra frame in px: _to_frame(pts, ..., 1.0)
    quadrants = _quadrants(frame_px)
    full = (0, h, 0, w)

    if use_prior:
        mean, cov = prior.params(level)
        ci = np.linalg.inv(cov * float(prior_scale) ** 2)  # as CornerPrior.mahalanobis2
        rot = _rot(orientation)
        cov_px = float(size_px) ** 2 * rot @ (cov * float(prior_scale) ** 2) @ rot.T  # (4, 2, 2) px^2
        mean_px = prior.mean_px(c, orientation, size_px, level)
        sd_px = np.sqrt(np.diagonal(cov_px, axis1=1, axis2=2))  # (4, 2) per-axis prior sd in px

    def m2_in(k: int, box: tuple[int, int, int, int]) -> np.ndarray:
        """Squared Mahalanobis distance to corner ``k``'s prior in ``box``, term by term as mahalanobis2."""
        f = frame_px[box[0] : box[1], box[2] : box[3]] / float(size_px)
        q0, q1 = f[..., 0] - mean[k, 0], f[..., 1] - mean[k, 1]
        return ci[k, 0, 0] * q0 * q0 + 2 * ci[k, 0, 1] * q0 * q1 + ci[k, 1, 1] * q1 * q1

    def m2_min(k: int) -> float:
        """Minimum of corner ``k``'s ``m2`` over the whole canvas: it lies in the ellipse ``m2 <= t`` of a
        canvas pixel near the prior mean (value ``t``), so only that ellipse's box is evaluated."""
        if not np.all(np.isfinite(mean_px[k])):
            return float(m2_in(k, full).min())
        j = int(np.clip(np.round(mean_px[k, 0] - origin[0]), 0, w - 1))
        i = int(np.clip(np.round(mean_px[k, 1] - origin[1]), 0, h - 1))
        t = float(m2_in(k, (i, i + 1, j, j + 1))[0, 0])
        return float(m2_in(k, _box(mean_px[k], np.sqrt(t) * sd_px[k], origin, acc.shape)).min())

    boxes, regions, m2s = [], [], []
    masses = np.zeros(4)
    for k in range(4):
        box = full
        if use_prior:
            box = _box(mean_px[k], abs(prior_radius) * sd_px[k], origin, acc.shape)
        if max_radius_frac is not None and size_px is not None:
            box = _intersect(box, _box(c, np.full(2, abs(max_radius_frac * size_px)), origin, acc.shape))
        sl = (slice(box[0], box[1]), slice(box[2], box[3]))
        reg = quadrants[k][sl].copy()
        m2 = None
        if use_prior:
            m2 = m2_in(k, box)
            reg &= m2 <= prior_radius**2
        if max_radius_frac is not None and size_px is not None:
            reg &= np.linalg.norm(pts[sl] - c, axis=-1) <= max_radius_frac * size_px
        masses[k] = acc[sl][reg].sum()
        boxes.append(box)
        regions.append(reg)
        m2s.append(m2)

    best = masses.max()
    corners = np.full((4, 2), np.nan)
    sigma = np.full(4, np.nan)
    used = np.zeros(4, bool)
    for k in range(4):
        if best > 0 and masses[k] >= min_mass_frac * best:
            box, reg = boxes[k], regions[k]
            sub = acc[box[0] : box[1], box[2] : box[3]]
            if not reg.any():  # an empty region (min_mass_frac <= 0): the first canvas pixel, as a masked argmax gives
                idx = (0, 0)
            else:
                score = sub
                if use_prior and weight_by_prior:
                    score = sub * np.exp(-0.5 * (m2s[k] - m2_min(k)))
                score = np.where(reg, score, -1.0)
                li = int(np.argmax(score))
                if score.flat[li] <= 0:  # prior weight underflow: take the plain map maximum
                    li = int(np.argmax(np.where(reg, sub, -1.0)))
                di, dj = np.unravel_index(li, score.shape)
                idx = (box[0] + int(di), box[2] + int(dj))
            if refine:
                idx = _climb(acc, quadrants[k], idx)
            p = pts[idx]
            wbox = full
            if size_px is not None:
                wbox = _box(p, np.full(2, abs(window_frac * size_px)), origin, acc.shape)
            sl = (slice(wbox[0], wbox[1]), slice(wbox[2], wbox[3]))
            win = quadrants[k][sl] & (acc[sl] > 0)
            if size_px is not None:
                win &= np.linalg.norm(pts[sl] - p, axis=-1) <= window_frac * size_px
            wt = acc[sl][win]
            d2 = np.sum((pts[sl][win] - p) ** 2, axis=-1)
            corners[k] = p
            sigma[k] = np.sqrt(np.sum(wt * d2) / (2.0 * max(wt.sum(), 1e-300)) + _PIXEL_VAR)
        elif use_prior:
            corners[k] = mean_px[k]
            sigma[k] = prior.sigma_px(size_px, level)[k] * prior_scale
            used[k] = True
    return CornerLocalization(corners, sigma, used)


def _box(
    centre_px: np.ndarray, half_px: np.ndarray, origin_px: Sequence[float], shape: Sequence[int]
) -> tuple[int, int, int, int]:
    """Canvas rows/columns ``(i0, i1, j0, j1)`` covering image px ``centre +- half`` with a 1-2 px margin,
    clipped to the canvas; the whole canvas when a bound is not finite."""
    h, w = int(shape[0]), int(shape[1])
    cx, cy = float(centre_px[0]) - float(origin_px[0]), float(centre_px[1]) - float(origin_px[1])
    hx, hy = float(half_px[0]), float(half_px[1])
    if not all(math.isfinite(v) for v in (cx, cy, hx, hy, cx - hx, cx + hx, cy - hy, cy + hy)):
        return 0, h, 0, w
    i0, i1 = min(max(math.floor(cy - hy) - 1, 0), h), min(max(math.ceil(cy + hy) + 2, 0), h)
    j0, j1 = min(max(math.floor(cx - hx) - 1, 0), w), min(max(math.ceil(cx + hx) + 2, 0), w)
    return i0, max(i0, i1), j0, max(j0, j1)


def _intersect(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    i0, j0 = max(a[0], b[0]), max(a[2], b[2])
    return i0, max(i0, min(a[1], b[1])), j0, max(j0, min(a[3], b[3]))


def _climb(acc: np.ndarray, allowed: np.ndarray, idx: tuple[int, int]) -> tuple[int, int]:
    """Steepest ascent on ``acc`` over 8-neighbours inside ``allowed``, from ``idx`` to a local maximum."""
    h, w = acc.shape
    i, j = int(idx[0]), int(idx[1])
    for _ in range(h * w):
        i0, i1, j0, j1 = max(i - 1, 0), min(i + 2, h), max(j - 1, 0), min(j + 2, w)
        nb = np.where(allowed[i0:i1, j0:j1], acc[i0:i1, j0:j1], -np.inf)
        di, dj = np.unravel_index(int(np.argmax(nb)), nb.shape)
        if nb[di, dj] <= acc[i, j]:
            break
        i, j = i0 + int(di), j0 + int(dj)
    return i, j


def sigma_px_to_mm(sigma_px: np.ndarray, spacing_mm: Sequence[float] | None) -> np.ndarray | None:
    """Per-axis sigma in px to mm with the RMS spacing ``sqrt((sx^2 + sy^2) / 2)``; None if spacing unknown."""
    if spacing_mm is None:
        return None
    sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be two positive numbers (sx, sy) or None, got {spacing_mm!r}")
    return np.asarray(sigma_px, dtype=np.float64) * float(np.sqrt(np.mean(sp**2)))


class VertebraCorners(NamedTuple):
    """Corners of ``V`` vertebrae: ``corners_px (V, 4, 2)``, ``sigma_px (V, 4)``, ``used_prior (V, 4)``,
    ``sigma_mm (V, 4)`` or None (spacing unknown), and ``canvases``: per vertebra ``(canvas, (x0, y0))``
    when asked for, else None."""

    corners_px: np.ndarray
    sigma_px: np.ndarray
    used_prior: np.ndarray
    sigma_mm: np.ndarray | None
    canvases: list | None


def corners_from_patches(
    maps: np.ndarray,
    affines: np.ndarray,
    vertebra_index: np.ndarray,
    centres_px: np.ndarray,
    orientations_deg: np.ndarray,
    sizes_px: np.ndarray,
    prior: CornerPrior | None,
    levels: Sequence[str | None] | None = None,
    spacing_mm: Sequence[float] | None = None,
    background: str = "mode",
    renormalize: str = "max",
    image_shape: Sequence[int] | None = None,
    return_canvases: bool = False,
    **localize_kwargs,
) -> VertebraCorners:
    """Whole post-processing: patch predictions -> corners of every vertebra (module docstring).

    Args:
        maps: ``(P, S, S)`` network outputs (spatially normalised maps).
        affines: ``(P, 3, 3)`` patch-to-image affines.
        vertebra_index: ``(P,)`` which centre (row of ``centres_px``) each patch was sampled around.
        centres_px: ``(V, 2)`` vertebra centres (clicked), image px.
        orientations_deg: ``(V,)`` orientations (e.g. :func:`monai_spine.data.patches.orientation_from_centres`).
        sizes_px: ``(V,)`` vertebra sizes in px, (width + height) / 2 as in the prior's frame.
        prior: fitted :class:`CornerPrior` or None.
        levels: optional level name per vertebra (per-level prior).
        spacing_mm: ``(sx, sy)`` to also report ``sigma_mm``; None = unknown.
        background: :func:`remove_background` method.
        renormalize: ``"max"`` (paper) or ``"sum"`` (density accumulation, see :func:`accumulate_patches`).
        image_shape: ``(H, W)``: clip canvases to the image.
        return_canvases: also return each vertebra's accumulated canvas and origin.
        **localize_kwargs: passed to :func:`localize_corners`.

    Returns:
        :class:`VertebraCorners`. A vertebra without patches gets prior corners (NaN without prior).
    """
    return _corners_from_patches(
        maps, affines, vertebra_index, centres_px, orientations_deg, sizes_px, prior, levels, spacing_mm,
        background, renormalize, image_shape, return_canvases, False, localize_kwargs,
    )


def _corners_from_patches(
    maps, affines, vertebra_index, centres_px, orientations_deg, sizes_px, prior, levels, spacing_mm,
    background, renormalize, image_shape, return_canvases, reference: bool, localize_kwargs: dict,
) -> VertebraCorners:
    """:func:`corners_from_patches`, with the current steps or (``reference``) the original ones."""
    rb = _remove_background_reference if reference else remove_background
    acc_fn = _accumulate_patches_reference if reference else accumulate_patches
    loc_fn = _localize_corners_reference if reference else localize_corners
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
    cleaned = rb(mp, method=background, renormalize=renormalize) if len(mp) else mp
    footprints = None if reference else _footprints(af, mp.shape[-1])
    if not reference:  # accumulate_patches warps float32 maps: cast once, not per vertebra
        cleaned = cleaned.astype(np.float32)
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
        if reference:
            fps = np.concatenate([patch_footprint(a, mp.shape[-1]) for a in af[sel]])
        else:
            fps = footprints[sel].reshape(-1, 2)
        x0, y0 = np.floor(fps.min(axis=0)).astype(int) - 1
        x1, y1 = np.ceil(fps.max(axis=0)).astype(int) + 2
        if image_shape is not None:
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(x1, int(image_shape[1])), min(y1, int(image_shape[0]))
        if x1 <= x0 or y1 <= y0:
            canvas = np.zeros((1, 1))
            x0, y0 = int(round(c[v, 0])), int(round(c[v, 1]))
        else:
            canvas = acc_fn(cleaned[sel], af[sel], (x0, y0), (y1 - y0, x1 - x0), density=renormalize == "sum")
        res = loc_fn(canvas, c[v], float(ori[v]), prior, float(size[v]), (x0, y0), lvl, **localize_kwargs)
        corners[v], sigma[v], used[v] = res
        canvases.append((canvas, (int(x0), int(y0))))
    return VertebraCorners(corners, sigma, used, sigma_px_to_mm(sigma, spacing_mm), canvases if return_canvases else None)


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


# ---------------------------------------------------------------------------------------------- references
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
    return _corners_from_patches(
        maps, affines, vertebra_index, centres_px, orientations_deg, sizes_px, prior, levels, spacing_mm,
        background, renormalize, image_shape, return_canvases, True, localize_kwargs,
    )
