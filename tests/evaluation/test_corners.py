"""Evaluation of the corner predictor against annotations (monai_spine/evaluation/corners.py), checked
against the bundle's validation handler on the same image."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.engines.heatmap import heatmap_cases
from monai_spine.evaluation.corners import evaluate_corner_model
from monai_spine.handlers.corners import CornerErrorHandler
from monai_spine.inference.heatmap import CornerPredictor
from monai_spine.networks.fcn import SpatialNormalization
from monai_spine.transforms.io import LoadXrayd
from monai_spine.transforms.patches import CornerPatchesd
from corner_cases import (
    corner_prior as _prior,
    dot_image,
    heatmap_spec as _spec,
    LEVELS,
    rect_keypoints,
    run_handler as _run_handler,
)


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
