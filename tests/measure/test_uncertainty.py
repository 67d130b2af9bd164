"""Monte-Carlo propagation of point uncertainty to measurements."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.measure.cobb import cobb_angles_deg
from monai_spine.measure.lateral import disc_heights, lateral_measurements
from monai_spine.measure.uncertainty import (
    expand_sigma_px,
    propagate,
    sample_keypoints,
    sigma_p_to_axis,
    summarize_samples,
)

LEVELS = ["C3", "C4", "C5"]


def lateral_fn(kp):
    return lateral_measurements(kp, LEVELS, (0.1, 0.1))[0]


@pytest.fixture
def chain_px(lateral_chain):
    return lateral_chain([8.0, -4.0], [1.0, 2.0]) / 0.1


def test_sigma_zero_gives_zero_std(chain_px):
    out = propagate(lateral_fn, chain_px, 0.0, num_samples=50, seed=3)
    for name, s in out.items():
        np.testing.assert_allclose(s.std, 0.0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(s.mean, s.value, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(s.ci_low, s.value, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(s.ci_high, s.value, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(out["segment_angle_deg"].value, [8.0, -4.0], atol=1e-9)


@pytest.mark.parametrize("name", ["segment_angle_deg", "translation", "translation_share", "disc_height_anterior", "lordosis_deg"])
def test_larger_sigma_larger_std(chain_px, name):
    stds = [propagate(lateral_fn, chain_px, s, num_samples=400, seed=0)[name].std for s in (0.5, 2.0, 8.0)]
    assert np.all(stds[0] > 0)
    assert np.all(stds[1] > stds[0]) and np.all(stds[2] > stds[1])


def test_linear_measure_matches_analytic_std():
    # posterior disc height of two points 100 px apart vertically: d ~ 100 + (z_lower - z_upper) * sigma_y,
    # so std(d) = sqrt(2) * sigma_y, and the 95% interval is about +-1.96 std
    kp = np.zeros((2, 5, 2))
    kp[0, 3] = [0.0, 0.0]  # PI of the upper vertebra
    kp[1, 1] = [0.0, 100.0]  # PS of the lower vertebra
    sigma = np.zeros((2, 5, 2))
    sigma[..., 1] = 2.0  # y only
    out = propagate(lambda k: {"post": disc_heights(k)[1]}, kp, sigma, num_samples=4000, seed=1)["post"]
    assert out.value[0] == pytest.approx(100.0)
    assert out.std[0] == pytest.approx(2.0 * np.sqrt(2.0), rel=0.05)
    assert out.mean[0] == pytest.approx(100.0, abs=0.2)
    width = out.ci_high[0] - out.ci_low[0]
    assert width == pytest.approx(2 * 1.96 * 2.0 * np.sqrt(2.0), rel=0.08)


def test_seeded_reproducible(chain_px):
    a = sample_keypoints(chain_px, 1.0, 20, seed=7)
    b = sample_keypoints(chain_px, 1.0, 20, seed=7)
    c = sample_keypoints(chain_px, 1.0, 20, seed=8)
    assert a.shape == (20,) + chain_px.shape
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(
    "sigma, expected_xy",
    [
        (1.5, (1.5, 1.5)),
        (np.full((3, 5), 2.0), (2.0, 2.0)),  # isotropic per point
        (np.broadcast_to([1.0, 3.0], (3, 5, 2)), (1.0, 3.0)),  # per axis
    ],
)
def test_sigma_forms(chain_px, sigma, expected_xy):
    full = expand_sigma_px(sigma, chain_px.shape)
    assert full.shape == chain_px.shape
    np.testing.assert_allclose(full[1, 2], expected_xy)
    draws = sample_keypoints(chain_px, sigma, 3000, seed=0)
    emp = (draws - chain_px).reshape(3000, -1, 2).std(axis=(0, 1))
    np.testing.assert_allclose(emp, expected_xy, rtol=0.05)


@pytest.mark.parametrize(
    "sigma, err",
    [(np.ones((2, 5)), "fits neither"), (-1.0, ">= 0"), (np.full((3, 5), np.nan), "NaN")],
)
def test_bad_sigma(chain_px, sigma, err):
    with pytest.raises(ValueError, match=err):
        sample_keypoints(chain_px, sigma, 5)


def test_bad_num_samples(chain_px):
    with pytest.raises(ValueError, match="num_samples"):
        sample_keypoints(chain_px, 1.0, 0)


def test_summarize_ignores_nan_samples():
    s = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan], [5.0, np.nan]])
    out = summarize_samples(s, value=[2.0, 7.0], ci=0.5)
    np.testing.assert_array_equal(out.num_valid, [3, 0])
    assert out.mean[0] == pytest.approx(3.0) and out.std[0] == pytest.approx(np.std([1, 3, 5]))
    assert out.ci_low[0] == pytest.approx(2.0) and out.ci_high[0] == pytest.approx(4.0)
    assert np.isnan(out.mean[1]) and np.isnan(out.ci_low[1]) and out.value[1] == 7.0
    d = out.item(1)
    assert d["value"] == 7.0 and d["mean"] is None and d["num_valid"] == 0
    with pytest.raises(ValueError, match="ci"):
        summarize_samples(s, ci=1.0)


def test_no_sigma_gives_value_only(chain_px):
    out = propagate(lateral_fn, chain_px, None)
    s = out["translation"]
    np.testing.assert_allclose(s.value, [1.0, 2.0], atol=1e-9)
    assert np.all(np.isnan(s.std)) and np.all(s.num_valid == 0)


def test_two_inputs_are_sampled_independently(chain_px):
    def diff(a, b):
        return {"d": a[..., 0, 0, 0] - b[..., 0, 0, 0]}

    out = propagate(diff, [chain_px, chain_px], [1.0, 1.0], num_samples=3000, seed=5)["d"]
    assert out.value == pytest.approx(0.0)
    assert float(out.std) == pytest.approx(np.sqrt(2.0), rel=0.06)  # independent: variances add
    with pytest.raises(ValueError, match="sigmas"):
        propagate(diff, [chain_px, chain_px], [1.0], num_samples=3)


def test_cobb_uncertainty_grows_with_sigma(ap_spine):
    tilts = [0, 4, 8, 12, 8, 4, 0, -4, -8, -12, -8, -4, 0, 2, 4, 2, 0]
    kp = ap_spine(tilts, [(500.0 + 60 * np.sin(2 * np.pi * i / 16), 200.0 + 100 * i) for i in range(17)])
    fn = lambda k: {"cobb": cobb_angles_deg(k, 3000.0)}  # noqa: E731
    s0 = propagate(fn, kp, 0.0, num_samples=30, seed=0)["cobb"]
    s1 = propagate(fn, kp, 1.0, num_samples=60, seed=0)["cobb"]
    s3 = propagate(fn, kp, 4.0, num_samples=60, seed=0)["cobb"]
    np.testing.assert_allclose(s0.std, 0.0, atol=1e-9)
    assert s0.value[0] == pytest.approx(24.0, abs=1e-4)
    assert s1.std[0] > 0 and s3.std[0] > s1.std[0]


def test_sigma_p_to_axis():
    assert float(sigma_p_to_axis(np.sqrt(2.0))) == pytest.approx(1.0)
