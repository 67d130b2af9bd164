"""The BayeRegX uncertainty thresholds (tau1, tau2), fitted on validation points.

The rule is fitted on a validation set of predicted points, each with its error ``e`` (Euclidean
distance to the ground truth, in mm; in pixels when the spacing is unknown) and its uncertainty
``sigma_p`` (eq. 17 of BayeRegX, in crop fractions ``"frac"`` as in the paper, or in mm).

**Thresholds (tau1, tau2)** -- BayeRegX (CHIL 2020) section 4 asks that a point with
``sigma_p < tau1`` (*certain*) err by no more than 1.5 mm and a point with ``tau1 <= sigma_p < tau2``
(*moderately uncertain*) by no more than 2 mm, and picks the pair by eye from KDE plots. Here the
rule is made precise with a quantile ``q`` (default 0.9, "90 % of the points of the class err by at
most 1.5 mm"):

* the q-quantile of ``m`` errors is the order statistic ``e_(k)`` with ``k = ceil(q * m)``
  (numpy's ``method="inverted_cdf"``), so ``quantile <= bound`` holds exactly when at least
  ``ceil(q * m)`` of the ``m`` points have ``e <= bound`` (:func:`error_quantile`);
* a class ``{tau_lo <= sigma_p < tau}`` only changes when ``tau`` passes an observed ``sigma_p``, so
  the candidate thresholds are the distinct observed values ``c_1 < ... < c_D`` plus
  ``c_{D+1} = nextafter(c_D, +inf)`` (a class holding every point); the largest threshold giving a
  class is then always one of the candidates;
* a candidate is *admissible* when its class has at least ``min_count`` points (default 10, for
  stability) and its q-quantile of error is ``<= bound``;
* ``tau1`` is the **largest** admissible candidate for the class ``{sigma_p < tau1}`` and
  ``bound1 = 1.5``; if there is none, ``tau1 = 0`` (the certain class is empty on any data, not
  only on the validation set);
* ``tau2`` is the **largest** admissible candidate ``> tau1`` for the class
  ``{tau1 <= sigma_p < tau2}`` and ``bound2 = 2.0``; if there is none,
  ``tau2 = nextafter(tau1, +inf)`` (the moderate class is as small as ``tau1 < tau2`` allows: only
  points with ``sigma_p == tau1`` exactly fall in it).

Admissibility need not be monotone in the threshold (a few bad points with small sigma can be
outweighed by many good ones), so *largest* means the largest over all candidates, not the first
failure. The rule is applied to all points pooled (the default pair of
:class:`~monai_spine.uncertainty.classes.Thresholds`) and to each point type (``"corner"``,
``"spinous_process"``) with at least ``min_count`` points (``per_point_type``). Errors in pixels
(unknown spacing) make the bounds pixels too; the ``source`` text of the thresholds says so.

Statistics only, no file I/O: the calibration run that matches prediction files to annotations and
writes ``thresholds.json`` is :func:`monai_spine.evaluation.calibration.calibrate_from_predictions`;
split-conformal radii are :mod:`monai_spine.uncertainty.conformal`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monai_spine.uncertainty.classes import THRESHOLD_UNITS, Thresholds

__all__ = [
    "DEFAULT_BOUNDS",
    "DEFAULT_QUANTILE",
    "DEFAULT_MIN_COUNT",
    "DEFAULT_CONFIDENCE",
    "ERROR_UNITS",
    "error_quantile",
    "TauSelection",
    "select_thresholds",
    "fit_thresholds",
    "NO_CLASS_MESSAGE",
    "vouched_classes",
    "calibration_failed",
]

#: the paper's error bounds for the certain and moderately uncertain classes (mm)
DEFAULT_BOUNDS = (1.5, 2.0)
#: share of the points of a class that must err by at most its bound
DEFAULT_QUANTILE = 0.9
#: smallest class a threshold may be fitted on
DEFAULT_MIN_COUNT = 10
#: one-sided confidence of the class rule in calibrate (None: the plain empirical rule)
DEFAULT_CONFIDENCE: float | None = 0.95
#: units an error can have
ERROR_UNITS = ("mm", "px")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _rank(q: float, m: int | np.ndarray) -> np.ndarray:
    """``ceil(q * m)`` robust to float noise (0.9 * 10 is 9, not 10), at least 1."""
    return np.maximum(np.ceil(np.round(q * np.asarray(m, dtype=np.float64), 9)), 1).astype(np.int64)


def _check_quantile(q: float) -> float:
    q = float(q)
    if not (0.0 < q <= 1.0):
        raise ValueError(f"quantile must be in (0, 1], got {q!r}")
    return q


def _point_types_like(point_types: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """Point types as a str array of ``shape``: given per element, or per last-axis column."""
    if point_types is None:
        return None
    t = np.asarray(list(point_types) if not isinstance(point_types, np.ndarray) else point_types).astype(str)
    if t.shape == shape:
        return t
    if t.ndim == 1 and len(shape) >= 1 and t.shape[0] == shape[-1]:
        return np.broadcast_to(t, shape)
    raise ValueError(f"point_types of shape {t.shape} match neither the values {shape} nor their last axis")


def _flat_inputs(errors: Any, sigmas: Any, point_types: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    e = _np(errors)
    s = _np(sigmas)
    if e.shape != s.shape:
        raise ValueError(f"errors shape {e.shape} does not match sigmas shape {s.shape}")
    t = _point_types_like(point_types, e.shape)
    return e.ravel(), s.ravel(), None if t is None else t.ravel()


def error_quantile(errors: Any, q: float) -> float:
    """The q-quantile of errors as the order statistic ``e_(ceil(q * m))`` (1-based; ``inverted_cdf``).

    ``error_quantile(e, q) <= b`` holds exactly when at least ``ceil(q * m)`` of the ``m`` errors are
    ``<= b``. NaN errors are ignored; ``+inf`` (failed predictions) are kept.

    Args:
        errors: any shape, mm or px.
        q: quantile in (0, 1].

    Returns:
        the quantile, NaN when no error is counted.
    """
    q = _check_quantile(q)
    e = _np(errors).ravel()
    e = np.sort(e[~np.isnan(e)])
    if e.size == 0:
        return float("nan")
    return float(e[int(_rank(q, e.size)) - 1])


# ----------------------------------------------------------------------------------------------
# thresholds (BayeRegX section 4, made precise)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TauSelection:
    """Outcome of :func:`select_thresholds` on one set of points.

    Attributes:
        tau1, tau2: the thresholds (units of ``sigma_p``).
        n: points used (finite ``sigma_p``, counted error).
        counts: points of the validation set per class (certain, moderate, high).
        quantiles: q-quantile of the error per class (NaN for an empty class).
        fallback1, fallback2: no admissible candidate was found for tau1 / tau2 (see module doc).
        quantile, bounds, min_count: the rule's parameters.
    """

    tau1: float
    tau2: float
    n: int
    counts: tuple[int, int, int]
    quantiles: tuple[float, float, float]
    fallback1: bool
    fallback2: bool
    quantile: float
    bounds: tuple[float, float]
    min_count: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (non-finite quantiles -- empty class, failed predictions -- as None)."""
        return {
            "tau1": self.tau1,
            "tau2": self.tau2,
            "n": self.n,
            "counts": {"certain": self.counts[0], "moderately_uncertain": self.counts[1], "highly_uncertain": self.counts[2]},
            "error_quantiles": {
                k: (None if not math.isfinite(v) else v)
                for k, v in zip(("certain", "moderately_uncertain", "highly_uncertain"), self.quantiles)
            },
            "fallback_tau1": self.fallback1,
            "fallback_tau2": self.fallback2,
            "quantile": self.quantile,
            "bounds": list(self.bounds),
            "min_count": self.min_count,
        }


