"""Tests of monai_spine.uncertainty.quality: ranking, sparsification, coverage, classes, referral."""

from __future__ import annotations

import math
import posixpath
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

from monai_spine.uncertainty.classes import Thresholds
from monai_spine.uncertainty.conformal import ConformalCalibrator
from monai_spine.uncertainty.quality import (
    conformal_coverage,
    errors_per_class,
    quality_report,
    referral_curve,
    sparsification,
    spearman,
)
from monai_spine.uncertainty.thresholds import fit_thresholds

E4 = np.array([1.0, 2.0, 3.0, 4.0])


# ----------------------------------------------------------------------------------------------
# Spearman
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sigmas, rho",
    [
        ([0.1, 0.2, 0.3, 0.4], 1.0),
        ([0.4, 0.3, 0.2, 0.1], -1.0),
        ([0.1, 0.3, 0.2, 0.4], 0.8),  # d = (0, 1, -1, 0): 1 - 6 * 2 / (4 * 15)
    ],
)
def test_spearman_by_hand(sigmas, rho):
    out = spearman(E4, np.asarray(sigmas))
    assert out["rho"] == pytest.approx(rho) and out["n"] == 4
    assert 0.0 <= out["p_value"] <= 1.0


def test_spearman_matches_scipy_and_filters():
    rng = np.random.default_rng(0)
    s = rng.uniform(size=50)
    e = s + rng.normal(scale=0.3, size=50)
    ref = spearmanr(s, e)
    out = spearman(np.append(e, [np.nan, np.inf, 1.0]), np.append(s, [0.5, 0.5, np.nan]))
    assert out["n"] == 50
    assert out["rho"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(ref.pvalue)


@pytest.mark.parametrize("e, s", [([1.0, 2.0], [1.0, 2.0]), ([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]), ([], [])])
def test_spearman_degenerate(e, s):
    out = spearman(np.asarray(e), np.asarray(s))
    assert math.isnan(out["rho"]) and math.isnan(out["p_value"])


# ----------------------------------------------------------------------------------------------
# sparsification / AUSE
# ----------------------------------------------------------------------------------------------
F4 = [0.0, 0.25, 0.5, 0.75]


def test_sparsification_worst_ranking_by_hand():
    # sigma ranks the errors backwards: the model removes the smallest error first
    out = sparsification(E4, np.array([4.0, 3.0, 2.0, 1.0]), F4)
    np.testing.assert_allclose(out["model"], [2.5, 3.0, 3.5, 4.0])
    np.testing.assert_allclose(out["oracle"], [2.5, 2.0, 1.5, 1.0])
    # trapezoid of (0, 1, 2, 3) with step 0.25 = 0.25 * (0.5 + 1.5 + 2.5)
    assert out["ause"] == pytest.approx(1.125)
    assert sparsification(E4, np.array([4.0, 3.0, 2.0, 1.0]), F4, normalize=True)["ause"] == pytest.approx(1.125 / 2.5)


def test_sparsification_perfect_and_uninformative():
    perfect = sparsification(E4, E4 * 0.01, F4)
    assert perfect["ause"] == 0.0
    np.testing.assert_allclose(perfect["model"], perfect["oracle"])
    # constant sigma: ties in expectation -> the model curve stays at the mean
    flat = sparsification(E4, np.ones(4), F4)
    np.testing.assert_allclose(flat["model"], 2.5)
    assert flat["ause"] == pytest.approx(0.25 * (0.25 + 0.75 + 1.25))


def test_sparsification_partial_ties_and_order_invariance():
    # sigma [1, 2, 2]: removing one point removes 3 or 5 with equal chance -> (1 + 4) / 2
    out = sparsification(np.array([1.0, 3.0, 5.0]), np.array([1.0, 2.0, 2.0]), [0.0, 1 / 3])
    np.testing.assert_allclose(out["model"], [3.0, 2.5])
    rng = np.random.default_rng(5)
    e = rng.exponential(size=40)
    s = np.round(rng.uniform(size=40), 1)
    perm = rng.permutation(40)
    a, b = sparsification(e, s), sparsification(e[perm], s[perm])
    np.testing.assert_allclose(a["model"], b["model"])
    assert a["ause"] == pytest.approx(b["ause"]) and a["ause"] >= 0


def test_sparsification_default_grid_keeps_one_point_and_filters():
    out = sparsification(np.array([1.0, 2.0, np.inf]), np.array([1.0, 2.0, 3.0]))
    assert out["n"] == 2 and out["fractions"].size == 100 and out["fractions"][-1] == 0.99
    assert out["model"][-1] == 1.0 and np.all(np.isfinite(out["model"]))
    with pytest.raises(ValueError, match="fractions"):
        sparsification(E4, E4, [0.5, 0.2])
    with pytest.raises(ValueError, match="fractions"):
        sparsification(E4, E4, [0.0, 1.0])
    assert math.isnan(sparsification(np.array([np.nan]), np.array([1.0]))["ause"])


def test_informative_sigma_beats_random():
    rng = np.random.default_rng(11)
    s = rng.uniform(0.5, 2.0, 3000)
    e = s * np.sqrt(rng.chisquare(2, 3000))
    good = sparsification(e, s)["ause"]
    rand = sparsification(e, rng.uniform(size=3000))["ause"]
    assert 0 < good < rand


# ----------------------------------------------------------------------------------------------
# conformal coverage, classes, referral
# ----------------------------------------------------------------------------------------------
def _calibrator(q=2.0, alpha=0.1, **kw):
    return ConformalCalibrator(alpha=alpha, q_hat=q, n=100, **kw)


def test_conformal_coverage_by_hand():
    cal = _calibrator(2.0, q_hat_per_point_type={"spinous_process": 4.0})
    # radii: [2, 2, 4] pooled (covers 1 only); with types the last (spinous process) gets 4 * 2 = 8
    out = conformal_coverage(np.array([1.0, 3.0, 5.0]), np.array([1.0, 1.0, 2.0]), cal)
    assert out["coverage"] == pytest.approx(1 / 3) and out["nominal"] == pytest.approx(0.9)
    assert out["mean_radius"] == pytest.approx(8 / 3) and out["median_radius"] == 2.0 and out["n"] == 3
    typed = conformal_coverage(
        np.array([1.0, 3.0, 5.0]), np.array([1.0, 1.0, 2.0]), cal, ["corner", "corner", "spinous_process"]
    )
    assert typed["coverage"] == pytest.approx(2 / 3) and typed["mean_radius"] == pytest.approx(4.0)
    assert typed["per_point_type"]["corner"]["coverage"] == 0.5
    assert typed["per_point_type"]["spinous_process"]["coverage"] == 1.0


def test_conformal_coverage_counts_failures_and_skips_unknown():
    out = conformal_coverage(np.array([np.inf, 1.0, 1.0, np.nan]), np.array([1.0, 1.0, np.nan, 1.0]), _calibrator())
    assert out["n"] == 2 and out["coverage"] == 0.5


THR = Thresholds(1.0, 2.0, "mm", per_point_type={"spinous_process": (3.0, 4.0)})


def test_errors_per_class_by_hand():
    e = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan])
    s = np.array([0.5, 1.0, 1.5, 2.0, 3.0, np.nan, 0.1])
    out = errors_per_class(e, s, THR)
    assert out["certain"] == {"count": 1.0, "share": 1 / 6, "mean": 1.0, "median": 1.0, "q90": 1.0}
    assert out["moderately_uncertain"]["count"] == 2 and out["moderately_uncertain"]["mean"] == 2.5
    assert out["moderately_uncertain"]["q90"] == 3.0  # ceil(0.9 * 2) = 2nd
    assert out["highly_uncertain"]["median"] == 4.5 and out["unknown"]["count"] == 1
    # per point type thresholds: sigma 3 of a spinous process is moderately uncertain
    types = ["corner"] * 4 + ["spinous_process"] * 3
    typed = errors_per_class(e, s, THR, types, quantile=0.5)
    assert typed["moderately_uncertain"]["count"] == 3 and typed["highly_uncertain"]["count"] == 1
    assert typed["moderately_uncertain"]["q50"] == 3.0
    empty = errors_per_class(np.array([1.0]), np.array([5.0]), THR)["certain"]
    assert empty["count"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["q90"])


