"""The detector's metrics (monai_spine/metrics/detection.py): box IoU, per-level matching, the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_spine.metrics.detection import DetectionAccumulator, box_iou, match_detections


def test_box_iou_hand_computed():
    np.testing.assert_allclose(box_iou(np.array([[0, 0, 2, 2], [0, 0, 1, 1]]), np.array([[1, 1, 3, 3], [2, 2, 3, 3]])),
                               [1 / 7, 0.0])


GT_C = np.array([[11.0, 10.0], [11.0, 30.0], [np.nan, np.nan], [11.0, 70.0]])
GT_B = np.array([[6.0, 5.0, 16.0, 15.0], [6.0, 25.0, 16.0, 35.0], [np.nan] * 4, [6.0, 65.0, 16.0, 75.0]])
PRESENT = np.array([True, True, False, True])
PRED_C = np.array([[10.0, 10.0], [11.0, 37.0], [11.0, 50.0], [11.0, 70.0]])
SCORES = np.array([0.9, 0.9, 0.8, 0.1])


def test_match_detections_hand_computed():
    # level 0 found (1 px off), level 1 detected outside its box (7 px off), level 2 not annotated but
    # detected (false positive), level 3 below the threshold (missed)
    m = match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (0.5, 0.25), score_threshold=0.3, pred_boxes_px=GT_B)
    np.testing.assert_array_equal(m["found"], [True, False, False, False])
    np.testing.assert_array_equal(m["mislocated"], [False, True, False, False])
    np.testing.assert_array_equal(m["false_positive"], [False, False, True, False])
    assert m["unit"] == "mm"
    np.testing.assert_allclose(m["error_mm"][:2], [0.5, 7 * 0.25])
    np.testing.assert_allclose(m["error_px"][:2], [1.0, 7.0])
    assert np.isnan(m["error_mm"][3])
    np.testing.assert_allclose(m["diag_mm"][[0, 1, 3]], math.hypot(5.0, 2.5))
    np.testing.assert_allclose(m["iou"][:2], [1.0, 1.0])
    # within a radius of 2 mm, level 1 (1.75 mm off) counts as found too
    r = match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (0.5, 0.25), 0.3, match_radius=2.0)
    np.testing.assert_array_equal(r["found"], [True, True, False, False])
    # unknown spacing: pixels
    u = match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (np.nan, np.nan), 0.3)
    assert u["unit"] == "px" and np.all(np.isnan(u["error_mm"]))


def test_a_neighbours_centre_inside_an_overlapping_box_is_not_a_find():
    # boxes reach 12 px below their centres (spinous process); level 0 predicted 1 px from level 1's centre
    gt_c = np.array([[10.0, 10.0], [10.0, 20.0]])
    gt_b = np.array([[5.0, 5.0, 15.0, 22.0], [5.0, 15.0, 15.0, 32.0]])
    pred = np.array([[10.0, 19.0], [10.0, 20.0]])
    m = match_detections(pred, np.ones(2), gt_c, gt_b, np.ones(2, bool), (0.1, 0.1), 0.2, match_radius=5.0)
    np.testing.assert_array_equal(m["found"], [False, True])
    np.testing.assert_array_equal(m["mislocated"], [True, False])


def test_match_detections_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="gt_boxes_px"):
        match_detections(PRED_C, SCORES, GT_C, GT_B[:, :2], PRESENT)


def test_accumulator_summary_hand_computed():
    acc = DetectionAccumulator(["C3", "C4", "C5", "C6"])
    acc.add(0, match_detections(PRED_C, SCORES, GT_C, GT_B, PRESENT, (0.5, 0.25), 0.3, pred_boxes_px=GT_B))
    acc.add(1, match_detections(GT_C, np.ones(4), GT_C, GT_B, PRESENT, (0.5, 0.25), 0.3, pred_boxes_px=GT_B))
    s = acc.summary()
    diag = math.hypot(5.0, 2.5)
    assert s["images"] == 2 and s["vertebrae"] == 6 and s["detections"] == 6
    assert s["recall"] == pytest.approx(4 / 6) and s["precision"] == pytest.approx(4 / 6)
    assert s["false_positives_per_image"] == pytest.approx(0.5) and s["mislocated"] == 1
    assert s["centre_error_mean_mm"] == pytest.approx(0.5 / 4) and s["centre_error_max_mm"] == pytest.approx(0.5)
    assert s["penalised_error_mm"] == pytest.approx((0.5 + 2 * diag) / 6)
    assert s["images_all_found"] == 0.5 and s["images_exact"] == 0.5 and s["box_iou_mean"] == pytest.approx(1.0)
    assert s["recall/C3"] == 1.0 and s["recall/C4"] == 0.5 and math.isnan(s["recall/C5"]) and s["recall/C6"] == 0.5
    assert s["spacing_known"] == 1.0
    # one image without spacing turns the whole summary into pixels
    acc.add(2, match_detections(GT_C, np.ones(4), GT_C, GT_B, PRESENT, None, 0.3))
    s = acc.summary()
    assert s["spacing_known"] == 0.0 and "penalised_error_px" in s and "penalised_error_mm" not in s
    assert s["centre_error_max_px"] == pytest.approx(1.0)
