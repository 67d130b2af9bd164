"""The straightened spine strip: film <-> strip coordinates, its heatmap target and the level decoding.

The coarse detector (:mod:`monai_spine.inference.detector`) sees the whole film at 384 x 128 px, where an
upper thoracic vertebra is about 13 px tall: its heatmap blurs there, doubles peaks, misses faint levels
and fires on discs. The strip is the second, finer look: a band along the spine, cut from the film
around the coarse centres and straightened, so that the spine runs down the strip's middle column
whatever its curve, and every row of the strip is one step along the spine.

Geometry (:class:`SpineStrip`): the polyline through the level centres (image ``(x, y)`` pixels, top to
bottom) is extended by ``ext_levels`` level spacings beyond the first and last centre (so that a chain
shifted by a level, and the C7 / S1 beyond the ends, are still inside), resampled to ``rows`` equally
spaced points and smoothed (Gaussian, ``smooth_levels`` spacings); row ``i`` of the strip is the arc
point ``i``, column ``j`` lies ``(j - (width - 1) / 2) * step_px`` along the arc's normal. The strip's
pixels are square, ``step_px`` film pixels each.

Codec: :func:`encode_strip_heatmap` writes Gaussian peaks (value 1 at the nearest pixel, for the focal
loss) at the level centres in strip coordinates, :func:`encode_strip_levels` the level index of every
row; :func:`decode_strip_levels` reads the band around the middle column row by row and places the L
levels by dynamic programming along the strip (the heat at each level's row, the spacing of consecutive
levels against the training films' profile at an unknown scale, each row's height on the film against
the training films' level heights, and the network's level index of each row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d, map_coordinates

from monai_spine.codecs.chain import _level_from_y_frac, spacing_profile_array

__all__ = ["SpineStrip", "encode_strip_heatmap", "encode_strip_levels", "decode_strip_levels"]


@dataclass
class SpineStrip:
    """A straightened band along the spine.

    Attributes:
        points_px: ``(rows, 2)`` ``(x, y)`` film pixels of the strip's middle column, top to bottom.
        normals: ``(rows, 2)`` unit normals of the arc (strip columns grow along them).
        step_px: film pixels per strip pixel (along and across).
        width: strip columns.
    """

    points_px: np.ndarray
    normals: np.ndarray
    step_px: float
    width: int

    @property
    def rows(self) -> int:
        return int(self.points_px.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, width)`` of the strip image."""
        return self.rows, int(self.width)

    @classmethod
    def from_centres(cls, centres_px: Any, rows: int = 768, width: int = 96,
                     ext_levels: tuple[float, float] = (2.5, 2.5), smooth_levels: float = 0.6) -> SpineStrip:
        """The strip through level centres.

        Args:
            centres_px: ``(L, 2)`` ``(x, y)`` film pixels, top to bottom (rows with NaN are skipped).
            rows, width: strip size in pixels.
            ext_levels: how far the arc goes above the first and below the last centre, in multiples of
                the first (last) centre-to-centre step.
            smooth_levels: Gaussian smoothing of the arc, in median centre spacings.

        Raises:
            ValueError: fewer than two finite centres, two equal centres at an end, or a bad size.
        """
        c = np.asarray(centres_px, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != 2:
            raise ValueError(f"SpineStrip: centres must be (L, 2) (x, y) pixels, got shape {c.shape}")
        c = c[np.all(np.isfinite(c), 1)]
        if c.shape[0] < 2:
            raise ValueError(f"SpineStrip: needs at least two finite centres, got {c.shape[0]}")
        if int(rows) < 8 or int(width) < 3:
            raise ValueError(f"SpineStrip: rows >= 8 and width >= 3 needed, got {rows} x {width}")
        seg = np.hypot(*np.diff(c, axis=0).T)
        if seg[0] <= 0 or seg[-1] <= 0:
            raise ValueError("SpineStrip: the two first (or last) centres coincide: no direction to extend")
        top, bottom = (float(v) for v in ext_levels)
        pts = np.vstack([c[0] + (c[0] - c[1]) * top, c, c[-1] + (c[-1] - c[-2]) * bottom])
        seg_all = np.hypot(*np.diff(pts, axis=0).T)
        keep = np.r_[True, seg_all > 0]
        pts = pts[keep]
        s = np.r_[0.0, np.cumsum(np.hypot(*np.diff(pts, axis=0).T))]
        t = np.linspace(0.0, s[-1], int(rows))
        xy = np.c_[np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])]
        step = float(s[-1] / (int(rows) - 1))
        sig = float(smooth_levels) * float(np.median(seg)) / step
        if sig > 0:  # padded by point reflection at both ends, so a straight arc keeps its ends and its steps
            pad = min(int(4 * sig) + 1, xy.shape[0] - 1)
            ext = np.vstack([2 * xy[0] - xy[1: pad + 1][::-1], xy, 2 * xy[-1] - xy[-pad - 1: -1][::-1]])
            ext = np.c_[gaussian_filter1d(ext[:, 0], sig, mode="nearest"), gaussian_filter1d(ext[:, 1], sig, mode="nearest")]
            xy = ext[pad: pad + xy.shape[0]]
        tangent = np.gradient(xy, axis=0)
        tangent /= np.maximum(np.hypot(*tangent.T), 1e-12)[:, None]
        normals = np.c_[tangent[:, 1], -tangent[:, 0]]  # a spine running down: columns grow with x
        return cls(points_px=xy, normals=normals, step_px=step, width=int(width))

    def _grid_px(self) -> np.ndarray:
        offs = (np.arange(self.width) - (self.width - 1) / 2.0) * self.step_px
        return self.points_px[:, None, :] + offs[None, :, None] * self.normals[:, None, :]  # (rows, width, 2)

    def sample(self, image: Any) -> np.ndarray:
        """The strip image ``(rows, width)`` float32, linearly interpolated (0 outside the film).

        The film is first shrunk by area averaging to about two of its pixels per strip pixel, so the
        strip does not alias whatever the film's resolution.

        Args:
            image: ``(H, W)`` or ``(1, H, W)`` film, intensities already scaled.
        """
        img = np.asarray(image, dtype=np.float32)
        if img.ndim == 3 and img.shape[0] == 1:
            img = img[0]
        if img.ndim != 2:
            raise ValueError(f"SpineStrip.sample: image must be (H, W) or (1, H, W), got shape {np.shape(image)}")
        f = max(1, int(np.floor(self.step_px / 2.0)))
        if f > 1:
            import cv2

            h, w = img.shape
            img = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
            sx, sy = w / img.shape[1], h / img.shape[0]
        else:
            sx = sy = 1.0
        g = self._grid_px()
        # pixel centres: film pixel x sits at shrunk coordinate (x + 0.5) / s - 0.5
        cx = (g[..., 0] + 0.5) / sx - 0.5
        cy = (g[..., 1] + 0.5) / sy - 0.5
        v = map_coordinates(img, [cy.ravel(), cx.ravel()], order=1, mode="constant", cval=0.0)
        return v.reshape(self.shape).astype(np.float32)

    def to_strip(self, points_px: Any) -> np.ndarray:
        """Film points ``(N, 2)`` ``(x, y)`` -> strip ``(row, col)`` (float; NaN rows stay NaN).

        The row is the nearest arc point plus the offset along its tangent; the column the offset
        along its normal.
        """
        p = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
        out = np.full(p.shape, np.nan)
        tangent = np.c_[-self.normals[:, 1], self.normals[:, 0]]
        for i, q in enumerate(p):
            if not np.all(np.isfinite(q)):
                continue
            t = int(np.argmin(np.hypot(*(self.points_px - q).T)))
            v = q - self.points_px[t]
            out[i] = (t + float(v @ tangent[t]) / self.step_px,
                      float(v @ self.normals[t]) / self.step_px + (self.width - 1) / 2.0)
        return out

    def to_image(self, rows_cols: Any) -> np.ndarray:
        """Strip ``(row, col)`` ``(N, 2)`` -> film ``(x, y)`` pixels (rows clipped to the strip)."""
        rc = np.asarray(rows_cols, dtype=np.float64).reshape(-1, 2)
        k = np.arange(self.rows, dtype=np.float64)
        r = np.clip(rc[:, 0], 0, self.rows - 1)
        base = np.c_[np.interp(r, k, self.points_px[:, 0]), np.interp(r, k, self.points_px[:, 1])]
        n = np.c_[np.interp(r, k, self.normals[:, 0]), np.interp(r, k, self.normals[:, 1])]
        n /= np.maximum(np.hypot(*n.T), 1e-12)[:, None]
        return base + ((rc[:, 1] - (self.width - 1) / 2.0) * self.step_px)[:, None] * n


