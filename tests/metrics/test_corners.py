"""Corner errors (monai_spine/metrics/corners.py): hand-computed P2P / P2C, units and the summary."""

from __future__ import annotations

import numpy as np
import pytest

from monai_spine.metrics.corners import CornerErrorAccumulator, corner_errors, point_to_curve_distance
from corner_cases import rect_keypoints


@pytest.mark.parametrize(
    "spacing, p2p_mm",
    [(None, None), ((0.5, 0.5), 2.5), ((1.0, 2.0), np.sqrt(73.0))],
)
def test_corner_errors_hand_computed(spacing, p2p_mm):
    gt = rect_keypoints(n=1)[:, :4]
    pred = gt.copy()
    pred[0, 0] += [3.0, 4.0]  # 5 px off
    pred[0, 1] = np.nan  # not found
    outline = [gt[0][[0, 1, 3, 2]]]
    vis = np.array([[True, True, True, False]])
    e = corner_errors(pred, gt, vis, outline, spacing)
    assert e["p2p_px"][0, 0] == pytest.approx(5.0) and e["p2p_px"][0, 2] == 0.0
    assert e["p2p_px"][0, 1] == np.inf and np.isnan(e["p2p_px"][0, 3])
    assert e["p2c_px"][0, 0] == pytest.approx(3.0)  # (+3, +4) inside the body: 3 px from the left, 4 from the top edge
    assert e["p2c_px"][0, 1] == np.inf and np.isnan(e["p2c_px"][0, 3])
    if spacing is None:
        assert e["p2p_mm"] is None and e["p2c_mm"] is None
    else:
        assert e["p2p_mm"][0, 0] == pytest.approx(p2p_mm)
        assert e["p2c_mm"][0, 0] == pytest.approx(min(3.0 * spacing[0], 4.0 * spacing[1]))
    no_outline = corner_errors(pred, gt, vis, [np.zeros((0, 2))], spacing)
    assert np.all(np.isnan(no_outline["p2c_px"]))


def test_accumulator_units_and_summary():
    gt = rect_keypoints(n=2)[:, :4]
    pred = gt + [0.0, 4.0]  # every corner 4 px low
    acc = CornerErrorAccumulator()
    acc.add(0, corner_errors(pred, gt, spacing_mm=(1.0, 1.0)), np.array([[True, False, False, False]] * 2),
            sigma_px=np.ones((2, 4)), spacing_mm=(1.0, 1.0))
    acc.add_bc(np.array([0.9, 0.7]))
    s = acc.summary()
    assert acc.unit == "mm" and s["spacing_known"] == 1.0
    assert s["p2p_mean_mm"] == pytest.approx(4.0) and s["p2p_fit_failure_3.0mm"] == 1.0 and s["p2p_count"] == 8
    assert s["bc_mean"] == pytest.approx(0.8) and s["prior_fallback"] == pytest.approx(0.25)
    assert s["p2c_count"] == 0 and np.isnan(s["p2c_mean_mm"])
    np.testing.assert_allclose(acc.sigmas(), 1.0)
    acc.add(1, corner_errors(pred, gt, spacing_mm=None))  # one image without spacing: everything in px
    s = acc.summary()
    assert acc.unit == "px" and s["spacing_known"] == 0.0 and "p2p_mean_px" in s and "p2p_mean_mm" not in s
    assert s["p2p_num_scans"] == 2


# ----------------------------------------------------------------------------- point to curve
SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


@pytest.mark.parametrize(
    "point, closed, expected",
    [
        ((0.5, 0.5), True, 0.5),
        ((2.0, 0.5), True, 1.0),
        ((2.0, 2.0), True, np.sqrt(2)),
        ((0.5, 0.0), True, 0.0),
        ((-1.0, 0.5), True, 1.0),  # closing segment (0, 1) -> (0, 0)
        ((-1.0, 0.5), False, np.sqrt(1.25)),  # open: nearest is the vertex (0, 0) or (0, 1)
        ((0.25, -3.0), False, 3.0),
    ],
)
def test_point_to_curve_distance(point, closed, expected):
    d = point_to_curve_distance(np.array([point]), SQUARE, closed=closed)
    assert d.shape == (1,) and d[0] == pytest.approx(expected)


def test_point_to_curve_degenerate_and_errors():
    assert point_to_curve_distance(np.array([[3.0, 4.0]]), np.zeros((1, 2)))[0] == pytest.approx(5.0)
    assert point_to_curve_distance(np.array([[3.0, 4.0]]), np.zeros((1, 2)), closed=False)[0] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        point_to_curve_distance(np.zeros((2, 3)), SQUARE)
