"""How good is the keypoint uncertainty? Ranking, sparsification, coverage, classes and referral.

Plain functions on flat (or any-shape) arrays of per-point errors (mm, or px when the spacing is
unknown) and uncertainties ``sigma_p`` (frac or mm), each returning a dict, plus
:func:`quality_report`, a flat ``{key: float}`` summary whose keys are valid MLflow metric names.

* :func:`spearman`: rank correlation of ``sigma_p`` with the error (``scipy.stats.spearmanr``).
* :func:`sparsification`: the sparsification curve and AUSE of Ilg et al., "Uncertainty Estimates and
  Multi-Hypotheses Networks for Optical Flow", ECCV 2018: remove the fraction ``f`` of the points
  with the highest ``sigma_p`` and take the mean error of the rest (model curve); do the same
  removing the highest errors (oracle curve, the best any ranking can do); AUSE is the area between
  the two over ``f``. 0 is a perfect ranking; a ranking unrelated to the error gives about the
  area between the flat mean and the oracle.
* :func:`ence`: expected normalised calibration error (Levi et al., "Evaluating and Calibrating
  Uncertainty Prediction in Regression Tasks", Sensors 2022): points in equal-count bins of
  ``sigma_p``; per bin the root mean variance ``RMV = sqrt(mean sigma_p^2)`` against the root mean
  squared error ``RMSE = sqrt(mean e^2)``; ``ENCE = mean |RMV - RMSE| / RMV``. For a 2D point with
  independent Gaussian x/y errors ``E[e^2] = sx^2 + sy^2 = sigma_p^2``, so 0 is perfect calibration.
* :func:`conformal_coverage`: empirical coverage and size of split-conformal radii
  (:class:`~monai_spine.uncertainty.conformal.ConformalCalibrator`).
* :func:`errors_per_class`: error statistics per uncertainty class (BayeRegX section 3.4).
* :func:`referral_curve`: refer the most uncertain share of points to a human and report the mean
  error and SDR of the points kept.

Failed predictions (``+inf`` errors) are kept by :func:`errors_per_class` (they make a mean infinite)
and count as misses in :func:`conformal_coverage`; the ranking measures (:func:`spearman`,
:func:`sparsification`, :func:`referral_curve`) use the points with a finite error and sigma only
(their ``n`` says how many); :func:`quality_report` reports ``num_failed`` separately. Ties in
``sigma_p`` are resolved in expectation (as if broken at random), so results never depend on the
order of the input.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_spine.uncertainty.classes import CLASS_NAMES, UNKNOWN, Thresholds, classify
from monai_spine.uncertainty.conformal import ConformalCalibrator, coverage
from monai_spine.uncertainty.thresholds import DEFAULT_QUANTILE, _point_types_like, error_quantile

__all__ = [
    "ence",
    "DEFAULT_FRACTIONS",
    "DEFAULT_REFERRAL_FRACTIONS",
    "spearman",
    "sparsification",
    "conformal_coverage",
    "errors_per_class",
    "referral_curve",
    "quality_report",
]

#: removal fractions of the sparsification curve: 0, 0.01, ..., 0.99
DEFAULT_FRACTIONS = tuple(np.round(np.arange(100) / 100, 2).tolist())
#: shares of points referred to a human in :func:`referral_curve`
DEFAULT_REFERRAL_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(errors: Any, sigmas: Any, finite_errors: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flat (errors, sigmas) of the usable points (finite sigma; finite or +inf error)."""
    e = _np(errors)
    s = _np(sigmas)
    if e.shape != s.shape:
        raise ValueError(f"errors shape {e.shape} does not match sigmas shape {s.shape}")
    e, s = e.ravel(), s.ravel()
    keep = np.isfinite(s) & (np.isfinite(e) if finite_errors else ~np.isnan(e))
    return e[keep], s[keep]


def _check_fractions(fractions: Sequence[float], name: str) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64).ravel()
    if f.size == 0 or np.any(~np.isfinite(f)) or np.any((f < 0) | (f >= 1)) or np.any(np.diff(f) <= 0):
        raise ValueError(f"{name} must be increasing values in [0, 1), got {list(fractions)!r}")
    return f


