"""Tests of the lateral-view corner helpers shared by the BUU-LSPINE and CSXA readers."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.data.annotation import AnnotationError
from monai_spine.data.lateral_corners import (
    decide_facing,
    hide_outside,
    lateral5_from_endplates,
    lordosis_cue,
    mean_width,
    nan_outside,
    point_or_none,
    sort_left_right,
)

NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# orientation cues
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cues, facing, expected, decided_by, conflict",
    [
        ({"a": 0.5, "b": -0.1}, "auto", "left", "cues", False),
        ({"a": -0.3, "b": None}, "auto", "right", "cues", False),
        ({"a": 0.05}, "auto", "left", "default", False),
        ({"a": None, "b": float("nan")}, "auto", "left", "default", False),
        ({"a": 0.5, "b": -0.3}, "auto", "left", "cues", True),
        ({"a": 0.5}, "right", "right", "user", False),
    ],
)
def test_decide_facing(cues, facing, expected, decided_by, conflict):
    got, ev = decide_facing(cues, facing=facing)
    assert got == expected and ev["decided_by"] == decided_by and ev["conflict"] == conflict


def test_mean_width_skips_missing_and_zero_width_rows():
    pairs = np.array([[[0, 0], [40, 0]], [[10, 5], [70, 5]], [[NAN, NAN], [NAN, NAN]], [[5, 0], [5, 1]]], dtype=float)
    assert mean_width(pairs) == pytest.approx(50.0)  # (40 + 60) / 2; the NaN row and the 0-px row are skipped
    assert np.isnan(mean_width(pairs[2:]))


UPPER = np.array([[0.0, 0.0], [40.0, 0.0]])
LOWER = np.array([[0.0, 100.0], [40.0, 80.0]])


@pytest.mark.parametrize(
    "upper, lower, width, expected",
    [
        (UPPER, LOWER, 40.0, 0.5),  # left column 100 px, right 80 px: (100 - 80) / 40
        (UPPER, np.array([[0.0, 80.0], [40.0, 100.0]]), 40.0, -0.5),  # mirrored: (80 - 100) / 40
        (None, LOWER, 40.0, None),
        (UPPER, LOWER, NAN, None),
        (UPPER, LOWER, 0.0, None),
        (np.array([[0.0, NAN], [40.0, 0.0]]), LOWER, 40.0, None),
    ],
)
def test_lordosis_cue(upper, lower, width, expected):
    got = lordosis_cue(upper, lower, width)
    assert got == (pytest.approx(expected) if expected is not None else None)


# ----------------------------------------------------------------------------------------------
# left/right order and the lateral5 mapping
# ----------------------------------------------------------------------------------------------
def test_lateral5_from_endplates_and_sort():
    pairs, swapped = sort_left_right(np.array([[[5.0, 1.0], [1.0, 2.0]], [[1.0, 3.0], [5.0, 4.0]]]))
    assert swapped == [0]
    kp = lateral5_from_endplates(pairs[:1], pairs[1:], "right")
    np.testing.assert_allclose(kp[0, :4], [[5, 1], [1, 2], [5, 4], [1, 3]])
    assert np.isnan(kp[0, 4]).all()
    with pytest.raises(ValueError, match="facing"):
        lateral5_from_endplates(pairs[:1], pairs[1:], "auto")


@pytest.mark.parametrize("point, expected", [([1, 2], [1.0, 2.0]), ([NAN, 2], None), ([np.inf, 0], None)])
def test_point_or_none(point, expected):
    assert point_or_none(np.asarray(point, dtype=float)) == expected


# ----------------------------------------------------------------------------------------------
# points outside the image (W x H = 10 x 20: inside is [-0.5, 9.5] x [-0.5, 19.5])
# ----------------------------------------------------------------------------------------------
def test_nan_outside_uses_the_pixel_edges():
    pts = np.array([[9.5, 0.0], [9.6, 0.0], [-0.5, -0.5], [0.0, 19.6]])
    got = nan_outside(pts, (10, 20))
    assert np.isfinite(got).all(axis=-1).tolist() == [True, False, True, False]
    assert np.isfinite(pts).all()  # a copy: the input is left alone


def test_hide_outside_notes_each_point_and_refuses_most_outside():
    kp = np.array([[[1.0, 1.0], [12.0, 1.0]]])  # (1, 2, 2): the second point is right of the image
    notes: list[str] = []
    vis = hide_outside(kp, np.ones((1, 2), dtype=bool), (10, 20), "a.csv", ("A", "B"), ("L1",), notes)
    assert vis.tolist() == [[True, False]]
    assert notes == ["point_outside_image: L1 B at (12.0, 1.0) made invisible"]
    with pytest.raises(AnnotationError, match="a.csv: 2 of 2 points lie outside the 10x20 image"):
        hide_outside(kp + [11.0, 0.0], np.ones((1, 2), dtype=bool), (10, 20), "a.csv", ("A", "B"), ("L1",), [])
