"""Every bundle config run once on tiny synthetic data, plus the bundle's verification commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
META = str(BUNDLE / "configs" / "metadata.json")
SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "meta_schema_20240725.json"

#: a network and data small enough for one epoch in seconds on a CPU
TINY = {
    "epochs": 1,
    "batch_size": 4,
    "network_width": 0.125,
    "fc_features": 32,
    "spatial_size": [64, 128],
    "max_cases": 2,
    "synthetic#n": 8,
    "synthetic#size": [256, 256],
    "synthetic#hard_case_rate": 0.25,
}

pytestmark = pytest.mark.slow


def _cfg(*names: str):
    files = [str(BUNDLE / "configs" / n) for n in names]
    return files if len(files) > 1 else files[0]


def _run(config, run_id: str, **overrides) -> None:
    from monai.bundle import run

    run(run_id=run_id, meta_file=META, config_file=config, logging_file=str(BUNDLE / "configs" / "logging.conf"),
        **{**TINY, **overrides})


def _outputs(root: Path, variant: str = "bayecbam") -> dict:
    return {
        "bundle_root": str(BUNDLE),
        "ckpt_dir": str(root / "models"),
        "mlflow_dir": str(root / "mlruns"),
        "output_dir": str(root / "eval"),
        "variant": variant,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    _run(_cfg("train.json"), "training", **_outputs(root))
    return root


def test_training_writes_best_checkpoint_and_an_mlflow_run(trained):
    import mlflow

    assert (trained / "models" / "model.pt").is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlruns' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("monai-spine-regressor")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["variant"] == "bayecbam" and run.data.params["region"] == "cervical"
    metrics = run.data.metrics
    assert np.isfinite(metrics["train_loss_epoch"])
    assert np.isfinite(metrics["val_mean_mm"]) and metrics["val_mean_mm"] > 0
    assert metrics["val_spacing_known"] == 1.0  # synthetic DICOM carries PixelSpacing: errors are in mm
    assert {"val_sdr_2.0mm", "val_scans_below_2.0mm", "val_fit_failure_3.0mm", "val_corner/mean_mm"} <= set(metrics)
    assert "train.json" in {Path(a.path).name for a in client.list_artifacts(run.info.run_id)}


def test_evaluate_config_writes_test_metrics(trained):
    spec = (trained / "models" / "regressor_model.json").read_text()
    _run(_cfg("train.json", "evaluate.json"), "run", **_outputs(trained), epochs=99)
    assert (trained / "models" / "regressor_model.json").read_text() == spec  # evaluating never rewrites the spec
    rows = dict(line.strip().split(",", 1) for line in (trained / "eval" / "metrics.csv").read_text().splitlines())
    assert float(rows["val_mean_mm"]) > 0
    assert float(rows["val_count"]) > 0
    raw = (trained / "eval" / "val_mean_error_raw.csv").read_text().splitlines()
    assert raw[0].startswith("filename") and len(raw) > 1


def test_inference_config_on_annotation_boxes_writes_points_markups_and_overlays(trained):
    out = trained / "predictions"
    _run(_cfg("train.json", "inference.json"), "run_annotated", **{**_outputs(trained), "output_dir": str(out), "mc_samples": 4})
    results = sorted(out.glob("*.keypoints.json"))
    assert results, "no prediction written"
    d = json.loads(results[0].read_text())
    assert d["spacing_source"] == "PixelSpacing"
    pts = [p for v in d["vertebrae"] for p in v["points"]]
    assert len(pts) % 5 == 0 and len(pts) > 0
    assert all(p["uncertainty_class"] in ("certain", "moderately_uncertain", "highly_uncertain") for p in pts)
    assert all(p["sigma_p_epistemic_mm"] > 0 for p in pts)  # T = 4 dropout passes disagree a little
    # mm = px * spacing
    sx, sy = d["spacing_mm"]
    assert pts[0]["x_mm"] == pytest.approx(pts[0]["x_px"] * sx) and pts[0]["y_mm"] == pytest.approx(pts[0]["y_px"] * sy)
    assert (out / results[0].name.replace(".keypoints.json", ".mrk.json")).is_file()
    assert (out / results[0].name.replace(".keypoints.json", ".overlay.png")).is_file()


#: a detector small enough for one epoch in a second (score threshold ~0: every level gets its best peak)
TINY_DETECTOR = {
    "detector#spatial_size": [64, 64],
    "detector#features": [4, 4, 8, 8, 16, 4],
    "detector#sigma_px": 1.5,
    "detector#score_threshold": 1e-6,
    "batch_size": 2,
    "val_batch_size": 2,
    "train#handler#mlflow#_disabled_": True,
    "validate#handler#mlflow#_disabled_": True,
}


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A detector trained here (not the shipped one), for the whole-film inference."""
    root = tmp_path_factory.mktemp("detector")
    _run(_cfg("train.json", "detector_train.json"), "training",
         **{**_outputs(root), "ckpt_dir": str(root / "detector"), **TINY_DETECTOR})
    return root / "detector"


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Unannotated films: the tiny test split's DICOMs (spacing in the header) and one as a PNG (no spacing)."""
    import cv2

    from monai_spine.data.datasets import bundle_splits
    from monai_spine.data.readers import read_xray
    from monai_spine.inference.bundle import split_films

    folder = tmp_path_factory.mktemp("films")
    splits = bundle_splits(None, "cervical", TINY["synthetic#n"], 0, TINY["synthetic#hard_case_rate"],
                           TINY["synthetic#size"], max_cases=TINY["max_cases"])
    dicoms = split_films(splits["test"])
    for f in dicoms:
        (folder / Path(f).name).write_bytes(Path(f).read_bytes())
    img = read_xray(dicoms[0]).array
    png = np.round((img - img.min()) / (img.max() - img.min()) * 65535).astype(np.uint16)
    cv2.imwrite(str(folder / "film_png.png"), png)
    return folder


