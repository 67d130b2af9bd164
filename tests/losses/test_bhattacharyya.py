"""Tests of the Bhattacharyya loss and metric."""

from __future__ import annotations

import math

import pytest
import torch

from monai_spine.losses.bhattacharyya import BhattacharyyaLoss, BhattacharyyaMetric, bhattacharyya_coefficient


def _m(values):
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1, 2, 2)


CASES = [
    # p, y, BC by hand
    ([0.5, 0.5, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0], 0.5),  # sqrt(.25)
    ([0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], 0.5),  # sqrt(.25)
    ([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], 0.4 + 2 * math.sqrt(0.06)),  # .2 + .2449 + .2449 + .2
    ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], 1.0),  # identical
    ([1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], 0.0),  # disjoint
]


@pytest.mark.parametrize("p, y, bc", CASES)
def test_coefficient_and_loss_hand_values(p, y, bc):
    got = bhattacharyya_coefficient(_m(p), _m(y))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(bc, abs=1e-5)
    assert BhattacharyyaLoss()(_m(p), _m(y)).item() == pytest.approx(-2 * bc, abs=1e-5)


def test_identical_is_minus_two_and_disjoint_is_exactly_zero():
    torch.manual_seed(0)
    p = torch.rand(3, 1, 8, 8)
    p = p / p.sum((1, 2, 3), keepdim=True)
    assert BhattacharyyaLoss()(p, p).item() == pytest.approx(-2.0, abs=1e-4)
    a = torch.zeros(1, 1, 4, 4)
    b = torch.zeros(1, 1, 4, 4)
    a[..., :2, :] = 1 / 8
    b[..., 2:, :] = 1 / 8
    assert BhattacharyyaLoss()(a, b).item() == 0.0


@pytest.mark.parametrize("reduction, expected", [("mean", -1.5), ("sum", -3.0), ("none", [-1.0, -2.0])])
def test_reductions(reduction, expected):
    p = _m([0.5, 0.5, 0.0, 0.0] + [0.1, 0.2, 0.3, 0.4])
    y = _m([0.5, 0.0, 0.5, 0.0] + [0.1, 0.2, 0.3, 0.4])
    out = BhattacharyyaLoss(reduction=reduction)(p, y)
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float64), atol=1e-5)


def test_gradient_matches_equation_4():
    y = _m([0.1, 0.2, 0.3, 0.4])
    p = _m([0.4, 0.3, 0.2, 0.1]).requires_grad_(True)
    BhattacharyyaLoss(reduction="sum")(p, y).backward()
    expected = -torch.sqrt(y / p.detach())  # eq. 4
    assert torch.allclose(p.grad, expected, rtol=1e-4)


def test_gradient_is_finite_at_zero_prediction():
    y = _m([0.25, 0.25, 0.25, 0.25])
    p = _m([0.0, 0.0, 0.5, 0.5]).requires_grad_(True)
    BhattacharyyaLoss()(p, y).backward()
    assert torch.all(torch.isfinite(p.grad))
    assert torch.all(p.grad[..., 0, :] < 0)  # raising p where y > 0 lowers the loss
    # chord slope below eps: dL/dp = -2 y / sqrt(eps)
    assert torch.allclose(p.grad[..., 0, :], torch.full((1, 1, 2), -2 * 0.25 / math.sqrt(1e-10), dtype=torch.float64))
    # above eps eq. 4 holds: -sqrt(y / p)
    assert torch.allclose(p.grad[..., 1, :], torch.full((1, 1, 2), -math.sqrt(0.25 / 0.5), dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    torch.manual_seed(0)
    p = torch.rand(2, 1, 64, 64)
    p = p / p.sum((1, 2, 3), keepdim=True)
    loss = BhattacharyyaLoss()(p.to(dtype), p.to(dtype))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-2.0, abs=5e-3)  # only the rounding of p to half precision


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        BhattacharyyaLoss()(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 3))


def test_metric_accumulates_mean():
    metric = BhattacharyyaMetric()
    out = metric(_m([0.5, 0.5, 0.0, 0.0]), _m([0.5, 0.0, 0.5, 0.0]))
    assert out.shape == (1, 1) and out.item() == pytest.approx(0.5, abs=1e-5)
    metric(_m([0.1, 0.2, 0.3, 0.4] * 2), _m([0.1, 0.2, 0.3, 0.4] * 2))
    assert metric.aggregate().item() == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-5)
    assert metric.aggregate("none").shape == (3, 1)
    metric.reset()
    with pytest.raises(ValueError):
        metric.aggregate()


def test_metric_accepts_list_of_channel_first():
    metric = BhattacharyyaMetric()
    preds = [torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), 0.25)]
    ys = [torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), torch.full((1, 2, 2), 0.25)]
    metric(preds, ys)
    assert metric.aggregate().item() == pytest.approx(0.75, abs=1e-5)
