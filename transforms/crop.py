"""The spacing-aware vertebra crop: a vertebra's box in the radiograph -> a fixed-size network input.

Keypoint conventions and the crop geometry (``crop_to_image``, pixels <-> fractions):
:mod:`monai_spine.transforms.keypoints`.

Inversion: :class:`VertebraCropd` / :class:`RandVertebraCropd` push nothing: the crop geometry is
stored in the sample (``crop_to_image``) and ``inverse()`` maps keypoints from the crop back to image
pixels. The cropped image is not un-cropped.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import math

import cv2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy, ensure_tuple

from monai_spine.data.frames import turned_box_px
from monai_spine.transforms.keypoints import (
    _check_points,
    _compose_meta_affine,
    _float_like,
    _known_spacing,
    _spatial_size,
    crop_to_image_px,
    frac_to_image_px,
    image_to_crop_px,
    px_to_frac_like,
)

__all__ = [
    "VertebraCrop",
    "VertebraCropd",
    "RandVertebraCropd",
]


def _angle(angle_rad: Any) -> float:
    """A box's turn in radians as a float: 0.0 for None or NaN; ``ValueError`` for anything not one number."""
    if angle_rad is None:
        return 0.0
    try:
        a = np.asarray(convert_to_numpy(angle_rad), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"angle_rad: expected one number (radians), got {angle_rad!r}") from None
    if a.shape != (1,):
        raise ValueError(f"angle_rad: expected one number (radians), got shape {a.shape}")
    return float(a[0]) if np.isfinite(a[0]) else 0.0


_BORDER = {"constant": cv2.BORDER_CONSTANT, "zeros": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE,
           "border": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101}


class VertebraCrop(Transform):
    """Array transform: pixel-spacing-aware crop around one vertebra, resampled to a fixed size.

    Geometry (all in image pixels, pixel centres at integers, box edges as continuous coordinates):

    1. box ``(x0, y0, x1, y1)``: ``box_px`` if given and finite, else the min/max of the visible
       finite keypoints (at least 1 px wide and high, about its centre); with an ``angle_rad`` the box
       is turned by that angle about its centre (its width along ``(cos a, sin a)``), and a box built
       from keypoints is their min/max along the turned axes, so the crop shows the vertebra in that
       frame (for example the spine's own frame, rotated with the line of the vertebra centres);
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
    inside the box (with an angle, these positions are then turned about the box centre). With a known
    spacing and an angle, the millimetres per pixel along the turned axes are
    ``hypot(cos a * sx, sin a * sy)`` (width) and ``hypot(sin a * sx, cos a * sy)`` (height).

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
        angle_rad: Any = None,
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
            angle_rad: the box's turn about its centre, radians (positive turns the box's width axis
                from +x towards +y); None, NaN or 0: an axis-aligned box.

        Returns:
            dict with ``crop_box_px`` (4,) final box (before its turn about its centre),
            ``crop_angle_rad`` (float), ``crop_to_image`` (3, 3) float64,
            ``crop_spacing_mm`` (2,) (NaN if unknown), ``crop_margin_px`` (2,) margin (x, y) px,
            ``crop_margin_source`` ``"mm"``/``"frac"``; and when keypoints are given
            ``keypoints_crop_px`` and ``keypoints_frac`` (same shape and type as the keypoints).

        Raises:
            ValueError: no usable box (no box and no visible finite keypoint), bad shapes.
        """
        h_out, w_out = self.spatial_size
        sp = _known_spacing(spacing_mm)
        angle = _angle(angle_rad)
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        rot = np.array([[cos_a, -sin_a], [sin_a, cos_a]])  # frame -> image directions
        if sp is not None and angle != 0.0:  # mm per pixel along the turned axes
            sp = np.array([math.hypot(cos_a * sp[0], sin_a * sp[1]), math.hypot(sin_a * sp[0], cos_a * sp[1])])
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
            if angle == 0.0:
                box = np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
            else:  # min/max along the turned axes, the centre back in image pixels
                box = turned_box_px(p, angle)
        x0, y0, x1, y1 = (float(v) for v in box)
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)  # the box centre in image pixels
        centre = np.array([cx, cy])  # the turn's pivot: padding then moves the crop along the turned axes
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
        if angle != 0.0:  # turn the crop about the box centre
            turn = np.eye(3)
            turn[:2, :2] = rot
            turn[:2, 2] = centre - rot @ centre
            a = turn @ a
        out: dict[str, Any] = {
            "crop_box_px": np.array([x0, y0, x1, y1], dtype=np.float64),
            "crop_angle_rad": angle,
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
        angle_rad: Any = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Return ``(crop, geometry)``; see :meth:`geometry` and :meth:`resample`."""
        geom = self.geometry(keypoints_px, visible, box_px, spacing_mm, pad_mm, pad_frac, angle_rad)
        return self.resample(image, geom["crop_to_image"]), geom


class VertebraCropd(MapTransform, InvertibleTransform):
    """Crop one vertebra out of the full image of a per-vertebra sample (see :class:`VertebraCrop`).

    Deterministic; :class:`RandVertebraCropd` adds random padding for augmentation.

    Input sample: ``keys`` images ``(C, H, W)`` (all resampled with the same geometry),
    ``keypoints_key`` ``(K, 2)`` image px (optional when a box is given), ``visible_key`` ``(K,)``,
    ``box_key`` ``(4,)`` detected box (optional; NaN = absent), ``spacing_key`` ``(sx, sy)`` (NaN
    when unknown), ``angle_key`` the box's turn about its centre in radians (optional; absent, NaN
    or 0: axis-aligned). Missing keypoint/visible/box/spacing/angle entries are treated as absent.

    Output: the images replaced by the ``(C, *spatial_size)`` crops; ``crop_keypoints_key``
    (default ``"keypoints_crop_px"``) and ``frac_keypoints_key`` (``"keypoints_frac"``, fractions
    ``(x_crop + 0.5) / W``) when keypoints are present; ``"crop_to_image"`` (3, 3) float64 affine
    from homogeneous crop pixels to image pixels; ``"crop_box_px"`` (4,); ``"crop_spacing_mm"``
    (2,) (NaN if unknown); ``"crop_angle_rad"``; ``"crop_margin_px"`` (2,) and ``"crop_margin_source"`` (``"mm"`` or
    ``"frac"``, the latter when the spacing is unknown). ``keypoints_key`` is left in image pixels.

    Args:
        keys: image keys to crop.
        spatial_size, margin_mm, margin_frac, keep_aspect, padding_mode, cval: see :class:`VertebraCrop`.
        keypoints_key, visible_key, box_key, spacing_key, angle_key: input keys.
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
        angle_key: str | None = "box_angle_rad",
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = VertebraCrop(spatial_size, margin_mm, margin_frac, keep_aspect, padding_mode, cval)
        self.keypoints_key = keypoints_key
        self.visible_key = visible_key
        self.box_key = box_key
        self.spacing_key = spacing_key
        self.crop_keypoints_key = crop_keypoints_key
        self.frac_keypoints_key = frac_keypoints_key
        self.angle_key = angle_key

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
            keypoints, get(self.visible_key), get(self.box_key), get(self.spacing_key), pad_mm, pad_frac,
            get(self.angle_key),
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
        angle_key: str | None = "box_angle_rad",
    ) -> None:
        VertebraCropd.__init__(
            self, keys, spatial_size, margin_mm, margin_frac, keep_aspect, padding_mode, cval, keypoints_key,
            visible_key, box_key, spacing_key, crop_keypoints_key, frac_keypoints_key, allow_missing_keys,
            angle_key,
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
