"""Tests for monai_spine.metrics.keypoint_error (hand-computed errors and summaries)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from monai_spine.data.keypoints import get_scheme
from monai_spine.metrics.keypoint_error import (
    KeypointErrorMetric,
    keypoint_errors,
    summarize_errors,
    summary_keys,
)

NAN = float("nan")


def _pts(offsets):
    """(B, K, 2) predictions at ``offsets`` from ground truth at the origin (plus a shift)."""
    gt = np.full(np.shape(offsets), 10.0)
    return gt + np.asarray(offsets, dtype=np.float64), gt


# ----------------------------------------------------------------------------------------------
# keypoint_errors
# ----------------------------------------------------------------------------------------------
ERROR_CASES = [
    # offsets (B, K, 2), spacing, expected errors (B, K), unit
    ("3-4-5 px, spacing None", [[[3, 4], [0, 0]]], None, [[5.0, 0.0]], "px"),
    ("3-4-5 unit spacing", [[[3, 4], [-3, -4]]], [[1.0, 1.0]], [[5.0, 5.0]], "mm"),
    ("3-4-5 doubled spacing", [[[3, 4]]], [[2.0, 2.0]], [[10.0]], "mm"),
    ("anisotropic (0.1, 0.2)", [[[3, 4], [10, 0], [0, 10]]], [[0.1, 0.2]], [[math.sqrt(0.73), 1.0, 2.0]], "mm"),
    ("spacing (2,) broadcast", [[[3, 4]], [[0, 5]]], [0.1, 0.2], [[math.sqrt(0.73)], [1.0]], "mm"),
    ("per-sample spacing", [[[3, 4]], [[3, 4]]], [[1.0, 1.0], [0.5, 0.5]], [[5.0], [2.5]], "mm"),
    ("all spacing NaN -> px", [[[3, 4]], [[6, 8]]], [[NAN, NAN], [NAN, NAN]], [[5.0], [10.0]], "px"),
]


@pytest.mark.parametrize("name,offsets,spacing,expected,unit", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_keypoint_errors_hand_computed(name, offsets, spacing, expected, unit):
    pred, gt = _pts(offsets)
    errors, got_unit = keypoint_errors(pred, gt, spacing_mm=spacing)
    assert got_unit == unit
    assert isinstance(errors, np.ndarray)
    np.testing.assert_allclose(errors, expected, rtol=1e-12)


def test_keypoint_errors_torch_in_torch_out_and_lists():
    pred, gt = _pts([[[3, 4], [6, 8]]])
    errors, unit = keypoint_errors(torch.as_tensor(pred), torch.as_tensor(gt), spacing_mm=torch.tensor([[0.5, 0.5]]))
    assert isinstance(errors, torch.Tensor) and unit == "mm"
    np.testing.assert_allclose(errors.numpy(), [[2.5, 5.0]])
    # decollated: lists of per-sample items
    errors_l, unit_l = keypoint_errors(
        [torch.as_tensor(pred[0])], [torch.as_tensor(gt[0])], spacing_mm=[torch.tensor([0.5, 0.5])]
    )
    assert unit_l == "mm"
    np.testing.assert_allclose(errors_l, [[2.5, 5.0]])


def test_mixed_spacing_reports_px_with_warning():
    pred, gt = _pts([[[3, 4]], [[3, 4]]])
    with pytest.warns(UserWarning, match="1 of 2 samples"):
        errors, unit = keypoint_errors(pred, gt, spacing_mm=[[0.1, 0.1], [NAN, NAN]])
    assert unit == "px"  # never mm for pixel values
    np.testing.assert_allclose(errors, [[5.0], [5.0]])
    with pytest.raises(ValueError, match="unknown for 1 of 2"):
        keypoint_errors(pred, gt, spacing_mm=[[0.1, 0.1], [NAN, NAN]], on_mixed_spacing="raise")


def test_invisible_and_failed_points():
    pred, gt = _pts([[[3, 4], [3, 4], [0, 0], [1, 0]]])
    gt[0, 2] = np.nan  # unlabelled ground truth: excluded even if marked visible
    pred[0, 3] = np.nan  # failed prediction at a visible point: +inf, never dropped
    errors, unit = keypoint_errors(pred, gt, visible=[[True, False, True, True]])
    assert unit == "px"
    assert errors[0, 0] == 5.0
    assert np.isnan(errors[0, 1]) and np.isnan(errors[0, 2])
    assert errors[0, 3] == np.inf


@pytest.mark.parametrize(
    "pred_shape,gt_shape,visible_shape,spacing,match",
    [
        ((1, 2, 3), (1, 2, 3), None, None, "pred_px"),
        ((1, 2, 2), (1, 3, 2), None, None, "does not match"),
        ((1, 2, 2), (1, 2, 2), (1, 3), None, "visible"),
        ((2, 2, 2), (2, 2, 2), None, [[1.0, 1.0]], "spacing_mm"),
        ((1, 2, 2), (1, 2, 2), None, [[0.0, 1.0]], "positive"),
        ((1, 2, 2), (1, 2, 2), None, [[-0.1, 0.1]], "positive"),
    ],
)
def test_keypoint_errors_bad_input(pred_shape, gt_shape, visible_shape, spacing, match):
    visible = None if visible_shape is None else np.ones(visible_shape, dtype=bool)
    with pytest.raises(ValueError, match=match):
        keypoint_errors(np.zeros(pred_shape), np.zeros(gt_shape), visible=visible, spacing_mm=spacing)


# ----------------------------------------------------------------------------------------------
# summarize_errors
# ----------------------------------------------------------------------------------------------
# errors 1..5 plus an invisible point: mean 3, median 3, population std sqrt(2), max 5;
# SDR <= 2: {1, 2} 2/5, <= 2.5: 2/5, <= 3: 3/5, <= 4: 4/5; fit failure > 3: {4, 5} 2/5
CRAFTED = [[1.0, 2.0, 3.0], [4.0, 5.0, NAN]]


@pytest.mark.parametrize(
    "key,expected",
    [
        ("count", 5.0),
        ("mean_mm", 3.0),
        ("median_mm", 3.0),
        ("std_mm", math.sqrt(2.0)),
        ("max_mm", 5.0),
        ("sdr_2.0mm", 0.4),
        ("sdr_2.5mm", 0.4),
        ("sdr_3.0mm", 0.6),
        ("sdr_4.0mm", 0.8),
        ("fit_failure_3.0mm", 0.4),
    ],
)
def test_summary_crafted_list(key, expected):
    out = summarize_errors(np.array(CRAFTED))
    assert out[key] == pytest.approx(expected)
    assert "num_scans" not in out  # no image ids, no scan statistics


def test_summary_px_keys_and_thresholds_in_px():
    out = summarize_errors(torch.tensor(CRAFTED), unit="px", thresholds_mm=(2.25,), fit_failure_mm=4.0)
    assert out["mean_px"] == pytest.approx(3.0)
    assert out["sdr_2.25px"] == pytest.approx(0.4)
    assert out["fit_failure_4.0px"] == pytest.approx(0.2)
    assert not any(k.endswith("mm") for k in out)


@pytest.mark.parametrize(
    "errors,image_ids,num_scans,share",
    [
        # image 7: mean(1, 2) = 1.5 < 2; image 9: mean(3, 4) = 3.5: share 1/2
        ([[1.0, 2.0], [3.0, 4.0]], [7, 9], 2, 0.5),
        # image 7 spans two vertebrae: mean(1, 2, 3, NaN->skip) = 2.0 is not < 2; image 9 all invisible
        ([[1.0, 2.0], [3.0, NAN], [NAN, NAN]], [7, 7, 9], 1, 0.0),
        # two images both below: 1.0 and mean(0.5, 3.0) = 1.75
        ([[1.0, 1.0], [0.5, 3.0]], [1, 2], 2, 1.0),
    ],
)
def test_summary_share_of_scans(errors, image_ids, num_scans, share):
    out = summarize_errors(np.array(errors), image_ids=np.array(image_ids))
    assert out["num_scans"] == num_scans
    assert out["scans_below_2.0mm"] == pytest.approx(share)


def test_summary_split_by_point_type():
    types = get_scheme("lateral5").point_types  # 4 corners + spinous process
    errors = np.array([[1.0, 2.0, 3.0, NAN, 6.0], [1.0, 1.0, 1.0, 1.0, 2.0]])
    out = summarize_errors(errors, image_ids=[0, 1], point_types=types)
    # corners: 1, 2, 3, 1, 1, 1, 1 -> mean 10/7, sdr<=2: 6/7, > 3: 0
    assert out["corner/count"] == 7
    assert out["corner/mean_mm"] == pytest.approx(10 / 7)
    assert out["corner/sdr_2.0mm"] == pytest.approx(6 / 7)
    assert out["corner/fit_failure_3.0mm"] == 0.0
    # spinous process: 6, 2 -> mean 4, median 4, std 2, sdr<=2: 1/2, > 3: 1/2
    assert out["spinous_process/count"] == 2
    assert out["spinous_process/mean_mm"] == pytest.approx(4.0)
    assert out["spinous_process/std_mm"] == pytest.approx(2.0)
    assert out["spinous_process/sdr_2.0mm"] == pytest.approx(0.5)
    assert out["spinous_process/fit_failure_3.0mm"] == pytest.approx(0.5)
    # per-type scans: corner image 0 mean 2.0 (not < 2), image 1 mean 1.0; SP image 0: 6, image 1: 2
    assert out["corner/scans_below_2.0mm"] == pytest.approx(0.5)
    assert out["spinous_process/scans_below_2.0mm"] == 0.0
    # overall: 9 points, sum 18 -> mean 2; image 0 mean 12/4 = 3, image 1 mean 6/5 = 1.2
    assert out["mean_mm"] == pytest.approx(2.0)
    assert out["scans_below_2.0mm"] == pytest.approx(0.5)
    assert list(out) == summary_keys("mm", types)


def test_summary_empty_and_inf():
    out = summarize_errors(np.full((2, 3), NAN), image_ids=[0, 1])
    assert out["count"] == 0 and math.isnan(out["mean_mm"]) and math.isnan(out["sdr_2.0mm"])
    assert out["num_scans"] == 0 and math.isnan(out["scans_below_2.0mm"])
    out = summarize_errors(np.array([[1.0, np.inf]]))
    assert out["mean_mm"] == np.inf and out["sdr_4.0mm"] == 0.5 and out["fit_failure_3.0mm"] == 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(unit="cm"), "unit"),
        (dict(image_ids=[0]), "image_ids"),
        (dict(point_types=("corner",)), "point_types"),
    ],
)
def test_summary_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        summarize_errors(np.ones((2, 3)), **kwargs)


@pytest.mark.parametrize("unit", ["mm", "px"])
def test_summary_keys_are_valid_mlflow_metric_names(unit):
    validation = pytest.importorskip("mlflow.utils.validation")
    for key in summary_keys(unit, get_scheme("lateral5").point_types):
        for name in (key, f"val_{key}"):
            validation._validate_metric_name(name)  # raises MlflowException when invalid
            assert " " not in name


# ----------------------------------------------------------------------------------------------
# KeypointErrorMetric
# ----------------------------------------------------------------------------------------------
def _batch(offsets, spacing, ids, visible=None):
    pred, gt = _pts(offsets)
    return dict(
        y_pred=torch.as_tensor(pred),
        y=torch.as_tensor(gt),
        visible=None if visible is None else torch.as_tensor(visible),
        spacing_mm=torch.as_tensor(spacing, dtype=torch.float64),
        image_id=torch.as_tensor(ids),
    )


def _decollate(batch):
    n = batch["y_pred"].shape[0]
    return {k: (None if v is None else [v[i] for i in range(n)]) for k, v in batch.items()}


def test_metric_accumulates_over_iterations_and_resets():
    metric = KeypointErrorMetric(scheme="ap4")
    # iteration 1: image 0, spacing (0.1, 0.2): errors sqrt(.73), 1, 2, and an invisible point
    it1 = _batch([[[3, 4], [10, 0], [0, 10], [50, 50]]], [[0.1, 0.2]], [0], visible=[[1, 1, 1, 0]])
    # iteration 2 (decollated list form): images 1, 1 at 0.5 mm: errors 2.5 each; 0 each
    it2 = _decollate(_batch([[[3, 4]] * 4, [[0, 0]] * 4], [[0.5, 0.5], [0.5, 0.5]], [1, 1]))
    batch_errors = metric(**it1)
    np.testing.assert_allclose(batch_errors.numpy(), [[math.sqrt(0.73), 1.0, 2.0, NAN]])
    metric(**it2)
    assert len(metric) == 3
    expected = [math.sqrt(0.73), 1.0, 2.0] + [2.5] * 4 + [0.0] * 4
    assert metric.unit == "mm"
    assert metric.aggregate().item() == pytest.approx(np.mean(expected))
    assert metric.aggregate(reduction="median").item() == pytest.approx(np.median(expected))
    assert metric.aggregate(reduction="none").shape == (3, 4)
    summary = metric.aggregate(return_summary=True)
    assert summary == metric.summary()
    assert summary["count"] == 11
    # image 0 mean (0.854 + 1 + 2) / 3 = 1.28 < 2; image 1 mean 1.25 < 2
    assert summary["num_scans"] == 2 and summary["scans_below_2.0mm"] == 1.0
    assert summary["corner/count"] == 11  # ap4: all corners
    metric.reset()
    assert len(metric) == 0 and metric.unit == "px"
    assert math.isnan(metric.aggregate().item())
    metric(**_batch([[[6, 8]] * 4], [[1.0, 1.0]], [5]))
    assert metric.aggregate().item() == pytest.approx(10.0)  # nothing left from before reset
    assert metric.summary()["count"] == 4


def test_metric_unit_is_px_for_the_whole_epoch_when_any_spacing_unknown():
    metric = KeypointErrorMetric(scheme=None)
    metric(**_batch([[[3, 4]]], [[0.1, 0.1]], [0]))
    assert metric.unit == "mm" and metric.aggregate().item() == pytest.approx(0.5)
    metric(**_batch([[[6, 8]]], [[NAN, NAN]], [1]))
    with pytest.warns(UserWarning, match="pixels"):
        assert metric.unit == "px"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = metric.summary()
        assert metric.aggregate().item() == pytest.approx(7.5)  # (5 + 10) / 2, both in px
    assert "mean_px" in summary and "mean_mm" not in summary


def test_metric_without_image_ids_has_no_scan_statistics():
    metric = KeypointErrorMetric(scheme=None)
    metric(**_batch([[[3, 4]]], [[1.0, 1.0]], [0]))
    metric(y_pred=torch.zeros(1, 1, 2), y=torch.zeros(1, 1, 2), spacing_mm=torch.ones(1, 2))
    summary = metric.summary()
    assert summary["count"] == 2 and summary["mean_mm"] == pytest.approx(2.5)
    assert "num_scans" not in summary


def test_metric_split_by_scheme_point_types():
    metric = KeypointErrorMetric(scheme="lateral5", return_summary=True)
    metric(**_batch([[[3, 4], [3, 4], [3, 4], [3, 4], [6, 8]]], [[1.0, 1.0]], [0]))
    summary = metric.aggregate()
    assert summary["corner/mean_mm"] == 5.0 and summary["spinous_process/mean_mm"] == 10.0
    assert summary["mean_mm"] == pytest.approx(6.0)


@pytest.mark.parametrize(
    "kwargs,call,match",
    [
        (dict(reduction="sum"), None, "reduction"),
        (dict(on_mixed_spacing="mm"), None, "on_mixed_spacing"),
        (dict(scheme="lateral5"), dict(y_pred=torch.zeros(1, 4, 2), y=torch.zeros(1, 4, 2)), "5 points"),
        (dict(), dict(y_pred=torch.zeros(1, 5, 2), y=None), "ground-truth"),
        (dict(), dict(y_pred=torch.zeros(2, 5, 2), y=torch.zeros(2, 5, 2), image_id=torch.zeros(3)), "image_id"),
    ],
)
def test_metric_bad_input(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        metric = KeypointErrorMetric(**kwargs)
        metric(**call)
