"""Loading transforms: an X-ray file path -> a ``(1, H, W)`` float32 image and its pixel spacing.

Both transforms read through :func:`monai_spine.data.readers.read_xray` (DICOM, PNG/JPEG/TIFF/BMP,
NIfTI, NRRD; spacing from the header or a ``<image>.spacing.json`` sidecar, never silently 1.0).

Bundle config example::

    {"_target_": "monai_spine.transforms.io.LoadXrayd", "keys": "image"}

After :class:`LoadXrayd` a data dictionary holds (default key names)::

    image           (1, H, W) float32 numpy array, raw intensities (not normalised)
    spacing_mm      (2,) float32 [sx, sy] mm per pixel, or [nan, nan] when unknown
    spacing_source  str, one of monai_spine.data.keypoints.SPACING_SOURCES
    image_size      (2,) int64 [W, H]
    image_path      str, the path that was read

These collate into batches as MONAI's default collate does for arrays and strings: a ``(B, 2)``
spacing tensor with NaN rows for images of unknown spacing.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from monai_spine.data.readers import read_xray

__all__ = ["LoadXray", "LoadXrayd", "LoadXrayD", "LoadXrayDict"]


class LoadXray(Transform):
    """Read one X-ray file into a ``(1, H, W)`` float32 array (spacing is dropped; see :class:`LoadXrayd`).

    Example::

        image = LoadXray()("case_0001.dcm")   # (1, H, W) float32
    """

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        """Read ``path``.

        Args:
            path: an image file (DICOM, PNG/JPEG/TIFF/BMP, NIfTI, NRRD).

        Returns:
            ``(1, H, W)`` float32 raw intensities.

        Raises:
            monai_spine.data.readers.XrayReadError: unreadable file (message names it).
        """
        return read_xray(path).channel_first()


class LoadXrayd(MapTransform):
    """Dictionary version of :class:`LoadXray` that also stores the pixel spacing and image size.

    For every key in ``keys`` holding a file path, replaces the path by the ``(1, H, W)`` float32
    image and writes the spacing, its source, the size and the path under the configured keys
    (``None`` skips an entry). With several image keys, give one output key name per image key
    (sequences of the same length), or the entries would overwrite each other.

    Args:
        keys: keys of the entries holding image paths.
        spacing_key: where to put ``[sx, sy]`` (float32, NaN when unknown).
        spacing_source_key: where to put the spacing source string.
        image_size_key: where to put ``[W, H]`` (int64).
        image_path_key: where to put the path that was read.
        meta_key: where to put the reader's meta dictionary (DICOM tags, notes); None (default)
            leaves it out, as its contents differ between files and may not collate.
        spacing_override_key: a sample entry ``(sx, sy)`` that, when present, is the spacing to use
            (source ``"sidecar"``), e.g. the spacing an annotation file records for a PNG image.
        allow_missing_keys: skip image keys that are absent instead of raising ``KeyError``.

    Raises:
        ValueError: several image keys share an output key name.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        spacing_key: KeysCollection | None = "spacing_mm",
        spacing_source_key: KeysCollection | None = "spacing_source",
        image_size_key: KeysCollection | None = "image_size",
        image_path_key: KeysCollection | None = "image_path",
        meta_key: KeysCollection | None = None,
        spacing_override_key: str | None = "sidecar_spacing_mm",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spacing_override_key = spacing_override_key
        n = len(self.keys)
        self.out_keys: dict[str, tuple[Hashable | None, ...]] = {}
        for arg, value in (
            ("spacing_key", spacing_key),
            ("spacing_source_key", spacing_source_key),
            ("image_size_key", image_size_key),
            ("image_path_key", image_path_key),
            ("meta_key", meta_key),
        ):
            names = ensure_tuple_rep(value, n)
            used = [k for k in names if k is not None]
            if len(set(used)) != len(used):
                raise ValueError(
                    f"LoadXrayd: {arg}={value!r} is shared by the image keys {list(self.keys)}; "
                    "give one name per image key"
                )
            self.out_keys[arg] = names

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load every image key of ``data``; returns a new dictionary.

        Raises:
            KeyError: an image key is missing and ``allow_missing_keys`` is False.
            TypeError: an image entry is not a path.
            monai_spine.data.readers.XrayReadError: unreadable file (message names it).
        """
        d = dict(data)
        outs = self.out_keys
        for key, sp_k, src_k, size_k, path_k, meta_k in self.key_iterator(
            d,
            outs["spacing_key"],
            outs["spacing_source_key"],
            outs["image_size_key"],
            outs["image_path_key"],
            outs["meta_key"],
        ):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                raise TypeError(f"LoadXrayd: d[{key!r}] must be an image file path, got {type(path).__name__}")
            override = d.get(self.spacing_override_key) if self.spacing_override_key is not None else None
            img = read_xray(path, spacing_mm=None if override is None else [float(v) for v in np.ravel(override)])
            d[key] = img.channel_first()
            if sp_k is not None:
                d[sp_k] = img.spacing_array
            if src_k is not None:
                d[src_k] = img.spacing_source
            if size_k is not None:
                d[size_k] = np.array(img.size_wh, dtype=np.int64)
            if path_k is not None:
                d[path_k] = os.fspath(path)
            if meta_k is not None:
                d[meta_k] = img.meta
        return d


LoadXrayD = LoadXrayDict = LoadXrayd
