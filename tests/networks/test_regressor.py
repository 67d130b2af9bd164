"""Tests of monai_spine.networks.regressor: shapes, gradients, head split and factory."""

from __future__ import annotations

import pytest
import torch

from monai_spine.networks.cbam import CBAM
from monai_spine.networks.regressor import (
    MIN_INPUT_SIZE,
    REGRESSOR_VARIANTS,
    BayeCBAM,
    Baseline,
    CBAMRegressor,
    build_regressor,
    split_mean_logvar,
)

TINY = {"width": 0.0625, "fc_features": 16}

CASES = [
    # variant, num_points, extra kwargs, last axis
    ("baseline", 5, {}, 2),
    ("baseline", 4, {"batch_norm": True}, 2),
    ("cbam", 5, {}, 2),
    ("cbam", 4, {"cbam_layers": (4,), "cbam_paper_eq3": True}, 2),
    ("bayecbam", 5, {}, 4),
    ("bayecbam", 4, {"separate_branches": True, "output_activation": "sigmoid"}, 4),
]


@pytest.mark.parametrize("variant, k, kw, last", CASES)
def test_shapes_and_gradients(variant, k, kw, last):
    torch.manual_seed(0)
    net = build_regressor(variant, k, **TINY, **kw)
    x = torch.randn(2, 1, 64, 128, requires_grad=True)
    out = net(x)
    assert out.shape == (2, k, last)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("variant, last", [("baseline", 2), ("cbam", 2), ("bayecbam", 4)])
def test_paper_input_size(variant, last):
    net = build_regressor(variant, 5, **TINY).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 224, 448))
        trunk = net.trunk(torch.randn(1, 1, 224, 448))
    assert out.shape == (1, 5, last)
    assert trunk.shape[-2:] == (6, 13)  # AlexNet trunk on 224 x 448


@pytest.mark.parametrize("variant", sorted(REGRESSOR_VARIANTS))
def test_forward_is_head_of_features(variant):
    net = build_regressor(variant, 5, **TINY).eval()
    x = torch.randn(3, 1, 64, 128)
    with torch.no_grad():
        feats = net.features(x)
        assert feats.shape == (3, net.num_features)
        torch.testing.assert_close(net.head(feats), net(x))


def test_dropout_only_in_head():
    net = build_regressor("bayecbam", 5, **TINY)
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.trunk.modules())
    assert sum(isinstance(m, torch.nn.Dropout) for m in net.regressor_hidden.modules()) == 2


def test_width_scales_channels():
    assert Baseline(5, width=1.0).channels == (64, 192, 384, 256, 256)
    assert Baseline(5, width=0.25, fc_features=8).channels == (16, 48, 96, 64, 64)


def test_cbam_placement():
    net = CBAMRegressor(5, **TINY, cbam_layers=(0, 4))
    assert sum(isinstance(m, CBAM) for m in net.modules()) == 2
    assert sum(isinstance(m, CBAM) for m in CBAMRegressor(5, **TINY).modules()) == 5
    assert not any(isinstance(m, CBAM) for m in Baseline(5, **TINY).modules())


def test_sigmoid_output_in_unit_interval():
    net = Baseline(5, **TINY, output_activation="sigmoid").eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64) * 100)
    assert torch.all((out > 0) & (out < 1))


def test_bayecbam_split_and_logvar_init():
    net = BayeCBAM(4, **TINY, logvar_bias_init=-7.0).eval()
    torch.nn.init.zeros_(net.logvar_out.weight)
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 64))
    mean, logvar = split_mean_logvar(out)
    assert mean.shape == logvar.shape == (2, 4, 2)
    torch.testing.assert_close(logvar, torch.full_like(logvar, -7.0))
    torch.testing.assert_close(mean, out[..., :2])
    assert BayeCBAM.predicts_logvar and not Baseline.predicts_logvar


def test_output_order_is_x_then_y():
    """The flat head output (x1, y1, x2, y2, ...) becomes (K, 2) rows of (x, y)."""
    net = Baseline(3, **TINY).eval()
    with torch.no_grad():
        net.regressor_out.weight.zero_()
        net.regressor_out.bias.copy_(torch.arange(6, dtype=torch.float32))
        out = net(torch.randn(1, 1, 64, 64))
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))


def test_param_counts_at_full_width():
    """The counts quoted in the module docstring."""
    counts = {v: sum(p.numel() for p in build_regressor(v, 5).parameters()) for v in REGRESSOR_VARIANTS}
    assert counts == {"baseline": 22_389_450, "cbam": 22_431_100, "bayecbam": 22_441_350}


def test_unknown_variant_lists_known():
    with pytest.raises(KeyError, match="baseline.*bayecbam.*cbam"):
        build_regressor("resnet", 5)


def test_factory_case_insensitive_and_class():
    assert type(build_regressor("BayeCBAM", 5, **TINY)) is BayeCBAM


@pytest.mark.parametrize(
    "shape",
    [(1, 2, 64, 64), (1, 64, 64), (1, 1, MIN_INPUT_SIZE - 1, 128)],
)
def test_bad_input_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        Baseline(5, **TINY)(torch.zeros(shape))


def test_smallest_input_works():
    out = Baseline(5, **TINY)(torch.zeros(1, 1, MIN_INPUT_SIZE, MIN_INPUT_SIZE))
    assert out.shape == (1, 5, 2)


@pytest.mark.parametrize(
    "kw",
    [
        {"num_points": 0},
        {"width": 0.0},
        {"dropout": 1.0},
        {"output_activation": "tanh"},
        {"pool_size": (0, 3)},
        {"cbam_layers": (5,)},
    ],
)
def test_bad_constructor_args(kw):
    args = {"num_points": 5, **TINY, **kw}
    with pytest.raises(ValueError):
        CBAMRegressor(**args)


def test_split_mean_logvar_rejects_means_only():
    with pytest.raises(ValueError, match="4"):
        split_mean_logvar(torch.zeros(2, 5, 2))
