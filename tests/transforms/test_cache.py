"""Tests of transforms/cache.py."""

from __future__ import annotations

import numpy as np


def test_cached_loader_returns_equal_independent_copies(tmp_path):
    import cv2

    from monai_spine.transforms.cache import CachedLoadXrayd
    from monai_spine.transforms.io import LoadXrayd

    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), (np.arange(40 * 30).reshape(40, 30) % 251 + i).astype(np.uint8))
        paths.append(str(p))
    memo, plain = CachedLoadXrayd(keys="image", max_images=2), LoadXrayd(keys="image")
    for p in paths + paths[-1:]:
        a, b = memo({"image": p, "other": 1}), plain({"image": p})
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["image"].dtype == np.float32 and a["other"] == 1
        assert a["spacing_source"] == b["spacing_source"] == "unknown"
    assert (memo.misses, memo.hits) == (3, 1)  # the last image is served from memory
    a = memo({"image": paths[-1]})
    a["image"][:] = 0  # a caller's change does not leak into the memory
    assert memo({"image": paths[-1]})["image"].max() > 0
    memo({"image": paths[0]})  # dropped by the LRU limit of 2: decoded again
    assert memo.misses == 4