def test_referral_curve_by_hand():
    out = referral_curve(E4, np.array([1.0, 2.0, 3.0, 4.0]), [0.0, 0.25, 0.5], sdr_threshold=2.0)
    np.testing.assert_allclose(out["mean_error"], [2.5, 2.0, 1.5])
    np.testing.assert_allclose(out["sdr"], [0.5, 2 / 3, 1.0])
    np.testing.assert_array_equal(out["referred"], [0, 1, 2])
    np.testing.assert_array_equal(out["kept"], [4, 3, 2])
    # ties: two points share the highest sigma, one is referred at random
    tie = referral_curve(np.array([1.0, 2.0, 6.0]), np.array([0.0, 1.0, 1.0]), [0.0, 1 / 3])
    np.testing.assert_allclose(tie["mean_error"], [3.0, (1.0 + 4.0) / 2])
    np.testing.assert_allclose(tie["sdr"], [2 / 3, (1.0 + 0.5) / 2])


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
_MLFLOW_NAME = re.compile(r"^[A-Za-z0-9_\-. /]+$")


def _mlflow_safe(key: str) -> bool:
    norm = posixpath.normpath(key)
    return bool(_MLFLOW_NAME.match(key)) and norm == key and not norm.startswith(("/", ".."))


def _data(seed=0, n=600):
    rng = np.random.default_rng(seed)
    types = np.array(["corner", "corner", "corner", "corner", "spinous_process"])
    sig_mm = rng.uniform(0.3, 2.0, (n // 5, 5))
    err = sig_mm * np.sqrt(rng.chisquare(2, sig_mm.shape)) / 1.5
    return err, {"mm": sig_mm, "frac": sig_mm / 224.0 * rng.uniform(0.9, 1.1, sig_mm.shape)}, types


def test_quality_report_keys_and_units():
    err, sig, types = _data()
    thr = fit_thresholds(err, sig["frac"], types, units="frac")
    conf = ConformalCalibrator.fit(err, sig["mm"], types, alpha=0.1)
    rep = quality_report(err, sig, types, thr, conf)
    assert all(_mlflow_safe(k) for k in rep), [k for k in rep if not _mlflow_safe(k)]
    assert all(isinstance(v, float) for v in rep.values())
    for key in (
        "num_points", "num_failed", "spearman_rho", "spearman_p", "ause_mm", "ause_rel",
        "class/certain/count", "class/certain/q90_mm", "class/unknown/share",
        "conformal/coverage", "conformal/mean_radius_mm", "referral/refer_10pct/mean_mm",
        "referral/refer_5pct/sdr_2.0mm", "corner/spearman_rho", "spinous_process/conformal/coverage",
        "spinous_process/class/highly_uncertain/mean_mm",
    ):
        assert key in rep, key
    assert not any(k.startswith("corner/referral") for k in rep)
    assert rep["num_points"] == err.size and rep["corner/num_points"] == err.size * 4 / 5
    # the ranking uses the conformal's units (mm) by default
    assert rep["spearman_rho"] == pytest.approx(spearman(err, sig["mm"])["rho"])
    assert rep["conformal/coverage"] >= 0.9  # in-sample
    assert rep["conformal/nominal"] == pytest.approx(0.9)
    # class counts follow the thresholds in their own units (frac)
    cls = thr.classify(sig["frac"], types)
    assert rep["class/certain/count"] == float((cls == 0).sum())
    # referral monotone on informative sigma
    assert rep["referral/refer_50pct/mean_mm"] < rep["referral/refer_0pct/mean_mm"]


def test_quality_report_px_array_and_failures():
    err, sig, _ = _data(1, 100)
    err = err.ravel()
    s = sig["mm"].ravel()
    err[0] = np.inf
    err[1] = np.nan
    rep = quality_report(err, s, error_unit="px", primary_units=None)
    assert rep["num_points"] == 99 and rep["num_failed"] == 1
    assert "ause_px" in rep and "referral/refer_10pct/sdr_2.0px" in rep and "ause_mm" not in rep
    assert not any(k.startswith("class/") or k.startswith("conformal/") for k in rep)
    assert math.isfinite(rep["ause_px"])


def test_quality_report_unit_mismatch():
    err, sig, _ = _data(2, 50)
    thr = Thresholds(0.005, 0.008, "frac")
    conf = _calibrator(sigma_units="mm")
    with pytest.raises(ValueError, match="mapping"):
        quality_report(err, sig["mm"], thresholds=thr, conformal=conf)
    with pytest.raises(KeyError, match="frac"):
        quality_report(err, {"mm": sig["mm"]}, thresholds=thr)
    with pytest.raises(ValueError, match="shape"):
        quality_report(err, sig["mm"][:3])


def test_ence_hand_computed_and_perfect_calibration():
    from monai_spine.uncertainty.quality import ence

    # two bins: sigmas 1,1 (errors 2,2: RMSE 2 vs RMV 1 -> 1.0) and 3,3 (errors 3,3: exact -> 0)
    r = ence([2.0, 2.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0], bins=2)
    assert r["ence"] == pytest.approx(0.5) and r["n"] == 4
    np.testing.assert_allclose(r["rmse"], [2.0, 3.0])
    # radial errors of 2D Gaussians with sx = sy = s/sqrt(2): E[e^2] = s^2, ENCE near 0
    rng = np.random.default_rng(0)
    s = rng.uniform(0.5, 3.0, 20000)
    e = np.linalg.norm(rng.normal(size=(20000, 2)) * (s / np.sqrt(2))[:, None], axis=1)
    assert ence(e, s, bins=10)["ence"] < 0.05
    # overconfident by a factor 2 -> ENCE near 1
    assert ence(e, s / 2, bins=10)["ence"] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="bins"):
        ence([1.0], [1.0], bins=0)
