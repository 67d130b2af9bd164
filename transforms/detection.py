"""Whole-radiograph transforms of the vertebra detector: letterbox resize and centre-heatmap targets.

Conventions (those of :mod:`monai_spine.data.keypoints`): points are ``(..., 2)`` ``(x, y)`` pixels with
pixel centres at integer coordinates, boxes are ``(..., 4)`` ``(x0, y0, x1, y1)`` in the same pixels
(continuous edges), images are channel-first ``(C, H, W)``, sizes named ``spatial_size`` are
``(H, W)``, ``spacing_mm`` is ``(sx, sy)`` with NaN when unknown. Absent vertebrae have NaN centres
and boxes.

The network input ("net" pixels) is the radiograph resized with its aspect kept and padded
(letterbox). The geometry is one ``(3, 3)`` affine ``det_to_image`` taking homogeneous net pixels
``(u, v, 1)`` to image pixels ``(x, y, 1)``, like the ``crop_to_image`` of
:class:`monai_spine.transforms.crop.VertebraCropd`: with ``a_x, a_y`` image pixels per net pixel (equal
for square pixels; with a known anisotropic spacing they differ so that a net pixel covers the same
millimetres in x and y) the image centre sits on the net centre::

    x = a_x * (u - (W_net - 1) / 2) + (W - 1) / 2        y = a_y * (v - (H_net - 1) / 2) + (H - 1) / 2

where ``a = max(W * s_x / W_net, H * s_y / H_net) / s`` (``s = 1`` for unknown spacing). Random
augmentation (:class:`RandLetterboxResized`) composes a zoom, shift and horizontal flip in net
pixels into the same affine, so targets and predictions always go through one matrix.

Targets (:class:`CentreHeatmapTarget`): ``(L + 5, H_net, W_net)`` float32, channels

* ``0 .. L-1``: one Gaussian per present level, ``exp(-d^2 / 2 sigma^2)`` around the continuous
  centre, scaled so that the pixel nearest to the centre is exactly 1 (the positive of the focal
  loss); since ``log`` of the map is a paraboloid with its vertex at the centre, a three-point
  parabola fit on the log-map recovers the centre to sub-pixel precision;
* ``L .. L+3``: the box as distances from the centre to its left, top, right and bottom edges, in
  fractions of ``W_net``, ``H_net``, ``W_net``, ``H_net``, written in a ``(2r + 1)^2`` window around
  the centre pixel;
* ``L + 4``: 1 in those windows (where the box distances are supervised), else 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_numpy, ensure_tuple

from monai_spine.codecs.detection import TARGET_EXTRA_CHANNELS, encode_centre_heatmaps
from monai_spine.transforms.keypoints import _known_spacing, crop_to_image_px, image_to_crop_px

__all__ = [
    "letterbox_affine",
    "augment_affine",
    "net_spacing_mm",
    "points_to_net_px",
    "points_to_image_px",
    "boxes_through_affine",
    "boxes_to_net_px",
    "boxes_to_image_px",
    "resample_to_net",
    "net_key",
    "LetterboxResize",
    "LetterboxResized",
    "RandLetterboxResized",
    "CentreHeatmapTarget",
    "CentreHeatmapTargetd",
    "TARGET_EXTRA_CHANNELS",
]



def _size_hw(spatial_size: Sequence[int], name: str = "spatial_size") -> tuple[int, int]:
    size = tuple(int(s) for s in ensure_tuple(spatial_size))
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be (H, W) positive ints, got {spatial_size!r}")
    return size  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- geometry
def letterbox_affine(
    image_size_wh: Sequence[int],
    spatial_size: Sequence[int],
    spacing_mm: Any = None,
    keep_mm_aspect: bool = True,
) -> np.ndarray:
    """The ``(3, 3)`` net-to-image affine of an aspect-keeping resize with padding (see the module docstring).

    Args:
        image_size_wh: ``(W, H)`` of the radiograph in pixels.
        spatial_size: ``(H_net, W_net)`` of the network input.
        spacing_mm: ``(sx, sy)``; with ``keep_mm_aspect`` a known anisotropic spacing makes the net
            pixels square in millimetres. None / NaN: square image pixels assumed.
        keep_mm_aspect: use the spacing's aspect (else image pixels are treated as square).

    Returns:
        float64 ``(3, 3)`` affine from homogeneous net pixels ``(u, v, 1)`` to image pixels.
    """
    w, h = (float(s) for s in image_size_wh)
    if w < 1 or h < 1:
        raise ValueError(f"image_size_wh must be positive (W, H), got {image_size_wh!r}")
    hn, wn = _size_hw(spatial_size)
    sp = _known_spacing(spacing_mm) if keep_mm_aspect else None
    sx, sy = (1.0, 1.0) if sp is None else (sp[0], sp[1])
    mm_per_net = max(w * sx / wn, h * sy / hn)
    ax, ay = mm_per_net / sx, mm_per_net / sy
    return np.array(
        [[ax, 0.0, (w - 1) / 2 - ax * (wn - 1) / 2], [0.0, ay, (h - 1) / 2 - ay * (hn - 1) / 2], [0.0, 0.0, 1.0]]
    )


def augment_affine(
    spatial_size: Sequence[int], zoom: float = 1.0, shift_px: Sequence[float] = (0.0, 0.0), flip: bool = False
) -> np.ndarray:
    """A net-to-net ``(3, 3)`` affine: output pixel -> the letterbox pixel it samples.

    Composed as ``det_to_image = letterbox @ augment``. ``zoom > 1`` magnifies (the spine looks
    bigger), ``shift_px`` moves the content by ``(dx, dy)`` output pixels, ``flip`` mirrors left-right;
    all about the net centre.
    """
    hn, wn = _size_hw(spatial_size)
    if not float(zoom) > 0:
        raise ValueError(f"zoom must be positive, got {zoom}")
    cx, cy = (wn - 1) / 2, (hn - 1) / 2
    s = 1.0 / float(zoom)
    fx = -s if flip else s
    dx, dy = (float(v) for v in shift_px)
    # u_letterbox = fx * (u - cx - dx) + cx
    return np.array([[fx, 0.0, cx - fx * (cx + dx)], [0.0, s, cy - s * (cy + dy)], [0.0, 0.0, 1.0]])


def net_spacing_mm(det_to_image: Any, spacing_mm: Any) -> np.ndarray:
    """``(sx, sy)`` millimetres per net pixel (NaN when the image spacing is unknown)."""
    sp = _known_spacing(spacing_mm)
    if sp is None:
        return np.full(2, np.nan)
    m = np.asarray(convert_to_numpy(det_to_image), dtype=np.float64)
    return np.array([np.hypot(m[0, 0], m[1, 0]) * sp[0], np.hypot(m[0, 1], m[1, 1]) * sp[1]])


def points_to_net_px(points_px: Any, det_to_image: Any) -> Any:
    """Image pixels ``(..., 2)`` to net pixels (NaN stays NaN); numpy or torch like the input."""
    return image_to_crop_px(points_px, det_to_image)


def points_to_image_px(points_net_px: Any, det_to_image: Any) -> Any:
    """Net pixels ``(..., 2)`` to image pixels; ``det_to_image`` may be batched ``(B, 3, 3)``."""
    return crop_to_image_px(points_net_px, det_to_image)


def boxes_through_affine(boxes: Any, affine: Any) -> np.ndarray:
    """Boxes ``(..., 4)`` through a ``(3, 3)`` affine: the bounding box of the four mapped corners.

    Exact for the axis-aligned affines of this module (scales, shifts, flips); NaN boxes stay NaN.
    """
    b = np.asarray(convert_to_numpy(boxes), dtype=np.float64)
    if b.ndim < 1 or b.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4) (x0, y0, x1, y1), got {b.shape}")
    m = np.asarray(convert_to_numpy(affine), dtype=np.float64)
    corners = np.stack(
        [b[..., [0, 1]], b[..., [2, 1]], b[..., [0, 3]], b[..., [2, 3]]], axis=-2
    )  # (..., 4, 2)
    mapped = corners @ m[:2, :2].T + m[:2, 2]
    return np.concatenate([mapped.min(-2), mapped.max(-2)], axis=-1)


def boxes_to_net_px(boxes_px: Any, det_to_image: Any) -> np.ndarray:
    """Image-pixel boxes to net-pixel boxes."""
    return boxes_through_affine(boxes_px, np.linalg.inv(np.asarray(convert_to_numpy(det_to_image), dtype=np.float64)))


def boxes_to_image_px(boxes_net_px: Any, det_to_image: Any) -> np.ndarray:
    """Net-pixel boxes to image-pixel boxes."""
    return boxes_through_affine(boxes_net_px, det_to_image)


def resample_to_net(
    image: Any, det_to_image: Any, spatial_size: Sequence[int], antialias: bool = True, cval: float = 0.0
) -> np.ndarray:
    """Bilinear resampling of a ``(C, H, W)`` image onto the ``(C, H_net, W_net)`` net grid.

    With ``antialias``, a downsampling by ``a > 1`` image pixels per net pixel first blurs along that
    axis with a Gaussian of sigma ``(a - 1) / 2`` pixels (scikit-image's choice), so the noise and fine
    texture of a large radiograph do not alias. Outside the image: ``cval``.

    Returns:
        float32 numpy array.
    """
    hn, wn = _size_hw(spatial_size)
    img = np.asarray(convert_to_numpy(image))
    if img.ndim != 3:
        raise ValueError(f"image: expected (C, H, W), got shape {img.shape}")
    img = img.astype(np.float32, copy=False)
    m = np.asarray(convert_to_numpy(det_to_image), dtype=np.float64)
    ax, ay = np.hypot(m[0, 0], m[1, 0]), np.hypot(m[0, 1], m[1, 1])
    sig_x, sig_y = max(0.0, (ax - 1) / 2), max(0.0, (ay - 1) / 2)
    out = np.empty((img.shape[0], hn, wn), dtype=np.float32)
    for c in range(img.shape[0]):
        ch = np.ascontiguousarray(img[c])
        if antialias and (sig_x > 0.1 or sig_y > 0.1):
            ch = cv2.GaussianBlur(ch, (0, 0), sigmaX=max(sig_x, 1e-3), sigmaY=max(sig_y, 1e-3),
                                  borderType=cv2.BORDER_REFLECT_101)
        out[c] = cv2.warpAffine(ch, m[:2], (wn, hn), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=float(cval))
    return out


def net_key(key: str) -> str:
    """Output key of an image-pixel key in net pixels: ``"centres_px"`` -> ``"centres_net_px"``."""
    key = str(key)
    return key[: -len("_px")] + "_net_px" if key.endswith("_px") else key + "_net"


# ---------------------------------------------------------------------------------------------- resize
class LetterboxResize(Transform):
    """Array transform: a whole radiograph to the network's fixed size, aspect kept, padded.

    Args:
        spatial_size: ``(H_net, W_net)`` (divisible by 16 for :class:`VertebraDetectorNet`).
        keep_mm_aspect: make net pixels square in millimetres when the spacing is known.
        antialias: blur before downsampling (see :func:`resample_to_net`).
        cval: value of the padding.

    ``__call__(image, spacing_mm=None, augment=None)`` returns ``(net_image, det_to_image)``: the
    ``(C, H_net, W_net)`` float32 numpy image and the ``(3, 3)`` affine (``augment``: an optional
    :func:`augment_affine` composed into it).
    """

    backend = [np.ndarray, torch.Tensor]

    def __init__(
        self, spatial_size: Sequence[int] = (256, 256), keep_mm_aspect: bool = True, antialias: bool = True,
        cval: float = 0.0,
    ) -> None:
        self.spatial_size = _size_hw(spatial_size)
        self.keep_mm_aspect = bool(keep_mm_aspect)
        self.antialias = bool(antialias)
        self.cval = float(cval)

    def affine(self, image_size_wh: Sequence[int], spacing_mm: Any = None, augment: Any = None) -> np.ndarray:
        """The ``det_to_image`` affine for an image of ``(W, H)`` pixels."""
        a = letterbox_affine(image_size_wh, self.spatial_size, spacing_mm, self.keep_mm_aspect)
        if augment is not None:
            a = a @ np.asarray(augment, dtype=np.float64)
        return a

    def __call__(self, image: Any, spacing_mm: Any = None, augment: Any = None) -> tuple[np.ndarray, np.ndarray]:
        shape = tuple(image.shape)
        if len(shape) != 3:
            raise ValueError(f"LetterboxResize: image must be (C, H, W), got shape {shape}")
        a = self.affine((shape[2], shape[1]), spacing_mm, augment)
        return resample_to_net(image, a, self.spatial_size, self.antialias, self.cval), a


class LetterboxResized(MapTransform, InvertibleTransform):
    """Dictionary :class:`LetterboxResize`: images, vertebra centres and boxes to net pixels.

    Input: ``keys`` images ``(C, H, W)`` (all resized with one geometry, taken from the first),
    ``spacing_key`` ``(sx, sy)`` (NaN or absent: unknown), ``point_keys`` ``(..., 2)`` and
    ``box_keys`` ``(..., 4)`` in image pixels (absent keys are skipped).

    Output: the images replaced by ``(C, H_net, W_net)`` float32 arrays; for every point / box key
    ``k`` its net-pixel copy under :func:`net_key` (``centres_px`` -> ``centres_net_px``);
    ``affine_key`` (default ``"det_to_image"``) the ``(3, 3)`` float64 affine; ``net_spacing_key``
    (``"det_spacing_mm"``) millimetres per net pixel (NaN if unknown). The image-pixel keys stay.

    ``inverse()`` maps the net-pixel keys present in the sample (for example a model's predicted
    ``centres_net_px`` and ``boxes_net_px``) back to image pixels under their image-pixel names; the
    image is not un-resized.

    Args:
        keys: image keys.
        spatial_size, keep_mm_aspect, antialias, cval: see :class:`LetterboxResize`.
        spacing_key: sample key of the spacing (None: always square image pixels).
        point_keys, box_keys: image-pixel keys to map.
        affine_key, net_spacing_key: output keys.
        allow_missing_keys: skip absent image keys instead of raising ``KeyError``.
    """

    backend = LetterboxResize.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: Sequence[int] = (256, 256),
        keep_mm_aspect: bool = True,
        antialias: bool = True,
        cval: float = 0.0,
        spacing_key: str | None = "spacing_mm",
        point_keys: KeysCollection = ("centres_px",),
        box_keys: KeysCollection = ("boxes_px",),
        affine_key: str = "det_to_image",
        net_spacing_key: str | None = "det_spacing_mm",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.resizer = LetterboxResize(spatial_size, keep_mm_aspect, antialias, cval)
        self.spacing_key = spacing_key
        self.point_keys = tuple(ensure_tuple(point_keys)) if point_keys else ()
        self.box_keys = tuple(ensure_tuple(box_keys)) if box_keys else ()
        self.affine_key = affine_key
        self.net_spacing_key = net_spacing_key

    @property
    def spatial_size(self) -> tuple[int, int]:
        """``(H_net, W_net)``."""
        return self.resizer.spatial_size

    def _augment(self) -> np.ndarray | None:
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        spacing = d.get(self.spacing_key) if self.spacing_key is not None else None
        shape = tuple(d[keys[0]].shape)
        if len(shape) != 3:
            raise ValueError(f"{type(self).__name__}: d[{keys[0]!r}] must be (C, H, W), got shape {shape}")
        a = self.resizer.affine((shape[2], shape[1]), spacing, self._augment())
        for key in keys:
            if tuple(d[key].shape[1:]) != shape[1:]:
                raise ValueError(f"{type(self).__name__}: d[{key!r}] has shape {tuple(d[key].shape)}, "
                                 f"d[{keys[0]!r}] {shape}: images of one sample must share their size")
            d[key] = resample_to_net(d[key], a, self.spatial_size, self.resizer.antialias, self.resizer.cval)
        for k in self.point_keys:
            if k in d:
                pts = np.asarray(convert_to_numpy(d[k]), dtype=np.float64)
                d[net_key(k)] = points_to_net_px(pts, a).astype(np.float32)
        for k in self.box_keys:
            if k in d:
                d[net_key(k)] = boxes_to_net_px(d[k], a).astype(np.float32)
        d[self.affine_key] = a
        if self.net_spacing_key is not None:
            d[self.net_spacing_key] = net_spacing_mm(a, spacing).astype(np.float32)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.affine_key not in d:
            raise KeyError(f"{type(self).__name__}.inverse: the sample has no {self.affine_key!r}")
        a = np.asarray(convert_to_numpy(d[self.affine_key]), dtype=np.float64)
        done = False
        for k in self.point_keys:
            if net_key(k) in d:
                d[k] = points_to_image_px(np.asarray(convert_to_numpy(d[net_key(k)]), dtype=np.float64), a)
                done = True
        for k in self.box_keys:
            if net_key(k) in d:
                d[k] = boxes_to_image_px(d[net_key(k)], a)
                done = True
        if not done:
            wanted = [net_key(k) for k in self.point_keys + self.box_keys]
            raise KeyError(f"{type(self).__name__}.inverse: none of {wanted} in the sample")
        return d


class RandLetterboxResized(RandomizableTransform, LetterboxResized):
    """:class:`LetterboxResized` with a random zoom, shift and horizontal flip (training augmentation).

    With probability ``prob`` a sample gets a zoom drawn uniformly in ``zoom_range`` (magnification),
    a shift of up to ``shift_frac`` of the net size in x and y, and with probability ``flip_prob`` a
    left-right mirror; one :meth:`randomize` per sample, shared by all keys. All of it is composed into
    ``det_to_image``, so centres and boxes move exactly with the image (a flip swaps the box edges,
    which the box mapping handles; levels do not change under a flip).

    Args:
        prob: probability of the zoom and shift.
        zoom_range: ``(low, high)`` magnification.
        shift_frac: largest shift as a fraction of ``W_net`` (x) and ``H_net`` (y).
        flip_prob: probability of a horizontal flip (independent of ``prob``).
        Other arguments: see :class:`LetterboxResized`.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spatial_size: Sequence[int] = (256, 256),
        prob: float = 1.0,
        zoom_range: Sequence[float] = (0.85, 1.15),
        shift_frac: float = 0.1,
        flip_prob: float = 0.0,
        keep_mm_aspect: bool = True,
        antialias: bool = True,
        cval: float = 0.0,
        spacing_key: str | None = "spacing_mm",
        point_keys: KeysCollection = ("centres_px",),
        box_keys: KeysCollection = ("boxes_px",),
        affine_key: str = "det_to_image",
        net_spacing_key: str | None = "det_spacing_mm",
        allow_missing_keys: bool = False,
    ) -> None:
        LetterboxResized.__init__(self, keys, spatial_size, keep_mm_aspect, antialias, cval, spacing_key,
                                  point_keys, box_keys, affine_key, net_spacing_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        zr = tuple(float(z) for z in ensure_tuple(zoom_range))
        if len(zr) != 2 or not 0 < zr[0] <= zr[1]:
            raise ValueError(f"zoom_range must be (low, high) with 0 < low <= high, got {zoom_range!r}")
        if not 0.0 <= float(shift_frac) < 1.0 or not 0.0 <= float(flip_prob) <= 1.0:
            raise ValueError(f"need 0 <= shift_frac < 1 and 0 <= flip_prob <= 1, got {shift_frac}, {flip_prob}")
        self.zoom_range = zr
        self.shift_frac = float(shift_frac)
        self.flip_prob = float(flip_prob)
        self._params = (1.0, (0.0, 0.0), False)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandLetterboxResized:
        super().set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw the zoom, shift and flip of one sample (always the same number of draws)."""
        super().randomize(None)
        u = self.R.uniform(size=4)
        flip = bool(self.R.uniform() < self.flip_prob)
        if self._do_transform:
            hn, wn = self.spatial_size
            zoom = self.zoom_range[0] + u[0] * (self.zoom_range[1] - self.zoom_range[0])
            shift = ((2 * u[1] - 1) * self.shift_frac * wn, (2 * u[2] - 1) * self.shift_frac * hn)
        else:
            zoom, shift = 1.0, (0.0, 0.0)
        self._params = (float(zoom), (float(shift[0]), float(shift[1])), flip)

    def _augment(self) -> np.ndarray | None:
        zoom, shift, flip = self._params
        if zoom == 1.0 and shift == (0.0, 0.0) and not flip:
            return None
        return augment_affine(self.spatial_size, zoom, shift, flip)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return LetterboxResized.__call__(self, data)


# ---------------------------------------------------------------------------------------------- targets
class CentreHeatmapTarget(Transform):
    """Array transform: centres and boxes in net pixels to the ``(L + 5, H, W)`` training target
    (:func:`monai_spine.codecs.detection.encode_centre_heatmaps`, the encoder of the detection codec).

    Args:
        spatial_size: ``(H_net, W_net)``.
        sigma_px: Gaussian sigma of the centre peaks, net pixels.
        box_radius_px: half-size of the window around each centre pixel where box distances are
            written (0: the centre pixel only).

    ``__call__(centres_net_px, boxes_net_px=None, present=None)``: ``centres_net_px`` ``(L, 2)``,
    ``boxes_net_px`` ``(L, 4)`` (None: no box targets, mask 0), ``present`` ``(L,)`` bool (None: the
    finite centres). A level is left empty (all-zero channel, no box) when it is absent, its centre
    is not finite, or its centre lies outside the net frame ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``
    (augmentation moved it out). Returns a float32 numpy array (see the module docstring).
    """

    backend = [np.ndarray]

    def __init__(self, spatial_size: Sequence[int] = (256, 256), sigma_px: float = 2.0, box_radius_px: int = 1) -> None:
        self.spatial_size = _size_hw(spatial_size)
        if not float(sigma_px) > 0:
            raise ValueError(f"sigma_px must be positive, got {sigma_px}")
        if int(box_radius_px) < 0:
            raise ValueError(f"box_radius_px must be >= 0, got {box_radius_px}")
        self.sigma_px = float(sigma_px)
        self.box_radius_px = int(box_radius_px)

    def __call__(self, centres_net_px: Any, boxes_net_px: Any = None, present: Any = None) -> np.ndarray:
        return encode_centre_heatmaps(
            convert_to_numpy(centres_net_px),
            None if boxes_net_px is None else convert_to_numpy(boxes_net_px),
            None if present is None else convert_to_numpy(present),
            self.spatial_size,
            self.sigma_px,
            self.box_radius_px,
        )


class CentreHeatmapTargetd(MapTransform):
    """Dictionary :class:`CentreHeatmapTarget`: ``d[label_key] = target(d[key], d[box_key], d[present_key])``.

    Args:
        keys: centre keys ``(L, 2)`` in net pixels (default ``"centres_net_px"``); with several keys
            the label key is suffixed with the key name (``label_<key>``).
        box_key: ``(L, 4)`` net-pixel boxes (None or absent: no box target).
        present_key: ``(L,)`` mask of annotated levels (None or absent: the finite centres).
        label_key: output key of the ``(L + 5, H, W)`` float32 target.
        spatial_size, sigma_px, box_radius_px: see :class:`CentreHeatmapTarget`.
        allow_missing_keys: skip absent centre keys instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "centres_net_px",
        spatial_size: Sequence[int] = (256, 256),
        sigma_px: float = 2.0,
        box_radius_px: int = 1,
        box_key: str | None = "boxes_net_px",
        present_key: str | None = "present",
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.target = CentreHeatmapTarget(spatial_size, sigma_px, box_radius_px)
        self.box_key = box_key
        self.present_key = present_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        for key in keys:
            boxes = d.get(self.box_key) if self.box_key is not None else None
            present = d.get(self.present_key) if self.present_key is not None else None
            out_key = self.label_key if len(self.keys) == 1 else f"{self.label_key}_{key}"
            d[out_key] = self.target(d[key], boxes, present)
        return d
