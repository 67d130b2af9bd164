"""Intensity transforms for spinal radiographs: contrast-limited adaptive histogram equalisation, and
:func:`scale_film_intensities` (a film's percentiles to 0 and 1, as the AP detector's training arrays and
the spine-strip refiner read films).

MONAI 1.6.1 has no CLAHE, so this module wraps OpenCV's ``cv2.createCLAHE``. Each channel of a
channel-first ``(C, H, W)`` image is rescaled to the full range of an unsigned integer copy
(``bits`` = 8 or 16), equalised, and mapped back so that the output minimum and maximum equal the
input minimum and maximum (the intensity range is kept; only the distribution inside it changes).

Example bundle config entry::

    {"_target_": "monai_spine.transforms.RandCLAHEd", "keys": ["image"], "prob": 0.5,
     "clip_limit": [1.0, 4.0], "tile_grid_size": [8, 8]}
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy

from monai_spine.data.patches import image_2d

__all__ = ["CLAHE", "CLAHEd", "RandCLAHEd", "clahe", "scale_film_intensities"]


def _tile_grid(tile_grid_size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(tiles along H, tiles along W)`` from an int or a pair."""
    if isinstance(tile_grid_size, (int, np.integer)):
        tiles = (int(tile_grid_size), int(tile_grid_size))
    else:
        tiles = tuple(int(t) for t in tile_grid_size)
    if len(tiles) != 2 or min(tiles) < 1:
        raise ValueError(f"tile_grid_size must be a positive int or (rows, cols) pair, got {tile_grid_size!r}")
    return tiles  # type: ignore[return-value]


