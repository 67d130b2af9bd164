"""Tests of the probabilistic spatial regression FCN (Al Arif et al. 2017)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from monai_spine.networks.fcn import (
    FULL_WIDTH,
    PAPER_NUM_PARAMETERS,
    ProbabilisticUNet,
    SpatialNormalization,
    count_conv_layers,
)


def _num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "x, expected",
    [
        ([1.0, 2.0, 3.0, 4.0], [0.0, 1 / 6, 2 / 6, 3 / 6]),  # (x - 1) / (0 + 1 + 2 + 3)
        ([-2.0, -2.0, 0.0, 2.0], [0.0, 0.0, 2 / 6, 4 / 6]),
        ([5.0, 5.0, 5.0, 5.0], [0.25, 0.25, 0.25, 0.25]),  # flat -> uniform
    ],
)
def test_spatial_normalization_hand_values(x, expected):
    out = SpatialNormalization()(torch.tensor(x).reshape(1, 1, 2, 2))
    assert torch.allclose(out.reshape(-1), torch.tensor(expected), atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 1, 64, 64), (4, 5)])
def test_spatial_normalization_is_a_distribution(shape):
    torch.manual_seed(0)
    out = SpatialNormalization()(torch.randn(shape) * 10)
    assert out.shape == shape
    assert torch.all(out >= 0)
    assert torch.allclose(out.reshape(shape[0], -1).sum(1), torch.ones(shape[0]), atol=1e-5)


def test_spatial_normalization_flat_input_has_finite_gradient():
    x = torch.full((2, 1, 4, 4), 3.0, requires_grad=True)
    out = SpatialNormalization()(x)
    assert torch.allclose(out, torch.full_like(out, 1 / 16))
    (out * torch.arange(16.0).reshape(1, 1, 4, 4)).sum().backward()
    assert torch.all(torch.isfinite(x.grad))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_spatial_normalization_half_precision_returns_float32(dtype):
    torch.manual_seed(0)
    out = SpatialNormalization()(torch.randn(2, 1, 64, 64).to(dtype))
    assert out.dtype == torch.float32
    assert torch.allclose(out.sum((1, 2, 3)), torch.ones(2), atol=1e-5) and torch.all(out >= 0)


def test_spatial_normalization_rejects_batch_only():
    with pytest.raises(ValueError, match="non-batch"):
        SpatialNormalization()(torch.ones(3))


@pytest.mark.parametrize("width", [2, 4])
def test_layer_counts(width):
    net = ProbabilisticUNet(width=width)
    assert count_conv_layers(net) == 19  # the paper's 19 convolutional layers
    assert count_conv_layers(net, include_transposed=True) == 23  # plus 4 deconvolutions
    # batch norm + ReLU after every convolution but the last
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 18
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 18
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 1  # one module, used 4 times


def test_full_width_parameter_count():
    net = ProbabilisticUNet(width=FULL_WIDTH)
    n = _num_params(net)
    assert n == 24_224_961
    assert abs(n - PAPER_NUM_PARAMETERS) / PAPER_NUM_PARAMETERS < 1e-3


def test_forward_output_is_distribution_and_backprops():
    torch.manual_seed(0)
    net = ProbabilisticUNet(width=2)
    x = torch.randn(2, 1, 64, 64)
    y = net(x)
    assert y.shape == (2, 1, 64, 64)
    assert torch.all(y >= 0)
    assert torch.allclose(y.sum((1, 2, 3)), torch.ones(2), atol=1e-5)
    (y * torch.rand_like(y)).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.all(torch.isfinite(g)) for g in grads)


def test_raw_output_without_normalization():
    net = ProbabilisticUNet(width=2, normalize=False).eval()
    y = net(torch.randn(1, 1, 32, 32))
    assert y.shape == (1, 1, 32, 32)
    assert y.min() < 0 or not torch.isclose(y.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("shape", [(1, 1, 63, 64), (1, 1, 64, 40), (1, 64, 64)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="divisible"):
        ProbabilisticUNet(width=2)(torch.zeros(shape))


def test_bad_constructor_args():
    with pytest.raises(ValueError):
        ProbabilisticUNet(width=0)
    with pytest.raises(ValueError):
        ProbabilisticUNet(width=2, multipliers=(1,))
