"""Keypoint-aware dictionary transforms: horizontal flip with label swap, vertebra crop, px <-> frac.

All transforms follow the convention of :mod:`monai_spine.data.keypoints`: keypoints are
``(..., K, 2)`` float arrays in ``(x, y)`` pixels with pixel centres at integer coordinates (pixel
``(c, r)`` covers ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``), visibility masks are ``(..., K)``
bool, images are channel-first ``(C, H, W)`` and ``spacing_mm = (sx, sy)`` (NaN when unknown).
A full-image sample has ``keypoints_px`` of shape ``(N, K, 2)``; a per-vertebra sample ``(K, 2)``.
Numpy arrays and torch tensors are both accepted and the same type is returned.

Sizes given as ``spatial_size`` are ``(H, W)`` (rows, columns) like ``image.shape[1:]`` and MONAI;
sizes given as ``size_wh`` are ``(W, H)``.

Inversion:

* :class:`FlipKeypointsd` / :class:`RandFlipKeypointsd` use MONAI's ``TraceableTransform``
  machinery: for every key one entry is pushed (``push_transform``) with the image width and
  scheme in ``extra_info``. A MetaTensor keeps it in ``applied_operations`` (and its affine is
  updated like MONAI's ``Flip``); a numpy array or plain tensor keeps it in the dictionary under
  ``f"{key}_transforms"`` (MONAI's dictionary fallback). ``inverse()`` pops these entries and flips
  back, so tracing must be on (MONAI's default; ``MONAI_TRACE_TRANSFORM=0`` disables it).
* :class:`VertebraCropd` / :class:`RandVertebraCropd` push nothing: the crop geometry is stored in the sample
  (``crop_to_image``) and ``inverse()`` maps keypoints from the crop back to image pixels. The
  cropped image is not un-cropped.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform, Transform
from monai.utils import TraceKeys, convert_to_dst_type, convert_to_numpy, ensure_tuple

from monai_spine.data.keypoints import frac_to_px, get_scheme, px_to_frac

__all__ = [
    "flip_image",
    "flip_keypoints_px",
    "flip_box_px",
    "permute_labels",
    "crop_to_image_px",
    "image_to_crop_px",
    "frac_to_image_px",
    "px_to_frac_like",
    "frac_to_px_like",
    "FlipKeypoints",
    "FlipKeypointsd",
    "RandFlipKeypointsd",
    "VertebraCrop",
    "VertebraCropd",
    "RandVertebraCropd",
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


# ----------------------------------------------------------------------------------------------
# flip
# ----------------------------------------------------------------------------------------------


def flip_image(image: Any) -> Any:
    """Mirror a channel-first image along its last (x / column) axis; numpy or torch."""
    if isinstance(image, torch.Tensor):
        return torch.flip(image, dims=(-1,))
    return np.ascontiguousarray(np.asarray(image)[..., ::-1])


def permute_labels(values: Any, perm: Sequence[int] | None, axis: int = -1) -> Any:
    """Reorder point labels: ``out[..., j] = values[..., perm[j]]`` along ``axis`` (copy)."""
    if perm is None:
        return values.clone() if isinstance(values, torch.Tensor) else np.array(values, copy=True)
    idx = [slice(None)] * values.ndim
    perm_np = np.asarray(perm)
    idx[axis] = torch.as_tensor(perm_np, device=values.device) if isinstance(values, torch.Tensor) else perm_np
    return values[tuple(idx)]


def flip_keypoints_px(keypoints_px: Any, width_px: float, perm: Sequence[int] | None = None) -> Any:
    """Horizontal flip of ``(..., K, 2)`` pixel keypoints in an image ``width_px`` wide.

    ``x' = W - 1 - x`` (mirror about the centre of the pixel row), ``y' = y``; when ``perm`` is
    given, labels are reordered along the K axis with ``out[..., j, :] = flipped[..., perm[j], :]``.
    """
    kp = _float_like(keypoints_px)
    if perm is not None:
        if kp.ndim < 2:
            raise ValueError(f"keypoints: expected (..., K, 2) to permute labels, got shape {tuple(kp.shape)}")
        if kp.shape[-2] != len(perm):
            raise ValueError(f"keypoints: {kp.shape[-2]} points but the flip permutation has {len(perm)}")
        out = permute_labels(kp, perm, axis=-2)
    else:
        out = kp.clone() if isinstance(kp, torch.Tensor) else kp.copy()
    out[..., 0] = (float(width_px) - 1.0) - out[..., 0]
    return out


def flip_box_px(box_px: Any, width_px: float) -> Any:
    """Horizontal flip of ``(..., 4)`` boxes ``(x0, y0, x1, y1)``: ``(W-1-x1, y0, W-1-x0, y1)``."""
    box = box_px if isinstance(box_px, torch.Tensor) else np.asarray(box_px, dtype=np.float64)
    if box.shape[-1] != 4:
        raise ValueError(f"box: expected (..., 4) as (x0, y0, x1, y1), got shape {tuple(box.shape)}")
    out = box.clone() if isinstance(box, torch.Tensor) else box.copy()
    w1 = float(width_px) - 1.0
    out[..., 0] = w1 - box[..., 2]
    out[..., 2] = w1 - box[..., 0]
    return out


def _flip_affine_idx(width_px: int) -> np.ndarray:
    """Index-space (row, col) affine of a flip along the columns, as MONAI's ``Flip`` records it."""
    return np.array([[1.0, 0.0, 0.0], [0.0, -1.0, width_px - 1.0], [0.0, 0.0, 1.0]])


