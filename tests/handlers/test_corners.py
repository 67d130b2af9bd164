"""The corner FCN's evaluator metric (monai_spine/handlers/corners.py): patch maps to corner errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import list_data_collate

from monai_spine.handlers.corners import CornerErrorHandler
from monai_spine.inference.corners import CornerPrior
from monai_spine.inference.heatmap import HeatmapModelSpec
from monai_spine.transforms.patches import CornerPatchesd

W, H = 40.0, 30.0
OFFSETS = np.array([[-W / 2, -H / 2], [W / 2, -H / 2], [-W / 2, H / 2], [W / 2, H / 2]])
LEVELS = ["C3", "C4", "C5", "C6"]


def rect_keypoints(n=4, x=100.0, y0=60.0, step=50.0, jitter=None):
    kp = np.zeros((n, 5, 2))
    for i in range(n):
        c = np.array([x, y0 + step * i])
        kp[i, :4] = OFFSETS * (1.0 if jitter is None else jitter[i]) + c
        kp[i, 4] = c + [W, 0.0]
    return kp


def case(kp, image_id=0, select=None, outlines=True):
    n = len(kp)
    return {
        "image": "unused", "keypoints_px": kp.astype(np.float32), "visible": np.ones(kp.shape[:2], bool),
        "levels": LEVELS[:n], "select": np.ones(n, bool) if select is None else np.asarray(select, bool),
        "outlines_px": [k[[0, 1, 3, 2]] for k in kp[:, :4]] if outlines else [np.zeros((0, 2))] * n,
        "image_id": image_id, "scheme": "lateral5",
    }


def _spec(prior):
    return HeatmapModelSpec(size_ratio=0.7, out_size=64, grid=(2, 0.1), scales=(2.0,), rotations_deg=(0.0,),
                            network={"width": 2}, prior=prior)


def _prior():
    return CornerPrior(OFFSETS / 35.0, np.stack([np.eye(2) * 0.05**2] * 4), count=10)


def _run_handler(handler, patches, maps, batch_size):
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, batch=None, output=None))
    handler._engine = engine
    handler.reset()
    for i in range(0, len(patches), batch_size):
        batch = list_data_collate(patches[i : i + batch_size])
        engine.state.batch = batch
        engine.state.output = {"pred": torch.as_tensor(maps[i : i + batch_size])}
        handler.iteration_completed(engine)
    return handler.compute(), engine.state.metrics


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
