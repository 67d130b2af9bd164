"""The detector's losses (monai_spine/losses/detection.py): hand-computed values, gradients, bad shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_spine.losses.detection import ChainDetectionLoss, DetectionLoss
from monai_spine.transforms.detection import CentreHeatmapTarget


def test_loss_hand_computed_at_zero_logits():
    # one level channel of 2 x 2 with one positive, all logits 0 (p = 1/2): every pixel costs 1/4 * log 2,
    # 4 pixels / 1 positive = log 2; box: predicted 0, target 0.1 at one masked pixel: L1 = 0.1, weight 5
    pred = torch.zeros(1, 5, 2, 2)
    target = torch.zeros(1, 6, 2, 2)
    target[0, 0, 0, 1] = 1.0
    target[0, 1:5, 0, 1] = 0.1
    target[0, 5, 0, 1] = 1.0
    assert DetectionLoss(size_weight=5.0)(pred, target).item() == pytest.approx(math.log(2) + 0.5, rel=1e-6)
    assert DetectionLoss(size_weight=0.0, heatmap="mse")(pred, target).item() == pytest.approx(1.0, rel=1e-6)


def test_loss_is_near_zero_for_a_confident_correct_prediction_and_has_gradients():
    y = torch.as_tensor(CentreHeatmapTarget((16, 16), 1.5)(np.array([[5.0, 6.0], [10.0, 12.0]]),
                                                            np.array([[2, 3, 8, 9], [7, 9, 13, 15]], float)))[None]
    logits = torch.where(y[:, :2] >= 1, 20.0, -20.0)
    good = torch.cat([logits, y[:, 2:6]], 1)
    loss = DetectionLoss()
    assert loss(good, y).item() < 1e-3
    bad = torch.zeros_like(good, requires_grad=True)
    value = loss(bad, y)
    value.backward()
    assert value.item() > 1.0 and torch.isfinite(bad.grad).all() and bad.grad.abs().sum() > 0


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="L\\+5"):
        DetectionLoss()(torch.zeros(1, 7, 4, 4), torch.zeros(1, 7, 4, 4))
    with pytest.raises(ValueError, match="heatmap"):
        DetectionLoss(heatmap="l2")


def test_chain_loss_adds_the_level_error_in_levels():
    # the heatmap and box terms of test_loss_hand_computed_at_zero_logits (log 2 + 0.5); the level logit 0
    # reads sigmoid 0.5 = level 2 of 5 (L - 1 = 4), the target 0.75 = level 3: 1 level off at the one
    # masked pixel, times level_weight 0.1
    pred = torch.zeros(1, 6, 2, 2)
    target = torch.zeros(1, 8, 2, 2)
    target[0, 0, 0, 1] = 1.0
    target[0, 1, 0, 1] = 0.75
    target[0, 2:6, 0, 1] = 0.1
    target[0, 6, 0, 1] = 1.0
    target[0, 7, 0, 1] = 1.0
    loss = ChainDetectionLoss(5, size_weight=5.0, level_weight=0.1)(pred, target)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 + 0.1, rel=1e-6)
    target[0, 7] = 0.0  # no level mask: the level term is 0
    assert ChainDetectionLoss(5)(pred, target).item() == pytest.approx(math.log(2) + 0.5, rel=1e-6)


def test_chain_loss_rejects_bad_shapes_and_levels():
    with pytest.raises(ValueError, match="B, 6, H, W"):
        ChainDetectionLoss(5)(torch.zeros(1, 5, 2, 2), torch.zeros(1, 8, 2, 2))
    with pytest.raises(ValueError, match="num_levels"):
        ChainDetectionLoss(1)


def test_spine_strip_loss_hand_computed():
    from monai_spine.losses.detection import SpineStripLoss, heatmap_focal_loss

    pred = torch.zeros(1, 2, 4, 3)
    target = torch.zeros(1, 3, 4, 3)
    target[0, 0, 1, 1] = 1.0
    target[0, 1] = torch.tensor([0.0, 1.0, 2.0, 5.0])[:, None]  # the prediction is 0 everywhere
    target[0, 2, :3] = 1.0  # the last row is masked out
    hm = heatmap_focal_loss(pred[:, :1], target[:, :1])
    # smooth L1 (beta 1) of errors 0, 1, 2 -> 0, 0.5, 1.5; mean over 3 rows = 2 / 3
    assert SpineStripLoss(level_weight=0.3)(pred, target).item() == pytest.approx(hm.item() + 0.3 * 2 / 3, rel=1e-6)
    # p = 0.5 everywhere: the positive costs (1 - p)^2 ln 2, each of the 11 negatives p^2 ln 2; one positive
    assert hm.item() == pytest.approx(12 * 0.25 * math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, R, W\)"):
        SpineStripLoss()(pred, target[:, :2])
