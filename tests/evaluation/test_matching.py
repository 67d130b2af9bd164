"""Tests of monai_spine.evaluation.matching: prediction files matched to annotations, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_spine.evaluation.matching import collect_errors


def test_collect_errors_hand_computed(tmp_path, write_case, grid):
    gt = grid(2)
    pred = gt.copy()
    pred[0, 0, 0] += 5.0  # 5 px * 0.2 mm = 1 mm
    pred[1, 4] += [3.0, 4.0]  # 5 px -> 1 mm
    pred[1, 2] = np.nan  # failed prediction -> inf
    vis = np.ones((2, 5), bool)
    vis[0, 3] = False  # not counted
    sig = np.full((2, 5), 0.01)
    sig[1, 4] = 0.03
    ann_dir, pred_dir = write_case(tmp_path, "a", gt, pred, sig, visible=vis)
    pts = collect_errors(pred_dir, ann_dir)
    assert pts.error_unit == "mm" and pts.errors.size == 9
    assert pts.errors[0] == pytest.approx(1.0)
    assert pts.errors[-1] == pytest.approx(1.0) and pts.point_types[-1] == "spinous_process"
    assert pts.point_names.tolist()[:4] == ["AS", "PS", "AI", "SP"]  # PI of C3 invisible
    assert np.isinf(pts.errors[pts.point_names.tolist().index("AI", 4)])
    assert pts.sigma_frac[-1] == pytest.approx(0.03) and pts.sigma_mm[-1] == pytest.approx(0.03 * 224)
    assert set(pts.levels.tolist()) == {"C3", "C4"}


def test_collect_errors_matching_and_units(tmp_path, write_case, grid):
    gt = grid(3)
    pred = gt + 1.0
    sig = np.full((3, 5), 0.01)
    # a prediction with an unrelated file name matched through its image path; one level not annotated
    write_case(tmp_path, "b", gt[:2], pred[:2], sig[:2], image_in_pred=str(tmp_path / "b.png"))
    ann_dir, pred_dir = write_case(tmp_path, "c", gt, pred, sig, spacing=None, pred_levels=["C3", "C4", "T1"])
    with pytest.warns(UserWarning, match="unknown for 1 of 2"):
        pts = collect_errors(pred_dir, ann_dir)
    assert pts.error_unit == "px"
    np.testing.assert_allclose(pts.errors, math.sqrt(2))
    assert pts.errors.size == 10 + 10  # b: 2 vertebrae; c: C3, C4 (T1 has no annotation)
    assert np.isnan(pts.sigma_mm[pts.cases == str(pred_dir / "c.keypoints.json")]).all()
    with pytest.raises(ValueError, match="unknown for 1 of 2"):
        collect_errors(pred_dir, ann_dir, on_mixed_spacing="raise")
    # an orphan prediction is an error naming the file
    (pred_dir / "zzz.keypoints.json").write_text((pred_dir / "c.keypoints.json").read_text().replace("c.png", "z.png"))
    with pytest.raises(ValueError, match="zzz.keypoints.json: no matching annotation"):
        collect_errors(pred_dir, ann_dir)
    with pytest.raises(FileNotFoundError):
        collect_errors(tmp_path / "nope", ann_dir)