def test_inference_config_chains_the_detector_on_unannotated_films(trained, detector, films):
    from monai_spine.data.prediction import PREDICTION_FORMAT, read_prediction
    from monai_spine.inference.detector import VertebraDetector

    out = trained / "film_predictions"
    assert not list(films.glob("*.json"))  # no annotation anywhere near the films
    spec = (trained / "models" / "regressor_model.json").read_text()
    _run(_cfg("train.json", "inference.json"), "run", **{**_outputs(trained), "output_dir": str(out), "mc_samples": 4,
                                                         "films": str(films), "detector_dir": str(detector), "epochs": 99})
    assert (trained / "models" / "regressor_model.json").read_text() == spec  # predicting never rewrites the spec
    stems = sorted(f.name.removesuffix(".keypoints.json") for f in out.glob("*.keypoints.json"))
    assert stems == sorted(f.name.rsplit(".", 1)[0] for f in films.iterdir())  # one prediction file per film
    det = VertebraDetector.from_checkpoint(detector)
    for stem in stems:
        film = next(films.glob(f"{stem}.*"))
        pred = read_prediction(out / f"{stem}.keypoints.json")
        assert pred.format == PREDICTION_FORMAT and pred.models == ["regressor"]
        # the boxes are the detector's (threshold ~0: all five levels), not an annotation's
        found = det.detect_file(film)
        assert pred.levels == list(found.levels) == ["C3", "C4", "C5", "C6", "C7"]
        record = json.loads((out / f"{stem}.keypoints.json").read_text())
        np.testing.assert_allclose([v["box_px"] for v in record["vertebrae"]], found.boxes_px)
        ps = pred.point_set("regressor")
        assert ps.keypoints_px.shape == (5, 5, 2) and ps.found.all()
        if film.suffix == ".dcm":
            assert pred.spacing_source == "PixelSpacing"
            p = record["vertebrae"][0]["points"][0]
            assert p["x_mm"] == pytest.approx(p["x_px"] * pred.spacing_mm[0])
        else:  # a PNG without a sidecar: pixels only
            assert pred.spacing_mm is None and record["vertebrae"][0]["points"][0]["x_mm"] is None
        assert (out / f"{stem}.mrk.json").is_file() and (out / f"{stem}.overlay.png").is_file()


