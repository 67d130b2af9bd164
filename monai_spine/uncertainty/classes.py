"""Uncertainty classes of predicted points (BayeRegX section 3.4, fig. 11) and their colours.

A point with uncertainty ``sigma_p`` (eq. 17) is

* **certain** when ``sigma_p < tau1`` (drawn violet),
* **moderately uncertain** when ``tau1 <= sigma_p < tau2`` (yellow),
* **highly uncertain** when ``sigma_p >= tau2`` (red);

ground-truth points are drawn green. (Section 3.4 of the paper writes ``tau1 <= sigma_p <= tau2`` for
the middle class, overlapping the last one at ``tau2``; section 4 uses ``tau1 <= sigma_p < tau2``,
which is followed here.) A non-finite ``sigma_p`` gets :data:`UNKNOWN` (-1).

The paper tunes ``(tau1, tau2) = (0.0087, 0.0097)`` in fractional units on its cervical test set
(:data:`PAPER_THRESHOLDS`); thresholds are data-dependent and should be re-tuned on one's own data
(in ``"frac"`` or ``"mm"`` units) and stored with :meth:`Thresholds.save`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from monai_spine.data.annotation import atomic_write_text

__all__ = [
    "UNKNOWN",
    "CERTAIN",
    "MODERATELY_UNCERTAIN",
    "HIGHLY_UNCERTAIN",
    "CLASS_NAMES",
    "CLASS_COLOURS_RGB",
    "GROUND_TRUTH_COLOUR_RGB",
    "UNKNOWN_COLOUR_RGB",
    "THRESHOLD_UNITS",
    "Thresholds",
    "PAPER_THRESHOLDS",
    "classify",
    "class_names",
    "class_colours",
]

#: class index of a point whose sigma_p is not finite
UNKNOWN = -1
CERTAIN = 0
MODERATELY_UNCERTAIN = 1
HIGHLY_UNCERTAIN = 2

#: class names by index (0, 1, 2)
CLASS_NAMES: tuple[str, ...] = ("certain", "moderately_uncertain", "highly_uncertain")
#: display colours (R, G, B), 0-255, by class name (paper fig. 11, 15-17)
CLASS_COLOURS_RGB: dict[str, tuple[int, int, int]] = {
    "certain": (148, 0, 211),  # violet
    "moderately_uncertain": (255, 255, 0),  # yellow
    "highly_uncertain": (255, 0, 0),  # red
}
#: colour of ground-truth points (green)
GROUND_TRUTH_COLOUR_RGB: tuple[int, int, int] = (0, 255, 0)
#: colour of points with unknown (non-finite) uncertainty (grey)
UNKNOWN_COLOUR_RGB: tuple[int, int, int] = (128, 128, 128)
#: units a threshold pair can be given in
THRESHOLD_UNITS = ("frac", "mm")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_taus(tau1: float, tau2: float, name: str = "thresholds") -> tuple[float, float]:
    t1, t2 = float(tau1), float(tau2)
    if not (np.isfinite(t1) and np.isfinite(t2) and 0 <= t1 < t2):
        raise ValueError(f"{name}: need finite 0 <= tau1 < tau2, got tau1={tau1!r}, tau2={tau2!r}")
    return t1, t2


def classify(sigma_p: Any, tau1: float, tau2: float) -> np.ndarray:
    """Uncertainty class of each point.

    Args:
        sigma_p: array or tensor of point uncertainties, any shape, in the units of the thresholds.
        tau1: lower threshold (``sigma_p < tau1`` is certain).
        tau2: upper threshold (``sigma_p >= tau2`` is highly uncertain); ``tau1 < tau2``.

    Returns:
        int64 array of the same shape: 0 certain, 1 moderately uncertain, 2 highly uncertain,
        -1 (:data:`UNKNOWN`) where ``sigma_p`` is not finite.

    Raises:
        ValueError: the thresholds are not ``0 <= tau1 < tau2``.
    """
    t1, t2 = _check_taus(tau1, tau2)
    s = _to_numpy(sigma_p)
    out = np.full(s.shape, UNKNOWN, dtype=np.int64)
    finite = np.isfinite(s)
    out[finite & (s < t1)] = CERTAIN
    out[finite & (s >= t1) & (s < t2)] = MODERATELY_UNCERTAIN
    out[finite & (s >= t2)] = HIGHLY_UNCERTAIN
    return out


def class_names(classes: Any) -> np.ndarray:
    """Names of class indices (``"unknown"`` for -1), as a str array of the same shape."""
    c = np.asarray(classes, dtype=np.int64)
    if np.any((c < UNKNOWN) | (c >= len(CLASS_NAMES))):
        raise ValueError(f"class indices must be in -1..{len(CLASS_NAMES) - 1}, got {np.unique(c).tolist()}")
    table = np.asarray(("unknown",) + CLASS_NAMES)
    return table[c + 1]


def class_colours(classes: Any) -> np.ndarray:
    """RGB colours of class indices: uint8 array of shape ``classes.shape + (3,)``."""
    c = np.asarray(classes, dtype=np.int64)
    if np.any((c < UNKNOWN) | (c >= len(CLASS_NAMES))):
        raise ValueError(f"class indices must be in -1..{len(CLASS_NAMES) - 1}, got {np.unique(c).tolist()}")
    table = np.asarray([UNKNOWN_COLOUR_RGB] + [CLASS_COLOURS_RGB[n] for n in CLASS_NAMES], dtype=np.uint8)
    return table[c + 1]


@dataclass(frozen=True)
class Thresholds:
    """A pair of uncertainty thresholds, optionally per point type (immutable).

    Attributes:
        tau1: lower threshold.
        tau2: upper threshold (> tau1).
        units: ``"frac"`` (sigma_p in fractions of the crop, as in the paper) or ``"mm"``.
        per_point_type: optional ``{point_type: (tau1, tau2)}`` overriding the pair for points of
            that type (``"corner"``, ``"spinous_process"``, see ``KeypointScheme.point_types``).
        source: free text: where the values come from (paper, a tuning run, ...).
    """

    tau1: float
    tau2: float
    units: str = "frac"
    per_point_type: dict[str, tuple[float, float]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        t1, t2 = _check_taus(self.tau1, self.tau2)
        object.__setattr__(self, "tau1", t1)
        object.__setattr__(self, "tau2", t2)
        if self.units not in THRESHOLD_UNITS:
            raise ValueError(f"thresholds: units must be one of {THRESHOLD_UNITS}, got {self.units!r}")
        per: dict[str, tuple[float, float]] = {}
        for key, pair in dict(self.per_point_type or {}).items():
            pair = tuple(pair)
            if len(pair) != 2:
                raise ValueError(f"thresholds: per_point_type[{key!r}] must be (tau1, tau2), got {pair!r}")
            per[str(key)] = _check_taus(pair[0], pair[1], name=f"thresholds per_point_type[{key!r}]")
        object.__setattr__(self, "per_point_type", per)

    def for_point_type(self, point_type: str | None = None) -> tuple[float, float]:
        """``(tau1, tau2)`` for a point type (the default pair when the type has no entry)."""
        if point_type is not None and point_type in self.per_point_type:
            return self.per_point_type[point_type]
        return self.tau1, self.tau2

    def classify(self, sigma_p: Any, point_types: Sequence[str] | None = None) -> np.ndarray:
        """Classify ``sigma_p`` (in :attr:`units`).

        Args:
            sigma_p: ``(..., K)`` point uncertainties.
            point_types: K point types (last axis of ``sigma_p``) for per-type thresholds; None uses
                the default pair everywhere.

        Returns:
            int64 class array shaped like ``sigma_p`` (see :func:`classify`).
        """
        s = _to_numpy(sigma_p)
        if point_types is None:
            return classify(s, self.tau1, self.tau2)
        types = list(point_types)
        if s.ndim < 1 or s.shape[-1] != len(types):
            raise ValueError(f"sigma_p last axis {s.shape} does not match {len(types)} point types")
        out = np.empty(s.shape, dtype=np.int64)
        for k, t in enumerate(types):
            out[..., k] = classify(s[..., k], *self.for_point_type(t))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "tau1": self.tau1,
            "tau2": self.tau2,
            "units": self.units,
            "per_point_type": {k: list(v) for k, v in self.per_point_type.items()},
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "thresholds") -> Thresholds:
        """Build from :meth:`to_dict` output; ``KeyError`` naming ``source`` if tau1/tau2 are missing."""
        missing = [k for k in ("tau1", "tau2") if k not in d]
        if missing:
            raise KeyError(f"{source}: missing key(s) {missing}")
        unknown = set(d) - {"tau1", "tau2", "units", "per_point_type", "source"}
        if unknown:
            raise KeyError(f"{source}: unknown key(s) {sorted(unknown)}")
        try:
            return cls(
                tau1=d["tau1"],
                tau2=d["tau2"],
                units=d.get("units", "frac"),
                per_point_type={k: tuple(v) for k, v in (d.get("per_point_type") or {}).items()},
                source=d.get("source", ""),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Thresholds:
        """Read a JSON file written by :meth:`save`; errors name the file."""
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{os.fspath(path)}: not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{os.fspath(path)}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, source=os.fspath(path))


#: the paper's thresholds (section 4), fractions of the crop size, tuned on cervical C3-C7 crops
PAPER_THRESHOLDS = Thresholds(0.0087, 0.0097, "frac", source="BayeRegX (CHIL 2020), section 4")
