"""Tests of monai_spine.uncertainty.thresholds: the quantile and the BayeRegX threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.data.keypoints import get_scheme
from monai_spine.uncertainty.classes import Thresholds
from monai_spine.uncertainty.thresholds import error_quantile, fit_thresholds, select_thresholds

NEXT = np.nextafter


# ----------------------------------------------------------------------------------------------
# quantile
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, q, expected",
    [
        ([3.0, 1.0, 2.0], 0.5, 2.0),  # ceil(1.5) = 2nd smallest
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),  # ceil(2) = 2nd
        ([1.0, 2.0, 3.0, 4.0], 0.75, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 0.76, 4.0),
        (list(range(1, 11)), 0.9, 9.0),  # 0.9 * 10 is 9, not 10 (float noise)
        (list(range(1, 31)), 0.9, 27.0),
        ([1.0, np.nan, 5.0], 1.0, 5.0),  # NaN not counted
        ([1.0, np.inf], 0.9, np.inf),  # a failed prediction is an error above every bound
        ([1.0, np.inf], 0.5, 1.0),
        ([], 0.9, np.nan),
    ],
)
def test_error_quantile(values, q, expected):
    got = error_quantile(np.asarray(values, dtype=float), q)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == expected


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [0.5, 0.8, 0.9, 0.95])
def test_error_quantile_is_inverted_cdf(seed, q):
    e = np.random.default_rng(seed).exponential(size=37)
    assert error_quantile(e, q) == np.quantile(e, q, method="inverted_cdf")


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_error_quantile_bad_q(q):
    with pytest.raises(ValueError, match="quantile"):
        error_quantile([1.0], q)


# ----------------------------------------------------------------------------------------------
# threshold rule
# ----------------------------------------------------------------------------------------------
SIG7 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
ERR7 = [1.0, 3.0, 1.0, 3.0, 1.8, 5.0, 5.0]

# (sigmas, errors, q, min_count, tau1, tau2, counts, fallback1, fallback2), bounds (1.5, 2.0)
HAND_CASES = [
    # the docstring example: tau1 = 5 (2 of [1, 3, 1, 3] good, need 2), tau2 = 7 (1 of [1.8, 5], need 1)
    (SIG7, ERR7, 0.5, 1, 5.0, 7.0, (4, 2, 1), False, False),
    # min_count 3: no moderate class of >= 3 points qualifies -> tau2 = nextafter(tau1)
    (SIG7, ERR7, 0.5, 3, 5.0, NEXT(5.0, np.inf), (4, 1, 2), False, True),
    # q = 1: certain needs every error <= 1.5 -> {s < 2}; moderate {2 <= s < 3} = [3] fails, {2..} fail
    (SIG7, ERR7, 1.0, 1, 2.0, NEXT(2.0, np.inf), (1, 1, 5), False, True),
    # every point good: both classes hold everything below just above the largest sigma
    ([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], 0.9, 1, NEXT(3.0, np.inf), NEXT(NEXT(3.0, np.inf), np.inf), (3, 0, 0), False, True),
    # no point good: empty certain class (tau1 = 0: empty on any data), moderate fallback too
    ([1.0, 2.0, 3.0], [9.0, 9.0, 9.0], 0.9, 1, 0.0, NEXT(0.0, np.inf), (0, 0, 3), True, True),
    # bad points at small sigma, then good ones: the rule takes the LARGEST admissible tau1 (non-monotone)
    ([1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 1.0, 1.0, 1.0, 9.0], 0.75, 1, 5.0, NEXT(5.0, np.inf), (4, 1, 0), False, True),
    # ties: {s < 2} = [1, 1] good; {s < 3} adds the two errors at sigma 2 -> [1, 1, 1, 9] (3 of 4, need 3)
    ([1.0, 1.0, 2.0, 2.0, 3.0], [1.0, 1.0, 1.0, 9.0, 1.9], 0.75, 1, 3.0, NEXT(3.0, np.inf), (4, 1, 0), False, False),
    # min_count larger than the data: nothing admissible
    ([1.0, 2.0], [0.1, 0.1], 0.9, 5, 0.0, NEXT(0.0, np.inf), (0, 0, 2), True, True),
]


@pytest.mark.parametrize("sig, err, q, min_count, tau1, tau2, counts, fb1, fb2", HAND_CASES)
def test_select_thresholds_by_hand(sig, err, q, min_count, tau1, tau2, counts, fb1, fb2):
    sel = select_thresholds(err, sig, bounds=(1.5, 2.0), quantile=q, min_count=min_count)
    assert (sel.tau1, sel.tau2) == (tau1, tau2)
    assert sel.counts == counts
    assert (sel.fallback1, sel.fallback2) == (fb1, fb2)
    assert sel.tau1 < sel.tau2
    Thresholds(sel.tau1, sel.tau2)  # always a valid pair


def _brute_force(sig, err, b1, b2, q, min_count):
    """Reference implementation: try every candidate, keep the largest admissible."""
    sig, err = np.asarray(sig), np.asarray(err)
    cands = sorted(set(sig.tolist())) + [NEXT(sig.max(), np.inf)]

    def ok(mask, b):
        m = int(mask.sum())
        return m >= max(min_count, 1) and np.quantile(err[mask], q, method="inverted_cdf") <= b

    good1 = [c for c in cands if ok(sig < c, b1)]
    tau1 = good1[-1] if good1 else sig.min()
    good2 = [c for c in cands if c > tau1 and ok((sig >= tau1) & (sig < c), b2)]
    tau2 = good2[-1] if good2 else NEXT(tau1, np.inf)
    return tau1, tau2


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("q, min_count", [(0.9, 5), (0.5, 1), (0.8, 10)])
def test_select_thresholds_matches_brute_force(seed, q, min_count):
    rng = np.random.default_rng(seed)
    n = 60
    sig = np.round(rng.uniform(0.0, 1.0, n), 1)  # rounded: many ties
    err = sig * 3 * np.sqrt(rng.chisquare(2, n)) / 1.4
    sel = select_thresholds(err, sig, (1.5, 2.0), q, min_count)
    assert (sel.tau1, sel.tau2) == _brute_force(sig, err, 1.5, 2.0, q, min_count)
    # the classes of the validation set meet the rule unless a fallback was needed
    if not sel.fallback1:
        assert error_quantile(err[sig < sel.tau1], q) <= 1.5
    if not sel.fallback2:
        assert error_quantile(err[(sig >= sel.tau1) & (sig < sel.tau2)], q) <= 2.0


def test_select_thresholds_ignores_nan_error_and_nonfinite_sigma():
    base = select_thresholds(ERR7, SIG7, quantile=0.5, min_count=1)
    sel = select_thresholds(ERR7 + [np.nan, 0.1, 0.1], SIG7 + [0.5, np.nan, np.inf], quantile=0.5, min_count=1)
    assert (sel.tau1, sel.tau2, sel.n) == (base.tau1, base.tau2, 7)


def test_select_thresholds_inf_error_is_bad():
    # the failed prediction at sigma 1 makes {s < 2} fail with q = 1; {s < 1} is empty -> fallback
    sel = select_thresholds([np.inf, 0.1], [1.0, 2.0], quantile=1.0, min_count=1)
    assert sel.fallback1 and sel.tau1 == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigmas=[-1.0, 1.0], errors=[1.0, 1.0]), "sigma_p must be >= 0"),
        (dict(sigmas=[np.nan], errors=[1.0]), "no point"),
        (dict(sigmas=[1.0, 2.0], errors=[1.0]), "shape"),
        (dict(sigmas=[1.0], errors=[1.0], bounds=(2.0, 1.0)), "bounds"),
        (dict(sigmas=[1.0], errors=[1.0], quantile=0.0), "quantile"),
        (dict(sigmas=[1.0], errors=[1.0], min_count=-1), "min_count"),
    ],
)
def test_select_thresholds_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_thresholds(**kwargs)


def _typed_data(seed=0, n_vert=400):
    """(N, 5) lateral5 errors/sigmas: at equal sigma, spinous processes err 1.5 times more."""
    rng = np.random.default_rng(seed)
    types = get_scheme("lateral5").point_types
    scale = np.array([1.0, 1.0, 1.0, 1.0, 1.5])
    sig = rng.uniform(0.002, 0.012, (n_vert, 5))
    err = sig * scale * 150 * np.sqrt(rng.chisquare(2, (n_vert, 5))) / 1.4
    return err, sig, types


def test_fit_thresholds_per_point_type():
    err, sig, types = _typed_data()
    thr, sel = fit_thresholds(err, sig, types, units="frac", return_selections=True)
    assert set(sel) == {"all", "corner", "spinous_process"}
    pooled = select_thresholds(err, sig)
    corner = select_thresholds(err[:, :4], sig[:, :4])
    sp = select_thresholds(err[:, 4], sig[:, 4])
    assert (thr.tau1, thr.tau2) == (pooled.tau1, pooled.tau2)
    assert thr.per_point_type == {"corner": (corner.tau1, corner.tau2), "spinous_process": (sp.tau1, sp.tau2)}
    assert thr.units == "frac" and "q90" in thr.source and "1.5 mm" in thr.source
    # spinous processes err more at the same sigma: they need a smaller sigma to be certain
    assert sp.tau1 < corner.tau1
    assert sel["corner"].counts[0] > 0 and not sel["corner"].fallback1
    # per-element point types give the same result as per-column ones
    flat_types = np.broadcast_to(np.asarray(types), err.shape)
    assert fit_thresholds(err.ravel(), sig.ravel(), flat_types.ravel()) == thr


def test_fit_thresholds_units_px_and_small_types():
    err, sig, types = _typed_data(n_vert=3)  # 3 spinous processes < min_count 10, 12 corners
    thr = fit_thresholds(err, sig, types, units="mm", error_unit="px")
    assert set(thr.per_point_type) == {"corner"}
    assert thr.units == "mm" and "px" in thr.source and "bounds are pixels" in thr.source
    assert fit_thresholds(err, sig, types, per_point_type=False).per_point_type == {}
    with pytest.raises(ValueError, match="units"):
        fit_thresholds(err, sig, units="cm")
    with pytest.raises(ValueError, match="error_unit"):
        fit_thresholds(err, sig, error_unit="cm")
    with pytest.raises(ValueError, match="point_types"):
        fit_thresholds(err, sig, ["corner"] * 3)


def test_thresholds_file_round_trip(tmp_path):
    from monai_spine.inference.model_zoo import load_thresholds

    err, sig, types = _typed_data()
    thr = fit_thresholds(err, sig, types)
    path = tmp_path / "thresholds.json"
    thr.save(path)
    back = load_thresholds(path)
    assert back == thr
    np.testing.assert_array_equal(back.classify(sig, types), thr.classify(sig, types))



@pytest.mark.parametrize("seed", [0, 1])
def test_fitted_thresholds_meet_their_rule_on_held_out_data(seed):
    """Errors from a known model (2-D Gaussian residuals, Rayleigh error, sigma varying per point):
    thresholds fitted on a calibration set (with the 95 % confidence bound that calibrate uses by
    default) keep the rule on a fresh draw of the same model: at least q = 90 % of held-out 'certain'
    points err <= 1.5 mm and of 'moderate' points <= 2.0 mm (2 points of slack for sampling).
    Without the bound, picking the largest of many thresholds on a small moderate class is optimistic:
    the held-out moderate class then errs within 2 mm for only about 81-84 % of its points."""
    rng = np.random.default_rng(seed)

    def draw(n):
        sigma = rng.uniform(0.2, 2.0, n)  # sigma_p of each point, mm
        err = sigma / np.sqrt(2) * np.sqrt(rng.chisquare(2, n))  # |N(0, (sigma/sqrt2)^2 I_2)|
        return err, sigma

    e_cal, s_cal = draw(4000)
    e_test, s_test = draw(20000)

    def classes(th):
        return s_test < th.tau1, (s_test >= th.tau1) & (s_test < th.tau2)

    th = fit_thresholds(e_cal, s_cal, units="mm", quantile=0.9, per_point_type=False, confidence=0.95)
    certain, moderate = classes(th)
    assert certain.sum() > 1000
    assert np.mean(e_test[certain] <= 1.5) >= 0.9 - 0.02
    # in this model P(error <= 2 mm) < 0.9 as soon as sigma_p > 1.45 mm, so no honest moderate class
    # exists; the guarded rule leaves it empty rather than inventing one
    assert moderate.sum() == 0 or np.mean(e_test[moderate] <= 2.0) >= 0.9 - 0.02
    # the plain empirical rule does invent one, and it breaks the rule on held-out data
    plain = fit_thresholds(e_cal, s_cal, units="mm", quantile=0.9, per_point_type=False)
    _, plain_moderate = classes(plain)
    assert plain_moderate.sum() > 50 and np.mean(e_test[plain_moderate] <= 2.0) < 0.9 - 0.02



@pytest.mark.parametrize("tau1, tau2, expected", [
    (0.0, float(np.nextafter(0.0, np.inf)), []),  # both fallbacks: nothing vouched for
    (0.0, 0.02, ["moderately_uncertain"]),  # no certain class, a fitted moderate one
    (0.01, float(np.nextafter(0.01, np.inf)), ["certain"]),  # fitted tau1, fallback tau2
    (0.01, 0.02, ["certain", "moderately_uncertain"]),
])
def test_vouched_classes(tau1, tau2, expected):
    from monai_spine.uncertainty.thresholds import calibration_failed, vouched_classes

    assert vouched_classes(tau1, tau2) == expected
    assert calibration_failed(Thresholds(tau1, tau2)) == (not expected)
