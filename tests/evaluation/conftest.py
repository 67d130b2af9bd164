"""Prediction files and their annotations written for the evaluation tests (matching, calibration).

Annotations ``ann/<stem>.json`` and predictions ``pred/<stem>.keypoints.json`` in the
:class:`~monai_spine.inference.regressor.KeypointPredictor` format, on a grid of hand-placed points.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_spine.data.annotation import SpineAnnotation, write_annotation
from monai_spine.data.keypoints import get_scheme

SCHEME = get_scheme("lateral5")
LEVELS = ["C3", "C4", "C5", "C6", "C7"]


def _write_case(tmp_path, stem, gt, pred, sig_frac, spacing=(0.2, 0.2), visible=None, pred_levels=None,
                image_in_pred=None):
    """An annotation <stem>.json and a prediction <stem>.keypoints.json in the KeypointPredictor format."""
    from monai_spine.inference.regressor import KeypointPrediction, KeypointPredictor

    n = gt.shape[0]
    ann_dir = tmp_path / "ann"
    pred_dir = tmp_path / "pred"
    ann_dir.mkdir(exist_ok=True)
    pred_dir.mkdir(exist_ok=True)
    ann = SpineAnnotation(
        levels=LEVELS[:n], keypoints_px=gt, visible=np.ones(gt.shape[:2], bool) if visible is None else visible,
        region="cervical", scheme="lateral5", image=str(tmp_path / f"{stem}.png"), image_size=(500, 500),
        spacing_mm=spacing, spacing_source="unknown" if spacing is None else "sidecar",
    )
    write_annotation(ann, ann_dir / f"{stem}.json")
    mm_scale = 224 * (0.5 if spacing is None else 1.0)
    sig_mm = np.full_like(sig_frac, np.nan) if spacing is None else sig_frac * mm_scale
    pred_obj = KeypointPrediction(
        keypoints_px=pred, sigma_frac={k: sig_frac for k in ("aleatoric", "epistemic", "total")},
        sigma_mm={k: sig_mm for k in ("aleatoric", "epistemic", "total")},
        classes=np.zeros(pred.shape[:2], int), crop_to_image=np.tile(np.eye(3), (pred.shape[0], 1, 1)),
        spacing_mm=spacing, spacing_source="unknown" if spacing is None else "sidecar",
        meta={"num_samples": 2, "thresholds": None},
    )
    predictor = KeypointPredictor.__new__(KeypointPredictor)  # to_json only needs the scheme
    predictor.scheme = SCHEME
    d = predictor.to_json(pred_obj, pred_levels or LEVELS[:n], image=image_in_pred or ann.image)
    for v in d["vertebrae"]:  # a failed (NaN) prediction is written as null
        for p in v["points"]:
            p.update({k: None for k in ("x_px", "y_px", "x_mm", "y_mm") if p[k] is not None and math.isnan(p[k])})
    name = f"{stem}.keypoints.json" if image_in_pred is None else f"other_{stem}.keypoints.json"
    (pred_dir / name).write_text(predictor.dumps(d))
    return ann_dir, pred_dir


def _grid(n):
    """(n, 5, 2) ground-truth points: x = 50, 70, ..., y = 50, 110, ... (pixels)."""
    return np.stack(np.meshgrid(np.arange(5) * 20.0 + 50, np.arange(n) * 60.0 + 50), -1).astype(float)



def _calibration_set(tmp_path, n_cases=6, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        gt = _grid(5)
        sig = rng.uniform(0.002, 0.012, (5, 5))
        step = sig * 224 / 0.2 / math.sqrt(2)  # per-axis sd in px so that sigma_mm = sigma_frac * 224
        pred = gt + rng.normal(size=gt.shape) * step[..., None] / 2
        ann_dir, pred_dir = _write_case(tmp_path, f"case{i}", gt, pred, sig)
    return ann_dir, pred_dir


@pytest.fixture
def write_case():
    return _write_case


@pytest.fixture
def grid():
    return _grid


@pytest.fixture
def calibration_set():
    return _calibration_set
