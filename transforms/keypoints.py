"""Keypoint geometry shared by the keypoint transforms: crop <-> image pixels, pixels <-> fractions.

All transforms follow the convention of :mod:`monai_spine.data.keypoints`: keypoints are
``(..., K, 2)`` float arrays in ``(x, y)`` pixels with pixel centres at integer coordinates (pixel
``(c, r)`` covers ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``), visibility masks are ``(..., K)``
bool, images are channel-first ``(C, H, W)`` and ``spacing_mm = (sx, sy)`` (NaN when unknown).
A full-image sample has ``keypoints_px`` of shape ``(N, K, 2)``; a per-vertebra sample ``(K, 2)``.
Numpy arrays and torch tensors are both accepted and the same type is returned.

Sizes given as ``spatial_size`` are ``(H, W)`` (rows, columns) like ``image.shape[1:]`` and MONAI;
sizes given as ``size_wh`` are ``(W, H)``.

The transforms that move keypoints live beside this module: :mod:`monai_spine.transforms.flip`
(horizontal flip with label swap) and :mod:`monai_spine.transforms.crop` (the spacing-aware vertebra
crop); here are the crop geometry (:func:`crop_to_image_px`, :func:`image_to_crop_px`,
:func:`frac_to_image_px`) and the pixel <-> fraction transforms (:class:`NormalizeKeypointsd`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy, ensure_tuple

from monai_spine.data.keypoints import frac_to_px, px_to_frac

__all__ = [
    "crop_to_image_px",
    "image_to_crop_px",
    "frac_to_image_px",
    "px_to_frac_like",
    "frac_to_px_like",
    "NormalizeKeypoints",
    "DenormalizeKeypoints",
    "NormalizeKeypointsd",
    "DenormalizeKeypointsd",
]


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _float_like(points: Any, name: str = "keypoints") -> Any:
    """Points as a floating numpy array or tensor (integer input becomes float64/float32)."""
    if isinstance(points, torch.Tensor):
        return points if points.is_floating_point() else points.float()
    arr = np.asarray(points)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise ValueError(f"{name}: expected (..., 2) points in (x, y), got shape {arr.shape}")
    return arr


def _check_points(points: Any, name: str) -> None:
    shape = tuple(points.shape)
    if len(shape) < 1 or shape[-1] != 2:
        raise ValueError(f"{name}: expected (..., 2) points in (x, y), got shape {shape}")


def _spatial_size(spatial_size: Sequence[int], name: str = "spatial_size") -> tuple[int, int]:
    size = tuple(int(s) for s in ensure_tuple(spatial_size))
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be (H, W) with positive ints, got {spatial_size!r}")
    return size  # type: ignore[return-value]


def _known_spacing(spacing_mm: Any) -> np.ndarray | None:
    """``(sx, sy)`` float64 when known (finite, > 0), ``None`` when unknown (None/NaN/zero)."""
    if spacing_mm is None:
        return None
    sp = np.asarray(convert_to_numpy(spacing_mm), dtype=np.float64).reshape(-1)
    if sp.shape != (2,):
        raise ValueError(f"spacing_mm must be (sx, sy), got shape {sp.shape}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        return None
    return sp


def _keys_present(d: Mapping, keys: Sequence[Hashable]) -> list[Hashable]:
    return [k for k in keys if k in d]

def _compose_meta_affine(img: MetaTensor, mat_idx: np.ndarray) -> None:
    """``img.affine = img.affine @ mat_idx`` (promoted to the affine's rank), in place."""
    aff = img.affine
    rank = aff.shape[-1] - 1
    img.affine = aff @ torch.as_tensor(to_affine_nd(rank, mat_idx), dtype=aff.dtype, device=aff.device)


# ----------------------------------------------------------------------------------------------
# crop geometry helpers
# ----------------------------------------------------------------------------------------------


def _apply_affine_2d(points: Any, mat: Any) -> Any:
    """``(..., K, 2)`` points through ``(..., 3, 3)`` homogeneous affines (batch dims broadcast)."""
    if isinstance(points, torch.Tensor):
        pts = points if points.is_floating_point() else points.float()
        m = torch.as_tensor(mat, dtype=pts.dtype, device=pts.device)
        lin, t = m[..., :2, :2], m[..., :2, 2]
        if pts.ndim == 1:
            return (lin @ pts[..., None])[..., 0] + t
        return pts @ lin.transpose(-1, -2) + t[..., None, :]
    pts = np.asarray(points)
    out_dtype = pts.dtype if pts.dtype.kind == "f" else np.float64
    m = np.asarray(convert_to_numpy(mat), dtype=np.float64)
    lin, t = m[..., :2, :2], m[..., :2, 2]
    p = pts.astype(np.float64)
    if p.ndim == 1:
        res = (lin @ p[..., None])[..., 0] + t
    else:
        res = p @ np.swapaxes(lin, -1, -2) + t[..., None, :]
    return res.astype(out_dtype, copy=False)


def crop_to_image_px(points_crop_px: Any, crop_to_image: Any) -> Any:
    """Map crop pixel coordinates to image pixel coordinates.

    Args:
        points_crop_px: ``(..., K, 2)`` (or ``(2,)``) ``(x, y)`` points in crop pixels.
        crop_to_image: ``(3, 3)`` (or batched ``(B, 3, 3)``) affine taking homogeneous crop pixels
            ``(u, v, 1)`` to image pixels ``(x, y, 1)``, as stored by :class:`VertebraCropd`.

    Returns:
        Image-pixel points of the input's shape and type (numpy float / torch of the input dtype).
    """
    _check_points(points_crop_px, "points_crop_px")
    return _apply_affine_2d(points_crop_px, crop_to_image)


def image_to_crop_px(points_px: Any, crop_to_image: Any) -> Any:
    """Inverse of :func:`crop_to_image_px`: image pixels to crop pixels."""
    _check_points(points_px, "points_px")
    inv = np.linalg.inv(np.asarray(convert_to_numpy(crop_to_image), dtype=np.float64))
    return _apply_affine_2d(points_px, inv)


def frac_to_image_px(points_frac: Any, crop_to_image: Any, spatial_size: Sequence[int]) -> Any:
    """Map fractions of a crop (``(x_crop + 0.5) / W``, ``(y_crop + 0.5) / H``) to image pixels.

    Args:
        points_frac: ``(..., K, 2)`` fractional ``(x, y)`` coordinates (network outputs).
        crop_to_image: ``(3, 3)`` or ``(B, 3, 3)`` crop-to-image affine.
        spatial_size: crop size ``(H, W)`` (rows, columns), e.g. ``(224, 448)``.

    Returns:
        Image-pixel ``(x, y)`` points, same shape and type as ``points_frac``.
    """
    h, w = _spatial_size(spatial_size)
    _check_points(points_frac, "points_frac")
    return _apply_affine_2d(frac_to_px(_float_like(points_frac, "points_frac"), (w, h)), crop_to_image)


def px_to_frac_like(points_px: Any, size_wh: Sequence[float]) -> Any:
    """:func:`monai_spine.data.keypoints.px_to_frac` keeping the input's float dtype/type."""
    pts = _float_like(points_px)
    res = px_to_frac(pts, size_wh)
    return res if isinstance(pts, torch.Tensor) else res.astype(pts.dtype, copy=False)


def frac_to_px_like(points_frac: Any, size_wh: Sequence[float]) -> Any:
    """:func:`monai_spine.data.keypoints.frac_to_px` keeping the input's float dtype/type."""
    pts = _float_like(points_frac)
    res = frac_to_px(pts, size_wh)
    return res if isinstance(pts, torch.Tensor) else res.astype(pts.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# pixels <-> fractions
# ----------------------------------------------------------------------------------------------


class NormalizeKeypoints(Transform):
    """Array transform: pixels to fractions, ``(x + 0.5) / W``, ``(y + 0.5) / H``.

    Args:
        spatial_size: ``(H, W)`` of the image or crop (may instead be given per call).
    """

    backend = [np.ndarray, torch.Tensor]

    def __init__(self, spatial_size: Sequence[int] | None = None) -> None:
        self.spatial_size = None if spatial_size is None else _spatial_size(spatial_size)

    def _size_wh(self, spatial_size: Sequence[int] | None) -> tuple[int, int]:
        size = self.spatial_size if spatial_size is None else _spatial_size(spatial_size)
        if size is None:
            raise ValueError(f"{type(self).__name__} needs spatial_size (H, W)")
        return size[1], size[0]

    def __call__(self, points_px: Any, spatial_size: Sequence[int] | None = None) -> Any:
        _check_points(points_px, "points_px")
        return px_to_frac_like(points_px, self._size_wh(spatial_size))


class DenormalizeKeypoints(NormalizeKeypoints):
    """Array transform: fractions to pixels, ``x = x_frac * W - 0.5``, ``y = y_frac * H - 0.5``."""

    def __call__(self, points_frac: Any, spatial_size: Sequence[int] | None = None) -> Any:
        _check_points(points_frac, "points_frac")
        return frac_to_px_like(points_frac, self._size_wh(spatial_size))


class NormalizeKeypointsd(MapTransform):
    """Dictionary wrapper of :class:`NormalizeKeypoints`: pixel keypoints to fractions.

    The size ``(H, W)`` is, in order: ``spatial_size``; ``d[spatial_size_key]`` (``(H, W)``, like
    ``image.shape[1:]``); the last two dimensions of ``d[image_key]``.

    Args:
        keys: keypoint keys ``(..., 2)``.
        spatial_size: fixed ``(H, W)``, or None.
        spatial_size_key: key of an ``(H, W)`` entry, or None.
        image_key: image whose shape gives the size, or None.
        output_keys: where to write the results (default: in place), one per key.
        allow_missing_keys: skip absent keys instead of raising ``KeyError``.
    """

    backend = NormalizeKeypoints.backend
    _array_cls: type[NormalizeKeypoints] = NormalizeKeypoints

    def __init__(
        self,
        keys: KeysCollection = "keypoints_px",
        spatial_size: Sequence[int] | None = None,
        spatial_size_key: str | None = None,
        image_key: str | None = "image",
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = self._array_cls(spatial_size)
        self.spatial_size_key = spatial_size_key
        self.image_key = image_key
        self.output_keys = self.keys if output_keys is None else ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {self.output_keys} must match keys {self.keys} one to one")

    def _size(self, d: Mapping) -> Sequence[int]:
        if self.converter.spatial_size is not None:
            return self.converter.spatial_size
        if self.spatial_size_key is not None and self.spatial_size_key in d:
            return tuple(int(s) for s in convert_to_numpy(d[self.spatial_size_key]).reshape(-1))
        if self.image_key is not None and self.image_key in d:
            return tuple(d[self.image_key].shape[-2:])
        raise KeyError(
            f"{type(self).__name__}: no spatial_size, no {self.spatial_size_key!r} "
            f"and no {self.image_key!r} in the sample"
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        size = None
        for key, out_key in self.key_iterator(d, self.output_keys):
            size = self._size(d) if size is None else size
            d[out_key] = self.converter(d[key], size)
        return d


class DenormalizeKeypointsd(NormalizeKeypointsd):
    """Dictionary wrapper of :class:`DenormalizeKeypoints`: fractional keypoints to pixels.

    Same arguments as :class:`NormalizeKeypointsd` (default ``keys="keypoints_frac"``).
    """

    _array_cls = DenormalizeKeypoints

    def __init__(
        self,
        keys: KeysCollection = "keypoints_frac",
        spatial_size: Sequence[int] | None = None,
        spatial_size_key: str | None = None,
        image_key: str | None = "image",
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, spatial_size, spatial_size_key, image_key, output_keys, allow_missing_keys)
