"""scripts/train_chain_detector.py and scripts/train_spine_strip.py --train-only: a time-budgeted run on tiny films."""

from __future__ import annotations

import json

import pytest

from monai_spine.data.datasets import ensure_synthetic, list_cases


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("syn"), "cervical", n=3, seed=1, hard_case_rate=0.0, size=(512, 512))


def test_detector_trains_the_epochs_that_fit_its_budget(load_script, dataset, tmp_path, capsys):
    out = tmp_path / "det"
    argv = ["--dataset", str(dataset), "--out", str(out), "--region", "cervical", "--spatial", "96", "32",
            "--features", "4", "4", "8", "8", "16", "4", "--epochs", "3", "--time-budget-s", "600"]
    assert load_script("train_chain_detector").main(argv) == 0
    spec = json.loads((out / "detector_model.json").read_text())
    assert (out / "model.pt").is_file() and spec["spatial_size"] == [96, 32] and spec["region"] == "cervical"
    budget = spec["meta"]["time_budget"]
    assert budget["epochs"] == spec["meta"]["epochs"] == 3  # a fast trial: capped at --epochs
    assert budget["trial_epoch_s"] > 0 and spec["meta"]["device"] == "cpu"
    assert spec["meta"]["training_command"].startswith("python scripts/train_chain_detector.py --dataset")
    assert "3 epochs fit 600 s" in capsys.readouterr().out


def test_detector_refuses_a_region_without_films(load_script, dataset, tmp_path):
    with pytest.raises(ValueError):
        load_script("train_chain_detector").main(["--dataset", str(dataset), "--out", str(tmp_path / "d"), "--epochs", "1"])


def test_refiner_train_only_leaves_the_decoding_unchosen(load_script, dataset, tmp_path, capsys):
    det = tmp_path / "det"
    load_script("train_chain_detector").main(["--dataset", str(dataset), "--out", str(det), "--region", "cervical",
                                          "--spatial", "96", "32", "--features", "4", "4", "8", "8", "16", "4",
                                          "--epochs", "1"])
    cases = list_cases(dataset)["cases"]
    split = tmp_path / "split"
    split.mkdir()
    (split / "dataset.json").write_text(json.dumps({"region": "cervical", "training": cases[:2], "validation": cases[2:]}))
    argv = ["--dataset", str(split), "--detector-dir", str(det), "--rows", "128", "--width", "32",
            "--features", "8", "8", "16", "16", "32", "8", "--epochs", "2", "--train-only", "--workers", "2"]
    assert load_script("train_spine_strip").main(argv) == 0
    spec = json.loads((det / "spine_strip_model.json").read_text())
    assert spec["meta"]["epochs"] == 2 and spec["meta"]["num_workers"] == 2 and "decoding_choice" not in spec["meta"]
    assert "decoding not chosen" in capsys.readouterr().out
