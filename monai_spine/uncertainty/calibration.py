"""Calibration of keypoint uncertainty: BayeRegX thresholds and split-conformal radii.

Two calibrations are fitted on a validation set of predicted points, each with its error ``e``
(Euclidean distance to the ground truth, in mm; in pixels when the spacing is unknown) and its
uncertainty ``sigma_p`` (eq. 17 of BayeRegX, in crop fractions ``"frac"`` as in the paper, or in mm).

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

**Split-conformal radii** (beyond the paper; Vovk et al. 2005, Lei et al. 2018, Angelopoulos &
Bates 2021): on ``n`` calibration points the nonconformity score is ``s_i = e_i / sigma_i``
(``"normalized"``) or ``s_i = e_i`` (``"absolute"``); ``q_hat`` is the ``k``-th smallest score with
``k = ceil((n + 1) * (1 - alpha))`` (``+inf`` when ``k > n``), and a new point gets the radius
``r = sigma * q_hat`` (normalized) or ``r = q_hat`` (absolute), in the unit of the errors. For
exchangeable data ``P(e <= r) >= 1 - alpha`` (and ``< 1 - alpha + 1 / (n + 1)`` without ties).
``q_hat`` is fitted per point type (falling back to the pooled value for other types).

Files: :data:`THRESHOLDS_FILE` (``thresholds.json``, read by
:func:`monai_spine.engines.regressor.load_thresholds`) and :data:`CONFORMAL_FILE`
(``conformal.json``) are written beside the model in the bundle's ``models`` folder by
:func:`calibrate_from_predictions` (the ``monai-spine calibrate`` command, :func:`calibrate_cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_spine.data.annotation import atomic_write_text
from monai_spine.uncertainty.classes import THRESHOLD_UNITS, Thresholds

#: units a conformal calibrator's sigma may be recorded in: the thresholds' units, or radiograph
#: pixels (a sigma measured on an image of unknown spacing, e.g. the heatmap FCN's map spread)
CONFORMAL_SIGMA_UNITS = THRESHOLD_UNITS + ("px",)

__all__ = [
    "CONFORMAL_SIGMA_UNITS",
    "THRESHOLDS_FILE",
    "CONFORMAL_FILE",
    "REPORT_FILE",
    "DEFAULT_BOUNDS",
    "DEFAULT_QUANTILE",
    "DEFAULT_MIN_COUNT",
    "ERROR_UNITS",
    "SCORES",
    "CONFORMAL_FORMAT",
    "error_quantile",
    "TauSelection",
    "select_thresholds",
    "fit_thresholds",
    "NO_CLASS_MESSAGE",
    "vouched_classes",
    "calibration_failed",
    "conformal_quantile",
    "ConformalCalibrator",
    "coverage",
    "MatchedPoints",
    "PREDICTION_SUFFIXES",
    "prediction_models",
    "collect_errors",
    "calibrate_from_predictions",
    "add_calibrate_arguments",
    "calibrate_cli",
    "calibrate_from_args",
]

#: file name of the thresholds in a bundle's models folder
THRESHOLDS_FILE = "thresholds.json"
#: file name of the conformal calibration in a bundle's models folder
CONFORMAL_FILE = "conformal.json"
#: file name of the calibration report (selections, quality measures)
REPORT_FILE = "calibration_report.json"
#: the paper's error bounds for the certain and moderately uncertain classes (mm)
DEFAULT_BOUNDS = (1.5, 2.0)
#: share of the points of a class that must err by at most its bound
DEFAULT_QUANTILE = 0.9
#: smallest class a threshold may be fitted on
#: one-sided confidence of the class rule in calibrate (None: the plain empirical rule)
DEFAULT_CONFIDENCE: float | None = 0.95
DEFAULT_MIN_COUNT = 10
#: units an error can have
ERROR_UNITS = ("mm", "px")
#: nonconformity scores of :class:`ConformalCalibrator`
SCORES = ("normalized", "absolute")
#: format name of ``conformal.json``
CONFORMAL_FORMAT = "monai-spine-conformal"
_CONFORMAL_VERSION = 1


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


# ----------------------------------------------------------------------------------------------
# split-conformal radii
# ----------------------------------------------------------------------------------------------
def conformal_quantile(scores: Any, alpha: float) -> float:
    """``q_hat``: the ``ceil((n + 1)(1 - alpha))``-th smallest score (1-based), ``+inf`` if that exceeds n.

    NaN scores are ignored. ``alpha`` in (0, 1).
    """
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    sc = _np(scores).ravel()
    sc = np.sort(sc[~np.isnan(sc)])
    n = sc.size
    k = int(_rank(1.0 - a, n + 1))
    if k > n:
        return float("inf")
    return float(sc[k - 1])


def coverage(errors: Any, radii: Any) -> float:
    """Share of points with ``error <= radius`` (points with a NaN error or radius are not counted).

    Returns:
        coverage in [0, 1], NaN when no point is counted.
    """
    e = _np(errors)
    r = _np(radii)
    if e.shape != r.shape:
        raise ValueError(f"errors shape {e.shape} does not match radii shape {r.shape}")
    m = ~np.isnan(e) & ~np.isnan(r)
    if not m.any():
        return float("nan")
    return float(np.mean(e[m] <= r[m]))


@dataclass
class ConformalCalibrator:
    """Split-conformal error radii for keypoints (see the module docstring).

    Build with :meth:`fit`; call it (or :meth:`radii`) on new ``sigma_p`` to get radii.

    Attributes:
        alpha: miscoverage level (radius covers the error with probability >= 1 - alpha).
        score: ``"normalized"`` (``e / sigma``, radius ``sigma * q_hat``) or ``"absolute"`` (``e``,
            radius ``q_hat``).
        q_hat: pooled quantile (``inf`` when too few points for alpha).
        n: calibration points pooled.
        q_hat_per_point_type, n_per_point_type: per point type.
        sigma_units: units of ``sigma_p`` (``"frac"``, ``"mm"``, or ``"px"`` for a pixel sigma).
        error_unit: units of errors and radii (``"mm"`` or ``"px"``).
        source: free text.
    """

    alpha: float
    score: str = "normalized"
    q_hat: float = float("inf")
    n: int = 0
    q_hat_per_point_type: dict[str, float] = field(default_factory=dict)
    n_per_point_type: dict[str, int] = field(default_factory=dict)
    sigma_units: str = "mm"
    error_unit: str = "mm"
    source: str = ""

    def __post_init__(self) -> None:
        if not (0.0 < float(self.alpha) < 1.0):
            raise ValueError(f"conformal: alpha must be in (0, 1), got {self.alpha!r}")
        if self.score not in SCORES:
            raise ValueError(f"conformal: score must be one of {SCORES}, got {self.score!r}")
        if self.sigma_units not in CONFORMAL_SIGMA_UNITS:
            raise ValueError(f"conformal: sigma_units must be one of {CONFORMAL_SIGMA_UNITS}, got {self.sigma_units!r}")
        if self.error_unit not in ERROR_UNITS:
            raise ValueError(f"conformal: error_unit must be one of {ERROR_UNITS}, got {self.error_unit!r}")
        for name, v in [("q_hat", self.q_hat)] + [(f"q_hat[{k}]", v) for k, v in self.q_hat_per_point_type.items()]:
            if math.isnan(float(v)) or float(v) < 0:
                raise ValueError(f"conformal: {name} must be >= 0 (or inf), got {v!r}")
        self.alpha = float(self.alpha)
        self.q_hat = float(self.q_hat)

    @classmethod
    def fit(
        cls,
        errors: Any,
        sigmas: Any,
        point_types: Any = None,
        alpha: float = 0.1,
        score: str = "normalized",
        sigma_units: str = "mm",
        error_unit: str = "mm",
        per_point_type: bool = True,
    ) -> ConformalCalibrator:
        """Fit ``q_hat`` on calibration points.

        Args:
            errors: calibration errors (any shape; NaN = not counted, +inf = failed prediction).
            sigmas: ``sigma_p`` of the same points; points with a non-finite or non-positive sigma are
                left out (for ``"absolute"`` too, so both scores use the same points).
            point_types: per element or per last-axis column (see :func:`fit_thresholds`); None:
                pooled only.
            alpha: miscoverage level in (0, 1).
            score: ``"normalized"`` or ``"absolute"``.
            sigma_units, error_unit: recorded units.
            per_point_type: also fit one ``q_hat`` per point type.

        Raises:
            ValueError: shapes, parameters, or no usable point.
        """
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        e, s, t = _flat_inputs(errors, sigmas, point_types)
        keep = np.isfinite(s) & (s > 0) & ~np.isnan(e)
        if not keep.any():
            raise ValueError("ConformalCalibrator.fit: no point with a positive finite sigma and a counted error")
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            sc = e / s if score == "normalized" else e.copy()
        sc[~keep] = np.nan
        q_all = conformal_quantile(sc, alpha)
        q_t: dict[str, float] = {}
        n_t: dict[str, int] = {}
        if per_point_type and t is not None:
            for ptype in dict.fromkeys(t[keep].tolist()):
                m = (t == ptype) & keep
                q_t[ptype] = conformal_quantile(sc[m], alpha)
                n_t[ptype] = int(m.sum())
        n = int(keep.sum())
        return cls(
            alpha=alpha,
            score=score,
            q_hat=q_all,
            n=n,
            q_hat_per_point_type=q_t,
            n_per_point_type=n_t,
            sigma_units=sigma_units,
            error_unit=error_unit,
            source=f"split conformal, {score} score, {n} calibration points, alpha {alpha:g}",
        )

    def q_hat_for(self, point_type: str | None = None) -> float:
        """``q_hat`` of a point type (the pooled one when the type has no entry)."""
        if point_type is not None and point_type in self.q_hat_per_point_type:
            return float(self.q_hat_per_point_type[point_type])
        return self.q_hat

    def radii(self, sigmas: Any, point_types: Any = None) -> np.ndarray:
        """Error radii (in :attr:`error_unit`) for points with uncertainty ``sigmas``.

        Args:
            sigmas: ``sigma_p`` in :attr:`sigma_units`, any shape.
            point_types: per element or per last-axis column; None uses the pooled ``q_hat``.

        Returns:
            float64 radii shaped like ``sigmas``; NaN where sigma is not finite or is negative
            (``"normalized"``), ``inf`` where ``q_hat`` is infinite.
        """
        s = _np(sigmas)
        t = _point_types_like(point_types, s.shape)
        q = np.full(s.shape, self.q_hat)
        if t is not None:
            for ptype in np.unique(t):
                q[t == ptype] = self.q_hat_for(str(ptype))
        bad = ~np.isfinite(s) | (s < 0)
        if self.score == "absolute":
            r = q.copy()
        else:
            with np.errstate(invalid="ignore"):
                r = np.where(np.isinf(q), np.inf, s * np.where(np.isinf(q), 0.0, q))
        r[bad] = np.nan
        return r

    __call__ = radii

    def result_block(self, sigma_kind: str) -> dict[str, Any]:
        """The ``conformal`` block a prediction file records (alpha, nominal coverage, units, ``q_hat``
        pooled and per point type; an infinite ``q_hat`` as None); ``sigma_kind``: the sigma it scales."""

        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return {
            "alpha": float(self.alpha),
            "nominal_coverage": 1.0 - float(self.alpha),
            "score": str(self.score),
            "sigma_units": str(self.sigma_units),
            "sigma_kind": str(sigma_kind),
            "radius_unit": str(self.error_unit),
            "q_hat": num(self.q_hat),
            "q_hat_per_point_type": {str(k): num(v) for k, v in self.q_hat_per_point_type.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (an infinite ``q_hat`` is written as null)."""

        def enc(v: float) -> float | None:
            return None if math.isinf(v) else float(v)

        return {
            "format": CONFORMAL_FORMAT,
            "version": _CONFORMAL_VERSION,
            "alpha": self.alpha,
            "score": self.score,
            "sigma_units": self.sigma_units,
            "error_unit": self.error_unit,
            "q_hat": enc(self.q_hat),
            "n": self.n,
            "per_point_type": {
                k: {"q_hat": enc(v), "n": int(self.n_per_point_type.get(k, 0))} for k, v in self.q_hat_per_point_type.items()
            },
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "conformal") -> ConformalCalibrator:
        """Build from :meth:`to_dict` output; errors name ``source`` and the key."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != CONFORMAL_FORMAT:
            raise ValueError(f"{source}: 'format' must be {CONFORMAL_FORMAT!r}, got {d.get('format')!r}")
        if d.get("version") != _CONFORMAL_VERSION:
            raise ValueError(f"{source}: unsupported version {d.get('version')!r}")
        missing = [k for k in ("alpha", "score", "q_hat") if k not in d]
        if missing:
            raise KeyError(f"{source}: missing key(s) {missing}")

        def dec(v: Any) -> float:
            return float("inf") if v is None else float(v)

        try:
            per = d.get("per_point_type") or {}
            return cls(
                alpha=float(d["alpha"]),
                score=str(d["score"]),
                q_hat=dec(d["q_hat"]),
                n=int(d.get("n", 0)),
                q_hat_per_point_type={str(k): dec(v["q_hat"]) for k, v in per.items()},
                n_per_point_type={str(k): int(v.get("n", 0)) for k, v in per.items()},
                sigma_units=str(d.get("sigma_units", "mm")),
                error_unit=str(d.get("error_unit", "mm")),
                source=str(d.get("source", "")),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"{source}: {e}") from e

    def save(self, path: str | os.PathLike) -> None:
        """Write as strict JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConformalCalibrator:
        """Read a file written by :meth:`save`; errors name the file."""
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)}: not valid JSON: {e}") from e
        return cls.from_dict(d, source=os.fspath(path))


