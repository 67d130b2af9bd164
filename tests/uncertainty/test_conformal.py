"""Tests of monai_spine.uncertainty.conformal: split-conformal radii and their file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monai_spine.uncertainty.conformal import ConformalCalibrator, conformal_quantile, coverage


# ----------------------------------------------------------------------------------------------
# conformal
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scores, alpha, expected",
    [
        (list(range(1, 11)), 0.2, 9.0),  # ceil(11 * 0.8) = ceil(8.8) = 9
        (list(range(1, 11)), 0.1, 10.0),  # ceil(9.9) = 10
        (list(range(1, 11)), 0.05, np.inf),  # ceil(10.45) = 11 > 10
        (list(range(1, 20)), 0.1, 18.0),  # n = 19: ceil(20 * 0.9) = 18 exactly
        (list(range(1, 10)), 0.1, 9.0),  # n = 9: ceil(9.0) = 9
        ([5.0, np.nan, 1.0, 3.0], 0.25, 5.0),  # NaN dropped: n = 3, ceil(4 * 0.75) = 3
    ],
)
def test_conformal_quantile(scores, alpha, expected):
    assert conformal_quantile(np.asarray(scores, float)[::-1], alpha) == expected


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_conformal_quantile_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile([1.0], alpha)


def test_conformal_by_hand():
    # normalized scores [1, 2, 3, 2]; alpha 0.2: k = ceil(5 * 0.8) = 4 -> sorted [1, 2, 2, 3] -> 3
    cal = ConformalCalibrator.fit([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 2.0], alpha=0.2)
    assert cal.q_hat == 3.0 and cal.n == 4
    np.testing.assert_array_equal(cal([0.5, 2.0, np.nan, -1.0]), [1.5, 6.0, np.nan, np.nan])
    ab = ConformalCalibrator.fit([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 2.0], alpha=0.2, score="absolute")
    assert ab.q_hat == 4.0
    np.testing.assert_array_equal(ab.radii([0.5, 7.0]), [4.0, 4.0])
    # points with sigma <= 0 or NaN error are left out
    cal2 = ConformalCalibrator.fit([1.0, 2.0, 3.0, 4.0, 9.0, np.nan], [1.0, 1.0, 1.0, 2.0, 0.0, 1.0], alpha=0.2)
    assert (cal2.q_hat, cal2.n) == (3.0, 4)


def test_conformal_per_point_type_and_fallback():
    err = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    sig = np.ones((3, 2))
    cal = ConformalCalibrator.fit(err, sig, ["corner", "spinous_process"], alpha=0.25)  # k = ceil(4*.75) = 3
    assert cal.q_hat_per_point_type == {"corner": 3.0, "spinous_process": 30.0}
    assert cal.n_per_point_type == {"corner": 3, "spinous_process": 3}
    assert cal.q_hat == 30.0  # pooled n = 6: k = ceil(7 * 0.75) = 6 -> the largest score
    r = cal(np.array([[2.0, 2.0]]), ["corner", "spinous_process"])
    np.testing.assert_array_equal(r, [[6.0, 60.0]])
    # unknown type -> pooled q_hat; too few points for alpha -> infinite radius
    assert cal.radii([1.0], ["dens"]).tolist() == [cal.q_hat]
    tiny = ConformalCalibrator.fit([1.0, 2.0], [1.0, 1.0], alpha=0.1)
    assert math.isinf(tiny.q_hat) and tiny([0.0, 1.0]).tolist() == [np.inf, np.inf]


def _rayleigh(rng, n, types=("corner", "spinous_process")):
    """2D Gaussian errors |N(0, sigma^2 I)| (Rayleigh) with random sigma, scale depending on type."""
    t = rng.choice(np.asarray(types), n)
    sigma = rng.uniform(0.3, 2.0, n) * np.where(t == "spinous_process", 1.5, 1.0)
    err = sigma * np.sqrt(rng.chisquare(2, n))
    return err, sigma, t


@pytest.mark.parametrize("alpha", [0.1, 0.05])
@pytest.mark.parametrize("score", ["normalized", "absolute"])
def test_conformal_coverage_held_out(alpha, score):
    rng = np.random.default_rng(1234)
    e_cal, s_cal, t_cal = _rayleigh(rng, 2000)
    e_test, s_test, t_test = _rayleigh(rng, 5000)
    cal = ConformalCalibrator.fit(e_cal, s_cal, t_cal, alpha=alpha, score=score)
    cov = coverage(e_test, cal(s_test, t_test))
    assert abs(cov - (1 - alpha)) <= 0.03
    assert cov >= 1 - alpha - 0.015
    for p in ("corner", "spinous_process"):
        m = t_test == p
        assert abs(coverage(e_test[m], cal(s_test[m], t_test[m])) - (1 - alpha)) <= 0.03


def test_normalized_score_is_adaptive():
    """With sigma informative, normalized radii are smaller on average than absolute ones."""
    rng = np.random.default_rng(7)
    e_cal, s_cal, _ = _rayleigh(rng, 2000, types=("corner",))
    e_test, s_test, _ = _rayleigh(rng, 5000, types=("corner",))
    norm = ConformalCalibrator.fit(e_cal, s_cal, alpha=0.1)
    ab = ConformalCalibrator.fit(e_cal, s_cal, alpha=0.1, score="absolute")
    # the true 90 % quantile of a Rayleigh(sigma) is sigma * sqrt(-2 ln 0.1) = 2.146 sigma
    assert norm.q_hat == pytest.approx(math.sqrt(-2 * math.log(0.1)), rel=0.05)
    assert np.mean(norm(s_test)) < np.mean(ab(s_test))


@pytest.mark.parametrize("n_cal, alpha", [(19, 0.1), (9, 0.2), (39, 0.05)])
def test_conformal_finite_sample_guarantee(n_cal, alpha):
    """Averaged over many calibration draws, coverage is >= 1 - alpha (and < 1 - alpha + 1/(n+1))."""
    rng = np.random.default_rng(99)
    reps, n_test = 1500, 20
    covs = np.empty(reps)
    for i in range(reps):
        e, s, _ = _rayleigh(rng, n_cal + n_test, types=("corner",))
        cal = ConformalCalibrator.fit(e[:n_cal], s[:n_cal], alpha=alpha)
        covs[i] = coverage(e[n_cal:], cal(s[n_cal:]))
    k = math.ceil((n_cal + 1) * (1 - alpha) - 1e-9)
    expected = k / (n_cal + 1)  # exact marginal coverage for continuous exchangeable scores
    se = covs.std() / math.sqrt(reps)
    assert covs.mean() >= 1 - alpha - 4 * se
    assert abs(covs.mean() - expected) <= 4 * se + 1e-3
    assert covs.mean() < 1 - alpha + 1 / (n_cal + 1) + 4 * se


def test_coverage():
    assert coverage([1.0, 2.0, 3.0, np.nan], [2.0, 2.0, 2.0, 9.0]) == pytest.approx(2 / 3)
    assert coverage([np.inf, 1.0], [5.0, np.nan]) == 0.0  # a failed prediction is a miss
    assert np.isnan(coverage([np.nan], [1.0]))
    with pytest.raises(ValueError, match="shape"):
        coverage([1.0], [1.0, 2.0])


def test_conformal_json_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    e, s, t = _rayleigh(rng, 100)
    cal = ConformalCalibrator.fit(e, s, t, alpha=0.1, sigma_units="frac", error_unit="px")
    cal.q_hat_per_point_type["rare"] = math.inf
    cal.n_per_point_type["rare"] = 2
    path = tmp_path / "conformal.json"
    cal.save(path)
    text = path.read_text()
    assert "Infinity" not in text and json.loads(text)["per_point_type"]["rare"]["q_hat"] is None
    back = ConformalCalibrator.load(path)
    assert back == cal
    np.testing.assert_array_equal(back(s, t), cal(s, t))


@pytest.mark.parametrize(
    "patch, exc, match",
    [
        ({"format": "other"}, ValueError, "format"),
        ({"version": 99}, ValueError, "version"),
        ({"q_hat": -1.0}, ValueError, "q_hat"),
        ({"score": "weird"}, ValueError, "score"),
        ({"alpha": 1.5}, ValueError, "alpha"),
    ],
)
def test_conformal_from_dict_errors(patch, exc, match):
    d = ConformalCalibrator.fit([1.0, 2.0], [1.0, 1.0], alpha=0.5).to_dict()
    d.update(patch)
    with pytest.raises(exc, match=match):
        ConformalCalibrator.from_dict(d, source="x.json")


def test_conformal_from_dict_missing_key_and_bad_json(tmp_path):
    d = ConformalCalibrator.fit([1.0, 2.0], [1.0, 1.0], alpha=0.5).to_dict()
    del d["q_hat"]
    with pytest.raises(KeyError, match="q_hat"):
        ConformalCalibrator.from_dict(d, source="x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        ConformalCalibrator.load(bad)



@pytest.mark.parametrize("units, ok", [("px", True), ("mm", True), ("frac", True), ("inch", False)])
def test_conformal_sigma_units_px_for_unknown_spacing(units, ok):
    # a pixel sigma with pixel errors (images without spacing, e.g. AASCE) is a valid calibration
    if not ok:
        with pytest.raises(ValueError, match="sigma_units"):
            ConformalCalibrator.fit([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 2.0], alpha=0.2, sigma_units=units)
        return
    cal = ConformalCalibrator.fit([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 2.0], alpha=0.2, sigma_units=units,
                                  error_unit="px")
    assert cal.q_hat == 3.0 and cal.sigma_units == units
    assert ConformalCalibrator.from_dict(cal.to_dict()).sigma_units == units
