"""Polygons to anti-aliased pixel coverage, and the smooth fields of the synthetic radiographs.

Part of the generator :mod:`monai_spine.data.synthetic`: area coverage of polygons by supersampling
(:func:`polygon_coverage`, pixel centres at integers), smooth Gaussian random fields, soft-edged
shapes for the soft-tissue layers, bilinear sampling of a layer at points and the "near metal" mask;
:class:`_Placement` maps the generator's millimetre frame to pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["polygon_coverage"]

_SUPERSAMPLE = 4
_SHIFT = 8  # fixed-point bits for cv2.fillPoly


@dataclass(frozen=True)
class _Placement:
    """Where the millimetre frame lies in the image: ``x_px = x_mm / sx + ox``, ``y_px = y_mm / sy + oy``.

    Attributes:
        spacing: (2,) float64 ``(sx, sy)``, mm per pixel along x (columns) and y (rows).
        offset: (2,) float64 ``(ox, oy)``, the pixel position of the mm origin.
    """

    spacing: np.ndarray
    offset: np.ndarray

    @property
    def sx(self) -> float:
        return float(self.spacing[0])

    @property
    def sy(self) -> float:
        return float(self.spacing[1])

    @property
    def mm_px(self) -> float:
        """Mean pixel spacing (mm per px), the scale of the smooth layers."""
        return float(np.mean(self.spacing))

    def to_px(self, p_mm: np.ndarray) -> np.ndarray:
        """Points (..., 2) from (x, y) mm to (x, y) px."""
        return np.asarray(p_mm) / self.spacing + self.offset

# ----------------------------------------------------------------------------------------------------
# rasterisation
# ----------------------------------------------------------------------------------------------------


def _window(points_px: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Pixel window ``(y0, y1, x0, x1)`` holding ``points_px`` (with a 1 px border), clipped to ``shape``."""
    h, w = shape
    x0 = max(int(math.floor(points_px[:, 0].min())) - 1, 0)
    x1 = min(int(math.ceil(points_px[:, 0].max())) + 2, w)
    y0 = max(int(math.floor(points_px[:, 1].min())) - 1, 0)
    y1 = min(int(math.ceil(points_px[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, y1, x0, x1


def _coverage_in(poly_px: np.ndarray, win: tuple[int, int, int, int], supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Area coverage (float32) of a polygon on the pixels of window ``(y0, y1, x0, x1)``, by supersampling.

    Only the polygon's own bounding box (within the window) is supersampled.
    """
    y0, y1, x0, x1 = win
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    poly_px = np.asarray(poly_px, dtype=np.float64)
    own = _window(poly_px, (y1, x1))
    if own is None:
        return out
    py0, py1, px0, px1 = max(own[0], y0), own[1], max(own[2], x0), own[3]
    if py1 <= py0 or px1 <= px0:
        return out
    ss = supersample
    buf = np.zeros(((py1 - py0) * ss, (px1 - px0) * ss), dtype=np.float32)
    # pixel (c, r) covers [c - 0.5, c + 0.5]; sub-pixel j of it has its centre at c - 0.5 + (j + 0.5) / ss
    sub = (poly_px - np.array([px0, py0]) + 0.5) * ss - 0.5
    pts = np.round(sub * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(buf, [pts], 1.0, lineType=cv2.LINE_8, shift=_SHIFT)
    if ss > 1:
        buf = cv2.resize(buf, (px1 - px0, py1 - py0), interpolation=cv2.INTER_AREA)
    out[py0 - y0:py1 - y0, px0 - x0:px1 - x0] = buf
    return out


def _polygon_patch(
    poly_px: np.ndarray, shape: tuple[int, int], supersample: int = _SUPERSAMPLE
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Area coverage of a polygon on the pixels of its bounding box: ``((rows, cols), coverage)``."""
    poly_px = np.asarray(poly_px, dtype=np.float64)
    win = _window(poly_px, shape)
    if win is None:
        return None
    return (slice(win[0], win[1]), slice(win[2], win[3])), _coverage_in(poly_px, win, supersample)


def polygon_coverage(poly_px: np.ndarray, shape: tuple[int, int], supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased mask of a polygon: the fraction of each pixel it covers.

    Args:
        poly_px: (M, 2) vertices in (x, y) pixels (pixel centres at integers).
        shape: (H, W) of the output.
        supersample: sub-pixels per pixel along each axis (coverage steps of ``1 / supersample**2``;
            edges are exact to about ``0.5 / supersample`` px).

    Returns:
        (H, W) float32 in [0, 1].
    """
    out = np.zeros(shape, dtype=np.float32)
    res = _polygon_patch(poly_px, shape, supersample)
    if res is not None:
        sl, cov = res
        out[sl] = cov
    return out


def _add_poly(layer: np.ndarray, poly_px: np.ndarray, value: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
    res = _polygon_patch(poly_px, layer.shape)
    if res is not None:
        sl, cov = res
        layer[sl] += value * cov
    return res


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma_px`` (float32)."""
    h, w = shape
    down = max(1, int(sigma_px // 2))
    hs, ws = h // down + 2, w // down + 2
    f = rng.standard_normal((hs, ws), dtype=np.float32)
    f = cv2.GaussianBlur(f, (0, 0), sigmaX=max(sigma_px / down, 0.3), borderType=cv2.BORDER_REFLECT)
    f -= f.mean()
    f /= max(float(f.std()), 1e-6)
    if down > 1:
        f = cv2.resize(f, (ws * down, hs * down), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(f[:h, :w])


def _body_profile(u: np.ndarray, centre: float, half_width: float, edge_mm: float = 1.5) -> np.ndarray:
    """Relative thickness ``sqrt(1 - q^2)`` of an elliptic cross-section, skin edges softened over ``edge_mm``."""
    z = 1.0 - ((u - centre) / half_width) ** 2
    delta = 2.0 * edge_mm / half_width
    return np.sqrt(0.5 * (z + np.sqrt(z * z + delta * delta)))


def _soft_ellipse(layer: np.ndarray, cx: float, cy: float, ax: float, ay: float, ang: float, value: float) -> None:
    """Add ``value`` times a soft-edged ellipse (px) to ``layer`` on its bounding box."""
    h, w = layer.shape
    r = max(ax, ay) * 1.3
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(ang), math.sin(ang)
    q = ((c * dx + s * dy) / ax) ** 2 + ((-s * dx + c * dy) / ay) ** 2
    layer[y0:y1, x0:x1] += value * (1.0 - _smoothstep((q - 0.6) / 0.8))


def _bilinear(img: np.ndarray, pts_px: np.ndarray) -> np.ndarray:
    h, w = img.shape
    x = np.clip(pts_px[:, 0], 0, w - 1)
    y = np.clip(pts_px[:, 1], 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    return (
        img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x1] * fx * (1 - fy) + img[y1, x0] * (1 - fx) * fy
        + img[y1, x1] * fx * fy
    )


def _near_mask(metal: np.ndarray, radius_px: float) -> np.ndarray:
    """1 where a pixel is within ``radius_px`` of metal (coverage >= 0.5), else 0 (float32)."""
    inv = (metal < 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inv, cv2.DIST_L2, 5)
    return (dist <= radius_px).astype(np.float32)
