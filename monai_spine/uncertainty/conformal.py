"""Split-conformal error radii of keypoints.

**Split-conformal radii** (beyond the paper; Vovk et al. 2005, Lei et al. 2018, Angelopoulos &
Bates 2021): on ``n`` calibration points the nonconformity score is ``s_i = e_i / sigma_i``
(``"normalized"``) or ``s_i = e_i`` (``"absolute"``); ``q_hat`` is the ``k``-th smallest score with
``k = ceil((n + 1) * (1 - alpha))`` (``+inf`` when ``k > n``), and a new point gets the radius
``r = sigma * q_hat`` (normalized) or ``r = q_hat`` (absolute), in the unit of the errors. For
exchangeable data ``P(e <= r) >= 1 - alpha`` (and ``< 1 - alpha + 1 / (n + 1)`` without ties).
``q_hat`` is fitted per point type (falling back to the pooled value for other types).

The errors are in mm (px when the spacing is unknown) and ``sigma_p`` in crop fractions, mm or
radiograph pixels. :class:`ConformalCalibrator` is the fitted model artefact (``conformal.json``,
:meth:`~ConformalCalibrator.save` / :meth:`~ConformalCalibrator.load`, read at inference); the
calibration run that fits it on prediction files is
:func:`monai_spine.evaluation.calibration.calibrate_from_predictions`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_spine.data.annotation import atomic_write_text
from monai_spine.uncertainty.classes import THRESHOLD_UNITS
from monai_spine.uncertainty.thresholds import ERROR_UNITS, _flat_inputs, _np, _point_types_like, _rank

__all__ = [
    "CONFORMAL_SIGMA_UNITS",
    "SCORES",
    "CONFORMAL_FORMAT",
    "conformal_quantile",
    "coverage",
    "ConformalCalibrator",
]

#: units a conformal calibrator's sigma may be recorded in: the thresholds' units, or radiograph
#: pixels (a sigma measured on an image of unknown spacing, e.g. the heatmap FCN's map spread)
CONFORMAL_SIGMA_UNITS = THRESHOLD_UNITS + ("px",)
#: nonconformity scores of :class:`ConformalCalibrator`
SCORES = ("normalized", "absolute")
#: format name of ``conformal.json``
CONFORMAL_FORMAT = "monai-spine-conformal"
_CONFORMAL_VERSION = 1


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
            point_types: per element or per last-axis column (see :func:`~monai_spine.uncertainty.thresholds.fit_thresholds`); None:
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
