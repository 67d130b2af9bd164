"""Tests of monai_spine.losses.gaussian_nll: hand-computed values, gradients and masking."""

from __future__ import annotations

import math

import pytest
import torch

from monai_spine.losses.gaussian_nll import (
    LOGVAR_RANGE,
    GaussianNLLLoss,
    MaskedMSELoss,
    pack_targets,
    unpack_targets,
)


def _pred(mean_xy, logvar_xy):
    """(1, 1, 4) prediction of one point."""
    return torch.tensor([[[*mean_xy, *logvar_xy]]], dtype=torch.float64)


@pytest.mark.parametrize(
    "mean, logvar, target, expected",
    [
        # r = 0.1 on both axes, s = log(0.04): 0.5 * 0.01 / 0.04 + 0.5 * log(0.04)
        ((0.5, 0.5), (math.log(0.04),) * 2, (0.6, 0.4), 0.5 * 0.01 / 0.04 + 0.5 * math.log(0.04)),
        # s = 0 reduces to half the squared error: (0.5 * 0.04 + 0.5 * 0.09) / 2
        ((0.0, 0.0), (0.0, 0.0), (0.2, -0.3), (0.5 * 0.04 + 0.5 * 0.09) / 2),
        # different axes: x: r=0, s=1 -> 0.5; y: r=0.2, s=log 0.01 -> 2 + 0.5 log 0.01
        ((0.3, 0.3), (1.0, math.log(0.01)), (0.3, 0.5), (0.5 + 2.0 + 0.5 * math.log(0.01)) / 2),
    ],
)
def test_gaussian_nll_hand_computed(mean, logvar, target, expected):
    loss = GaussianNLLLoss()(_pred(mean, logvar), torch.tensor([[target]], dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_mean_over_coordinates_and_batch():
    """Eq. 16: 1 / (B * 2K) times the sum of per-coordinate terms."""
    torch.manual_seed(0)
    y_pred = torch.randn(3, 5, 4, dtype=torch.float64)
    y = torch.rand(3, 5, 2, dtype=torch.float64)
    s = y_pred[..., 2:]
    terms = 0.5 * torch.exp(-s) * (y - y_pred[..., :2]) ** 2 + 0.5 * s
    torch.testing.assert_close(GaussianNLLLoss()(y_pred, y), terms.sum() / 30)
    torch.testing.assert_close(GaussianNLLLoss(reduction="sum")(y_pred, y), terms.sum())
    torch.testing.assert_close(GaussianNLLLoss(reduction="none")(y_pred, y), terms)


def test_minimum_at_true_variance():
    """For a fixed residual r the loss in s is minimal at s = log(r^2)."""
    r = 0.05
    s = torch.linspace(math.log(r * r) - 1, math.log(r * r) + 1, 201, dtype=torch.float64)
    y_pred = torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], dim=-1)[:, None]
    y = torch.full((201, 1, 2), r, dtype=torch.float64)
    per = GaussianNLLLoss(reduction="none")(y_pred, y).sum(dim=(1, 2))
    assert s[per.argmin()].item() == pytest.approx(math.log(r * r), abs=0.011)


def test_gradcheck_double():
    torch.manual_seed(1)
    y_pred = (torch.randn(2, 3, 4, dtype=torch.float64) * 0.5).requires_grad_()
    y = torch.rand(2, 3, 3, dtype=torch.float64)
    y[..., 2] = torch.tensor([[1, 0, 1], [1, 1, 0]])
    assert torch.autograd.gradcheck(lambda p: GaussianNLLLoss()(p, y), (y_pred,))
    assert torch.autograd.gradcheck(lambda p: MaskedMSELoss()(p[..., :2], y), (y_pred,))


def test_analytic_gradients():
    """d/dmean = -exp(-s) r / N, d/ds = (1 - exp(-s) r^2) / (2N) with N the coordinate count."""
    y_pred = _pred((0.5, 0.5), (math.log(0.04),) * 2).requires_grad_()
    GaussianNLLLoss()(y_pred, torch.tensor([[[0.6, 0.4]]], dtype=torch.float64)).backward()
    g = y_pred.grad[0, 0]
    torch.testing.assert_close(g[:2], torch.tensor([-0.1 / 0.04 / 2, 0.1 / 0.04 / 2], dtype=torch.float64))
    torch.testing.assert_close(g[2:], torch.full((2,), (1 - 0.01 / 0.04) / 4, dtype=torch.float64))


def test_logvar_clamped_no_overflow():
    lo, hi = LOGVAR_RANGE
    y_pred = torch.tensor([[[0.0, 0.0, -1000.0, 1000.0]]], requires_grad=True)
    loss = GaussianNLLLoss()(y_pred, torch.tensor([[[0.1, 0.1]]]))
    expected = (0.5 * math.exp(-lo) * 0.01 + 0.5 * lo + 0.5 * math.exp(-hi) * 0.01 + 0.5 * hi) / 2
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(y_pred.grad).all()
    assert y_pred.grad[0, 0, 2:].abs().sum() == 0  # clamped: no gradient to s


LOSSES = [
    (GaussianNLLLoss, 4),
    (MaskedMSELoss, 2),
]


