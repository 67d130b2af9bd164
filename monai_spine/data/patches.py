"""Vertebra geometry and image patches for the probabilistic spatial regressor (Al Arif et al. 2017).

Pure numpy / OpenCV; no torch.

Geometry conventions (see :mod:`monai_spine.data.keypoints`):

* Image points are ``(x, y)`` pixels, x = column, y = row, pixel centres at integer coordinates.
* A vertebra's four body corners, in the scheme's ``corner_indices`` order, are
  (top-left, top-right, bottom-left, bottom-right) of the displayed vertebra: ``(AS, PS, AI, PI)`` for
  ``lateral5`` (anterior on the left), ``(TL, TR, BL, BR)`` for ``ap4``.
* Angles are in degrees in the image frame (x right, y **down**): a direction at angle ``a`` is
  ``(cos a, sin a)``, so a positive angle turns clockwise on the display.
* A patch is a square of ``side_px`` image pixels centred at ``(cx, cy)`` whose ``u`` axis points
  along ``angle_deg``, resampled to ``out_size x out_size``. Its 3x3 affine ``A`` maps homogeneous
  patch pixels ``(u, v, 1)`` (pixel centres at integers, ``0 .. out_size - 1``) to image pixels
  ``(x, y, 1)``; the patch centre ``u = v = (out_size - 1) / 2`` maps to ``(cx, cy)`` and the patch
  covers ``[-0.5, out_size - 0.5]`` in patch pixels, i.e. exactly ``side_px`` image pixels.

Vertebra geometry from its four corners (:func:`vertebra_geometry`):

* centre = mean of the 4 corners;
* width = mean length of the two endplates (TL->TR, BL->BR); height = mean length of the two
  walls (TL->BL, TR->BR); size = (width + height) / 2;
* orientation = angle of the mean unit endplate direction (TL->TR and BL->BR), so an upright
  vertebra has angle 0.

Ground-truth corner maps of patches (the encoder) and their decoding back into corners live in the
corner-map codec, :mod:`monai_spine.codecs.corner_maps`.

Patch sampling (:func:`sample_patch_params`). The paper: "a set of uniformly distributed grid
points are generated using the manually clicked vertebrae centers. From each point, multiple image
patches are extracted with different scales and rotations." Here: an ``n x n`` grid of points
``+-half_extent_frac * size`` around the centre (in the vertebra frame), and for each point every
scale (patch side = scale * vertebra size) and every rotation (added to the vertebra orientation).
Scales are relative to the vertebra size **in mm** and converted to pixels with the spacing, so the
same settings work at any resolution; when the spacing is unknown the size is taken in pixels and
an :class:`UnknownSpacingWarning` says so.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np

__all__ = [
    "UnknownSpacingWarning",
    "VertebraGeometry",
    "vertebra_geometry",
    "orientation_from_centres",
    "sample_patch_params",
    "patch_params",
    "patch_affine",
    "patch_footprint",
    "extract_patch",
    "map_points_to_patch",
    "map_points_to_image",
    "normalize_patch",
    "image_2d",
]


class UnknownSpacingWarning(UserWarning):
    """The pixel spacing is unknown, so sizes meant in mm are taken in pixels."""


class VertebraGeometry(NamedTuple):
    """Centre ``(..., 2)``, width, height, size ``(...)`` (units of the input) and orientation (deg)."""

    centre: np.ndarray
    width: np.ndarray
    height: np.ndarray
    size: np.ndarray
    angle_deg: np.ndarray


def vertebra_geometry(corners: np.ndarray) -> VertebraGeometry:
    """Centre, width, height, size and orientation of vertebrae from their four corners.

    Args:
        corners: ``(..., 4, 2)`` corners in (top-left, top-right, bottom-left, bottom-right) order,
            ``(x, y)``; px in px out (pass mm coordinates to get mm sizes).

    Returns:
        :class:`VertebraGeometry`; width = mean endplate length, height = mean wall length,
        size = (width + height) / 2, angle = orientation of the mean unit endplate direction in
        degrees (0 = upright, positive = clockwise on the display). NaN where a corner is NaN.
    """
    c = np.asarray(corners, dtype=np.float64)
    if c.ndim < 2 or c.shape[-2:] != (4, 2):
        raise ValueError(f"corners must have shape (..., 4, 2), got {c.shape}")
    tl, tr, bl, br = c[..., 0, :], c[..., 1, :], c[..., 2, :], c[..., 3, :]
    top, bottom = tr - tl, br - bl
    left, right = bl - tl, br - tr
    ltop, lbot = np.linalg.norm(top, axis=-1), np.linalg.norm(bottom, axis=-1)
    width = 0.5 * (ltop + lbot)
    height = 0.5 * (np.linalg.norm(left, axis=-1) + np.linalg.norm(right, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        axis = top / ltop[..., None] + bottom / lbot[..., None]
    angle = np.degrees(np.arctan2(axis[..., 1], axis[..., 0]))
    return VertebraGeometry(c.mean(axis=-2), width, height, 0.5 * (width + height), angle)


def orientation_from_centres(centres_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertebra orientation and centre-to-centre distance from the centres alone (test time).

    The spine axis at vertebra ``i`` is the direction from its upper to its lower neighbour (one
    side only at the ends); the endplate direction is that axis turned by -90 degrees, so a
    vertical spine gives angle 0.

    Args:
        centres_px: ``(V, 2)`` centres, top to bottom, ``V >= 2``.

    Returns:
        ``(angle_deg (V,), distance_px (V,))``: orientation as in :func:`vertebra_geometry` and the
        mean distance to the neighbouring centres (a size cue for :func:`sample_patch_params`).
    """
    c = np.asarray(centres_px, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] < 2:
        raise ValueError(f"centres_px must have shape (V >= 2, 2), got {c.shape}")
    nxt = np.concatenate([c[1:], c[-1:]], axis=0)
    prv = np.concatenate([c[:1], c[:-1]], axis=0)
    axis = nxt - prv
    angle = np.degrees(np.arctan2(-axis[:, 0], axis[:, 1]))  # endplate = (ay, -ax)
    d = np.linalg.norm(np.diff(c, axis=0), axis=1)
    dist = np.empty(len(c))
    dist[0], dist[-1] = d[0], d[-1]
    if len(c) > 2:
        dist[1:-1] = 0.5 * (d[:-1] + d[1:])
    return angle, dist


