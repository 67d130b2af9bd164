"""Tests of monai_spine.uncertainty.mc_dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from monai_spine.losses.gaussian_nll import LOGVAR_RANGE
from monai_spine.networks.regressor import build_regressor
from monai_spine.uncertainty.mc_dropout import (
    MCDropoutResult,
    mc_dropout_predict,
    mc_dropout_reference,
    predict_deterministic,
    sigma_frac_to_mm,
    sigma_p,
    sigma_xy_frac_to_mm,
)

TINY = {"width": 0.0625, "fc_features": 16}


def _net(variant="bayecbam", dropout=0.5, seed=0, **kw):
    torch.manual_seed(seed)
    return build_regressor(variant, 5, dropout=dropout, **TINY, **kw)


def _x(b=2, seed=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 64, 96, generator=g)


@pytest.mark.parametrize("variant", ["baseline", "cbam", "bayecbam"])
@pytest.mark.parametrize("t", [1, 7])
def test_shapes(variant, t):
    res = mc_dropout_predict(_net(variant), _x(3), num_samples=t, return_samples=True)
    for v in (res.mean_frac, res.epistemic_var_frac, res.aleatoric_var_frac, res.total_var_frac):
        assert v.shape == (3, 5, 2)
    for kind in ("aleatoric", "epistemic", "total"):
        assert res.sigma_p_frac(kind).shape == (3, 5)
    assert res.samples_frac.shape == (t, 3, 5, 2)
    assert res.num_samples == t
    arrays = res.to_numpy()
    assert arrays["sigma_p_total_frac"].shape == (3, 5) and isinstance(arrays["mean_frac"], np.ndarray)


def test_no_dropout_no_epistemic_variance():
    net = _net(dropout=0.0)
    res = mc_dropout_predict(net, _x(), num_samples=8)
    assert res.epistemic_var_frac.abs().max().item() <= 1e-12
    det = predict_deterministic(net, _x())
    torch.testing.assert_close(res.mean_frac, det.mean_frac)
    torch.testing.assert_close(res.aleatoric_var_frac, det.aleatoric_var_frac)


def test_dropout_gives_epistemic_variance():
    res = mc_dropout_predict(_net(dropout=0.5), _x(), num_samples=8)
    assert torch.all(res.epistemic_var_frac > 0)


def test_single_sample_has_zero_epistemic_variance():
    res = mc_dropout_predict(_net(dropout=0.5), _x(), num_samples=1)
    assert torch.all(res.epistemic_var_frac == 0)


def test_aleatoric_is_exp_logvar_and_zero_for_baseline():
    net = _net("bayecbam", dropout=0.0)
    net.eval()
    with torch.no_grad():
        out = net(_x())
    res = mc_dropout_predict(net, _x(), num_samples=3)
    torch.testing.assert_close(res.aleatoric_var_frac, torch.exp(out[..., 2:]))
    torch.testing.assert_close(res.sigma_p_aleatoric_frac, torch.sqrt(torch.exp(out[..., 2:]).sum(-1)))
    base = mc_dropout_predict(_net("baseline"), _x(), num_samples=3)
    assert torch.all(base.aleatoric_var_frac == 0)
    torch.testing.assert_close(base.total_var_frac, base.epistemic_var_frac)


def test_trunk_runs_once_and_head_once_with_all_rows():
    net = _net()
    calls = {"trunk": 0, "head_rows": []}
    net.trunk.register_forward_hook(lambda m, i, o: calls.__setitem__("trunk", calls["trunk"] + 1))
    net.regressor_hidden.register_forward_hook(lambda m, i, o: calls["head_rows"].append(i[0].shape[0]))
    mc_dropout_predict(net, _x(2), num_samples=9)
    assert calls["trunk"] == 1
    assert calls["head_rows"] == [18]


def test_head_chunks():
    net = _net(dropout=0.0)
    rows = []
    net.regressor_hidden.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    chunked = mc_dropout_predict(net, _x(2), num_samples=5, max_head_batch=4)
    assert rows == [4, 4, 2]
    torch.testing.assert_close(chunked.mean_frac, mc_dropout_predict(net, _x(2), num_samples=5).mean_frac)


def test_samples_are_repeats_of_features_through_head():
    """Each of the T batched rows is the head applied to the same trunk features."""
    net = _net(dropout=0.3)
    seen = []
    net.regressor_hidden.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    mc_dropout_predict(net, _x(2), num_samples=4)
    net.eval()
    with torch.no_grad():
        feats = net.features(_x(2))
    torch.testing.assert_close(seen[0], feats.repeat(4, 1))


class _ToyBayes(nn.Module):
    """A cheap model with the regressor API: linear trunk, dropout head with means and log-variances."""

    predicts_logvar = True

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU())
        self.mlp = nn.Sequential(nn.Dropout(0.5), nn.Linear(24, 24), nn.ReLU(), nn.Dropout(0.5), nn.Linear(24, 12))

    def features(self, x):
        return self.trunk(x)

    def head(self, feats):
        return self.mlp(feats).view(-1, 3, 4)

    def forward(self, x):
        return self.head(self.features(x))


def test_matches_naive_loop_statistically():
    """Batched passes and a naive loop of full forward passes sample the same distribution."""
    torch.manual_seed(3)
    net = _ToyBayes()
    x = torch.randn(2, 1, 4, 4)
    t = 1500
    torch.manual_seed(5)
    batched = mc_dropout_predict(net, x, num_samples=t)
    torch.manual_seed(6)
    net.train()
    with torch.no_grad():
        outs = torch.stack([net(x) for _ in range(t)])
    naive_mean = outs[..., :2].mean(0)
    naive_var = outs[..., :2].var(0, unbiased=False)
    se = torch.sqrt((batched.epistemic_var_frac + naive_var) / t)
    assert torch.all((batched.mean_frac - naive_mean).abs() <= 5 * se + 1e-9)
    ratio = batched.epistemic_var_frac / naive_var
    assert torch.all((ratio > 0.75) & (ratio < 1.33)), ratio
    naive_ale = torch.exp(outs[..., 2:]).mean(0)
    assert torch.all((batched.aleatoric_var_frac / naive_ale - 1).abs() < 0.1)


@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_train_eval_state_restored(start):
    net = _net(batch_norm=True)
    if start == "train":
        net.train()
    elif start == "eval":
        net.eval()
    else:
        net.train()
        net.trunk.eval()
    before = {n: m.training for n, m in net.named_modules()}
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    running = bn.running_mean.clone()
    mc_dropout_predict(net, _x(), num_samples=3)
    predict_deterministic(net, _x())
    assert {n: m.training for n, m in net.named_modules()} == before
    torch.testing.assert_close(bn.running_mean, running)  # batch norm used running statistics


def test_state_restored_on_error():
    net = _net()
    net.train()
    with pytest.raises(ValueError):
        mc_dropout_predict(net, torch.zeros(1, 1, 16, 16), num_samples=2)
    assert all(m.training for m in net.modules())


def test_model_without_features_head_falls_back_to_full_passes():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 6), nn.Unflatten(1, (3, 2))
    )
    res = mc_dropout_predict(model, torch.randn(4, 3, 4), num_samples=6)
    assert res.mean_frac.shape == (4, 3, 2) and torch.all(res.epistemic_var_frac > 0)
    assert torch.all(res.aleatoric_var_frac == 0)


@pytest.mark.parametrize("t", [0, -1, 2.5])
def test_bad_num_samples(t):
    with pytest.raises(ValueError, match="num_samples"):
        mc_dropout_predict(_net(), _x(), num_samples=t)


def test_result_kinds_and_total():
    a = torch.tensor([[[0.0004, 0.0009]]])
    e = torch.tensor([[[0.0005, 0.0007]]])
    res = MCDropoutResult(torch.zeros(1, 1, 2), e, a, 4)
    assert res.sigma_p_aleatoric_frac.item() == pytest.approx(math.sqrt(0.0013))
    assert res.sigma_p_epistemic_frac.item() == pytest.approx(math.sqrt(0.0012))
    assert res.sigma_p_total_frac.item() == pytest.approx(0.05)
    with pytest.raises(KeyError, match="aleatoric"):
        res.var_frac("systematic")


def test_sigma_p():
    assert sigma_p(torch.tensor([0.0009, 0.0016])).item() == pytest.approx(0.05)
    with pytest.raises(ValueError):
        sigma_p(torch.zeros(3))


# sigma_x = 0.01 of W = 448 px at 0.1 mm/px -> 0.448 mm; sigma_y = 0.02 of H = 224 px at 0.1 -> 0.448 mm
MM_CASES = [
    ((0.01, 0.02), (448, 224), (0.1, 0.1), (0.448, 0.448)),
    ((0.01, 0.0), (448, 224), (0.2, 0.1), (0.896, 0.0)),
    ((0.0, 0.05), (100, 200), (0.5, 0.25), (0.0, 2.5)),
]


@pytest.mark.parametrize("sig, size, spacing, expected_xy", MM_CASES)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_sigma_frac_to_mm_hand_computed(sig, size, spacing, expected_xy, as_tensor):
    s = torch.tensor(sig, dtype=torch.float64) if as_tensor else np.asarray(sig)
    xy = sigma_xy_frac_to_mm(s, size, spacing)
    p = sigma_frac_to_mm(s, size, spacing)
    assert isinstance(p, torch.Tensor) == as_tensor
    np.testing.assert_allclose(np.asarray(xy), expected_xy, rtol=1e-12)
    assert float(p) == pytest.approx(math.hypot(*expected_xy), rel=1e-12)


@pytest.mark.parametrize("spacing", [None, (float("nan"), float("nan")), (0.0, 0.0), (0.1, float("nan"))])
def test_unknown_spacing_gives_nan(spacing):
    assert np.isnan(sigma_frac_to_mm(np.array([0.01, 0.01]), (448, 224), spacing))


def test_per_sample_spacing_broadcasts_over_points():
    sig = torch.full((2, 5, 2), 0.01)
    spacing = torch.tensor([[0.1, 0.1], [float("nan"), float("nan")]])
    size = torch.tensor([[448.0, 224.0], [100.0, 100.0]])
    out = sigma_frac_to_mm(sig, size, spacing)
    assert out.shape == (2, 5)
    torch.testing.assert_close(out[0], torch.full((5,), math.hypot(0.448, 0.224)))
    assert torch.isnan(out[1]).all()
    res = MCDropoutResult(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2), sig**2, 1)
    torch.testing.assert_close(res.sigma_p_mm(size, spacing, kind="aleatoric"), out, equal_nan=True)


def test_sigma_to_mm_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        sigma_frac_to_mm(np.zeros((3, 3)), (10, 10), (1, 1))
    with pytest.raises(ValueError, match="crop_size_wh"):
        sigma_frac_to_mm(np.zeros((3, 2)), (10, 10, 10), (1, 1))


# ---------------------------------------------------------------------------------------------- equivalence
def test_trunk_once_draws_the_same_masks_as_full_passes_on_a_repeated_batch():
    """The trunk has no dropout, so (same seed) the batched head sees exactly the masks that full
    forward passes of the T-times repeated batch would draw: the T samples agree to float rounding."""
    net = _net(dropout=0.5)
    x, t = _x(3), 4
    torch.manual_seed(11)
    res = mc_dropout_predict(net, x, num_samples=t, return_samples=True)
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    torch.manual_seed(11)
    with torch.no_grad():
        full = net(x.repeat(t, 1, 1, 1)).reshape(t, 3, *res.mean_frac.shape[1:-1], -1)
    torch.testing.assert_close(res.samples_frac, full[..., :2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.aleatoric_var_frac, torch.exp(full[..., 2:].clamp(*LOGVAR_RANGE)).mean(0),
                               atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("t", [1, 3])
def test_reference_equals_batched_without_dropout(t):
    net = _net(dropout=0.0)
    x = _x(3)
    fast = mc_dropout_predict(net, x, num_samples=t)
    ref = mc_dropout_reference(net, x, num_samples=t)
    torch.testing.assert_close(fast.mean_frac, ref.mean_frac, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast.aleatoric_var_frac, ref.aleatoric_var_frac, atol=1e-9, rtol=1e-5)
    assert torch.all(ref.epistemic_var_frac.abs() < 1e-10)


def test_reference_matches_batched_statistically():
    torch.manual_seed(3)
    net = _ToyBayes()
    x = torch.randn(2, 1, 4, 4)
    t = 1500
    torch.manual_seed(5)
    fast = mc_dropout_predict(net, x, num_samples=t)
    torch.manual_seed(6)
    ref = mc_dropout_reference(net, x, num_samples=t, return_samples=True)
    assert ref.samples_frac.shape == (t, 2, 3, 2)
    se = torch.sqrt((fast.epistemic_var_frac + ref.epistemic_var_frac) / t)
    assert torch.all((fast.mean_frac - ref.mean_frac).abs() <= 5 * se + 1e-9)
    ratio = fast.epistemic_var_frac / ref.epistemic_var_frac
    assert torch.all((ratio > 0.75) & (ratio < 1.33)), ratio


def test_reference_restores_state_and_rejects_bad_t():
    net = _net()
    net.train()
    mc_dropout_reference(net, _x(1), num_samples=2)
    assert all(m.training for m in net.modules())
    with pytest.raises(ValueError):
        mc_dropout_reference(net, _x(1), num_samples=0)