def test_inference_config_writes_what_monai_spine_predict_writes(trained, detector, films, tmp_path):
    """The bundle's chain and the CLI's run the same pipeline: the same points and sigmas per film."""
    from monai_spine.data.prediction import read_prediction
    from monai_spine.cli.predict import predict_cli

    _run(_cfg("train.json", "inference.json"), "run", **{**_outputs(trained), "output_dir": str(tmp_path / "bundle"),
                                                         "mc_samples": 4, "films": str(films),
                                                         "detector_dir": str(detector)})
    assert predict_cli([films], tmp_path / "cli", model="regressor", detector_dir=detector, mc_samples=4,
                       regressor_checkpoint=trained / "models" / "model.pt", progress=False,
                       width=TINY["network_width"], fc_features=TINY["fc_features"],
                       spatial_size=TINY["spatial_size"]) == 0
    names = sorted(f.name for f in (tmp_path / "cli").glob("*.keypoints.json"))
    assert names and names == sorted(f.name for f in (tmp_path / "bundle").glob("*.keypoints.json"))
    for name in names:
        a, b = (read_prediction(tmp_path / d / name) for d in ("bundle", "cli"))
        assert a.levels == b.levels
        np.testing.assert_allclose(a.point_set().keypoints_px, b.point_set().keypoints_px)
        np.testing.assert_allclose(a.point_set().sigma_p_frac["total"], b.point_set().sigma_p_frac["total"])


def test_inference_config_refuses_a_detector_of_another_region(trained, detector, films, tmp_path):
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the component's error
        _run(_cfg("train.json", "inference.json"), "run", **{**_outputs(trained), "output_dir": str(tmp_path),
                                                             "films": str(films), "detector_dir": str(detector),
                                                             "region": "lumbar"})
    cause = err.value.__cause__
    assert isinstance(cause, ValueError) and "trained for region 'cervical', the regressor for 'lumbar'" in str(cause)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("variant", ["baseline", "cbam"])
def test_other_variants_train_one_epoch(tmp_path, variant):
    _run(_cfg("train.json"), "training", **_outputs(tmp_path, variant))
    assert (tmp_path / "models" / "model.pt").is_file()


def test_lumbar_model_initialised_from_the_cervical_one(trained, tmp_path):
    import torch

    _run(_cfg("train.json"), "training", **_outputs(tmp_path), region="lumbar",
         init_checkpoint=str(trained / "models" / "model.pt"), epochs=1, learning_rate=0.0)
    # CheckpointSaver stores a single-entry save_dict as the bare state dict
    cervical = torch.load(trained / "models" / "model.pt", weights_only=True)
    lumbar = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    # learning rate 0: the lumbar weights are exactly the cervical ones they started from ...
    for k in cervical:
        if not k.startswith("codec."):
            torch.testing.assert_close(lumbar[k], cervical[k])
    # ... but the target codec is the lumbar crops' own (fitted, not copied)
    assert not torch.allclose(lumbar["codec.mean_frac"], cervical["codec.mean_frac"])


def test_verify_metadata_against_the_offline_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"schema {SCHEMA} absent")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=META, filepath=str(SCHEMA))


def test_verify_net_in_out_at_the_metadata_shape():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=META, config_file=_cfg("train.json"), network_width=0.125,
                      fc_features=32, bundle_root=str(BUNDLE))


#: (metadata files merged in order, config files, the config's input size of the network, tiny overrides)
MODELS = [
    (["metadata.json"], ["train.json"], "$@spatial_size", {"network_width": 0.125, "fc_features": 32}),
    (["metadata.json", "detector_metadata.json"], ["train.json", "detector_train.json"], "$@detector#spatial_size",
     {"detector#features": [4, 4, 8, 8, 16, 4], "detector_spec#meta": {}}),
    (["metadata.json", "heatmap_metadata.json"], ["train.json", "heatmap_train.json"], "$[@patches#size] * 2",
     {"fcn_width": 4}),
]


@pytest.mark.parametrize("metas", [m[0] for m in MODELS])
def test_verify_metadata_of_every_model_against_the_offline_schema(metas):
    if not SCHEMA.is_file():
        pytest.skip(f"schema {SCHEMA} absent")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=[str(BUNDLE / "configs" / m) for m in metas], filepath=str(SCHEMA))