def scale_film_intensities(image: Any, percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """``(H, W)`` float32 film scaled so that the given percentiles map to 0 and 1 (clipped).

    Raises:
        ValueError: the image is not ``(H, W)`` or ``(1, H, W)``.
    """
    img = image_2d(image, "scale_film_intensities")
    lo, hi = np.percentile(img, [float(percentiles[0]), float(percentiles[1])])
    return np.clip((img - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def clahe(
    image: np.ndarray, clip_limit: float = 2.0, tile_grid_size: int | Sequence[int] = (8, 8), bits: int = 8
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a channel-first image, keeping its range.

    Args:
        image: ``(C, H, W)`` (or ``(H, W)``) numpy array, any real dtype.
        clip_limit: OpenCV's ``clipLimit``: the histogram of each tile is clipped at ``clip_limit``
            times the mean count per bin (1 gives almost no enhancement, 2-4 is usual; ``<= 0``
            disables clipping, i.e. plain adaptive equalisation).
        tile_grid_size: number of tiles as ``(rows, cols)`` = (along H, along W), or one int for
            both. (OpenCV's ``tileGridSize`` is the reverse, ``(cols, rows)``; the conversion is done
            here.)
        bits: 8 or 16, the depth of the quantised copy that OpenCV equalises. With 16 bits OpenCV
            uses 65536 histogram bins and its per-bin clip count ``int(clip_limit * tile_px / 65536)``
            is at least 1, so for usual tile sizes every ``clip_limit`` below ``65536 / tile_px``
            gives the same result; 8 bits (the default) keeps ``clip_limit`` meaningful.

    Returns:
        Float array of the input's shape (float32 unless the input is float64), whose per-channel
        min and max equal the input's. A constant (or non-finite) channel is returned unchanged.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"CLAHE expects a (C, H, W) or (H, W) image, got shape {arr.shape}")
    out_dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    out_dtype = np.dtype(out_dtype)
    chans = arr[None] if arr.ndim == 2 else arr
    out = np.empty(chans.shape, dtype=out_dtype)
    rows, cols = _tile_grid(tile_grid_size)
    # cv2 CLAHE objects are cheap; a new one per call keeps the function thread-safe
    eq = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(cols, rows))
    top = float(2**bits - 1)
    qtype = np.uint8 if bits == 8 else np.uint16
    for c in range(chans.shape[0]):
        # float32 arithmetic is exact enough for 16-bit levels and several times faster than float64
        ch = chans[c] if chans.dtype in (np.float32, np.float64) else chans[c].astype(np.float32)
        lo, hi = (float(ch.min()), float(ch.max())) if ch.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
            out[c] = chans[c]  # constant / empty / non-finite: nothing to equalise
            continue
        ftype = ch.dtype.type
        q = ((ch - ftype(lo)) * ftype(top / (hi - lo)) + ftype(0.5)).astype(qtype)  # round half up, >= 0
        r = eq.apply(np.ascontiguousarray(q))
        rlo, rhi = (float(v) for v in cv2.minMaxLoc(r)[:2])
        if rhi <= rlo:  # pragma: no cover - CLAHE of a non-constant image is not constant in practice
            rlo, rhi = 0.0, top
        scale = (hi - lo) / (rhi - rlo)
        res = r.astype(out_dtype) * out_dtype.type(scale) + out_dtype.type(lo - rlo * scale)
        # pin the end points exactly to the input range (float rounding of the affine map)
        res[r == int(rlo)] = lo
        res[r == int(rhi)] = hi
        out[c] = res
    return out[0] if arr.ndim == 2 else out


class CLAHE(Transform):
    """Array transform: CLAHE of a channel-first image keeping its intensity range.

    Args:
        clip_limit: see :func:`clahe` (OpenCV semantics).
        tile_grid_size: ``(rows, cols)`` tile counts or one int.
        bits: 8 or 16, quantisation depth of the copy that is equalised (see :func:`clahe`).

    ``__call__(img)`` takes a ``(C, H, W)`` numpy array or torch tensor (MetaTensor metadata is kept)
    and returns the same type, device and shape.
    """

    backend = [np.ndarray, torch.Tensor]

    def __init__(self, clip_limit: float = 2.0, tile_grid_size: int | Sequence[int] = (8, 8), bits: int = 8) -> None:
        if bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {bits!r}")
        self.clip_limit = float(clip_limit)
        self.tile_grid_size = _tile_grid(tile_grid_size)
        self.bits = int(bits)

    def __call__(self, img: Any, clip_limit: float | None = None) -> Any:
        """Equalise ``img``; ``clip_limit`` overrides the constructor's for this call."""
        cl = self.clip_limit if clip_limit is None else float(clip_limit)
        arr = convert_to_numpy(img)
        res = clahe(arr, cl, self.tile_grid_size, self.bits)
        if isinstance(img, np.ndarray):
            return res
        out, *_ = convert_to_dst_type(res, img, dtype=img.dtype if img.is_floating_point() else torch.float32)
        return out


class CLAHEd(MapTransform):
    """Dictionary wrapper of :class:`CLAHE` applied to every key in ``keys``.

    Args:
        keys: image keys (``(C, H, W)`` arrays or tensors).
        clip_limit, tile_grid_size, bits: see :class:`CLAHE`.
        allow_missing_keys: skip absent keys instead of raising ``KeyError``.
    """

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        clip_limit: float = 2.0,
        tile_grid_size: int | Sequence[int] = (8, 8),
        bits: int = 8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clahe = CLAHE(clip_limit, tile_grid_size, bits)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key])
        return d


class RandCLAHEd(RandomizableTransform, MapTransform):
    """Random CLAHE: with probability ``prob``, equalise all ``keys`` with one clip limit drawn
    uniformly from ``clip_limit = (low, high)`` (one :meth:`randomize` per call, shared by the keys).

    Args:
        keys: image keys.
        prob: probability of applying the transform.
        clip_limit: ``(low, high)`` range of OpenCV clip limits, or one number (fixed).
        tile_grid_size, bits: see :class:`CLAHE`.
        allow_missing_keys: skip absent keys instead of raising ``KeyError``.
    """

    backend = CLAHE.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        clip_limit: float | Sequence[float] = (1.0, 4.0),
        tile_grid_size: int | Sequence[int] = (8, 8),
        bits: int = 8,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        rng = (float(clip_limit), float(clip_limit)) if np.isscalar(clip_limit) else tuple(map(float, clip_limit))
        if len(rng) != 2 or rng[0] > rng[1]:
            raise ValueError(f"clip_limit must be a number or a (low, high) pair with low <= high, got {clip_limit!r}")
        self.clip_limit_range = rng
        self.clahe = CLAHE(rng[0], tile_grid_size, bits)
        self._clip_limit = rng[0]

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandCLAHEd:
        super().set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        """Draw whether to apply the transform and the clip limit used for every key."""
        super().randomize(None)
        if self._do_transform:
            self._clip_limit = float(self.R.uniform(*self.clip_limit_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.clahe(d[key], clip_limit=self._clip_limit)
        return d