# ----------------------------------------------------------------------------------------------
# from prediction files
# ----------------------------------------------------------------------------------------------
@dataclass
class MatchedPoints:
    """Predicted points matched to their ground truth (flat, one entry per visible point).

    Attributes:
        errors: (n,) error in :attr:`error_unit` (+inf for a failed prediction).
        sigma_frac: (n,) ``sigma_p`` in crop fractions (NaN for the heatmap model, which has none).
        sigma_mm: (n,) ``sigma_p`` in mm (NaN when the spacing is unknown).
        point_types: (n,) ``"corner"`` / ``"spinous_process"``.
        point_names: (n,) point names (``AS``...).
        levels: (n,) vertebra levels.
        cases: (n,) prediction file of each point.
        error_unit: ``"mm"`` or ``"px"``.
        detection: vertebra detection over the matched cases: ``num_cases``, ``annotated`` (levels
            with a visible annotated point), ``found`` (of those, seen by the detector and predicted
            with a finite point), ``recall`` (found / annotated), ``missed``, ``extra`` and
            ``inferred`` (``[case, level]`` pairs: annotated but not found; predicted but not
            annotated; placed along the spine without being seen -- they count as missed, their points
            are still scored).
        model: the point set matched (``"regressor"`` / ``"heatmap"``; None: each file's first).
    """

    errors: np.ndarray
    sigma_frac: np.ndarray
    sigma_mm: np.ndarray
    point_types: np.ndarray
    point_names: np.ndarray
    levels: np.ndarray
    cases: np.ndarray
    error_unit: str
    detection: dict[str, Any] = field(default_factory=dict)
    model: str | None = None

    def sigma(self, units: str) -> np.ndarray:
        """``sigma_p`` in ``"frac"`` or ``"mm"``."""
        if units not in THRESHOLD_UNITS:
            raise ValueError(f"sigma units must be one of {THRESHOLD_UNITS}, got {units!r}")
        return self.sigma_frac if units == "frac" else self.sigma_mm


