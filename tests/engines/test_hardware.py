"""Where and how long training runs: device names, worker generators, epochs within a time budget."""

import argparse
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_spine.engines.hardware import (
    add_hardware_arguments, budgeted_epochs, epochs_for_budget, plan_epochs, reseed_worker, training_device,
)


@pytest.mark.parametrize("name, expected", [
    (None, "cpu"), ("cpu", "cpu"), (" CPU ", "cpu"), (torch.device("cpu"), "cpu"),
    ("auto", "cuda:0" if torch.cuda.is_available() else "cpu"),
])
def test_training_device_names(name, expected):
    assert str(training_device(name)) == expected


@pytest.mark.parametrize("name, match", [("gpu", "expected 'cpu'"), ("tpu:0", "expected 'cpu'"), ("", "expected 'cpu'")])
def test_training_device_refuses_unknown_names(name, match):
    with pytest.raises(ValueError, match=match):
        training_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_training_device_refuses_a_missing_gpu(name):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        training_device(name)


@pytest.mark.parametrize("per_epoch, budget, max_epochs, min_epochs, expected", [
    (6.5, 300, 100, 1, 46),  # floor(300 / 6.5)
    (6.5, 300, 20, 1, 20),  # capped at max_epochs
    (100.0, 30, 20, 1, 1),  # one epoch even over the budget
    (100.0, 30, 20, 3, 3),
    (0.5, 2.0, 10, 1, 4),
])
def test_epochs_for_budget(per_epoch, budget, max_epochs, min_epochs, expected):
    assert epochs_for_budget(per_epoch, budget, max_epochs, min_epochs) == expected


@pytest.mark.parametrize("args", [(0.0, 10, 5), (-1.0, 10, 5), (float("nan"), 10, 5), (1.0, 0, 5), (1.0, 10, 2, 3)])
def test_epochs_for_budget_refuses_bad_numbers(args):
    with pytest.raises(ValueError, match="epochs_for_budget"):
        epochs_for_budget(*args)


def test_plan_epochs_times_the_trial_and_takes_it_from_the_budget():
    calls = []
    epochs, seconds = plan_epochs(lambda: (calls.append(1), time.sleep(0.05)), budget_s=0.5, max_epochs=100)
    assert calls == [1] and 0.05 <= seconds < 0.2
    # (0.5 - t) / t epochs: 9 at t = 0.05, fewer on a slow machine, never 0
    assert 1 <= epochs <= 9
    assert plan_epochs(lambda: None, budget_s=10.0, max_epochs=7)[0] == 7


class _Draws(torch.utils.data.Dataset):
    def __init__(self):
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor(self.rng.random())


def _epochs(seed, workers=2, n=2):
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(_Draws(), batch_size=2, num_workers=workers, worker_init_fn=reseed_worker,
                                         generator=gen)
    return [torch.cat(list(loader)).tolist() for _ in range(n)]


def test_reseed_worker_gives_new_reproducible_draws_every_epoch():
    first, second = _epochs(0)
    assert first != second  # without reseeding, forked workers repeat the parent's draws every epoch
    assert len(set(first)) == 4  # the two workers draw differently
    assert _epochs(0) == [first, second]  # a seeded loader reproduces them
    assert _epochs(1)[0] != first


def test_reseed_worker_outside_a_worker_does_nothing():
    assert reseed_worker(0) is None


def test_budgeted_epochs_trains_the_trial_into_a_removed_folder():
    seen, said = [], []
    epochs, record = budgeted_epochs(lambda d: seen.append(Path(d)) or Path(d, "x").write_text("1"), 600.0, 5,
                                     log=said.append)
    assert epochs == 5 and record["epochs"] == 5 and record["budget_s"] == 600.0 and record["trial_epoch_s"] >= 0
    assert len(seen) == 1 and not seen[0].exists() and said[0].startswith("one-epoch trial")
    assert budgeted_epochs(lambda d: seen.append(d), 0.0, 7) == (7, {}) and len(seen) == 1  # no budget: no trial


def test_hardware_arguments_defaults_and_values():
    ap = add_hardware_arguments(argparse.ArgumentParser())
    a = ap.parse_args([])
    assert (a.device, a.workers, a.time_budget_s) == ("cpu", 0, 0.0)
    a = ap.parse_args(["--device", "cuda", "--workers", "6", "--time-budget-s", "330"])
    assert (a.device, a.workers, a.time_budget_s) == ("cuda", 6, 330.0)