def _kept_means(errors: np.ndarray, key: np.ndarray, n_kept: np.ndarray) -> np.ndarray:
    """Expected mean error of the ``n_kept`` points with the lowest ``key``, ties broken at random.

    With ``v`` the key of the last kept point, the ``a`` points with key < v are all kept and
    ``n_kept - a`` of the ``b - a`` points tied at v, each with the same chance.
    """
    order = np.argsort(key, kind="stable")
    k, e = key[order], errors[order]
    cum = np.concatenate([[0.0], np.cumsum(e)])
    m = np.asarray(n_kept, dtype=np.int64)
    v = k[m - 1]
    a = np.searchsorted(k, v, side="left")
    b = np.searchsorted(k, v, side="right")
    kept_sum = cum[a] + (m - a) / (b - a) * (cum[b] - cum[a])
    return kept_sum / m


def _n_removed(fractions: np.ndarray, n: int) -> np.ndarray:
    """``floor(f * n)`` (float noise rounded), at most ``n - 1`` so one point is always kept."""
    return np.minimum(np.floor(np.round(fractions * n, 9)).astype(np.int64), n - 1)


def spearman(errors: Any, sigmas: Any) -> dict[str, float]:
    """Spearman rank correlation of ``sigma_p`` with the error (scipy.stats.spearmanr).

    Args:
        errors: any shape (mm or px).
        sigmas: same shape.

    Returns:
        ``{"rho", "p_value", "n"}``; rho and p NaN with fewer than 3 points or a constant input.
    """
    from scipy.stats import spearmanr

    e, s = _pair(errors, sigmas)
    n = int(e.size)
    if n < 3 or np.ptp(e) == 0 or np.ptp(s) == 0:
        return {"rho": float("nan"), "p_value": float("nan"), "n": float(n)}
    res = spearmanr(s, e)
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": float(n)}


def sparsification(
    errors: Any, sigmas: Any, fractions: Sequence[float] = DEFAULT_FRACTIONS, normalize: bool = False
) -> dict[str, Any]:
    """Sparsification curves and AUSE (Ilg et al., ECCV 2018).

    For each fraction ``f`` the ``floor(f * n)`` points with the highest ``sigma_p`` are removed
    (at most ``n - 1``) and the mean error of the rest is the *model* curve; removing the highest
    errors gives the *oracle* curve. ``AUSE = trapezoid(model - oracle, fractions)`` (>= 0).

    Args:
        errors: any shape (mm or px); points with a non-finite error or sigma are left out.
        sigmas: same shape.
        fractions: increasing removal fractions in [0, 1) (default 0, 0.01, ..., 0.99).
        normalize: divide both curves by the mean error of all points (unitless AUSE).

    Returns:
        ``{"fractions", "model", "oracle"}`` (arrays), ``"ause"`` (error units, or unitless when
        normalized; NaN without points) and ``"n"``.
    """
    f = _check_fractions(fractions, "fractions")
    e, s = _pair(errors, sigmas)
    n = int(e.size)
    if n == 0:
        nan = np.full(f.shape, np.nan)
        return {"fractions": f, "model": nan, "oracle": nan.copy(), "ause": float("nan"), "n": 0.0}
    kept = n - _n_removed(f, n)
    model = _kept_means(e, s, kept)
    oracle = _kept_means(e, e, kept)
    if normalize:
        total = float(np.mean(e))
        with np.errstate(invalid="ignore", divide="ignore"):
            model, oracle = model / total, oracle / total
    diff = model - oracle
    ause = float(np.trapezoid(diff, f)) if f.size > 1 else 0.0
    return {"fractions": f, "model": model, "oracle": oracle, "ause": ause, "n": float(n)}


def ence(errors: Any, sigmas: Any, bins: int = 10) -> dict[str, Any]:
    """Expected normalised calibration error of ``sigma_p`` against radial point errors (module docstring).

    Args:
        errors: point errors (any shape), same unit as ``sigmas``; non-finite pairs are left out.
        sigmas: ``sigma_p`` per point.
        bins: number of equal-count bins of ``sigma_p`` (fewer when there are fewer points).

    Returns:
        ``{"ence", "rmv" (per bin), "rmse" (per bin), "n"}``; NaN ENCE without points.

    Raises:
        ValueError: shapes differ, or ``bins < 1``.
    """
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    e, s = _pair(errors, sigmas)
    keep = np.isfinite(e) & np.isfinite(s)
    e, s = e[keep], s[keep]
    if e.size == 0:
        return {"ence": float("nan"), "rmv": np.array([]), "rmse": np.array([]), "n": 0.0}
    order = np.argsort(s, kind="stable")
    groups = [g for g in np.array_split(order, min(int(bins), e.size)) if g.size]
    rmv = np.array([np.sqrt(np.mean(s[g] ** 2)) for g in groups])
    rmse = np.array([np.sqrt(np.mean(e[g] ** 2)) for g in groups])
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(np.mean(np.abs(rmv - rmse) / rmv))
    return {"ence": value, "rmv": rmv, "rmse": rmse, "n": float(e.size)}


