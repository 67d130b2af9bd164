"""Cell formatting shared by the benchmarks' markdown tables: numbers, percentages, missing values."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MISSING", "num", "pct"]

#: what a cell shows for a missing or not-finite value
MISSING = "—"


def num(v: Any, fmt: str = "{:.2f}", show_inf: bool = False) -> str:
    """``v`` formatted with ``fmt``; :data:`MISSING` for None or NaN (and for +-inf unless ``show_inf``).

    Args:
        v: a number or None.
        fmt: ``str.format`` pattern of one number.
        show_inf: write +inf as ``∞`` (e.g. a conformal radius with too few calibration points for alpha).
    """
    if v is None:
        return MISSING
    f = float(v)
    if show_inf and f == math.inf:
        return "∞"
    return MISSING if not math.isfinite(f) else fmt.format(f)


def pct(v: Any) -> str:
    """A share in [0, 1] as ``"12.3 %"``; :data:`MISSING` for None or not finite."""
    return MISSING if v is None or not math.isfinite(float(v)) else f"{100.0 * float(v):.1f} %"