def _largest_admissible(
    s_sorted: np.ndarray,
    good_sorted: np.ndarray,
    candidates: np.ndarray,
    start: int,
    q: float,
    min_count: int,
    confidence: float | None = None,
) -> int | None:
    """Index of the largest candidate ``c`` whose class ``s_sorted[start:#{s < c}]`` is admissible.

    With ``confidence``, a class must also show, at that one-sided confidence, that at least ``q`` of
    its points err within the bound: the Clopper-Pearson lower bound of the share of good points is
    >= q. This guards against the optimism of picking the largest of many candidate thresholds on a
    small class (without it, a held-out set can miss the rule; see the tests).
    """
    cum = np.concatenate([[0], np.cumsum(good_sorted, dtype=np.int64)])
    ends = np.searchsorted(s_sorted, candidates, side="left")
    m = ends - start
    good = cum[ends] - cum[start]
    ok = (m >= max(int(min_count), 1)) & (good >= _rank(q, np.maximum(m, 0)))
    if confidence is not None:
        from scipy.stats import beta

        if not 0.0 < float(confidence) < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
        with np.errstate(invalid="ignore"):
            lower = np.where(good > 0, beta.ppf(1.0 - float(confidence), np.maximum(good, 1), m - good + 1), 0.0)
        ok &= lower >= q
    idx = np.flatnonzero(ok)
    return int(idx[-1]) if idx.size else None


