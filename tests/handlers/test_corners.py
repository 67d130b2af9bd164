"""The corner FCN's evaluator metric (monai_spine/handlers/corners.py): patch maps to corner errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monai_spine.handlers.corners import CornerErrorHandler
from monai_spine.transforms.patches import CornerPatchesd
from corner_cases import (
    corner_prior as _prior,
    heatmap_spec as _spec,
    LEVELS,
    rect_keypoints,
    run_handler as _run_handler,
)


def case(kp, image_id=0, select=None, outlines=True):
    n = len(kp)
    return {
        "image": "unused", "keypoints_px": kp.astype(np.float32), "visible": np.ones(kp.shape[:2], bool),
        "levels": LEVELS[:n], "select": np.ones(n, bool) if select is None else np.asarray(select, bool),
        "outlines_px": [k[[0, 1, 3, 2]] for k in kp[:, :4]] if outlines else [np.zeros((0, 2))] * n,
        "image_id": image_id, "scheme": "lateral5",
    }


def test_handler_with_perfect_maps_recovers_corners_and_bc_one():
    kp = rect_keypoints()
    d = {**case(kp, image_id=5), "image": np.zeros((1, 300, 200), np.float32),
         "spacing_mm": np.array([0.5, 0.5], np.float32), "image_size": np.array([200, 300])}
    patches = CornerPatchesd(size_ratio=0.7, out_size=64, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0,))(d)
    maps = np.stack([p["label"] for p in patches])  # the targets as predictions
    handler = CornerErrorHandler([case(kp, image_id=5)], _spec(_prior()), prefix="val_")
    value, metrics = _run_handler(handler, patches, maps, batch_size=5)  # batches cross vertebrae
    assert value == metrics["val_p2p_mean_mm"] and value < 0.5  # half a pixel
    assert metrics["val_bc_mean"] == pytest.approx(1.0, abs=2e-3) and metrics["val_bc_count"] == 16
    assert metrics["val_prior_fallback"] == 0.0 and metrics["val_spacing_known"] == 1.0
    assert metrics["val_p2c_mean_mm"] <= metrics["val_p2p_mean_mm"] + 1e-9
    with pytest.raises(KeyError, match="image_id 5"):
        _run_handler(CornerErrorHandler([case(kp, image_id=6)], _spec(_prior())), patches, maps, 16)


def test_handler_needs_patch_geometry():
    handler = CornerErrorHandler([], _spec(None))
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, batch={"image": torch.zeros(1)},
                                                   output={"pred": torch.zeros(1, 1, 4, 4)}))
    with pytest.raises(KeyError, match="patch_affine"):
        handler.iteration_completed(engine)
    engine.state.output = {}
    with pytest.raises(KeyError, match="pred"):
        handler.iteration_completed(engine)