def _rotation(angle_deg: np.ndarray | float) -> np.ndarray:
    a = np.radians(np.asarray(angle_deg, dtype=np.float64))
    cos, sin = np.cos(a), np.sin(a)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def patch_affine(cx: float, cy: float, side_px: float, angle_deg: float, out_size: int = 64) -> np.ndarray:
    """3x3 affine from patch pixels ``(u, v, 1)`` to image pixels ``(x, y, 1)``.

    Args:
        cx, cy: patch centre in image px.
        side_px: side of the (square) patch in image px.
        angle_deg: direction of the patch ``u`` axis in the image (module conventions).
        out_size: patch side in patch pixels.

    Returns:
        ``(3, 3)`` float64 ``[[s cos, -s sin, tx], [s sin, s cos, ty], [0, 0, 1]]`` with
        ``s = side_px / out_size`` and the patch centre ``(out_size - 1) / 2`` mapped to ``(cx, cy)``.
    """
    if not side_px > 0 or out_size < 1:
        raise ValueError(f"side_px and out_size must be positive, got {side_px}, {out_size}")
    s = float(side_px) / out_size
    a = np.radians(angle_deg)
    lin = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c0 = (out_size - 1) / 2.0
    aff = np.eye(3)
    aff[:2, :2] = lin
    aff[:2, 2] = np.array([cx, cy]) - lin @ np.array([c0, c0])
    return aff


def _check_affine(affine: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape[-2:] != (3, 3):
        raise ValueError(f"affine must have shape (..., 3, 3), got {a.shape}")
    return a


def map_points_to_image(points_patch: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Patch pixels ``(..., 2)`` to image pixels with the patch-to-image ``affine`` (3, 3)."""
    a = _check_affine(affine)
    p = np.asarray(points_patch, dtype=np.float64)
    return p @ a[:2, :2].T + a[:2, 2]


def map_points_to_patch(points_px: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Image pixels ``(..., 2)`` to patch pixels (inverse of :func:`map_points_to_image`)."""
    a = _check_affine(affine)
    inv = np.linalg.inv(a)
    p = np.asarray(points_px, dtype=np.float64)
    return p @ inv[:2, :2].T + inv[:2, 2]


def patch_footprint(affine: np.ndarray, out_size: int = 64) -> np.ndarray:
    """Image-px corners ``(4, 2)`` of the patch area ``[-0.5, out_size - 0.5]^2``."""
    e = np.array([[-0.5, -0.5], [out_size - 0.5, -0.5], [-0.5, out_size - 0.5], [out_size - 0.5, out_size - 0.5]])
    return map_points_to_image(e, affine)


def image_2d(image: Any, where: str = "image") -> np.ndarray:
    """``(H, W)`` float32 view of a one-channel film given as ``(H, W)`` or ``(1, H, W)`` (array or tensor).

    Raises:
        ValueError: another shape (``where`` names the caller in the message).
    """
    img = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)  # a torch tensor
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"{where}: image must be (H, W) or (1, H, W), got shape {np.shape(image)}")
    return img.astype(np.float32, copy=False)


_BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101}


def extract_patch(
    image: np.ndarray,
    affine: np.ndarray,
    out_size: int = 64,
    antialias: bool = True,
    border: str = "constant",
    fill: float = 0.0,
) -> np.ndarray:
    """Resample the patch of ``image`` described by ``affine`` (bilinear, ``cv2.warpAffine``).

    Args:
        image: ``(H, W)`` or ``(1, H, W)`` image.
        affine: ``(3, 3)`` patch-to-image affine (:func:`patch_affine`).
        out_size: patch side in pixels.
        antialias: when the patch shrinks the image (``s`` image px per patch px > 1), blur a
            region around the patch with a Gaussian of sigma ``(s - 1) / 2`` first, so bilinear
            sampling does not alias. The blur is symmetric: it does not move structures.
        border: outside the image: ``"constant"`` (``fill``), ``"replicate"`` or ``"reflect"``.
        fill: value outside the image for ``border="constant"``.

    Returns:
        ``(out_size, out_size)`` float32 patch, ``patch[v, u]`` = image at ``affine @ (u, v, 1)``.
    """
    img = image_2d(image, "extract_patch")
    a = _check_affine(affine).copy()
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
    s = float(np.sqrt(abs(np.linalg.det(a[:2, :2]))))
    if antialias and s > 1.0:
        sigma = 0.5 * (s - 1.0)
        margin = int(np.ceil(4 * sigma)) + 2
        fp = patch_footprint(a, out_size)
        h, w = img.shape
        x0 = int(np.clip(np.floor(fp[:, 0].min()) - margin, 0, w))
        x1 = int(np.clip(np.ceil(fp[:, 0].max()) + margin + 1, 0, w))
        y0 = int(np.clip(np.floor(fp[:, 1].min()) - margin, 0, h))
        y1 = int(np.clip(np.ceil(fp[:, 1].max()) + margin + 1, 0, h))
        if x1 <= x0 or y1 <= y0:  # the patch lies entirely outside the image
            return np.full((out_size, out_size), fill if border == "constant" else 0.0, np.float32)
        roi = cv2.GaussianBlur(np.ascontiguousarray(img[y0:y1, x0:x1]), (0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT_101)
        a[:2, 2] -= (x0, y0)
        img = roi
    out = cv2.warpAffine(
        img, a[:2], (out_size, out_size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=_BORDERS[border], borderValue=float(fill),
    )
    return out.astype(np.float32, copy=False)


def normalize_patch(patch: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Zero-mean, unit-std intensities per patch (a flat patch becomes all zeros). ``(..., S, S)``."""
    p = np.asarray(patch, dtype=np.float32)
    mean = p.mean(axis=(-2, -1), keepdims=True)
    std = p.std(axis=(-2, -1), keepdims=True)
    return ((p - mean) / np.maximum(std, eps)).astype(np.float32)


def _axis_values(values: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Jitter each value uniformly within half the smallest gap of the set (no jitter for one value)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if rng is None or v.size < 2:
        return v
    gap = np.min(np.diff(np.sort(v)))
    return v + rng.uniform(-0.5, 0.5, v.shape) * gap


def sample_patch_params(
    centre_px: Sequence[float],
    vertebra_size_mm: float,
    spacing_mm: Sequence[float] | None,
    grid: tuple[int, float] = (3, 0.15),
    scales: Sequence[float] = (1.6, 2.0, 2.4),
    rotations_deg: Sequence[float] = (-10.0, 0.0, 10.0),
    orientation_deg: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Patch centres, sides and angles around one vertebra.

    Args:
        centre_px: ``(x, y)`` vertebra centre in image px (a clicked centre at test time).
        vertebra_size_mm: vertebra size in mm (``(width + height) / 2``, see
            :func:`vertebra_geometry`); **in px when** ``spacing_mm`` is None.
        spacing_mm: ``(sx, sy)`` mm per px, or None when unknown (an :class:`UnknownSpacingWarning`
            is issued and ``vertebra_size_mm`` is read as px). Patches are square in pixels; for
            anisotropic spacing the size is converted with the geometric mean ``sqrt(sx * sy)``.
        grid: ``(n, half_extent_frac)``: ``n x n`` points uniformly spread over
            ``+-half_extent_frac * size`` around the centre, along the vertebra's own axes.
        scales: patch side as multiples of the vertebra size.
        rotations_deg: patch rotations added to ``orientation_deg``.
        orientation_deg: vertebra orientation (0 = upright; :func:`vertebra_geometry` or
            :func:`orientation_from_centres`).
        rng: when given, grid offsets, scales and rotations are each jittered uniformly within half
            the gap between neighbouring values (random augmentation); None = the regular grid.

    Returns:
        ``(P, 4)`` float64 array of ``(cx, cy, side_px, angle_deg)`` with ``P = n * n * len(scales)
        * len(rotations_deg)``, ordered grid point (row-major), then scale, then rotation.
    """
    c = np.asarray(centre_px, dtype=np.float64).reshape(-1)
    if c.shape != (2,) or not np.all(np.isfinite(c)):
        raise ValueError(f"centre_px must be a finite (x, y), got {centre_px!r}")
    if not (np.isfinite(vertebra_size_mm) and vertebra_size_mm > 0):
        raise ValueError(f"vertebra_size_mm must be positive, got {vertebra_size_mm!r}")
    if spacing_mm is None:
        warnings.warn(
            "pixel spacing unknown: patch sizes are relative to the vertebra size in pixels",
            UnknownSpacingWarning, stacklevel=2,
        )
        size_px = float(vertebra_size_mm)
    else:
        sp = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
        if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(f"spacing_mm must be two positive numbers (sx, sy) or None, got {spacing_mm!r}")
        size_px = float(vertebra_size_mm) / float(np.sqrt(sp[0] * sp[1]))
    n, ext = int(grid[0]), float(grid[1])
    if n < 1 or ext < 0:
        raise ValueError(f"grid must be (n >= 1, half_extent_frac >= 0), got {grid!r}")
    if len(scales) == 0 or min(scales) <= 0 or len(rotations_deg) == 0:
        raise ValueError(f"need positive scales and at least one rotation, got {scales!r}, {rotations_deg!r}")
    offs = np.linspace(-ext, ext, n) if n > 1 else np.zeros(1)
    gu, gv = np.meshgrid(offs, offs)  # row-major: v outer, u inner
    local = np.stack([gu.ravel(), gv.ravel()], -1) * size_px
    if rng is not None and n > 1:
        local = local + rng.uniform(-0.5, 0.5, local.shape) * (offs[1] - offs[0]) * size_px
    pts = c + local @ _rotation(orientation_deg).T
    rows = []
    for p in pts:
        for sc in _axis_values(scales, rng):
            for rot in _axis_values(rotations_deg, rng):
                rows.append((p[0], p[1], sc * size_px, orientation_deg + rot))
    return np.asarray(rows, dtype=np.float64)


def patch_params(
    centres_px: np.ndarray,
    orientations_deg: np.ndarray,
    sizes_px: np.ndarray,
    grid: tuple[int, float] = (3, 0.15),
    scales: Sequence[float] = (1.6, 2.0, 2.4),
    rotations_deg: Sequence[float] = (-10.0, 0.0, 10.0),
    out_size: int = 64,
    rng: np.random.Generator | None = None,
    num_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch affines ``(P, 3, 3)`` and owners ``(P,)`` around every centre (grid of :func:`sample_patch_params`).

    Sizes are in px (they come from the image itself), so the spacing plays no part. With ``rng``
    the grid, scales and rotations are jittered, and ``num_samples`` (if set) draws that many patches
    without replacement from all of them (all when fewer).
    """
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    ang = np.broadcast_to(np.asarray(orientations_deg, dtype=np.float64), (len(c),))
    size = np.broadcast_to(np.asarray(sizes_px, dtype=np.float64), (len(c),))
    rows, owners = [], []
    with warnings.catch_warnings():  # sizes are in px on purpose
        warnings.simplefilter("ignore", UnknownSpacingWarning)
        for v in range(len(c)):
            p = sample_patch_params(c[v], float(size[v]), None, grid=grid, scales=scales, rotations_deg=rotations_deg,
                                    orientation_deg=float(ang[v]), rng=rng)
            rows.append(p)
            owners.append(np.full(len(p), v, np.int64))
    if not rows:
        return np.zeros((0, 3, 3)), np.zeros(0, np.int64)
    params, owner = np.concatenate(rows), np.concatenate(owners)
    if num_samples is not None and rng is not None and num_samples < len(params):
        pick = np.sort(rng.choice(len(params), size=int(num_samples), replace=False))
        params, owner = params[pick], owner[pick]
    affines = np.stack([patch_affine(cx, cy, side, a, out_size) for cx, cy, side, a in params])
    return affines, owner