#: file name endings of prediction files taken from a folder (``predict`` / the bundle; ``corners``)
PREDICTION_SUFFIXES = (".keypoints.json", ".corners.json")


def _pred_stem(path: Path) -> str:
    """The case name of a prediction or annotation file: ``a.keypoints.json``, ``a.dcm.corners.json``,
    ``a.json`` -> ``a``."""
    from monai_spine.outputs import output_stem

    name = path.name
    if name.endswith(".corners.json"):
        return output_stem(name[: -len(".corners.json")])
    for suffix in (".keypoints.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike], kind: str) -> list[Path]:
    """Files of ``paths``; a folder gives its prediction files (:data:`PREDICTION_SUFFIXES`) or annotations."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if kind == "predictions":
                found = sorted(q for q in p.iterdir() if q.name.endswith(PREDICTION_SUFFIXES) and q.is_file())
                if not found:
                    raise FileNotFoundError(f"no prediction file (*.keypoints.json, *.corners.json) in {p}")
                out.extend(found)
            else:
                from monai_spine.data.datasets import SPLITS, list_cases

                idx = list_cases(p)
                labels = idx.get("cases") or [c for s in SPLITS for c in idx.get(s, [])]
                out.extend(Path(c) for c in labels)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{kind}: {p} does not exist")
    return out


def _same_image(pred_image: str, pred_file: Path, ann_image: str) -> bool:
    """Whether the prediction's recorded image is the annotation's image file.

    A relative recorded path is tried against the current folder and the prediction's folder; when
    it resolves to no existing file (the prediction was made elsewhere), equal file names suffice.
    """
    ann = os.path.abspath(ann_image)
    cands = [pred_image] if os.path.isabs(pred_image) else [os.path.abspath(pred_image),
                                                            os.path.abspath(pred_file.parent / pred_image)]
    for c in cands:
        if os.path.normpath(c) == os.path.normpath(ann):
            return True
        if os.path.exists(c) and os.path.exists(ann) and os.path.samefile(c, ann):
            return True
    if not os.path.isabs(pred_image) and not any(os.path.exists(c) for c in cands):
        return os.path.basename(pred_image) == os.path.basename(ann)
    return False


def _check_same_film(pred: Any, pp: Path, ann: Any, ann_path: Path) -> None:
    """``ValueError`` naming both files when the prediction was not made on the annotation's film."""
    hint = "predict the annotation's own images (or pass the annotations the predictions were made for)"
    if pred.image and ann.image and not _same_image(pred.image, pp, ann.image):
        raise ValueError(f"{pp}: predicted on {pred.image}, but its annotation {ann_path} is of {ann.image}; {hint}")
    if pred.image_size is not None and ann.image_size is not None and tuple(pred.image_size) != tuple(ann.image_size):
        raise ValueError(f"{pp}: image size {list(pred.image_size)} differs from the annotation's "
                         f"{list(ann.image_size)} ({ann_path}); {hint}")
    if pred.spacing_mm is not None and ann.spacing_mm is not None and not np.allclose(
            pred.spacing_mm, ann.spacing_mm, rtol=1e-3, atol=0):
        raise ValueError(f"{pp}: pixel spacing {list(pred.spacing_mm)} mm differs from the annotation's "
                         f"{list(ann.spacing_mm)} mm ({ann_path}); {hint}")


def _errors_np(pred: np.ndarray, gt: np.ndarray, vis: np.ndarray, spacing: np.ndarray | None) -> np.ndarray:
    """(N, K) Euclidean errors as :func:`monai_spine.metrics.keypoint_error.keypoint_errors` (NaN invisible,
    +inf for a visible point without a finite prediction; mm with ``spacing``, else px) without torch."""
    d = pred - gt
    if spacing is not None:
        d = d * np.asarray(spacing, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        e = np.sqrt(np.sum(d * d, axis=-1))
    e = np.where(np.all(np.isfinite(pred), axis=-1), e, np.inf)
    return np.where(vis & np.all(np.isfinite(gt), axis=-1), e, np.nan)


def prediction_models(pred_json_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The models (``"regressor"``, ``"heatmap"``) whose points the prediction files hold, in that order.

    Raises:
        FileNotFoundError: a path does not exist; PredictionError: a malformed file.
    """
    from monai_spine.data.prediction import MODEL_NAMES, read_prediction

    held: set[str] = set()
    for pp in _expand(pred_json_paths, "predictions"):
        held.update(read_prediction(pp).models)
    return [m for m in MODEL_NAMES if m in held]


def collect_errors(
    pred_json_paths: str | os.PathLike | Sequence[str | os.PathLike],
    annotation_paths: str | os.PathLike | Sequence[str | os.PathLike],
    sigma_kind: str = "total",
    on_mixed_spacing: str = "px",
    model: str | None = None,
) -> MatchedPoints:
    """Match prediction files to annotations and compute every visible point's error.

    Prediction files of every producer are read with :func:`monai_spine.data.prediction.read_prediction`
    (``predict`` with either model or both, ``corners``, the bundle's inference). Matching: a prediction
    ``<stem>.keypoints.json`` (or ``<stem>.<ext>.corners.json``) goes with the annotation ``<stem>.json``;
    when no single annotation has that stem, with the annotation whose ``image`` path equals the
    prediction's ``image``. Annotations without a prediction are ignored (pass a whole dataset
    folder); a prediction without an annotation is an error. A prediction made on another film than
    its annotation's (image path, image size or pixel spacing differ) is an error too. Vertebrae are
    matched by level and points by name; levels absent from the annotation and invisible points are
    skipped (and counted in :attr:`MatchedPoints.detection`); points the model does not predict
    (the heatmap's spinous process) are left out.

    Spacing: the prediction's ``spacing_mm`` (what the predictor used; it must equal the
    annotation's), else the annotation's. Errors are in mm when every case has a spacing; otherwise
    in px for all (``on_mixed_spacing="px"``, with a warning) or ``ValueError`` (``"raise"``), as in
    :func:`monai_spine.metrics.keypoint_error.keypoint_errors`.

    Args:
        pred_json_paths: prediction files or folders (:data:`PREDICTION_SUFFIXES`).
        annotation_paths: annotation files or dataset folders.
        sigma_kind: ``"total"``, ``"aleatoric"`` or ``"epistemic"`` (``sigma_p_<kind>_frac``/``_mm``).
        on_mixed_spacing: ``"px"`` or ``"raise"``.
        model: the point set to match in files holding two (``predict --model both``):
            ``"regressor"`` or ``"heatmap"``; None: each file's first (the regressor's when present).
            A file without points of ``model`` is an error.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError / KeyError: unmatched, mismatched or malformed prediction file (the message names it).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.keypoints import get_scheme
    from monai_spine.data.prediction import read_prediction

    if sigma_kind not in ("total", "aleatoric", "epistemic"):
        raise ValueError(f"sigma_kind must be total, aleatoric or epistemic, got {sigma_kind!r}")
    if on_mixed_spacing not in ("px", "raise"):
        raise ValueError(f"on_mixed_spacing must be 'px' or 'raise', got {on_mixed_spacing!r}")
    preds = _expand(pred_json_paths, "predictions")
    anns = {p.resolve(): read_annotation(p) for p in _expand(annotation_paths, "annotations")}
    by_stem: dict[str, list[Path]] = {}
    by_image: dict[str, list[Path]] = {}
    for p, a in anns.items():
        by_stem.setdefault(_pred_stem(p), []).append(p)
        if a.image is not None:
            by_image.setdefault(os.path.normpath(os.path.abspath(a.image)), []).append(p)

    rows: list[dict[str, Any]] = []
    det = {"num_cases": 0, "annotated": 0, "found": 0, "missed": [], "extra": [], "inferred": []}
    for pp in preds:
        pred = read_prediction(pp)
        cands = by_stem.get(_pred_stem(pp), [])
        if len(cands) != 1 and pred.image:
            cands = by_image.get(os.path.normpath(os.path.abspath(str(pred.image))), [])
        if len(cands) != 1:
            why = "no" if not cands else f"{len(cands)}"
            raise ValueError(f"{pp}: {why} matching annotation (by file stem or image path)")
        ann = anns[cands[0]]
        if pred.scheme != ann.scheme:
            raise ValueError(f"{pp}: scheme {pred.scheme!r} differs from the annotation's {ann.scheme!r} ({cands[0]})")
        _check_same_film(pred, pp, ann, cands[0])
        if any(lev is None for lev in pred.levels):
            raise ValueError(f"{pp}: vertebrae have no level names, so they cannot be matched to the annotation "
                             "(give --levels to monai-spine corners)")
        sch = get_scheme(ann.scheme)
        level_index = {lev: i for i, lev in enumerate(ann.levels)}
        annotated = {lev for i, lev in enumerate(ann.levels) if np.any(ann.visible[i])}
        if not pred.points and not pred.levels:  # nothing detected on this film
            found_levels: set[str] = set()
            ps = None
        else:
            ps = pred.point_set(model)
            seen = ~pred.inferred if pred.inferred is not None else np.ones(len(pred.levels), bool)
            found_levels = {str(lev) for i, lev in enumerate(pred.levels) if ps.found[i].any() and seen[i]}
            det["inferred"] += [[str(pp), str(lev)] for i, lev in enumerate(pred.levels) if not seen[i]]
        det["num_cases"] += 1
        det["annotated"] += len(annotated)
        det["found"] += len(annotated & found_levels)
        det["missed"] += [[str(pp), lev] for lev in ann.levels if lev in annotated - found_levels]
        det["extra"] += [[str(pp), lev] for lev in sorted(found_levels - set(ann.levels))]
        if ps is None:
            continue
        pred_px, gt_px, vis, sf, sm, lev_rows = [], [], [], [], [], []
        for vi, lev in enumerate(pred.levels):
            if lev not in level_index:
                continue
            i = level_index[lev]
            pred_px.append(ps.keypoints_px[vi])
            gt_px.append(ann.keypoints_px[i])
            vis.append(ann.visible[i] & ps.predicted[vi])
            sf.append(ps.sigma_p_frac[sigma_kind][vi])
            sm.append(ps.sigma_p_mm[sigma_kind][vi])
            lev_rows.append(lev)
        if not pred_px:
            continue
        spacing = pred.spacing_mm or ann.spacing_mm
        rows.append(
            dict(
                case=str(pp),
                pred=np.stack(pred_px),
                gt=np.stack(gt_px),
                vis=np.stack(vis),
                sf=np.stack(sf),
                sm=np.stack(sm),
                levels=lev_rows,
                types=np.asarray(sch.point_types),
                names=np.asarray(sch.point_names),
                spacing=None if spacing is None else np.asarray(spacing, dtype=np.float64),
            )
        )
    if not rows:
        raise ValueError("no prediction could be matched to an annotated vertebra")
    det["recall"] = det["found"] / det["annotated"] if det["annotated"] else float("nan")

    known = [r["spacing"] is not None for r in rows]
    unit = "mm" if all(known) else "px"
    if unit == "px" and any(known):
        msg = (
            f"pixel spacing is unknown for {known.count(False)} of {len(rows)} cases: "
            "calibration errors are in pixels (unit 'px')"
        )
        if on_mixed_spacing == "raise":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("e", "sf", "sm", "t", "n", "l", "c")}
    for r in rows:
        err = _errors_np(r["pred"], r["gt"], r["vis"], r["spacing"] if unit == "mm" else None)
        m = ~np.isnan(err)
        nv, kk = err.shape
        out["e"].append(err[m])
        out["sf"].append(r["sf"][m])
        out["sm"].append(r["sm"][m])
        out["t"].append(np.broadcast_to(r["types"], (nv, kk))[m])
        out["n"].append(np.broadcast_to(r["names"], (nv, kk))[m])
        out["l"].append(np.broadcast_to(np.asarray(r["levels"])[:, None], (nv, kk))[m])
        out["c"].append(np.full(int(m.sum()), r["case"], dtype=object))
    cat = {k: np.concatenate(v) for k, v in out.items()}
    return MatchedPoints(
        errors=cat["e"].astype(np.float64),
        sigma_frac=cat["sf"].astype(np.float64),
        sigma_mm=cat["sm"].astype(np.float64),
        point_types=cat["t"].astype(str),
        point_names=cat["n"].astype(str),
        levels=cat["l"].astype(str),
        cases=cat["c"].astype(str),
        error_unit=unit,
        detection=det,
        model=model,
    )


def _json_safe(x: Any) -> Any:
    """NaN/inf floats to None, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def calibrate_from_predictions(
    pred_json_paths: str | os.PathLike | Sequence[str | os.PathLike],
    annotation_paths: str | os.PathLike | Sequence[str | os.PathLike],
    models_dir: str | os.PathLike,
    *,
    sigma_units: str | None = "frac",
    sigma_kind: str = "total",
    bounds: Sequence[float] = DEFAULT_BOUNDS,
    quantile: float = DEFAULT_QUANTILE,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float | None = DEFAULT_CONFIDENCE,
    per_point_type: bool = True,
    alpha: float = 0.1,
    score: str = "normalized",
    conformal_sigma_units: str | None = None,
    on_mixed_spacing: str = "px",
    write_report: bool = True,
    model: str | None = None,
) -> dict[str, Any]:
    """Fit thresholds and conformal radii on validation predictions and write them to ``models_dir``.

    Steps: :func:`collect_errors` (match files, errors in mm or px), :func:`fit_thresholds`
    (BayeRegX rule with quantile ``quantile``, per point type), :meth:`ConformalCalibrator.fit`, then
    ``models_dir/thresholds.json`` (:class:`~monai_spine.uncertainty.classes.Thresholds` JSON, read
    by :func:`monai_spine.engines.regressor.load_thresholds` at inference), ``models_dir/conformal.json``
    and, with ``write_report``, ``models_dir/calibration_report.json`` (selections per point type and
    :func:`monai_spine.uncertainty.quality.quality_report` on the same points -- in-sample, so
    coverage there is optimistic; evaluate on held-out data).

    Args:
        pred_json_paths: prediction files/folders of the validation set.
        annotation_paths: their annotations (files or dataset folders).
        models_dir: the bundle's ``models`` folder (beside ``model.pt``); created if needed.
        sigma_units: ``sigma_p`` units of the thresholds: ``"frac"`` (paper) or ``"mm"``; None: ``"frac"``
            when the points have a crop-fraction sigma (the regressor), else ``"mm"`` (the heatmap FCN).
        sigma_kind: which ``sigma_p`` (``total`` as in the paper, ``aleatoric``, ``epistemic``).
        bounds, quantile, min_count, per_point_type: the threshold rule (:func:`select_thresholds`).
        alpha, score: the conformal calibration.
        conformal_sigma_units: ``sigma_p`` units of the conformal score (default ``sigma_units``).
        on_mixed_spacing: see :func:`collect_errors`.
        write_report: also write the report file.
        model: the point set of files holding two (``predict --model both``): ``"regressor"`` or
            ``"heatmap"`` (None: each file's first, the regressor's); see :func:`collect_errors`.

    Returns:
        summary dict: ``thresholds``, ``conformal`` (dicts), ``selections``, ``error_unit``,
        ``num_points``, ``num_cases``, ``quality`` and the written ``files``.

    Raises:
        ValueError: no usable point (e.g. ``sigma_units="mm"`` with unknown spacing everywhere).
    """
    from monai_spine.uncertainty.quality import quality_report

    for name, u in (("sigma_units", sigma_units), ("conformal_sigma_units", conformal_sigma_units)):
        if u is not None and u not in THRESHOLD_UNITS:
            raise ValueError(f"{name} must be one of {THRESHOLD_UNITS}, got {u!r}")
    pts = collect_errors(pred_json_paths, annotation_paths, sigma_kind=sigma_kind, on_mixed_spacing=on_mixed_spacing,
                         model=model)
    if sigma_units is None:  # the paper's crop fractions when the model gives them (the heatmap FCN does not)
        sigma_units = "frac" if np.isfinite(pts.sigma_frac).any() else "mm"
    c_units = conformal_sigma_units or sigma_units
    for u in dict.fromkeys((sigma_units, c_units)):
        if not np.isfinite(pts.sigma(u)).any():
            raise ValueError(
                f"no finite sigma_p in {u} among {pts.errors.size} matched points "
                "(mm needs a known spacing: use sigma units 'frac')"
            )
    if pts.error_unit == "px":
        warnings.warn("errors are in pixels (spacing unknown): the threshold bounds are taken as pixels", stacklevel=2)
    thr, selections = fit_thresholds(
        pts.errors,
        pts.sigma(sigma_units),
        pts.point_types,
        units=sigma_units,
        error_unit=pts.error_unit,
        bounds=bounds,
        quantile=quantile,
        min_count=min_count,
        per_point_type=per_point_type,
        return_selections=True,
        confidence=confidence,
    )
    failed = calibration_failed(thr)
    if failed:  # still written (a later run may read it), but it says so wherever its source is shown
        thr = dataclasses.replace(thr, source=f"{NO_CLASS_MESSAGE} (every point is classed highly uncertain): "
                                              f"{thr.source}")
    conf = ConformalCalibrator.fit(
        pts.errors,
        pts.sigma(c_units),
        pts.point_types,
        alpha=alpha,
        score=score,
        sigma_units=c_units,
        error_unit=pts.error_unit,
        per_point_type=per_point_type,
    )
    out = Path(models_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"thresholds": str(out / THRESHOLDS_FILE), "conformal": str(out / CONFORMAL_FILE)}
    thr.save(files["thresholds"])
    conf.save(files["conformal"])
    quality = quality_report(
        pts.errors,
        {"frac": pts.sigma_frac, "mm": pts.sigma_mm},
        pts.point_types,
        thresholds=thr,
        conformal=conf,
        primary_units=c_units,
        error_unit=pts.error_unit,
    )
    summary = {
        "thresholds": thr.to_dict(),
        "conformal": conf.to_dict(),
        "selections": {k: v.to_dict() for k, v in selections.items()},
        "error_unit": pts.error_unit,
        "sigma_kind": sigma_kind,
        "num_points": int(pts.errors.size),
        "num_cases": int(np.unique(pts.cases).size),
        "quality_in_sample": quality,
        "failed": failed,
        "message": (f"{NO_CLASS_MESSAGE}: no sigma_p threshold keeps {100 * quantile:g} % of a class within "
                    f"{bounds[0]:g} / {bounds[1]:g} {pts.error_unit} on {int(pts.errors.size)} points")
        if failed else "",
        "files": files,
    }
    if write_report:
        files["report"] = str(out / REPORT_FILE)
        atomic_write_text(files["report"], json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def add_calibrate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``monai-spine calibrate`` to ``parser`` (names match :func:`calibrate_cli`)."""
    parser.add_argument(
        "--predictions", nargs="+", required=True,
        help="validation prediction files or folders (*.keypoints.json from the bundle's inference.json)",
    )
    parser.add_argument("--annotations", nargs="+", required=True, help="annotation files or dataset folders")
    parser.add_argument(
        "--models-dir", "--ckpt-dir", dest="models_dir", required=True,
        help="the bundle's models folder (beside model.pt): thresholds.json and conformal.json go there",
    )
    parser.add_argument("--sigma-units", choices=THRESHOLD_UNITS, default=None,
                        help="units of sigma_p thresholds (default: frac for the regressor, mm for the heatmap model)")
    parser.add_argument("--sigma-kind", choices=("total", "aleatoric", "epistemic"), default="total")
    parser.add_argument("--bounds", nargs=2, type=float, default=list(DEFAULT_BOUNDS), metavar=("B1", "B2"),
                        help="error bounds of the certain / moderate classes (mm; px if spacing unknown)")
    parser.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                        help="share of a class that must err at most its bound")
    parser.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT, help="smallest class to fit on")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                        help="one-sided confidence that a class meets its quantile (Clopper-Pearson); 0 = off")
    parser.add_argument("--no-per-point-type", dest="per_point_type", action="store_false",
                        help="one threshold pair / q_hat for all point types")
    parser.add_argument("--alpha", type=float, default=0.1, help="conformal miscoverage (radius covers 1 - alpha)")
    parser.add_argument("--score", choices=SCORES, default="normalized", help="conformal nonconformity score")
    parser.add_argument("--conformal-sigma-units", choices=THRESHOLD_UNITS, default=None,
                        help="sigma_p units of the conformal score (default: --sigma-units)")
    parser.add_argument("--model", choices=("regressor", "heatmap"), default=None,
                        help="which points of predictions holding both (predict --model both); default: the "
                             "regressor's, said on stderr")
    return parser