def select_thresholds(
    errors: Any,
    sigmas: Any,
    bounds: Sequence[float] = DEFAULT_BOUNDS,
    quantile: float = DEFAULT_QUANTILE,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float | None = None,
) -> TauSelection:
    """Choose ``(tau1, tau2)`` on one set of validation points with the rule of the module docstring.

    Args:
        errors: errors of the points (any shape; mm, or px when the spacing is unknown). NaN
            errors (invisible points) and non-finite sigmas are left out; ``+inf`` errors (failed
            predictions) count as errors above every bound.
        sigmas: point uncertainties ``sigma_p`` of the same points (same shape; frac or mm), >= 0.
        bounds: ``(bound1, bound2)`` error bounds of the certain and moderate classes, in the
            unit of the errors (paper: 1.5 mm, 2 mm).
        quantile: q in (0, 1]: the share of a class that must err by at most its bound.
        min_count: smallest class a threshold may be chosen on (>= 1 in effect).
        confidence: when set (e.g. 0.95), a class is admissible only if the Clopper-Pearson lower
            bound of its share of points within the bound is >= ``quantile`` (see
            :func:`_largest_admissible`); None: the plain empirical rule.

    Returns:
        the :class:`TauSelection` (tau1 < tau2 always).

    Raises:
        ValueError: shapes differ, bad parameters, negative sigma, or no usable point.

    Example (bounds ``(1.5, 2)``, q = 0.5, min_count = 1): sigmas ``[1, 2, 3, 4, 5, 6, 7]`` with
    errors ``[1, 3, 1, 3, 1.8, 5, 5]``. For tau1 the candidates from the top: ``nextafter(7)`` (2 of 7
    errors <= 1.5, need 4), 7 (2 of 6, need 3) and 6 (2 of 5, need 3) fail; 5 passes (2 of
    ``[1, 3, 1, 3]``, need 2): ``tau1 = 5``. For tau2: ``nextafter(7)`` fails (1 of
    ``[1.8, 5, 5]`` <= 2, need 2), 7 passes (1 of ``[1.8, 5]``, need 1): ``tau2 = 7``. With
    ``min_count = 3`` no tau2 passes and ``tau2 = nextafter(5)``.
    """
    q = _check_quantile(quantile)
    b1, b2 = (float(b) for b in bounds)
    if not (math.isfinite(b1) and math.isfinite(b2) and 0 <= b1 <= b2):
        raise ValueError(f"bounds must be finite with 0 <= bound1 <= bound2, got {tuple(bounds)!r}")
    if int(min_count) < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count!r}")
    e, s, _ = _flat_inputs(errors, sigmas, None)
    keep = np.isfinite(s) & ~np.isnan(e)
    e, s = e[keep], s[keep]
    if s.size == 0:
        raise ValueError("select_thresholds: no point with a finite sigma_p and a counted error")
    if np.any(s < 0):
        raise ValueError(f"select_thresholds: sigma_p must be >= 0, got min {s.min()!r}")
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    distinct = np.unique(s)
    candidates = np.append(distinct, np.nextafter(distinct[-1], np.inf))

    i1 = _largest_admissible(s, e <= b1, candidates, 0, q, min_count, confidence)
    # no admissible class: tau1 = 0 keeps 'certain' empty on any data (sigma_p >= 0); the minimum
    # validation sigma would call new points below it certain, outside the calibrated range
    tau1 = float(candidates[i1]) if i1 is not None else 0.0
    start = int(np.searchsorted(s, tau1, side="left"))
    above = candidates[candidates > tau1]
    i2 = _largest_admissible(s, e <= b2, above, start, q, min_count, confidence) if above.size else None
    tau2 = float(above[i2]) if i2 is not None else float(np.nextafter(tau1, np.inf))

    e1 = e[s < tau1]
    e2 = e[(s >= tau1) & (s < tau2)]
    e3 = e[s >= tau2]
    return TauSelection(
        tau1=tau1,
        tau2=tau2,
        n=int(s.size),
        counts=(int(e1.size), int(e2.size), int(e3.size)),
        quantiles=tuple(error_quantile(x, q) for x in (e1, e2, e3)),  # type: ignore[arg-type]
        fallback1=i1 is None,
        fallback2=i2 is None,
        quantile=q,
        bounds=(b1, b2),
        min_count=int(min_count),
    )