def _compose_meta_affine(img: MetaTensor, mat_idx: np.ndarray) -> None:
    """``img.affine = img.affine @ mat_idx`` (promoted to the affine's rank), in place."""
    aff = img.affine
    rank = aff.shape[-1] - 1
    img.affine = aff @ torch.as_tensor(to_affine_nd(rank, mat_idx), dtype=aff.dtype, device=aff.device)


class FlipKeypoints(Transform):
    """Array transform: horizontal flip of keypoints with the scheme's label swap.

    Args:
        scheme: scheme name (``"lateral5"``, ``"ap4"``) whose ``flip_permutation`` reorders the K
            points (e.g. lateral ``AS<->PS``, ``AI<->PI``); ``None`` flips coordinates only.
        width_px: image width W in pixels (may instead be given per call).

    ``__call__(keypoints_px, width_px=None, visible=None)`` returns the flipped ``(..., K, 2)``
    keypoints (``x' = W - 1 - x``), or ``(keypoints, visible)`` when a ``(..., K)`` mask is given
    (the mask is permuted the same way). Example: W = 10, lateral5, AS at (2, 3) becomes PS at (7, 3).
    """

    backend = [np.ndarray, torch.Tensor]

    def __init__(self, scheme: str | None = None, width_px: float | None = None) -> None:
        self.perm = None if scheme is None else get_scheme(scheme).flip_permutation
        self.width_px = width_px

    def __call__(self, keypoints_px: Any, width_px: float | None = None, visible: Any = None) -> Any:
        w = self.width_px if width_px is None else width_px
        if w is None:
            raise ValueError("FlipKeypoints needs the image width (width_px)")
        out = flip_keypoints_px(keypoints_px, w, self.perm)
        if visible is None:
            return out
        if tuple(visible.shape) != tuple(out.shape[:-1]):
            raise ValueError(f"visible: shape {tuple(visible.shape)} does not match keypoints {tuple(out.shape)}")
        return out, permute_labels(visible, self.perm, axis=-1)


