"""Evaluation of the corner predictor against annotations (monai_spine/evaluation/corners.py), checked
against the bundle's validation handler on the same image."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from monai.data import list_data_collate

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.engines.heatmap import heatmap_cases
from monai_spine.evaluation.corners import evaluate_corner_model
from monai_spine.handlers.corners import CornerErrorHandler
from monai_spine.inference.corners import CornerPrior
from monai_spine.inference.heatmap import CornerPredictor, HeatmapModelSpec
from monai_spine.networks.fcn import SpatialNormalization
from monai_spine.transforms.io import LoadXrayd
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


def dot_image(points, shape=(300, 200), sigma=1.5):
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for x, y in np.asarray(points).reshape(-1, 2):
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return img


class DotOracle(torch.nn.Module):
    def forward(self, x):
        return SpatialNormalization()(torch.relu(x - 2.0))


@pytest.fixture()
def written_case(tmp_path):
    """A PNG of dots at rectangle corners (one corner moved off the rectangle) and its annotation (spacing 0.5 mm)."""
    kp = rect_keypoints()
    kp[2, 3] += [1.5, 1.0]
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), np.clip(200 * dot_image(kp[:, :4]), 0, 255).astype(np.uint8))
    ann = SpineAnnotation(levels=LEVELS, keypoints_px=kp, visible=np.ones((4, 5), bool), region="cervical",
                          scheme="lateral5", image=str(path), image_size=(200, 300), spacing_mm=(0.5, 0.5),
                          spacing_source="sidecar", outlines_px=[k[[0, 1, 3, 2]] for k in kp[:, :4]])
    label = tmp_path / "img.json"
    write_annotation(ann, label)
    return label, kp


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


def test_validation_handler_and_predictor_evaluation_agree(written_case):
    label, kp = written_case
    cases = heatmap_cases([str(label)], region="cervical", image_id_offset=2)
    spec = _spec(_prior())
    predictor = CornerPredictor(DotOracle(), spec)
    summary, acc = evaluate_corner_model(predictor, cases)
    assert summary["images"] == 1 and summary["vertebrae"] == 4 and summary["p2p_count"] == 16
    assert summary["p2p_mean_mm"] < 0.4 and summary["p2p_max_mm"] < 0.6  # the moved corner is found too
    assert 0 < summary["bc_mean"] < 1 and summary["prior_fallback"] == 0.0
    # the bundle's validation path: LoadXrayd -> CornerPatchesd -> network -> handler
    d = LoadXrayd(keys="image")(cases[0])
    patches = CornerPatchesd(size_ratio=spec.size_ratio, out_size=64, grid=spec.grid, scales=spec.scales,
                             rotations_deg=spec.rotations_deg)(d)
    with torch.no_grad():
        maps = DotOracle()(torch.as_tensor(np.stack([p["image"] for p in patches]))).numpy()
    handler = CornerErrorHandler(cases, spec)
    value, metrics = _run_handler(handler, patches, maps, batch_size=16)
    assert value == pytest.approx(summary["p2p_mean_mm"], abs=1e-9)
    assert metrics["val_p2c_mean_mm"] == pytest.approx(summary["p2c_mean_mm"], abs=1e-9)
    assert metrics["val_bc_mean"] == pytest.approx(summary["bc_mean"], abs=1e-6)
