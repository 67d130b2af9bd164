"""The ``monai-spine`` command: subcommands on tiny synthetic data, and clean errors."""

from __future__ import annotations

import json

import pytest

from monai_spine.cli import main


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--region", "lumbar", "--n", "2", "--out", str(out), "--seed", "3", "--size", "128"]) == 0
    return out


def test_synth_writes_dicom_annotations_and_index(synth_dir):
    assert len(list(synth_dir.glob("*.dcm"))) == 2
    index = json.loads((synth_dir / "dataset.json").read_text())
    assert index["region"] == "lumbar" and len(index["data"]) == 2


def test_overlay_draws_one_png_per_case(synth_dir, tmp_path):
    assert main(["overlay", str(synth_dir), "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_measure_writes_json_and_csv_from_annotations(synth_dir, tmp_path):
    labels = sorted(str(p) for p in synth_dir.glob("case_*.json"))
    assert main(["measure", *labels, "--out", str(tmp_path), "--num-samples", "10"]) == 0
    assert (tmp_path / "measurements.json").is_file() and (tmp_path / "measurements.csv").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["overlay", "/nonexistent/folder", "--out", "x"], "does not exist"),
        (["measure", "/nonexistent/case.json", "--out", "x"], "case.json"),
        (["predict", "/nonexistent/xray.dcm", "--out", "x", "--detector-dir", "/nonexistent/det"], "nonexistent"),
        (["corners", "/nonexistent/xray.png", "--centres", "10,20;10,60", "--ckpt-dir", "/nonexistent/m"], "nonexistent"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.slow
def test_demo_trains_calibrates_evaluates_and_predicts_on_tiny_settings(tmp_path, capsys):
    from monai_spine.engines.demo import run_demo

    tiny = {"batch_size": 4, "network_width": 0.125, "fc_features": 32, "spatial_size": [64, 128],
            "synthetic#size": [256, 256], "show_progress": False}
    assert run_demo(out=tmp_path, epochs=1, n=10, extra_overrides=tiny) == 0
    out = capsys.readouterr().out
    assert "MLflow store" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    # the shipped cervical regressor is framed from the centres, and the demo says how it was fed
    assert "shipped model on the demo's" in out and "(spine-frame boxes around the annotated centres)" in out
    assert (tmp_path / "models" / "model.pt").is_file()
    thresholds = json.loads((tmp_path / "models" / "thresholds.json").read_text())
    assert thresholds["tau1"] < thresholds["tau2"]
    preds = list((tmp_path / "predictions").glob("*.keypoints.json"))
    assert preds and json.loads(preds[0].read_text())["thresholds"]["tau1"] == thresholds["tau1"]
    assert list((tmp_path / "predictions").glob("*.overlay.png"))
    # MLflow keeps the model, its spec, the calibration and the test metrics with the training run
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlruns.db'}")
    exp = client.get_experiment_by_name("monai-spine-regressor")
    train_runs = [r for r in client.search_runs([exp.experiment_id]) if not r.info.run_name.startswith("evaluate-")]
    assert len(train_runs) == 1
    run = train_runs[0]
    assert run.data.params["fc_features"] == "32" and run.data.params["codec_targets"] == "True"
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    results = {a.path for a in client.list_artifacts(run.info.run_id, "results")}
    assert {"model.pt", "regressor_model.json", "train.json"} <= top
    assert {"results/thresholds.json", "results/conformal.json", "results/metrics.csv"} <= results


def test_convert_subcommand_runs_the_converter(tmp_path, capsys):
    from monai_spine.cli import main

    # a folder with no BUU-LSPINE annotation: the batch converter reports it and exits 1
    (tmp_path / "empty").mkdir()
    rc = main(["convert", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--format", "buu-lspine"])
    assert rc == 1
    assert "no buu-lspine annotation" in capsys.readouterr().err