class FlipKeypointsd(MapTransform, InvertibleTransform):
    """Horizontal flip of images, keypoints, visibility masks and boxes of one sample, invertible.

    Args:
        keys: image keys, ``(C, H, W)``, flipped along W. The width W is read from the first image
            key present (or ``width_px`` when no image is in the sample).
        keypoint_keys: ``(..., K, 2)`` pixel keypoints: ``x' = W - 1 - x`` and labels swapped with
            the scheme's ``flip_permutation`` along K.
        visible_keys: ``(..., K)`` masks (or any per-point values), labels swapped along the last axis.
        box_keys: ``(..., 4)`` boxes ``(x0, y0, x1, y1)`` in pixels (e.g. ``"box_px"`` of a
            per-vertebra sample); empty by default.
        scheme: scheme name; the sample's ``scheme_key`` entry wins when present (they must agree
            when both are given). Needed when keypoint or visible keys are present.
        scheme_key: key of the scheme name in the sample.
        width_px: width to use when no image key is present.
        allow_missing_keys: skip absent keys (of all four groups) instead of raising ``KeyError``.

    ``inverse()`` pops the entries recorded for each key and flips back (see module docstring).
    The keypoints (and the label order of the masks) are flipped by the array transform
    :class:`FlipKeypoints`, built per sample for its scheme and width.
    """

    backend = [np.ndarray, torch.Tensor]

    def __init__(
        self,
        keys: KeysCollection = "image",
        keypoint_keys: KeysCollection = "keypoints_px",
        visible_keys: KeysCollection = "visible",
        box_keys: KeysCollection = (),
        scheme: str | None = None,
        scheme_key: str = "scheme",
        width_px: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        self.image_keys = ensure_tuple(keys) if keys is not None else ()
        self.keypoint_keys = ensure_tuple(keypoint_keys) if keypoint_keys is not None else ()
        self.visible_keys = ensure_tuple(visible_keys) if visible_keys is not None else ()
        self.box_keys = ensure_tuple(box_keys) if box_keys is not None else ()
        self._roles: dict[Hashable, str] = {}
        for role, group in (
            ("image", self.image_keys),
            ("keypoints", self.keypoint_keys),
            ("visible", self.visible_keys),
            ("box", self.box_keys),
        ):
            for k in group:
                if k in self._roles:
                    raise ValueError(f"key {k!r} given both as {self._roles[k]} and {role} key")
                self._roles[k] = role
        MapTransform.__init__(self, tuple(self._roles), allow_missing_keys)
        if scheme is not None:
            get_scheme(scheme)  # fail early on a typo
        self.scheme = scheme
        self.scheme_key = scheme_key
        self.width_px = width_px

    # -- what to flip with -----------------------------------------------------------------

    def _width(self, d: Mapping) -> int:
        for k in self.image_keys:
            if k in d:
                return int(d[k].shape[-1])
        if self.width_px is None:
            raise KeyError(f"{type(self).__name__}: no image key {self.image_keys} in the sample and no width_px given")
        return int(self.width_px)

    def _scheme_name(self, d: Mapping) -> str | None:
        name = d.get(self.scheme_key) if self.scheme_key is not None else None
        if name is not None:
            if not isinstance(name, (str, np.str_)):
                raise ValueError(f"{self.scheme_key!r}: expected one scheme name string, got {type(name).__name__}")
            name = str(name)
            if self.scheme is not None and name != self.scheme:
                raise ValueError(
                    f"sample {self.scheme_key!r} is {name!r} but the transform was built for {self.scheme!r}"
                )
            return name
        return self.scheme

    def _flip_one(self, value: Any, role: str, flipper: FlipKeypoints, key: Hashable) -> Any:
        perm = flipper.perm
        if role == "image":
            return flip_image(value)
        if role == "keypoints":
            _check_points(value, str(key))
            if perm is not None and value.shape[-2] != len(perm):
                raise ValueError(f"{key!r}: {value.shape[-2]} points per vertebra, the scheme has {len(perm)}")
            return flipper(value)
        if role == "visible":
            if perm is not None and value.shape[-1] != len(perm):
                raise ValueError(f"{key!r}: mask has {value.shape[-1]} points, the scheme has {len(perm)}")
            return permute_labels(value, perm, axis=-1)
        return flip_box_px(value, flipper.width_px)

    def _apply(self, data: Mapping, do_flip: bool) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        width = self._width(d)
        needs_perm = any(self._roles[k] in ("keypoints", "visible") for k in keys)
        name = self._scheme_name(d) if needs_perm else None
        if needs_perm and name is None:
            raise ValueError(
                f"{type(self).__name__}: keypoint/visible keys need a scheme; "
                f"pass scheme= or put it in {self.scheme_key!r}"
            )
        flipper = FlipKeypoints(name, width)
        orig_size = next((tuple(d[k].shape[1:]) for k in self.image_keys if k in d), None)
        extra = {"width_px": width, "scheme": name or ""}
        for key in keys:
            role = self._roles[key]
            if do_flip:
                d[key] = self._flip_one(d[key], role, flipper, key)
            is_meta_image = role == "image" and isinstance(d[key], MetaTensor)
            affine = _flip_affine_idx(width) if (do_flip and is_meta_image) else None
            self.push_transform(d, key, extra_info=dict(extra), orig_size=orig_size, affine=affine)
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return self._apply(data, do_flip=True)

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            xform = self.pop_transform(d, key)
            if not xform.get(TraceKeys.DO_TRANSFORM, True):
                continue
            extra = xform.get(TraceKeys.EXTRA_INFO, {})
            width = int(extra["width_px"])
            name = extra.get("scheme") or None
            role = self._roles[key]
            d[key] = self._flip_one(d[key], role, FlipKeypoints(str(name) if name else None, width), key)
            if role == "image" and isinstance(d[key], MetaTensor):
                _compose_meta_affine(d[key], _flip_affine_idx(width))
        return d


class RandFlipKeypointsd(RandomizableTransform, FlipKeypointsd):
    """:class:`FlipKeypointsd` applied with probability ``prob`` (one draw per sample for all keys).

    Args:
        prob: probability of flipping (default 0.5).
        Other arguments: see :class:`FlipKeypointsd`.

    Every call records an entry per key (flipped or not), so ``inverse()`` always restores the input.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        keypoint_keys: KeysCollection = "keypoints_px",
        visible_keys: KeysCollection = "visible",
        box_keys: KeysCollection = (),
        prob: float = 0.5,
        scheme: str | None = None,
        scheme_key: str = "scheme",
        width_px: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        FlipKeypointsd.__init__(
            self, keys, keypoint_keys, visible_keys, box_keys, scheme, scheme_key, width_px, allow_missing_keys
        )
        RandomizableTransform.__init__(self, prob)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandFlipKeypointsd:
        super().set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw whether this sample is flipped (shared by all keys)."""
        super().randomize(None)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return self._apply(data, do_flip=self._do_transform)


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


# ----------------------------------------------------------------------------------------------
# vertebra crop
# ----------------------------------------------------------------------------------------------

_BORDER = {"constant": cv2.BORDER_CONSTANT, "zeros": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE,
           "border": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101}


class VertebraCrop(Transform):
    """Array transform: pixel-spacing-aware crop around one vertebra, resampled to a fixed size.

    Geometry (all in image pixels, pixel centres at integers, box edges as continuous coordinates):

    1. box ``(x0, y0, x1, y1)``: ``box_px`` if given and finite, else the min/max of the visible
       finite keypoints (at least 1 px wide and high, about its centre);
    2. a margin on every side: ``margin_mm / sx`` (x) and ``margin_mm / sy`` (y) px when the spacing
       is known, else ``margin_frac`` of the box width (x) and height (y) (``crop_margin_source``
       says which: ``"mm"`` or ``"frac"``);
    3. optional extra padding per side ``(left, top, right, bottom)``: ``pad_mm`` (known spacing) or
       ``pad_frac`` of the box size (unknown spacing), used by :class:`RandVertebraCropd` for augmentation;
    4. with ``keep_aspect`` the box grows about its centre (never shrinks) until one output pixel
       covers the same millimetres in x and y (with unknown spacing: square pixels assumed), so the
       crop is not distorted;
    5. bilinear resampling (``cv2.warpAffine`` with ``WARP_INVERSE_MAP``) to ``spatial_size``.

    The ``crop_to_image`` affine maps crop pixel ``(u, v)`` to ``x = x0 + (u + 0.5) * bw / W``,
    ``y = y0 + (v + 0.5) * bh / H`` (``bw = x1 - x0``), so fractions ``(u + 0.5) / W`` are positions
    inside the box.

    Args:
        spatial_size: output ``(H, W)``: height first. The default ``(224, 448)`` is 224 rows by 448
            columns (wide crops).
        margin_mm: margin added on every side, millimetres (>= 0).
        margin_frac: margin as a fraction of the box size, used when the spacing is unknown.
        keep_aspect: expand the box to the output aspect ratio (default True).
        padding_mode: outside the image: ``"constant"`` (``cval``), ``"replicate"`` or ``"reflect"``.
        cval: value for ``"constant"``.
    """

    backend = [np.ndarray, torch.Tensor]

    def __init__(
        self,
        spatial_size: Sequence[int] = (224, 448),
        margin_mm: float = 5.0,
        margin_frac: float = 0.15,
        keep_aspect: bool = True,
        padding_mode: str = "constant",
        cval: float = 0.0,
    ) -> None:
        self.spatial_size = _spatial_size(spatial_size)
        if margin_mm < 0 or margin_frac < 0:
            raise ValueError(f"margins must be >= 0, got margin_mm={margin_mm}, margin_frac={margin_frac}")
        if padding_mode not in _BORDER:
            raise ValueError(f"padding_mode must be one of {sorted(_BORDER)}, got {padding_mode!r}")
        self.margin_mm = float(margin_mm)
        self.margin_frac = float(margin_frac)
        self.keep_aspect = bool(keep_aspect)
        self.padding_mode = padding_mode
        self.cval = float(cval)

    def geometry(
        self,
        keypoints_px: Any = None,
        visible: Any = None,
        box_px: Any = None,
        spacing_mm: Any = None,
        pad_mm: Sequence[float] | None = None,
        pad_frac: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """Compute the crop box and affines.

        Args:
            keypoints_px: ``(K, 2)`` (or ``(..., K, 2)``) image-pixel keypoints; used for the box
                when ``box_px`` is missing or not finite, and mapped to crop coordinates.
            visible: ``(K,)`` mask; all finite points when None.
            box_px: ``(4,)`` detected box ``(x0, y0, x1, y1)`` in image pixels, or None/NaN.
            spacing_mm: ``(sx, sy)``; None/NaN/zero means unknown.
            pad_mm: extra ``(left, top, right, bottom)`` mm (known spacing only).
            pad_frac: extra ``(left, top, right, bottom)`` fractions of the box size (unknown spacing).

        Returns:
            dict with ``crop_box_px`` (4,) final box, ``crop_to_image`` (3, 3) float64,
            ``crop_spacing_mm`` (2,) (NaN if unknown), ``crop_margin_px`` (2,) margin (x, y) px,
            ``crop_margin_source`` ``"mm"``/``"frac"``; and when keypoints are given
            ``keypoints_crop_px`` and ``keypoints_frac`` (same shape and type as the keypoints).

        Raises:
            ValueError: no usable box (no box and no visible finite keypoint), bad shapes.
        """
        h_out, w_out = self.spatial_size
        sp = _known_spacing(spacing_mm)
        box = None
        if box_px is not None:
            b = np.asarray(convert_to_numpy(box_px), dtype=np.float64).reshape(-1)
            if b.shape != (4,):
                raise ValueError(f"box_px: expected (x0, y0, x1, y1), got shape {b.shape}")
            if np.all(np.isfinite(b)):
                if b[2] < b[0] or b[3] < b[1]:
                    raise ValueError(f"box_px: expected x0 <= x1 and y0 <= y1, got {b.tolist()}")
                box = b
        kp_np = None
        if keypoints_px is not None:
            _check_points(keypoints_px, "keypoints_px")
            kp_np = np.asarray(convert_to_numpy(keypoints_px), dtype=np.float64)
        if box is None:
            if kp_np is None:
                raise ValueError("VertebraCrop: neither a finite box_px nor keypoints_px to build the crop box from")
            pts = kp_np.reshape(-1, 2)
            ok = np.all(np.isfinite(pts), axis=-1)
            if visible is not None:
                vis = np.asarray(convert_to_numpy(visible), dtype=bool).reshape(-1)
                if vis.shape[0] != pts.shape[0]:
                    raise ValueError(f"visible: {vis.shape[0]} values for {pts.shape[0]} keypoints")
                ok &= vis
            if not np.any(ok):
                raise ValueError("VertebraCrop: no visible finite keypoint and no box_px: cannot place the crop")
            p = pts[ok]
            box = np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
        x0, y0, x1, y1 = (float(v) for v in box)
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        x0, x1, y0, y1 = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2

        if sp is not None:
            margin = np.array([self.margin_mm / sp[0], self.margin_mm / sp[1]])
            source = "mm"
            pad = np.zeros(4) if pad_mm is None else np.asarray(pad_mm, dtype=np.float64) / np.tile(sp, 2)
        else:
            margin = np.array([self.margin_frac * bw, self.margin_frac * bh])
            source = "frac"
            size4 = np.array([bw, bh, bw, bh])
            pad = np.zeros(4) if pad_frac is None else np.asarray(pad_frac, dtype=np.float64) * size4
        if pad.shape != (4,):
            raise ValueError(f"padding must be (left, top, right, bottom), got shape {pad.shape}")
        x0 -= margin[0] + pad[0]
        y0 -= margin[1] + pad[1]
        x1 += margin[0] + pad[2]
        y1 += margin[1] + pad[3]

        if self.keep_aspect:
            sx, sy = (1.0, 1.0) if sp is None else (sp[0], sp[1])
            bw, bh = x1 - x0, y1 - y0
            mm_per_px = max(bw * sx / w_out, bh * sy / h_out)
            nbw, nbh = mm_per_px * w_out / sx, mm_per_px * h_out / sy
            cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
            x0, x1 = cx - nbw / 2, cx + nbw / 2
            y0, y1 = cy - nbh / 2, cy + nbh / 2

        bw, bh = x1 - x0, y1 - y0
        a = np.array(
            [[bw / w_out, 0.0, x0 + 0.5 * bw / w_out], [0.0, bh / h_out, y0 + 0.5 * bh / h_out], [0.0, 0.0, 1.0]]
        )
        out: dict[str, Any] = {
            "crop_box_px": np.array([x0, y0, x1, y1], dtype=np.float64),
            "crop_to_image": a,
            "crop_spacing_mm": (
                np.array([sp[0] * bw / w_out, sp[1] * bh / h_out]) if sp is not None else np.full(2, np.nan)
            ),
            "crop_margin_px": margin,
            "crop_margin_source": source,
        }
        if keypoints_px is not None:
            crop_px = image_to_crop_px(_float_like(keypoints_px), a)
            out["keypoints_crop_px"] = crop_px
            out["keypoints_frac"] = px_to_frac_like(crop_px, (w_out, h_out))
        return out

    def resample(self, image: Any, crop_to_image: Any) -> Any:
        """Bilinear resampling of a ``(C, H, W)`` image into the ``(C, *spatial_size)`` crop.

        A MetaTensor keeps its metadata and its affine is composed with the crop affine.
        """
        h_out, w_out = self.spatial_size
        img = convert_to_numpy(image)
        if img.ndim != 3:
            raise ValueError(f"image: expected (C, H, W), got shape {img.shape}")
        if img.dtype not in (np.float32, np.float64):
            img = img.astype(np.float32)
        m = np.asarray(convert_to_numpy(crop_to_image), dtype=np.float64)[:2]
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        border = _BORDER[self.padding_mode]
        res = np.empty((img.shape[0], h_out, w_out), dtype=img.dtype)
        for c in range(img.shape[0]):
            res[c] = cv2.warpAffine(
                np.ascontiguousarray(img[c]), m, (w_out, h_out), flags=flags, borderMode=border, borderValue=self.cval
            )
        if isinstance(image, np.ndarray):
            return res
        out, *_ = convert_to_dst_type(res, image, dtype=torch.float32 if res.dtype == np.float32 else torch.float64)
        if isinstance(out, MetaTensor):
            a = np.asarray(crop_to_image, dtype=np.float64)
            # (row, col) index-space version of the (x, y) affine
            a_idx = np.array([[a[1, 1], a[1, 0], a[1, 2]], [a[0, 1], a[0, 0], a[0, 2]], [0.0, 0.0, 1.0]])
            _compose_meta_affine(out, a_idx)
        return out

    def __call__(
        self,
        image: Any,
        keypoints_px: Any = None,
        visible: Any = None,
        box_px: Any = None,
        spacing_mm: Any = None,
        pad_mm: Sequence[float] | None = None,
        pad_frac: Sequence[float] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Return ``(crop, geometry)``; see :meth:`geometry` and :meth:`resample`."""
        geom = self.geometry(keypoints_px, visible, box_px, spacing_mm, pad_mm, pad_frac)
        return self.resample(image, geom["crop_to_image"]), geom


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


class VertebraCropd(MapTransform, InvertibleTransform):
    """Crop one vertebra out of the full image of a per-vertebra sample (see :class:`VertebraCrop`).

    Deterministic; :class:`RandVertebraCropd` adds random padding for augmentation.

    Input sample: ``keys`` images ``(C, H, W)`` (all resampled with the same geometry),
    ``keypoints_key`` ``(K, 2)`` image px (optional when a box is given), ``visible_key`` ``(K,)``,
    ``box_key`` ``(4,)`` detected box (optional; NaN = absent), ``spacing_key`` ``(sx, sy)`` (NaN
    when unknown). Missing keypoint/visible/box/spacing entries are treated as absent.

    Output: the images replaced by the ``(C, *spatial_size)`` crops; ``crop_keypoints_key``
    (default ``"keypoints_crop_px"``) and ``frac_keypoints_key`` (``"keypoints_frac"``, fractions
    ``(x_crop + 0.5) / W``) when keypoints are present; ``"crop_to_image"`` (3, 3) float64 affine
    from homogeneous crop pixels to image pixels; ``"crop_box_px"`` (4,); ``"crop_spacing_mm"``
    (2,) (NaN if unknown); ``"crop_margin_px"`` (2,) and ``"crop_margin_source"`` (``"mm"`` or
    ``"frac"``, the latter when the spacing is unknown). ``keypoints_key`` is left in image pixels.

    Args:
        keys: image keys to crop.
        spatial_size, margin_mm, margin_frac, keep_aspect, padding_mode, cval: see :class:`VertebraCrop`.
        keypoints_key, visible_key, box_key, spacing_key: input keys.
        crop_keypoints_key, frac_keypoints_key: output keys for the keypoints.
        allow_missing_keys: skip absent image keys instead of raising ``KeyError``.

    ``inverse()`` writes ``keypoints_key`` in image pixels from ``frac_keypoints_key`` (where a
    model's predicted fractions can be put) or, if absent, from ``crop_keypoints_key``, using the
    sample's ``crop_to_image``. The image is not un-cropped.
    """

    backend = VertebraCrop.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: Sequence[int] = (224, 448),
        margin_mm: float = 5.0,
        margin_frac: float = 0.15,
        keep_aspect: bool = True,
        padding_mode: str = "constant",
        cval: float = 0.0,
        keypoints_key: str = "keypoints_px",
        visible_key: str | None = "visible",
        box_key: str | None = "box_px",
        spacing_key: str | None = "spacing_mm",
        crop_keypoints_key: str = "keypoints_crop_px",
        frac_keypoints_key: str = "keypoints_frac",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = VertebraCrop(spatial_size, margin_mm, margin_frac, keep_aspect, padding_mode, cval)
        self.keypoints_key = keypoints_key
        self.visible_key = visible_key
        self.box_key = box_key
        self.spacing_key = spacing_key
        self.crop_keypoints_key = crop_keypoints_key
        self.frac_keypoints_key = frac_keypoints_key

    @property
    def spatial_size(self) -> tuple[int, int]:
        """Output ``(H, W)``."""
        return self.cropper.spatial_size

    def _pads(self) -> tuple[np.ndarray, np.ndarray]:
        """Extra padding per side ``(left, top, right, bottom)`` in mm and box fractions: none here."""
        return np.zeros(4), np.zeros(4)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pad_mm, pad_frac = self._pads()

        def get(k: str | None) -> Any:
            return None if k is None else d.get(k)

        keypoints = get(self.keypoints_key)
        geom = self.cropper.geometry(
            keypoints, get(self.visible_key), get(self.box_key), get(self.spacing_key), pad_mm, pad_frac
        )
        for key in self.key_iterator(d):
            d[key] = self.cropper.resample(d[key], geom["crop_to_image"])
        if keypoints is not None:
            d[self.crop_keypoints_key] = geom.pop("keypoints_crop_px")
            d[self.frac_keypoints_key] = geom.pop("keypoints_frac")
        d.update(geom)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if "crop_to_image" not in d:
            raise KeyError(f"{type(self).__name__}.inverse: the sample has no 'crop_to_image'")
        a = d["crop_to_image"]
        if self.frac_keypoints_key in d:
            d[self.keypoints_key] = frac_to_image_px(d[self.frac_keypoints_key], a, self.spatial_size)
        elif self.crop_keypoints_key in d:
            d[self.keypoints_key] = crop_to_image_px(d[self.crop_keypoints_key], a)
        else:
            raise KeyError(
                f"{type(self).__name__}.inverse: neither {self.frac_keypoints_key!r} "
                f"nor {self.crop_keypoints_key!r} in the sample"
            )
        return d


class RandVertebraCropd(RandomizableTransform, VertebraCropd):
    """:class:`VertebraCropd` with random extra padding per side (augmentation), drawn per sample.

    Args:
        rand_pad_mm: ``(low, high)`` mm: with probability ``prob`` each side gets an extra padding
            drawn uniformly in this range (known spacing). Default ``(0, 0)``: no augmentation.
        rand_pad_frac: the same as fractions of the box size, used when the spacing is unknown.
        prob: probability of the random padding (one :meth:`randomize` per sample, shared by all keys).
        Other arguments: see :class:`VertebraCropd`.

    Example: ``rand_pad_mm=(0, 3)`` at 0.5 mm/px pads each side by 0 to 6 px (before ``keep_aspect``) more than
    :class:`VertebraCropd` with the same ``margin_mm``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: Sequence[int] = (224, 448),
        margin_mm: float = 5.0,
        margin_frac: float = 0.15,
        rand_pad_mm: Sequence[float] = (0.0, 0.0),
        rand_pad_frac: Sequence[float] = (0.0, 0.0),
        prob: float = 1.0,
        keep_aspect: bool = True,
        padding_mode: str = "constant",
        cval: float = 0.0,
        keypoints_key: str = "keypoints_px",
        visible_key: str | None = "visible",
        box_key: str | None = "box_px",
        spacing_key: str | None = "spacing_mm",
        crop_keypoints_key: str = "keypoints_crop_px",
        frac_keypoints_key: str = "keypoints_frac",
        allow_missing_keys: bool = False,
    ) -> None:
        VertebraCropd.__init__(
            self, keys, spatial_size, margin_mm, margin_frac, keep_aspect, padding_mode, cval, keypoints_key,
            visible_key, box_key, spacing_key, crop_keypoints_key, frac_keypoints_key, allow_missing_keys,
        )
        RandomizableTransform.__init__(self, prob)
        self.rand_pad_mm = self._range(rand_pad_mm, "rand_pad_mm")
        self.rand_pad_frac = self._range(rand_pad_frac, "rand_pad_frac")
        self._pad_u = np.zeros(4)

    @staticmethod
    def _range(value: Sequence[float], name: str) -> tuple[float, float]:
        rng = tuple(float(v) for v in ensure_tuple(value))
        if len(rng) == 1:
            rng = (0.0, rng[0])
        if len(rng) != 2 or rng[0] < 0 or rng[0] > rng[1]:
            raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {value!r}")
        return rng  # type: ignore[return-value]

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandVertebraCropd:
        super().set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw whether to pad and four uniform numbers (left, top, right, bottom) for all keys."""
        super().randomize(None)
        self._pad_u = self.R.uniform(size=4) if self._do_transform else np.zeros(4)

    def _pads(self) -> tuple[np.ndarray, np.ndarray]:
        self.randomize()
        if not self._do_transform:
            return np.zeros(4), np.zeros(4)
        lo, hi = self.rand_pad_mm
        flo, fhi = self.rand_pad_frac
        return lo + self._pad_u * (hi - lo), flo + self._pad_u * (fhi - flo)


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
