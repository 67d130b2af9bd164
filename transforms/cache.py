"""Caching loader: :class:`~monai_spine.transforms.io.LoadXrayd` that decodes each radiograph once per process.

Bundle config example (``train.json``'s ``load_transforms``)::

    {"_target_": "monai_spine.transforms.cache.CachedLoadXrayd", "keys": "image", "max_images": 256}
"""

from __future__ import annotations

import copy as _copy
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from monai_spine.transforms.io import LoadXrayd

__all__ = ["CachedLoadXrayd"]


class CachedLoadXrayd(LoadXrayd):
    """:class:`LoadXrayd` that keeps the decoded radiographs in memory (least recently used dropped first).

    Crop-based training reads each radiograph once per vertebra per epoch (5 times for a synthetic lateral
    image, 17 for an AASCE, each a 1-3 Mpx JPEG decode); this keeps the loaded outputs keyed by file path (and spacing
    override) and returns copies. Images whose values are exact in float16 (8-bit JPEGs) are stored as
    float16 and returned as float32. With DataLoader workers each worker keeps its own memory (still
    correct; fewer hits). ``train.json`` uses it for training and validation (``cache_images``).

    Args:
        keys: image keys (as LoadXrayd).
        max_images: radiographs kept (least recently used dropped first).
        kwargs: passed to LoadXrayd.
    """

    def __init__(self, keys: Any, max_images: int = 512, **kwargs: Any) -> None:
        super().__init__(keys, **kwargs)
        if int(max_images) < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.max_images = int(max_images)
        self._memo: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, data: Any) -> dict:
        keys = [k for k in self.keys if k in data]
        ov = data.get(self.spacing_override_key) if self.spacing_override_key is not None else None
        memo_key = (tuple((k, os.fspath(data[k])) for k in keys),
                    None if ov is None else tuple(float(v) for v in np.ravel(ov)))
        stored = self._memo.get(memo_key)
        if stored is None:
            self.misses += 1
            small = {k: data[k] for k in keys}
            if ov is not None:
                small[self.spacing_override_key] = ov
            loaded = super().__call__(small)
            stored = {}
            for k, v in loaded.items():
                if k == self.spacing_override_key:
                    continue
                if isinstance(v, np.ndarray) and v.dtype == np.float32:
                    half = v.astype(np.float16)
                    v = half if np.array_equal(half.astype(np.float32), v) else v.copy()
                stored[k] = v
            self._memo[memo_key] = stored
            while len(self._memo) > self.max_images:
                self._memo.popitem(last=False)
        else:
            self.hits += 1
            self._memo.move_to_end(memo_key)
        d = dict(data)
        for k, v in stored.items():
            d[k] = v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float16 else (
                v.copy() if isinstance(v, np.ndarray) else _copy.deepcopy(v))
        return d