def calibrate_cli(
    predictions: Sequence[str],
    annotations: Sequence[str],
    models_dir: str,
    sigma_units: str | None = None,
    sigma_kind: str = "total",
    bounds: Sequence[float] = DEFAULT_BOUNDS,
    quantile: float = DEFAULT_QUANTILE,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float | None = DEFAULT_CONFIDENCE,
    per_point_type: bool = True,
    alpha: float = 0.1,
    score: str = "normalized",
    conformal_sigma_units: str | None = None,
    model: str | None = None,
) -> int:
    """``monai-spine calibrate``: :func:`calibrate_from_predictions` plus a printed summary.

    Typical use: predict the validation split with the bundle
    (``inference.json`` with ``--infer_split validation --output_dir runs/val_pred``), then
    ``monai-spine calibrate --predictions runs/val_pred --annotations <dataset> --models-dir <ckpt_dir>``;
    later inference runs pick ``thresholds.json`` up from ``ckpt_dir``.

    Returns:
        0; 1 when no certain or moderate class could be vouched for (:func:`calibration_failed`; said
        in words on stderr, the files are still written and their source says so). Other errors
        propagate as exceptions, reported by the CLI.
    """
    if model is None:
        held = prediction_models(predictions)
        if len(held) > 1:
            print(f"monai-spine calibrate: note: the predictions hold {' and '.join(held)} points; calibrating the "
                  f"{held[0]}'s (pass --model {held[1]} for the other)", file=sys.stderr)
    s = calibrate_from_predictions(
        predictions,
        annotations,
        models_dir,
        model=model,
        sigma_units=sigma_units,
        sigma_kind=sigma_kind,
        bounds=tuple(bounds),
        quantile=quantile,
        min_count=min_count,
        confidence=confidence or None,  # 0 switches the confidence bound off
        per_point_type=per_point_type,
        alpha=alpha,
        score=score,
        conformal_sigma_units=conformal_sigma_units,
    )
    unit = s["error_unit"]
    t = s["thresholds"]
    print(f"calibrated on {s['num_points']} points of {s['num_cases']} cases (errors in {unit}, sigma_p {sigma_kind})")
    print(f"  thresholds ({t['units']}): {_pair_text(t['tau1'], t['tau2'])}")
    for ptype, (t1, t2) in t["per_point_type"].items():
        print(f"    {ptype}: {_pair_text(t1, t2)}")
    for name, sel in s["selections"].items():
        c = sel["counts"]
        notes = [f"no admissible tau{i}" for i, fb in ((1, sel["fallback_tau1"]), (2, sel["fallback_tau2"])) if fb]
        print(f"    {name}: certain/moderate/high = {c['certain']}/{c['moderately_uncertain']}/{c['highly_uncertain']}"
              + (f" ({', '.join(notes)})" if notes else ""))
    c = s["conformal"]
    q = "inf" if c["q_hat"] is None else f"{c['q_hat']:.4g}"
    print(f"  conformal ({c['score']}, alpha {c['alpha']:g}): q_hat={q}")
    for name, path in s["files"].items():
        print(f"  {name}: {path}")
    if s["failed"]:
        print(f"monai-spine calibrate: failed: {s['message']}; every point would be classed highly uncertain "
              f"(the files say so in their source). More or better validation predictions, a lower --min-count "
              f"or looser --bounds / --quantile may find a class.", file=sys.stderr)
        return 1
    return 0


def _pair_text(tau1: float, tau2: float) -> str:
    """``tau1=.. tau2=..`` in words where a class was not admissible (never ``tau2=4.9e-324``)."""
    ok = vouched_classes(float(tau1), float(tau2))
    a = f"tau1={tau1:.6g}" if "certain" in ok else "tau1=0 (no certain class)"
    b = f"tau2={tau2:.6g}" if "moderately_uncertain" in ok else "no moderately uncertain class"
    return f"{a} {b}" if ok else f"{NO_CLASS_MESSAGE} ({a}, {b})"


def calibrate_from_args(args: argparse.Namespace) -> int:
    """Run :func:`calibrate_cli` with the options parsed by :func:`add_calibrate_arguments`.

    Other attributes of ``args`` (``func``, ``command``...) are ignored, so the ``monai-spine`` parser
    can use ``set_defaults(func=calibrate_from_args)``.
    """
    names = inspect.signature(calibrate_cli).parameters
    return calibrate_cli(**{k: v for k, v in vars(args).items() if k in names})