def encode_strip_heatmap(rows_cols: Any, shape: tuple[int, int], sigma_px: float = 2.5) -> np.ndarray:
    """The strip's target: a Gaussian of ``sigma_px`` strip pixels at each point, exactly 1 at its nearest pixel.

    Args:
        rows_cols: ``(N, 2)`` ``(row, col)`` strip points (NaN rows and points outside are skipped).
        shape: ``(rows, width)``.

    Returns:
        ``(rows, width)`` float32 in [0, 1] (the maximum over the points).
    """
    rows, width = (int(v) for v in shape)
    out = np.zeros((rows, width), np.float32)
    rc = np.asarray(rows_cols, dtype=np.float64).reshape(-1, 2)
    yy = np.arange(rows, dtype=np.float64)[:, None]
    xx = np.arange(width, dtype=np.float64)[None, :]
    for r, c in rc:
        if not (np.isfinite(r) and np.isfinite(c)) or not (-0.5 <= r <= rows - 0.5 and -0.5 <= c <= width - 0.5):
            continue
        g = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2.0 * float(sigma_px) ** 2)).astype(np.float32)
        g[int(round(min(max(r, 0), rows - 1))), int(round(min(max(c, 0), width - 1)))] = 1.0
        np.maximum(out, g, out=out)
    return out