@pytest.mark.parametrize("loss_cls, d", LOSSES)
@pytest.mark.parametrize("how", ["third_channel", "mask_arg", "nan_target"])
def test_mask_equals_dropping_points(loss_cls, d, how):
    torch.manual_seed(2)
    y_pred = torch.randn(2, 4, d, dtype=torch.float64)
    y = torch.rand(2, 4, 2, dtype=torch.float64)
    vis = torch.tensor([[True, False, True, True], [False, True, True, False]])
    expected = loss_cls(reduction="sum")(y_pred[vis][None], y[vis][None]) / (2 * vis.sum())
    if how == "third_channel":
        got = loss_cls()(y_pred, pack_targets(y, vis))
    elif how == "mask_arg":
        got = loss_cls()(y_pred, y, vis.to(torch.float32))
    else:
        y_nan = y.clone()
        y_nan[~vis] = float("nan")
        got = loss_cls()(y_pred, y_nan)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("loss_cls, d", LOSSES)
def test_invisible_points_get_no_gradient(loss_cls, d):
    y_pred = torch.randn(1, 3, d, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 3, 2, dtype=torch.float64)
    y[0, 1] = float("nan")
    loss_cls()(y_pred, y).backward()
    assert torch.isfinite(y_pred.grad).all()
    assert y_pred.grad[0, 1].abs().sum() == 0 and y_pred.grad[0, 0].abs().sum() > 0


@pytest.mark.parametrize("loss_cls, d", LOSSES)
def test_all_invisible_is_zero_with_grad(loss_cls, d):
    y_pred = torch.randn(2, 5, d, requires_grad=True)
    loss = loss_cls()(y_pred, pack_targets(torch.rand(2, 5, 2), torch.zeros(2, 5)))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert y_pred.grad is not None and y_pred.grad.abs().sum() == 0


def test_masks_combine_with_and():
    y = pack_targets(torch.rand(1, 3, 2), torch.tensor([[1, 1, 0]]))
    _, vis = unpack_targets(y, torch.tensor([[1, 0, 1]]))
    assert vis.tolist() == [[True, False, False]]


def test_mse_hand_computed_and_bayecbam_means():
    y = torch.tensor([[[0.2, 0.4], [0.0, 0.0]]])
    pred2 = torch.tensor([[[0.1, 0.1], [0.0, 0.2]]])
    expected = (0.01 + 0.09 + 0.0 + 0.04) / 4
    assert MaskedMSELoss()(pred2, y).item() == pytest.approx(expected)
    pred4 = torch.cat([pred2, torch.randn(1, 2, 2)], dim=-1)
    assert MaskedMSELoss()(pred4, y).item() == pytest.approx(expected)


def test_mse_matches_torch_without_mask():
    torch.manual_seed(3)
    p, y = torch.randn(4, 5, 2), torch.randn(4, 5, 2)
    torch.testing.assert_close(MaskedMSELoss()(p, y), torch.nn.functional.mse_loss(p, y))


@pytest.mark.parametrize(
    "loss, y_pred, y",
    [
        (GaussianNLLLoss(), torch.zeros(2, 5, 2), torch.zeros(2, 5, 2)),
        (GaussianNLLLoss(), torch.zeros(2, 5, 4), torch.zeros(2, 4, 2)),
        (GaussianNLLLoss(), torch.zeros(2, 5, 4), torch.zeros(2, 5, 5)),
        (MaskedMSELoss(), torch.zeros(2, 5, 3), torch.zeros(2, 5, 2)),
        (MaskedMSELoss(), torch.zeros(2, 5, 2), torch.zeros(10, 2)),
    ],
)
def test_shape_errors(loss, y_pred, y):
    with pytest.raises(ValueError, match="shape|match"):
        loss(y_pred, y)


def test_bad_mask_shape_and_options():
    with pytest.raises(ValueError, match="mask"):
        MaskedMSELoss()(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2), torch.ones(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        GaussianNLLLoss(reduction="max")
    with pytest.raises(ValueError, match="logvar_min"):
        GaussianNLLLoss(logvar_min=1.0, logvar_max=0.0)


def test_pack_unpack_round_trip():
    xy = torch.rand(2, 4, 2)
    vis = torch.tensor([[True, False, True, True], [True, True, False, True]])
    packed = pack_targets(xy, vis)
    assert packed.shape == (2, 4, 3)
    coords, v = unpack_targets(packed)
    torch.testing.assert_close(coords, xy)
    assert torch.equal(v, vis)


def test_beta_nll_hand_computed():
    from monai_spine.losses.gaussian_nll import GaussianNLLLoss

    # one coordinate pair: residual 2 and 0, log-variance log 4 and 0
    pred = torch.tensor([[[0.0, 0.0, math.log(4.0), 0.0]]])
    y = torch.tensor([[[2.0, 0.0]]])
    plain = 0.5 * (0.25 * 4 + math.log(4.0))  # x term; y term is 0
    assert GaussianNLLLoss()(pred, y).item() == pytest.approx(plain / 2, rel=1e-5)
    # beta = 0.5 weighs the x term by sigma^2 ** 0.5 = 2
    assert GaussianNLLLoss(beta=0.5)(pred, y).item() == pytest.approx(2 * plain / 2, rel=1e-5)
    with pytest.raises(ValueError, match="beta"):
        GaussianNLLLoss(beta=1.5)


def test_encoded_loss_is_mse_in_standard_deviations():
    from monai_spine.codecs import KeypointRegressionCodec
    from monai_spine.losses.encoded import EncodedLoss
    from monai_spine.losses.gaussian_nll import MaskedMSELoss

    codec = KeypointRegressionCodec(1, [[0.5, 0.5]], [[0.1, 0.2]])
    pred = torch.tensor([[[0.6, 0.5]]])  # one sd off in x
    y = torch.tensor([[[0.5, 0.5, 1.0]]])
    assert EncodedLoss(MaskedMSELoss(), codec)(pred, y).item() == pytest.approx(0.5, rel=1e-5)
