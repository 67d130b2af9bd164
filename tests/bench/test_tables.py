"""The benchmarks' table cells: one formatting for numbers, shares and missing values."""

import math

import pytest

from monai_spine.bench.tables import MISSING, num, pct


@pytest.mark.parametrize("v, fmt, show_inf, expected", [
    (1.234, "{:.2f}", False, "1.23"),
    (0.5, "{:+.3f}", False, "+0.500"),
    (None, "{:.2f}", False, MISSING),
    (math.nan, "{:.2f}", False, MISSING),
    (math.inf, "{:.2f}", False, MISSING),
    (math.inf, "{:.2f}", True, "∞"),
    (-math.inf, "{:.2f}", True, MISSING),  # only a radius can be +inf
])
def test_num(v, fmt, show_inf, expected):
    assert num(v, fmt, show_inf=show_inf) == expected


@pytest.mark.parametrize("v, expected", [(0.9876, "98.8 %"), (0.0, "0.0 %"), (1, "100.0 %"), (None, MISSING),
                                         (math.nan, MISSING)])
def test_pct(v, expected):
    assert pct(v) == expected
