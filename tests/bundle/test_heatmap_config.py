"""The heatmap (Al Arif et al.) config run for one tiny epoch over train.json, in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
META = str(BUNDLE / "configs" / "metadata.json")
CONFIGS = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "heatmap_train.json")]

#: a network and data small enough for one epoch in seconds on a CPU (the synthetic set of test_configs.py)
TINY = {
    "epochs": 1,
    "batch_size": 2,
    "fcn_width": 2,
    "max_cases": 2,
    "synthetic#n": 8,
    "synthetic#size": [256, 256],
    "synthetic#hard_case_rate": 0.25,
    "patches#size": 32,
    "patches#per_image": 8,
    "patches#grid": [2, 0.1],
    "patches#scales": [2.0],
    "patches#rotations_deg": [0.0],
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from monai.bundle import run

    root = tmp_path_factory.mktemp("heatmap")
    run(run_id="training", meta_file=META, config_file=CONFIGS, logging_file=str(BUNDLE / "configs" / "logging.conf"),
        bundle_root=str(BUNDLE), ckpt_dir=str(root / "models"), mlflow_dir=str(root / "mlruns"),
        output_dir=str(root / "eval"), **TINY)
    return root


def test_config_overrides_train_json_instead_of_copying_it():
    d = json.loads((BUNDLE / "configs" / "heatmap_train.json").read_text())
    assert "train" not in d and "validate" not in d  # sections are changed key by key
    assert d["experiment_name"] == "monai-spine-heatmap"
    assert {"train#crop_transforms", "validate#crop_transforms", "validate#key_metric", "loss", "network_def"} <= set(d)


def test_training_stores_checkpoint_prior_and_spec_side_by_side(trained):
    import torch

    from monai_spine.inference.corners import CornerPrior
    from monai_spine.inference.heatmap import HeatmapModelSpec

    models = trained / "models"
    assert (models / "model.pt").is_file()
    state = torch.load(models / "train_state.pt", weights_only=True)  # resumable after a crash
    assert state["trainer"]["iteration"] >= 1 and "optimizer" in state
    prior = CornerPrior.load(models / "corner_prior.json")
    assert prior.count >= 5 and prior.mean.shape == (4, 2)
    spec = HeatmapModelSpec.load(models)
    assert spec.network["width"] == 2 and spec.out_size == 32 and spec.scales == (2.0,)
    assert 0.6 < spec.size_ratio < 1.0  # synthetic cervical bodies: size about 0.78 x centre spacing
    np.testing.assert_allclose(spec.prior.mean, prior.mean)
    net = spec.build_network()
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True))


def test_training_writes_an_mlflow_run_with_corner_metrics(trained):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlruns' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("monai-spine-heatmap")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["method"] == "alarif2017-probabilistic-spatial-regression"
    assert run.data.params["fcn_width"] == "2" and run.data.params["patch_per_image"] == "8"
    m = run.data.metrics
    assert np.isfinite(m["train_loss_epoch"]) and -2.0 <= m["train_loss_epoch"] <= 0.0
    assert m["val_corner_error"] == pytest.approx(m["val_p2p_mean_mm"]) and m["val_p2p_mean_mm"] > 0
    assert {"val_p2p_median_mm", "val_p2p_std_mm", "val_p2p_fit_failure_3.0mm", "val_p2c_mean_mm"} <= set(m)
    assert np.isfinite(m["val_p2c_mean_mm"])  # synthetic annotations carry body outlines
    assert 0.0 < m["val_bc_mean"] <= 1.0 and m["val_spacing_known"] == 1.0
    names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id)}
    assert {"train.json", "heatmap_train.json", "corner_prior.json", "heatmap_model.json"} <= names


def test_trained_model_localises_clicked_centres(trained):
    from monai_spine.data.datasets import bundle_splits
    from monai_spine.engines.heatmap import heatmap_datalists
    from monai_spine.cli.predict import corners_cli

    splits = bundle_splits(None, "cervical", 8, 0, 0.25, (256, 256), max_cases=2)
    case = heatmap_datalists(splits, "cervical")["validation"][0]
    centres = np.asarray(case["keypoints_px"])[case["select"]][:, :4].mean(1)
    res = corners_cli(case["image"], centres, ckpt_dir=trained / "models", out=trained / "c.json", stream=io.StringIO())
    assert res["spacing_source"] == "PixelSpacing" and len(res["vertebrae"]) == len(centres)
    gt = np.asarray(case["keypoints_px"])[case["select"]][:, :4]
    pred = np.array([[[c["x_px"], c["y_px"]] for c in v["corners"]] for v in res["vertebrae"]])
    assert np.median(np.linalg.norm(pred - gt, axis=-1)) < 10.0  # the learned prior alone is already close
