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
2. **Back to the image** (:func:`~monai_spine.codecs.corner_maps.accumulate_patches`, the decoder of
   the corner-map codec :mod:`monai_spine.codecs.corner_maps`): every patch map is warped into a
   vertebra-local canvas and summed; with ``renormalize="sum"`` as densities (``density=True``).
3. **Prior** (:class:`CornerPrior`): "The resultant distribution for each vertebra is then weighted
   by a prior corner distribution for that vertebrae learned from the training examples." Each
   corner's prior is a Gaussian of its offset from the vertebra centre in the vertebra's frame
   (rotated by the orientation), divided by the vertebra size.
4. **Quadrant maxima** (:func:`~monai_spine.codecs.corner_maps.localize_corners`, the codec's
   decoder): the maximum of the prior-weighted canvas in each of the vertebra's four quadrants,
   searched only within the prior's ellipse of each corner, climbed to the top of its peak, with the
   prior mean where a quadrant holds too little mass (``used_prior``), and an uncertainty
   ``sigma_px`` per corner (see :mod:`monai_spine.codecs.corner_maps`). :func:`sigma_px_to_mm`
   converts it with the RMS of the two spacings.

Maps are numpy arrays (move network outputs to the CPU first).

Implementation: :func:`remove_background` builds the histograms of a whole ``(P, S, S)`` stack at
once (numpy's binning, reproduced exactly). It gives the results of the original map-by-map version,
which the tests keep, with the codec's original steps, in ``tests/inference/corner_reference.py``.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence

import numpy as np

from monai_spine.codecs.corner_maps import _footprints, _rot, _to_frame, accumulate_patches, localize_corners
from monai_spine.data.annotation import atomic_write_text
from monai_spine.data.keypoints import validate_keypoints
from monai_spine.data.patches import vertebra_geometry

__all__ = [
    "PRIOR_FORMAT",
    "CornerPrior",
    "VertebraCorners",
    "remove_background",
    "corners_from_patches",
    "sigma_px_to_mm",
]

PRIOR_FORMAT = "monai-spine-corner-prior"


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
    """Otsu's threshold of each histogram row (an upper bin edge), ``(P,)``; row-wise ``_otsu`` of the tests' reference."""
    centres = 0.5 * (edges[:, :-1] + edges[:, 1:])
    w0 = np.cumsum(hist, axis=1).astype(np.float64)
    w1 = w0[:, -1:] - w0
    m0 = np.cumsum(hist * centres, axis=1)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[:, -1:] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return np.take_along_axis(edges, np.argmax(between[:, :-1], axis=1)[:, None] + 1, axis=1)[:, 0]


def _mode_foot_thresholds(hist: np.ndarray, edges: np.ndarray, tail_frac: float) -> np.ndarray:
    """Right foot of each histogram row's mode, ``(P,)``; row-wise ``_mode_foot`` of the tests' reference."""
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
        renormalize: ``"max"`` (paper) or ``"sum"`` (density accumulation, see
            :func:`~monai_spine.codecs.corner_maps.accumulate_patches`).
        image_shape: ``(H, W)``: clip canvases to the image.
        return_canvases: also return each vertebra's accumulated canvas and origin.
        **localize_kwargs: passed to :func:`~monai_spine.codecs.corner_maps.localize_corners`.

    Returns:
        :class:`VertebraCorners`. A vertebra without patches gets prior corners (NaN without prior).
    """
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
    cleaned = remove_background(mp, method=background, renormalize=renormalize) if len(mp) else mp
    footprints = _footprints(af, mp.shape[-1])
    cleaned = cleaned.astype(np.float32)  # accumulate_patches warps float32 maps: cast once, not per vertebra
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
            canvas = accumulate_patches(cleaned[sel], af[sel], (x0, y0), (y1 - y0, x1 - x0), density=renormalize == "sum")
        res = localize_corners(canvas, c[v], float(ori[v]), prior, float(size[v]), (x0, y0), lvl, **localize_kwargs)
        corners[v], sigma[v], used[v] = res
        canvases.append((canvas, (int(x0), int(y0))))
    return VertebraCorners(corners, sigma, used, sigma_px_to_mm(sigma, spacing_mm), canvases if return_canvases else None)