def conformal_coverage(
    errors: Any, sigmas: Any, conformal: ConformalCalibrator, point_types: Any = None
) -> dict[str, Any]:
    """Empirical coverage and size of conformal radii on (held-out) points.

    Args:
        errors: any shape, in ``conformal.error_unit``; NaN not counted, +inf (failed) is a miss.
        sigmas: same shape, in ``conformal.sigma_units``.
        conformal: a fitted :class:`ConformalCalibrator`.
        point_types: per element or per last-axis column; also gives per-type results.

    Returns:
        ``{"coverage", "nominal" (1 - alpha), "mean_radius", "median_radius", "n"}`` and, with point
        types, ``"per_point_type": {type: same keys}``. Radii are in ``conformal.error_unit``; an
        infinite radius makes the mean infinite.
    """
    e = _np(errors)
    s = _np(sigmas)
    if e.shape != s.shape:
        raise ValueError(f"errors shape {e.shape} does not match sigmas shape {s.shape}")
    t = _point_types_like(point_types, e.shape)
    r = conformal.radii(s, t)

    def block(mask: np.ndarray) -> dict[str, float]:
        m = mask & ~np.isnan(e) & ~np.isnan(r)
        rr = r[m]
        return {
            "coverage": coverage(e[m], rr),
            "nominal": 1.0 - conformal.alpha,
            "mean_radius": float(np.mean(rr)) if rr.size else float("nan"),
            "median_radius": float(np.median(rr)) if rr.size else float("nan"),
            "n": float(rr.size),
        }

    out: dict[str, Any] = block(np.ones(e.shape, dtype=bool))
    if t is not None:
        out["per_point_type"] = {str(p): block(t == p) for p in dict.fromkeys(t.ravel().tolist())}
    return out


def errors_per_class(
    errors: Any,
    sigmas: Any,
    thresholds: Thresholds,
    point_types: Any = None,
    quantile: float = DEFAULT_QUANTILE,
) -> dict[str, dict[str, float]]:
    """Error statistics per uncertainty class (certain / moderately / highly uncertain / unknown).

    Args:
        errors: any shape (mm or px); NaN not counted, +inf kept.
        sigmas: same shape, in ``thresholds.units``.
        thresholds: class thresholds (per point type when ``point_types`` is given).
        point_types: per element or per last-axis column.
        quantile: the q of the ``q{100q}`` statistic (calibration's quantile: order statistic
            ``ceil(q * m)``).

    Returns:
        ``{class_name: {"count", "share", "mean", "median", "q90"}}`` for the three classes and
        ``"unknown"`` (non-finite sigma); the ``q90`` key is named after ``quantile``
        (``q95`` for 0.95); share is of the counted points; statistics NaN for an empty class.
    """
    e = _np(errors)
    s = _np(sigmas)
    if e.shape != s.shape:
        raise ValueError(f"errors shape {e.shape} does not match sigmas shape {s.shape}")
    t = _point_types_like(point_types, e.shape)
    if t is None:
        cls = thresholds.classify(s)
    else:
        cls = np.empty(e.shape, dtype=np.int64)
        for p in np.unique(t):
            m = t == p
            cls[m] = classify(s[m], *thresholds.for_point_type(str(p)))
    counted = ~np.isnan(e)
    total = int(counted.sum())
    qkey = f"q{100 * float(quantile):g}".replace(".", "_")
    out: dict[str, dict[str, float]] = {}
    for idx, name in [(i, n) for i, n in enumerate(CLASS_NAMES)] + [(UNKNOWN, "unknown")]:
        v = e[counted & (cls == idx)]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = {
                "count": float(v.size),
                "share": float(v.size / total) if total else float("nan"),
                "mean": float(np.mean(v)) if v.size else float("nan"),
                "median": float(np.median(v)) if v.size else float("nan"),
                qkey: error_quantile(v, quantile),
            }
    return out


