"""The regressor's target codec: round trips, a hand-computed fit, and the codec inside the network."""

import numpy as np
import pytest
import torch

from monai_spine.codecs import KeypointRegressionCodec, fit_regression_codec
from monai_spine.networks.regressor import build_regressor

MEAN = [[0.2, 0.3], [0.8, 0.3], [0.8, 0.7], [0.2, 0.7], [0.9, 0.5]]
SCALE = [[0.02, 0.03], [0.02, 0.04], [0.05, 0.03], [0.02, 0.02], [0.1, 0.05]]


@pytest.mark.parametrize("channels", [2, 4])
def test_encode_decode_round_trip(channels):
    codec = KeypointRegressionCodec(5, MEAN, SCALE)
    y = torch.rand(3, 5, channels) - 0.5
    torch.testing.assert_close(codec.decode_output(codec.encode_output(y)), y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(codec.encode_output(codec.decode_output(y)), y, atol=1e-5, rtol=1e-5)


def test_hand_computed_values():
    codec = KeypointRegressionCodec(5, MEAN, SCALE)
    frac = torch.tensor(MEAN)[None].clone()
    frac[0, 0] = torch.tensor([0.24, 0.27])  # +2 sd in x, -1 sd in y
    z = codec.encode(frac)
    torch.testing.assert_close(z[0, 0], torch.tensor([2.0, -1.0]))
    assert torch.all(z[0, 1:] == 0)
    # log-variance: sigma 0.5 sd -> logvar_z = log 0.25, logvar_frac = log((0.5 * 0.02)^2) in x
    lv_z = torch.full((1, 5, 2), float(np.log(0.25)))
    lv = codec.decode_logvar(lv_z)
    assert lv[0, 0, 0].item() == pytest.approx(np.log((0.5 * 0.02) ** 2), abs=1e-5)


def test_target_with_visibility_channel_keeps_it():
    codec = KeypointRegressionCodec(5, MEAN, SCALE)
    y = torch.cat([torch.tensor(MEAN)[None], torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])[..., None]], -1)
    enc = codec.encode_output(y)
    assert torch.all(enc[..., :2] == 0) and torch.equal(enc[..., 2], y[..., 2])


def test_identity_is_the_paper_target():
    codec = KeypointRegressionCodec.identity(4)
    y = torch.rand(2, 4, 4)
    assert codec.is_identity and torch.equal(codec.encode_output(y), y)


def test_fit_hand_computed():
    kp = np.array([[[0.1, 0.2]], [[0.3, 0.4]], [[0.5, 9.9]]])  # third y invisible
    vis = np.array([[True], [True], [False]])
    codec = fit_regression_codec(kp, vis)
    # x: points 0.1 and 0.3 (third not visible) -> mean 0.2, sample sd sqrt(0.02)
    np.testing.assert_allclose(codec.mean_frac.numpy(), [[0.2, 0.3]], atol=1e-6)
    np.testing.assert_allclose(codec.scale_frac.numpy(), [[np.sqrt(0.02), np.sqrt(0.02)]], atol=1e-6)


@pytest.mark.parametrize(
    "kp,vis,match",
    [
        (np.zeros((3, 2)), None, "shape"),
        (np.zeros((3, 2, 2)), np.array([[True, False]] * 3), "at least two"),
        (np.zeros((3, 2, 2)), np.ones((2, 2), bool), "visible must"),
    ],
)
def test_fit_errors(kp, vis, match):
    with pytest.raises(ValueError, match=match):
        fit_regression_codec(kp, vis)


def test_dict_round_trip_and_bad_shapes():
    codec = KeypointRegressionCodec(5, MEAN, SCALE)
    back = KeypointRegressionCodec.from_dict(codec.to_dict())
    assert torch.equal(back.mean_frac, codec.mean_frac) and torch.equal(back.scale_frac, codec.scale_frac)
    with pytest.raises(ValueError, match="mean_frac"):
        KeypointRegressionCodec(4, MEAN, SCALE)
    with pytest.raises(ValueError, match="> 0"):
        KeypointRegressionCodec(5, MEAN, -np.ones((5, 2)))
    with pytest.raises(KeyError, match="scale_frac"):
        KeypointRegressionCodec.from_dict({"mean_frac": MEAN})


@pytest.mark.parametrize("variant,channels", [("baseline", 2), ("cbam", 2), ("bayecbam", 4)])
def test_network_decodes_and_carries_its_codec(variant, channels):
    torch.manual_seed(0)
    codec = KeypointRegressionCodec(5, MEAN, SCALE)
    net = build_regressor(variant, 5, width=0.125, fc_features=16, dropout=0.0, codec=codec).eval()
    for m in (net.regressor_out,) + ((net.logvar_out,) if channels == 4 else ()):
        torch.nn.init.zeros_(m.weight)
        torch.nn.init.zeros_(m.bias)
    out = net(torch.rand(2, 1, 64, 128))
    assert out.shape == (2, 5, channels)
    # zero raw output = the mean shape (and, for BayeCBAM, one standard deviation of it)
    torch.testing.assert_close(out[..., :2], torch.tensor(MEAN).expand(2, 5, 2))
    if channels == 4:
        torch.testing.assert_close(out[..., 2:], torch.log(torch.tensor(SCALE) ** 2).expand(2, 5, 2))
    state = net.state_dict()
    assert torch.equal(state["codec.mean_frac"], codec.mean_frac)
    fresh = build_regressor(variant, 5, width=0.125, fc_features=16, dropout=0.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.codec.scale_frac, codec.scale_frac)
