"""Horizontal flip of a radiograph with its keypoints, labels swapped (anterior <-> posterior, left <-> right).

Keypoint conventions: :mod:`monai_spine.transforms.keypoints`. The swap table is data
(:func:`monai_spine.data.keypoints.get_scheme`), never code.

Inversion: :class:`FlipKeypointsd` / :class:`RandFlipKeypointsd` use MONAI's ``TraceableTransform``
machinery: for every key one entry is pushed (``push_transform``) with the image width and scheme in
``extra_info``. A MetaTensor keeps it in ``applied_operations`` (and its affine is updated like
MONAI's ``Flip``); a numpy array or plain tensor keeps it in the dictionary under
``f"{key}_transforms"`` (MONAI's dictionary fallback). ``inverse()`` pops these entries and flips
back, so tracing must be on (MONAI's default; ``MONAI_TRACE_TRANSFORM=0`` disables it).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, RandomizableTransform, Transform
from monai.utils import TraceKeys, ensure_tuple

from monai_spine.data.keypoints import get_scheme

from monai_spine.transforms.keypoints import _check_points, _compose_meta_affine, _float_like

__all__ = [
    "flip_image",
    "permute_labels",
    "flip_keypoints_px",
    "flip_box_px",
    "FlipKeypoints",
    "FlipKeypointsd",
    "RandFlipKeypointsd",
]



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
