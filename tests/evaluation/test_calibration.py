"""Tests of monai_spine.evaluation.calibration: thresholds and conformal radii fitted on prediction
files and written beside the model, also through ``monai-spine calibrate`` (:mod:`monai_spine.cli.evaluate`)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from monai_spine.cli.evaluate import add_calibrate_arguments, calibrate_from_args
from monai_spine.evaluation.calibration import (
    CONFORMAL_FILE,
    REPORT_FILE,
    THRESHOLDS_FILE,
    calibrate_from_predictions,
)
from monai_spine.evaluation.matching import collect_errors
from monai_spine.uncertainty.classes import Thresholds
from monai_spine.uncertainty.conformal import ConformalCalibrator
from monai_spine.uncertainty.thresholds import DEFAULT_CONFIDENCE, fit_thresholds


def test_calibrate_from_predictions_writes_files(tmp_path, calibration_set):
    from monai_spine.inference.model_zoo import load_thresholds

    ann_dir, pred_dir = calibration_set(tmp_path)
    models = tmp_path / "models"
    s = calibrate_from_predictions(pred_dir, ann_dir, models, quantile=0.8, min_count=5, alpha=0.2)
    pts = collect_errors(pred_dir, ann_dir)
    expected = fit_thresholds(pts.errors, pts.sigma_frac, pts.point_types, units="frac", quantile=0.8, min_count=5,
                              confidence=DEFAULT_CONFIDENCE)
    thr = load_thresholds(models / THRESHOLDS_FILE)
    assert thr == expected
    assert set(thr.per_point_type) == {"corner", "spinous_process"}
    conf = ConformalCalibrator.load(models / CONFORMAL_FILE)
    assert conf == ConformalCalibrator.fit(pts.errors, pts.sigma_frac, pts.point_types, alpha=0.2, sigma_units="frac")
    report = json.loads((models / REPORT_FILE).read_text())
    assert report["num_points"] == 150 and report["num_cases"] == 6
    assert s["quality_in_sample"]["conformal/coverage"] >= 0.8
    assert report["selections"]["all"]["tau1"] == thr.tau1


def test_calibrate_from_predictions_mm_needs_spacing(tmp_path, write_case, grid):
    ann_dir, pred_dir = write_case(tmp_path, "d", grid(2), grid(2) + 1, np.full((2, 5), 0.01), spacing=None)
    with pytest.raises(ValueError, match="no finite sigma_p in mm"):
        calibrate_from_predictions(pred_dir, ann_dir, tmp_path / "m", sigma_units="mm")
    with pytest.warns(UserWarning, match="pixels"):
        s = calibrate_from_predictions(pred_dir, ann_dir, tmp_path / "m", min_count=1)
    assert s["error_unit"] == "px" and "bounds are pixels" in s["thresholds"]["source"]


def test_calibrate_cli(tmp_path, capsys, calibration_set):
    ann_dir, pred_dir = calibration_set(tmp_path, n_cases=3)
    parser = add_calibrate_arguments(argparse.ArgumentParser())
    parser.set_defaults(func=calibrate_from_args, command="calibrate")  # as the monai-spine parser would
    args = parser.parse_args(
        ["--predictions", str(pred_dir), "--annotations", str(ann_dir), "--ckpt-dir", str(tmp_path / "models"),
         "--sigma-units", "mm", "--quantile", "0.8", "--bounds", "1.0", "2.5", "--alpha", "0.2", "--min-count", "3"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "calibrated on 75 points of 3 cases (errors in mm" in out and "thresholds (mm)" in out
    thr = Thresholds.load(tmp_path / "models" / THRESHOLDS_FILE)
    assert thr.units == "mm" and "1 mm" in thr.source and "2.5 mm" in thr.source and "q80" in thr.source
    assert ConformalCalibrator.load(tmp_path / "models" / CONFORMAL_FILE).alpha == 0.2



def test_calibrate_cli_says_in_words_when_no_class_is_admissible_and_exits_1(tmp_path, capsys, write_case, grid):
    """Errors of 5 mm everywhere: no class keeps 90 % within 1.5 / 2 mm, so calibrate fails in words."""
    from monai_spine.cli import main

    gt = grid(4)
    pred = gt + [25.0, 0.0]  # 25 px * 0.2 mm = 5 mm on every point
    ann_dir, pred_dir = write_case(tmp_path, "bad", gt, pred, np.linspace(0.001, 0.02, 20).reshape(4, 5))
    models = tmp_path / "models"
    code = main(["calibrate", "--predictions", str(pred_dir), "--annotations", str(ann_dir),
                 "--models-dir", str(models), "--min-count", "3"])
    out = capsys.readouterr()
    assert code == 1
    assert "no certain or moderate class can be vouched for" in out.err and "e-324" not in out.out + out.err
    assert "no certain or moderate class can be vouched for" in out.out  # the thresholds line says it too
    thr = Thresholds.load(models / THRESHOLDS_FILE)
    assert thr.source.startswith("no certain or moderate class can be vouched for")
    report = json.loads((models / REPORT_FILE).read_text())
    assert report["failed"] is True and "no certain or moderate class" in report["message"]