def fit_thresholds(
    errors: Any,
    sigmas: Any,
    point_types: Any = None,
    *,
    units: str = "frac",
    error_unit: str = "mm",
    bounds: Sequence[float] = DEFAULT_BOUNDS,
    quantile: float = DEFAULT_QUANTILE,
    min_count: int = DEFAULT_MIN_COUNT,
    per_point_type: bool = True,
    return_selections: bool = False,
    confidence: float | None = None,
) -> Thresholds | tuple[Thresholds, dict[str, TauSelection]]:
    """Fit :class:`~monai_spine.uncertainty.classes.Thresholds` with :func:`select_thresholds`.

    The default pair is fitted on all points pooled; with ``per_point_type`` each point type that
    has at least ``max(min_count, 1)`` usable points gets its own pair (other types use the default).

    Args:
        errors: ``(..., K)`` or flat errors in ``error_unit``.
        sigmas: ``sigma_p`` of the same shape, in ``units``.
        point_types: per element (same shape) or per last-axis column (K names); None: pooled only.
        units: units of ``sigma_p`` and of the thresholds: ``"frac"`` (paper) or ``"mm"``.
        error_unit: ``"mm"`` or ``"px"`` (unknown spacing: the bounds are then pixels, and the
            thresholds' ``source`` says so).
        bounds, quantile, min_count: the rule (see :func:`select_thresholds`).
        per_point_type: also fit one pair per point type.
        return_selections: also return ``{"all" | point_type: TauSelection}``.

    Returns:
        the thresholds, or ``(thresholds, selections)``.
    """
    if units not in THRESHOLD_UNITS:
        raise ValueError(f"units must be one of {THRESHOLD_UNITS}, got {units!r}")
    if error_unit not in ERROR_UNITS:
        raise ValueError(f"error_unit must be one of {ERROR_UNITS}, got {error_unit!r}")
    e, s, t = _flat_inputs(errors, sigmas, point_types)
    sel = {"all": select_thresholds(e, s, bounds, quantile, min_count, confidence)}
    per: dict[str, tuple[float, float]] = {}
    if per_point_type and t is not None:
        usable = np.isfinite(s) & ~np.isnan(e)
        for ptype in dict.fromkeys(t.tolist()):
            mask = t == ptype
            if int((mask & usable).sum()) < max(int(min_count), 1):
                continue
            sel[ptype] = select_thresholds(e[mask], s[mask], bounds, quantile, min_count, confidence)
            per[ptype] = (sel[ptype].tau1, sel[ptype].tau2)
    a = sel["all"]
    unit_note = "" if error_unit == "mm" else " (errors in px: spacing unknown, bounds are pixels)"
    source = (
        f"monai-spine calibrate: largest tau with q{100 * a.quantile:g} of error <= {a.bounds[0]:g} {error_unit} "
        f"(sigma_p < tau1) and <= {a.bounds[1]:g} {error_unit} (tau1 <= sigma_p < tau2), min_count {a.min_count}, "
        f"{a.n} validation points, sigma_p in {units}{unit_note}; BayeRegX section 4"
    )
    thr = Thresholds(a.tau1, a.tau2, units=units, per_point_type=per, source=source)
    return (thr, sel) if return_selections else thr


#: what a calibration that found no admissible class says (``calibrate`` then exits non-zero)
NO_CLASS_MESSAGE = "no certain or moderate class can be vouched for"


def vouched_classes(tau1: float, tau2: float) -> list[str]:
    """The classes a threshold pair can hold points in: ``"certain"`` unless ``tau1 <= 0`` (the
    fallback when no tau1 was admissible), ``"moderately_uncertain"`` unless ``tau2`` is the
    fallback ``nextafter(tau1, +inf)``."""
    out = []
    if tau1 > 0:
        out.append("certain")
    if tau2 > np.nextafter(tau1, np.inf):
        out.append("moderately_uncertain")
    return out


def calibration_failed(thresholds: Thresholds) -> bool:
    """True when neither the pooled pair nor any per-point-type pair vouches for a certain or a
    moderately uncertain class (every point would be classed highly uncertain)."""
    pairs = [(thresholds.tau1, thresholds.tau2), *thresholds.per_point_type.values()]
    return not any(vouched_classes(float(a), float(b)) for a, b in pairs)