@pytest.mark.parametrize("metas,configs,size_expr,tiny", MODELS)
def test_metadata_describes_each_models_default_input_and_verifies_its_network(metas, configs, size_expr, tiny):
    from monai.bundle import ConfigParser, verify_net_in_out

    meta_files = [str(BUNDLE / "configs" / m) for m in metas]
    config_files = [str(BUNDLE / "configs" / c) for c in configs]
    parser = ConfigParser()
    parser.read_config(config_files)
    parser.read_meta(meta_files)
    parser["input_size"] = size_expr
    fmt = parser["_meta_#network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == list(parser.get_parsed_content("input_size"))
    verify_net_in_out(net_id="network_def", meta_file=meta_files, config_file=config_files, device="cpu",
                      bundle_root=str(BUNDLE), **tiny)


@pytest.mark.parametrize("meta", ["detector_metadata.json", "heatmap_metadata.json"])
def test_model_metadata_overrides_only_what_describes_its_network(meta):
    own = json.loads((BUNDLE / "configs" / meta).read_text())
    base = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert set(own) <= {"name", "task", "description", "image_classes", "label_classes", "pred_classes", "eval_metrics",
                        "network_data_format"} <= set(base)
    assert own["name"] != base["name"] and own["network_data_format"] != base["network_data_format"]


def test_ckpt_export_to_torchscript(trained, tmp_path):
    import torch
    from monai.bundle import ckpt_export

    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(trained / "models" / "model.pt"),
                meta_file=META, config_file=_cfg("train.json"), use_trace=True, input_shape=[1, 1, 64, 128],
                **{k: TINY[k] for k in ("network_width", "fc_features", "spatial_size")}, bundle_root=str(BUNDLE))
    model = torch.jit.load(str(ts))
    out = model(torch.rand(2, 1, 64, 128))
    assert tuple(out.shape) == (2, 5, 4)


#: a gloo worker on a loaded 2-core machine sometimes aborts in C++ (SIGABRT, this line on stderr) while
#: the other rank is still starting; seen in about 2 of 7 runs. One retry on exactly this signature, in a
#: fresh folder and port; any other failure, or the abort twice, still fails the test.
GLOO_ABORT = "terminate called without an active exception"


def test_multi_gpu_config_trains_with_two_gloo_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for attempt, port in enumerate(("29517", "29527")):
        out = tmp_path / f"run{attempt}"
        overrides = {**TINY, **_outputs(out)}
        args = []
        for k, v in overrides.items():
            args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               "-m", "monai.bundle", "run", "training", "--meta_file", META,
               "--config_file", json.dumps(_cfg("train.json", "multi_gpu_train.json")).replace('"', "'"),
               "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *args]
        proc = subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 or GLOO_ABORT not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "models" / "model.pt").is_file()


def test_dataset_dir_of_the_project_format_and_tracking_mlflow(tmp_path):
    """A folder written by `monai-spine synth` trains unchanged via --dataset_dir; --tracking mlflow works too."""
    from monai.bundle import run

    from monai_spine.data.synthetic import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, region="lumbar", n=5, seed=7, size=(256, 256))
    overrides = {**TINY, **_outputs(tmp_path), "dataset_dir": str(data), "region": "lumbar"}
    run(run_id="training", meta_file=META, config_file=_cfg("train.json"), tracking="mlflow",
        tracking_uri=f"sqlite:///{tmp_path / 'tracking.db'}", **overrides)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "tracking.db").is_file()


def test_paper_override_trains_with_the_papers_targets_and_schedule(tmp_path):
    """paper.json: fraction targets (identity codec), no warm-up, epoch-level cosine, plain CBAM."""
    import torch

    _run(_cfg("train.json", "paper.json"), "training", **_outputs(tmp_path), **{"train#handler#mlflow#_disabled_": True,
                                                                             "validate#handler#mlflow#_disabled_": True})
    assert not (tmp_path / "mlruns" / "mlruns.db").exists()  # both MLflow handlers were disabled by name
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert torch.all(state["codec.mean_frac"] == 0) and torch.all(state["codec.scale_frac"] == 1)
    spec = json.loads((tmp_path / "models" / "regressor_model.json").read_text())
    assert spec["cbam_unit_gain"] is False and spec["dropout"] == 0.5


def test_recipe_checkpoint_carries_a_fitted_codec_and_its_spec(trained):
    import torch

    from monai_spine.inference.regressor import KeypointPredictor

    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    scale = state["codec.scale_frac"]
    assert scale.shape == (5, 2) and torch.all(scale < 0.5) and not torch.all(state["codec.mean_frac"] == 0)
    pred = KeypointPredictor.from_checkpoint(trained / "models")
    assert pred.spatial_size == tuple(TINY["spatial_size"]) and pred.spec.variant == "bayecbam"
