"""Smoke test of scripts/bench_speed.py: the quick mode runs and prints every table with its columns."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_speed"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_speed", None)


def _header(text: str, columns) -> bool:
    return ("| " + " | ".join(columns) + " |") in text


def test_quick_run_prints_every_table(bench, tmp_path, capsys):
    out = tmp_path / "b"
    rc = bench.main(["--quick", "--n", "1", "--threads", "1", "--batches", "1,2", "--skip", "train",
                     "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "cores:" in text and "threads" in text and "sizes (quick)" in text
    for cols in (bench.E2E_COLUMNS, bench.SPLIT_COLUMNS, bench.CROP_COLUMNS, bench.MEMORY_COLUMNS):
        assert _header(text, cols), cols
    assert _header((out / "table.md").read_text(), bench.E2E_COLUMNS)
    res = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in res["e2e"]] == ["regressor", "heatmap", "both"]
    assert all(r["optimised s"] > 0 and r["reference s"] > 0 for r in res["e2e"])
    assert {r["impl"].split(" ")[0] for r in res["crops"]} >= {"optimised", "reference"}
    assert {r["stage"] for r in res["split"]} == set(bench.STAGES)
    # the predictions were written like the CLI writes them
    assert (out / "pred-both" / "case_0000.keypoints.json").is_file()


def test_train_rate_of_the_bundle_regressor(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_SPINE_CACHE", str(tmp_path / "cache"))
    row = bench.train_rate("regressor", bench.SIZES["quick"], tmp_path, cached=True, steps=1)
    assert set(bench.TRAIN_COLUMNS) <= set(row)
    assert row["steps"] == 1 and row["batch"] >= 1 and 0.0 <= row["wait_share"] <= 1.0
    text = bench.format_table(bench.TRAIN_COLUMNS, [row])
    assert _header(text, bench.TRAIN_COLUMNS) and "CacheDataset" in text