def encode_strip_levels(level_rows: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The level index at every strip row: ``(level (rows,), mask (rows,))`` float32.

    Linear between the rows of consecutive present levels, extended beyond the first and last with the
    slope of the two nearest present levels (negative above the first level, more than L - 1 below the
    last). With fewer than two present levels nothing is known (mask 0).

    Args:
        level_rows: ``(L,)`` strip row of each level's centre (NaN: absent), top to bottom.
        rows: strip rows.

    Raises:
        ValueError: the present levels' rows do not increase with the level.
    """
    r = np.asarray(level_rows, dtype=np.float64).reshape(-1)
    k = np.flatnonzero(np.isfinite(r))
    out, mask = np.zeros(int(rows), np.float32), np.zeros(int(rows), np.float32)
    if k.size < 2:
        return out, mask
    if np.any(np.diff(r[k]) <= 0):
        raise ValueError(f"encode_strip_levels: level rows must increase with the level, got {r[k].round(1).tolist()}")
    t = np.arange(int(rows), dtype=np.float64)
    lev = np.interp(t, r[k], k.astype(np.float64))
    above, below = t < r[k[0]], t > r[k[-1]]
    lev[above] = k[0] + (t[above] - r[k[0]]) * (k[1] - k[0]) / (r[k[1]] - r[k[0]])
    lev[below] = k[-1] + (t[below] - r[k[-1]]) * (k[-1] - k[-2]) / (r[k[-1]] - r[k[-2]])
    return lev.astype(np.float32), np.ones(int(rows), np.float32)


def decode_strip_levels(
    heat: Any,
    strip: SpineStrip,
    profile: Any,
    spacing_px: float,
    level_y_frac: Any = None,
    film_height_px: float | None = None,
    band_half_width: int = 24,
    unary_weight: float = 3.0,
    position_weight: float = 0.5,
    spacing_sigma: float = 0.15,
    scale_range: tuple[float, float] = (0.75, 1.33),
    num_scales: int = 21,
    level_cap: float = 3.0,
    level_rows: Any = None,
    level_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The L level centres along the strip: ``(centres_px (L, 2), scores (L,))``.

    Each strip row gets the highest heat within ``band_half_width`` columns of the middle (and that
    column). The levels ``0 .. L-1`` take rows ``t_0 < t_1 < ...`` of least total cost:

    * ``unary_weight * -log(heat(t_k))`` (heat clipped to [1e-3, 1]);
    * ``0.5 * (log(d / (s * profile[k-1])) / spacing_sigma) ** 2`` for consecutive rows ``d`` apart,
      ``s`` the film's scale in strip rows per profile unit, tried over ``scale_range`` times
      ``spacing_px / step_px / median(profile)``; a step outside 0.5-1.8 of the expected one is not allowed;
    * with ``level_y_frac`` and ``film_height_px``: ``position_weight * min(|level(y) - k|, level_cap)``,
      ``level(y)`` the level the row's height on the film suggests (as the chain decoding's);
    * with ``level_rows`` (``(rows,)``: the network's level index of each row, see
      :func:`encode_strip_levels`): ``level_weight * min(|level_rows(t) - k|, level_cap)``.

    Args:
        heat: ``(rows, width)`` strip heatmap (probabilities).
        strip: the strip it was read from.
        profile: ``(L - 1,)`` expected spacing profile (mean 1).
        spacing_px: the film's level spacing estimate (film pixels per mean level step).

    Returns:
        Film ``(x, y)`` centres (sub-row by a parabola through the heat) and each level's heat.

    Raises:
        ValueError: the heat's shape is not the strip's, or the profile is not positive.
    """
    h = np.asarray(heat, dtype=np.float64)
    if h.shape != strip.shape:
        raise ValueError(f"decode_strip_levels: heat must be {strip.shape}, got {h.shape}")
    prof = spacing_profile_array(profile, "decode_strip_levels")
    if not (np.isfinite(spacing_px) and spacing_px > 0):
        raise ValueError(f"decode_strip_levels: spacing_px must be positive, got {spacing_px}")
    n_lev, n_rows, mid = prof.size + 1, strip.rows, strip.width // 2
    lo, hi = max(0, mid - int(band_half_width)), min(strip.width, mid + int(band_half_width) + 1)
    band = h[:, lo:hi]
    line = band.max(1)
    col = band.argmax(1) + lo
    node = np.broadcast_to(-np.log(np.clip(line, 1e-3, 1.0)) * float(unary_weight), (n_lev, n_rows)).copy()
    if level_y_frac is not None and film_height_px:
        est = _level_from_y_frac(strip.points_px[:, 1] / float(film_height_px), np.asarray(level_y_frac, np.float64))
        node += np.minimum(np.abs(est[None, :] - np.arange(n_lev)[:, None]), float(level_cap)) * float(position_weight)
    if level_rows is not None and level_weight:
        lr = np.asarray(level_rows, dtype=np.float64).reshape(-1)
        if lr.shape != (n_rows,):
            raise ValueError(f"decode_strip_levels: level_rows must be ({n_rows},), got {lr.shape}")
        node += np.minimum(np.abs(lr[None, :] - np.arange(n_lev)[:, None]), float(level_cap)) * float(level_weight)
    w = 0.5 / float(spacing_sigma) ** 2
    base = float(spacing_px) / strip.step_px / float(np.median(prof))
    rows_idx = np.arange(n_rows)
    best_cost, best_path = np.inf, None
    for s in base * np.geomspace(scale_range[0], scale_range[1], int(num_scales)):
        cost = node[0].copy()
        back = np.zeros((n_lev, n_rows), dtype=np.int64)
        for k in range(1, n_lev):
            e = s * prof[k - 1]
            d_lo, d_hi = max(1, int(0.5 * e)), min(n_rows - 1, int(1.8 * e))
            if d_hi < d_lo:
                cost = np.full(n_rows, np.inf)
                continue
            d = np.arange(d_hi, d_lo - 1, -1)  # window column j looks d[j] rows back
            padded = np.concatenate([np.full(d_hi, np.inf), cost])
            windows = np.lib.stride_tricks.sliding_window_view(padded, d_hi - d_lo + 1)[: n_rows]  # (rows, D)
            cand = windows + (w * np.log(d / e) ** 2)[None, :]
            j = np.argmin(cand, 1)
            cost = cand[rows_idx, j] + node[k]
            back[k] = rows_idx - d[j]
        t = int(np.argmin(cost))
        if cost[t] < best_cost:
            path = [t]
            for k in range(n_lev - 1, 0, -1):
                t = int(back[k][t])
                path.append(t)
            best_cost, best_path = float(cost.min()), path[::-1]
    if best_path is None:  # no scale fits the strip: spread the levels evenly
        best_path = list(np.linspace(0, n_rows - 1, n_lev).round().astype(int))
    path = np.asarray(best_path, dtype=np.int64)
    rows = path.astype(np.float64)
    for i, t in enumerate(path):
        if 0 < t < n_rows - 1:
            a, b, c = line[t - 1], line[t], line[t + 1]
            den = a - 2.0 * b + c
            if den < 0:
                rows[i] = t + float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return strip.to_image(np.c_[rows, col[path]]), line[path].astype(np.float64)
