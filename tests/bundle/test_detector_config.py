"""The vertebra detector config run for one tiny epoch over train.json, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
META = str(BUNDLE / "configs" / "metadata.json")
CONFIGS = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "detector_train.json")]

#: a network and data small enough for one epoch in seconds on a CPU (the synthetic set of test_configs.py)
TINY = {
    "epochs": 1,
    "batch_size": 2,
    "val_batch_size": 2,
    "max_cases": 2,
    "synthetic#n": 8,
    "synthetic#size": [256, 256],
    "synthetic#hard_case_rate": 0.25,
    "detector#spatial_size": [64, 64],
    "detector#features": [4, 4, 8, 8, 16, 4],
    "detector#sigma_px": 1.5,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from monai.bundle import run

    root = tmp_path_factory.mktemp("detector")
    run(run_id="training", meta_file=META, config_file=CONFIGS, logging_file=str(BUNDLE / "configs" / "logging.conf"),
        bundle_root=str(BUNDLE), ckpt_dir=str(root / "models"), mlflow_dir=str(root / "mlruns"),
        output_dir=str(root / "eval"), **TINY)
    return root


def test_config_overrides_train_json_instead_of_copying_it():
    d = json.loads((BUNDLE / "configs" / "detector_train.json").read_text())
    assert "train" not in d and "validate" not in d  # sections are changed key by key
    assert d["experiment_name"] == "monai-spine-detector"
    assert {"train#crop_transforms", "train#dataset", "validate#crop_transforms", "validate#key_metric", "loss",
            "network_def", "datalists", "initialize"} <= set(d)


def test_training_stores_checkpoint_and_spec_side_by_side(trained):
    from monai_spine.inference.detector import DetectorSpec, VertebraDetector

    models = trained / "models"
    assert (models / "model.pt").is_file()
    state = torch.load(models / "train_state.pt", weights_only=True)  # resumable after a crash
    assert state["trainer"]["iteration"] >= 1 and "optimizer" in state
    spec = DetectorSpec.load(models)
    assert spec.region == "cervical" and spec.spatial_size == (64, 64) and spec.features == (4, 4, 8, 8, 16, 4)
    assert spec.sigma_px == 1.5 and spec.decode_method == "sequence" and spec.meta["training_images"] == 2
    det = VertebraDetector.from_checkpoint(models)
    assert det.levels == ("C3", "C4", "C5", "C6", "C7")


def test_training_writes_an_mlflow_run_with_detection_metrics(trained):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlruns' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("monai-spine-detector")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["region"] == "cervical" and run.data.params["spatial_size_hw"] == "64x64"
    assert run.data.params["levels"] == "C3,C4,C5,C6,C7" and run.data.params["decode_method"] == "sequence"
    m = run.data.metrics
    assert np.isfinite(m["train_loss_epoch"]) and m["train_loss_epoch"] > 0
    assert m["val_detection_error"] == pytest.approx(m["val_penalised_error_mm"]) and m["val_penalised_error_mm"] > 0
    assert 0.0 <= m["val_recall"] <= 1.0 and m["val_images"] == 1 and m["val_vertebrae"] == 5
    assert m["val_spacing_known"] == 1.0  # synthetic DICOM carries PixelSpacing: errors are in mm
    assert {"val_recall/C3", "val_images_all_found", "val_false_positives_per_image"} <= set(m)
    names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id)}
    assert {"train.json", "detector_train.json", "detector_model.json"} <= names


def test_trained_detector_runs_on_a_radiograph_file(trained):
    from monai_spine.data.datasets import bundle_splits
    from monai_spine.engines.detector import detector_datalists
    from monai_spine.evaluation.detector import evaluate_detector
    from monai_spine.inference.detector import VertebraDetector

    splits = bundle_splits(None, "cervical", 8, 0, 0.25, (256, 256), max_cases=2)
    case = detector_datalists(splits, "cervical")["validation"][0]
    det = VertebraDetector.from_checkpoint(trained / "models")
    res = det.detect_file(case["image"])
    assert res.spacing_source == "PixelSpacing" and res.centres_px.shape == (len(res), 2)
    assert set(res.levels) <= set(det.levels)
    summary, _, rows = evaluate_detector(det, [case])
    assert summary["vertebrae"] == 5 and summary["spacing_known"] == 1.0 and len(rows) == 1