def referral_curve(
    errors: Any,
    sigmas: Any,
    fractions: Sequence[float] = DEFAULT_REFERRAL_FRACTIONS,
    sdr_threshold: float = 2.0,
) -> dict[str, Any]:
    """Accuracy of the points kept when the most uncertain share is referred to a human.

    For each share ``f`` the ``floor(f * n)`` points with the highest ``sigma_p`` are referred (at
    most ``n - 1``; ties in expectation); the rest are kept.

    Args:
        errors: any shape (mm or px); points with a non-finite error or sigma are left out.
        sigmas: same shape.
        fractions: increasing referred shares in [0, 1).
        sdr_threshold: success threshold (same unit as the errors): ``error <= sdr_threshold``.

    Returns:
        ``{"fractions", "referred", "kept", "mean_error", "sdr"}`` arrays and ``"n"``.
    """
    f = _check_fractions(fractions, "fractions")
    e, s = _pair(errors, sigmas)
    n = int(e.size)
    if n == 0:
        nan = np.full(f.shape, np.nan)
        zeros = np.zeros(f.shape)
        return {"fractions": f, "referred": zeros, "kept": zeros, "mean_error": nan, "sdr": nan.copy(), "n": 0.0}
    removed = _n_removed(f, n)
    kept = n - removed
    mean = _kept_means(e, s, kept)
    sdr = _kept_means((e <= float(sdr_threshold)).astype(np.float64), s, kept)
    return {
        "fractions": f,
        "referred": removed.astype(np.float64),
        "kept": kept.astype(np.float64),
        "mean_error": mean,
        "sdr": sdr,
        "n": float(n),
    }


def _pct(f: float) -> str:
    return f"{100 * f:.10g}".replace(".", "_") + "pct"


def _sigma_for(sigmas: Any, units: str | None, what: str) -> np.ndarray:
    if isinstance(sigmas, Mapping):
        if units not in sigmas:
            raise KeyError(f"quality_report: {what} needs sigma_p in {units!r}; sigmas has {sorted(sigmas)}")
        return _np(sigmas[units])
    return _np(sigmas)


def _block(
    e: np.ndarray,
    s_rank: np.ndarray,
    s_thr: np.ndarray | None,
    s_conf: np.ndarray | None,
    t: np.ndarray | None,
    thresholds: Thresholds | None,
    conformal: ConformalCalibrator | None,
    unit: str,
    fractions: Sequence[float],
    referral_fractions: Sequence[float],
    sdr_threshold: float,
    with_referral: bool,
) -> dict[str, float]:
    out: dict[str, float] = {}
    counted = ~np.isnan(e)
    out["num_points"] = float(counted.sum())
    out["num_failed"] = float(np.isposinf(e).sum())
    sp = spearman(e, s_rank)
    out["spearman_rho"] = sp["rho"]
    out["spearman_p"] = sp["p_value"]
    out[f"ause_{unit}"] = sparsification(e, s_rank, fractions)["ause"]
    out["ause_rel"] = sparsification(e, s_rank, fractions, normalize=True)["ause"]
    if thresholds is not None and s_thr is not None:
        for name, st in errors_per_class(e, s_thr, thresholds, t).items():
            for k, v in st.items():
                key = k if k in ("count", "share") else f"{k}_{unit}"
                out[f"class/{name}/{key}"] = v
    if conformal is not None and s_conf is not None:
        cv = conformal_coverage(e, s_conf, conformal, t)
        out["conformal/coverage"] = cv["coverage"]
        out["conformal/nominal"] = cv["nominal"]
        out[f"conformal/mean_radius_{unit}"] = cv["mean_radius"]
        out[f"conformal/median_radius_{unit}"] = cv["median_radius"]
    if with_referral:
        rc = referral_curve(e, s_rank, referral_fractions, sdr_threshold)
        sdr_key = f"sdr_{float(sdr_threshold)}{unit}"
        for i, f in enumerate(rc["fractions"]):
            out[f"referral/refer_{_pct(float(f))}/mean_{unit}"] = float(rc["mean_error"][i])
            out[f"referral/refer_{_pct(float(f))}/{sdr_key}"] = float(rc["sdr"][i])
    return out


