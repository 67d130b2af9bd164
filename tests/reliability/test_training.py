"""Crashes and resumption of the bundle's training, and its reproducibility on the CPU.

* a training run killed with SIGKILL in the middle of an epoch resumes (``resume: true``) from the
  state of its last finished epoch, with optimizer, LR scheduler and epoch restored, and ends after
  the same number of epochs;
* the same seed gives the same trained weights.
Runs are tiny (a 1/8-width network on 64 x 128 crops of 256 x 256 synthetic radiographs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monai_spine.engines.checkpoints import TRAIN_STATE_FORMAT

pytestmark = pytest.mark.slow

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
META = str(BUNDLE / "configs" / "metadata.json")
CONFIG = str(BUNDLE / "configs" / "train.json")
EPOCHS = 3

#: as tests/bundle/test_configs.py, without MLflow (its SQLite store takes seconds to create)
TINY = {
    "epochs": EPOCHS,
    "batch_size": 4,
    "network_width": 0.125,
    "fc_features": 32,
    "spatial_size": [64, 128],
    "max_cases": 2,
    "synthetic#n": 8,
    "synthetic#size": [256, 256],
    "synthetic#hard_case_rate": 0.25,
    "train#handler#mlflow#_disabled_": True,
    "validate#handler#mlflow#_disabled_": True,
}


def _overrides(root: Path, **extra) -> dict:
    return {**TINY, "bundle_root": str(BUNDLE), "ckpt_dir": str(root / "models"), "mlflow_dir": str(root / "mlruns"),
            "output_dir": str(root / "eval"), **extra}


def _run(root: Path, **extra) -> None:
    from monai.bundle import run

    run(run_id="training", meta_file=META, config_file=CONFIG, logging_file=str(BUNDLE / "configs" / "logging.conf"),
        **_overrides(root, **extra))


def _state(root: Path) -> dict:
    return torch.load(root / "models" / "train_state.pt", map_location="cpu", weights_only=True)


def _adam_steps(state: dict) -> set[int]:
    return {int(s["step"]) for s in state["optimizer"]["state"].values()}


def test_killed_training_resumes_from_its_last_epoch_and_finishes(tmp_path):
    # 1. a subprocess trains, slowed to 0.3 s per iteration so that the kill lands inside epoch 2 or 3
    args = tmp_path / "args.json"
    slow = "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, lambda e: time.sleep(0.3))"
    args.write_text(json.dumps({**_overrides(tmp_path), "training": [slow, "$@train#trainer.run()"]}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(BUNDLE.parent))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", META, "--config_file", CONFIG,
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--args_file", str(args)]
    proc = subprocess.Popen(cmd, cwd=BUNDLE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = tmp_path / "models" / "train_state.pt"
    try:
        deadline = time.monotonic() + 300
        while not state_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"training ended before its first checkpoint:\n{proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 300 s")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # 2. what the crash left: a complete state of a finished epoch, before the last one
    killed = _state(tmp_path)
    assert killed["format"] == TRAIN_STATE_FORMAT
    done = killed["trainer"]["iteration"] // killed["trainer"]["epoch_length"]
    assert 1 <= done < EPOCHS
    iters = killed["trainer"]["epoch_length"]
    assert _adam_steps(killed) == {done * iters}
    assert killed["lr_scheduler"]["last_epoch"] == done * iters  # the schedule steps every iteration
    assert (tmp_path / "models" / "model.pt").is_file()  # the best model so far survived too

    # 3. resume in this process: it goes on at epoch done + 1 and ends at EPOCHS
    _run(tmp_path, resume=True)
    final = _state(tmp_path)
    assert final["trainer"]["iteration"] == EPOCHS * iters  # no finished epoch lost, none repeated
    assert _adam_steps(final) == {EPOCHS * iters}  # the optimizer's moments were restored, not restarted
    assert final["lr_scheduler"]["last_epoch"] == EPOCHS * iters  # the warm-up/cosine schedule went on
    assert 1 <= final["evaluator"]["best_metric_epoch"] <= EPOCHS
    best = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(best) == set(final["network"])


def test_resume_without_a_state_names_the_missing_file(tmp_path):
    with pytest.raises(RuntimeError) as info:  # the bundle wraps the handler's error
        _run(tmp_path, resume=True, epochs=1)
    cause = info.value.__cause__
    assert isinstance(cause, FileNotFoundError) and "train_state.pt does not exist" in str(cause)


def test_same_seed_gives_the_same_weights(tmp_path):
    _run(tmp_path / "a", epochs=1, seed=3)
    _run(tmp_path / "b", epochs=1, seed=3)
    a, b = _state(tmp_path / "a")["network"], _state(tmp_path / "b")["network"]
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{k} differs between two runs with seed 3")
    # a different seed gives different weights (the comparison above can fail)
    _run(tmp_path / "c", epochs=1, seed=4)
    c = _state(tmp_path / "c")["network"]
    assert any(not torch.allclose(a[k].float(), c[k].float()) for k in a if a[k].is_floating_point())
