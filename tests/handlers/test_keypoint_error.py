"""Tests for monai_spine.handlers.keypoint_error on a stub ignite Engine (hand-computed values)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import StatsHandler, from_engine

from monai_spine.handlers.keypoint_error import OUTPUT_KEYS, KeypointErrorHandler

NAN = float("nan")
GT = 10.0


def _batch(offsets, spacing, ids, visible):
    """Batched output dict (lateral5, K=5) with ground truth at (10, 10) and predictions offset from it."""
    off = torch.tensor(offsets, dtype=torch.float64)
    gt = torch.full_like(off, GT)
    return {
        "pred_px": gt + off,
        "keypoints_px": gt,
        "visible": torch.tensor(visible, dtype=torch.bool),
        "spacing_mm": torch.tensor(spacing, dtype=torch.float64),
        "image_id": torch.tensor(ids),
    }


def _outputs(spacing2=((1.0, 1.0), (1.0, 1.0))):
    """Two iterations.

    iteration 1, image 0, spacing 0.5 mm: corners offset (3, 4) -> 2.5 mm, spinous process (6, 8) -> 5 mm;
    iteration 2, image 1 twice, spacing ``spacing2``: sample A corners 0, spinous process invisible;
    sample B corners (0, 1) -> 1, spinous process (3, 4) -> 5.
    """
    it1 = _batch([[[3, 4]] * 4 + [[6, 8]]], [[0.5, 0.5]], [0], [[True] * 5])
    it2 = _batch(
        [[[0, 0]] * 4 + [[99, 99]], [[0, 1]] * 4 + [[3, 4]]],
        [list(s) for s in spacing2],
        [1, 1],
        [[True] * 4 + [False], [True] * 5],
    )
    return [it1, it2]


def _decollate(batch):
    n = batch["pred_px"].shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _run(outputs, handler, name="val_mean_error", epochs=1, extra=None):
    engine = Engine(lambda eng, batch: outputs[(eng.state.iteration - 1) % len(outputs)])
    handler.attach(engine, name)
    for h in extra or ():
        h.attach(engine)
    engine.run(range(len(outputs)), max_epochs=epochs)
    return engine


# points: 2.5 x4, 5 | 0 x4 | 1 x4, 5  -> 14 points, sum 24
EXPECTED_MM = {
    "val_mean_error": 24 / 14,
    "val_mean_mm": 24 / 14,
    "val_count": 14,
    "val_median_mm": 1.0,
    "val_max_mm": 5.0,
    "val_sdr_2.0mm": 8 / 14,
    "val_sdr_2.5mm": 12 / 14,
    "val_sdr_3.0mm": 12 / 14,
    "val_sdr_4.0mm": 12 / 14,
    "val_fit_failure_3.0mm": 2 / 14,
    "val_num_scans": 2,
    # image 0 mean 15 / 5 = 3 (not < 2), image 1 mean 9 / 9 = 1
    "val_scans_below_2.0mm": 0.5,
    "val_corner/count": 12,
    "val_corner/mean_mm": 14 / 12,
    "val_corner/scans_below_2.0mm": 0.5,
    "val_spinous_process/count": 2,
    "val_spinous_process/mean_mm": 5.0,
    "val_spinous_process/sdr_4.0mm": 0.0,
    "val_spinous_process/scans_below_2.0mm": 0.0,
    "val_spacing_known": 1.0,
}

FORMS = {
    "dict of batched tensors": (lambda outs: outs, dict()),
    "list of per-sample dicts": (lambda outs: [_decollate(o) for o in outs], dict()),
    "from_engine tuple of batched": (lambda outs: outs, dict(output_transform=from_engine(list(OUTPUT_KEYS)))),
    "from_engine tuple of lists": (
        lambda outs: [_decollate(o) for o in outs],
        dict(output_transform=from_engine(list(OUTPUT_KEYS))),
    ),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_handler_hand_computed_mm(form):
    make, kwargs = FORMS[form]
    engine = _run(make(_outputs()), KeypointErrorHandler(scheme="lateral5", **kwargs))
    for key, value in EXPECTED_MM.items():
        assert engine.state.metrics[key] == pytest.approx(value), key
    assert engine.state.metric_units["val_mean_error"] == "mm"
    details = engine.state.metric_details["val_mean_error"]
    assert details.shape == (3, 5) and torch.isnan(details[1, 4])
    assert not any(k.endswith("px") for k in engine.state.metrics)


def test_handler_unknown_spacing_reports_px():
    outs = _outputs(spacing2=((NAN, NAN), (NAN, NAN)))
    handler = KeypointErrorHandler(scheme="lateral5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "spacing unknown for 2 of 3 samples"
        engine = _run(outs, handler)
    # in pixels: 5 x4, 10 | 0 x4 | 1 x4, 5 -> sum 39 over 14 points
    assert engine.state.metrics["val_mean_error"] == pytest.approx(39 / 14)
    assert engine.state.metrics["val_mean_px"] == pytest.approx(39 / 14)
    assert engine.state.metrics["val_sdr_2.0px"] == pytest.approx(8 / 14)
    assert engine.state.metrics["val_spacing_known"] == 0.0
    assert engine.state.metric_units["val_mean_error"] == "px" and handler.unit == "px"
    assert not any(k.endswith("mm") for k in engine.state.metrics)


def test_handler_resets_every_epoch():
    engine = _run(_outputs(), KeypointErrorHandler(scheme="lateral5", prefix="ep_"), name="err", epochs=2)
    assert engine.state.epoch == 2
    assert engine.state.metrics["err"] == pytest.approx(24 / 14)
    assert engine.state.metrics["ep_count"] == 14  # not 28: the second epoch started empty
    assert engine.state.metric_details["err"].shape == (3, 5)


def test_handler_minimal_output_without_optional_keys():
    outs = [{"pred_px": torch.tensor([[[3.0, 4.0]] * 4]), "keypoints_px": torch.zeros(1, 4, 2)}]
    engine = _run(outs, KeypointErrorHandler(scheme="ap4", save_details=False), name="e")
    assert engine.state.metrics["e"] == pytest.approx(5.0)
    assert engine.state.metrics["val_spacing_known"] == 0.0  # no spacing key: pixels, said so
    assert "val_num_scans" not in engine.state.metrics  # no image ids: no scan statistics
    assert "e" not in getattr(engine.state, "metric_details", {})


@pytest.mark.parametrize(
    "output,error",
    [
        ({"pred_px": torch.zeros(1, 5, 2)}, KeyError),
        (torch.zeros(1, 5, 2), ValueError),
        ([{"pred_px": torch.zeros(5, 2), "keypoints_px": torch.zeros(4, 2)}], ValueError),
    ],
)
def test_handler_bad_output(output, error):
    with pytest.raises(error):
        _run([output], KeypointErrorHandler(scheme="lateral5"))


def test_handler_metric_names_are_mlflow_valid_and_stats_handler_logs_them(caplog, capsys):
    validation = pytest.importorskip("mlflow.utils.validation")
    stats = StatsHandler(name="kp_stats", iteration_log=False, tag_name="val")
    with caplog.at_level(logging.INFO, logger="kp_stats"):
        engine = _run(_outputs(), KeypointErrorHandler(scheme="lateral5"), extra=[stats])
    for key, value in engine.state.metrics.items():
        validation._validate_metric_name(key)
        assert isinstance(value, float), key
    captured = capsys.readouterr()
    assert "val_sdr_2.0mm: 0.5714" in caplog.text + captured.out + captured.err