def quality_report(
    errors: Any,
    sigmas: Any,
    point_types: Any = None,
    thresholds: Thresholds | None = None,
    conformal: ConformalCalibrator | None = None,
    *,
    primary_units: str | None = None,
    error_unit: str = "mm",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    referral_fractions: Sequence[float] = DEFAULT_REFERRAL_FRACTIONS,
    sdr_threshold: float = 2.0,
) -> dict[str, float]:
    """Flat summary of the uncertainty quality, keys valid as MLflow metric names.

    Args:
        errors: per-point errors (any shape) in ``error_unit``.
        sigmas: ``sigma_p`` of the same shape, or ``{"frac": ..., "mm": ...}``: the thresholds use
            ``sigmas[thresholds.units]``, the conformal radii ``sigmas[conformal.sigma_units]`` and the
            ranking measures ``sigmas[primary_units]``. A single array is used for all of them (then
            the units of ``thresholds`` and ``conformal`` must agree).
        point_types: per element or per last-axis column: adds ``<type>/...`` keys (no referral).
        thresholds: uncertainty classes to summarise (optional).
        conformal: conformal calibration to check (optional; in-sample coverage is optimistic).
        primary_units: key of ``sigmas`` for the ranking measures (default: the conformal's units,
            else the thresholds', else ``"mm"`` when present, else ``"frac"``).
        error_unit: ``"mm"`` or ``"px"``: suffix of the keys in error units.
        fractions: sparsification grid.
        referral_fractions: shares referred to a human.
        sdr_threshold: SDR threshold of the referral curve (error units).

    Returns:
        ``{key: float}`` with keys ``num_points``, ``num_failed``, ``spearman_rho``, ``spearman_p``,
        ``ause_<unit>``, ``ause_rel`` (normalized AUSE), ``class/<class>/{count,share,mean_<unit>,
        median_<unit>,q90_<unit>}``, ``conformal/{coverage,nominal,mean_radius_<unit>,
        median_radius_<unit>}``, ``referral/refer_<p>pct/{mean_<unit>,sdr_<t><unit>}``, and the same
        (less referral) prefixed by ``<point_type>/``.
    """
    e = _np(errors)
    if isinstance(sigmas, Mapping):
        if primary_units is None:
            primary_units = (
                conformal.sigma_units if conformal is not None
                else thresholds.units if thresholds is not None
                else "mm" if "mm" in sigmas else "frac"
            )
    elif thresholds is not None and conformal is not None and thresholds.units != conformal.sigma_units:
        raise ValueError(
            f"quality_report: thresholds in {thresholds.units!r} and conformal in {conformal.sigma_units!r} "
            "need sigmas as a mapping {'frac': ..., 'mm': ...}"
        )
    s_rank = _sigma_for(sigmas, primary_units, "ranking")
    s_thr = _sigma_for(sigmas, thresholds.units, "thresholds") if thresholds is not None else None
    s_conf = _sigma_for(sigmas, conformal.sigma_units, "conformal") if conformal is not None else None
    for name, arr in (("sigmas", s_rank), ("threshold sigmas", s_thr), ("conformal sigmas", s_conf)):
        if arr is not None and arr.shape != e.shape:
            raise ValueError(f"quality_report: {name} shape {arr.shape} does not match errors shape {e.shape}")
    t = _point_types_like(point_types, e.shape)
    common = dict(
        thresholds=thresholds,
        conformal=conformal,
        unit=error_unit,
        fractions=fractions,
        referral_fractions=referral_fractions,
        sdr_threshold=sdr_threshold,
    )
    out = _block(e, s_rank, s_thr, s_conf, t, with_referral=True, **common)
    if t is not None:
        for p in dict.fromkeys(t.ravel().tolist()):
            m = t == p
            sub = _block(
                e[m],
                s_rank[m],
                None if s_thr is None else s_thr[m],
                None if s_conf is None else s_conf[m],
                t[m],
                with_referral=False,
                **common,
            )
            out.update({f"{p}/{k}": v for k, v in sub.items()})
    return {k: float(v) for k, v in out.items()}
