"""Where a training run runs and for how long: its device, its data workers, its epochs within a time budget.

* :func:`training_device`: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` as a ``torch.device``;
  asking for a GPU that is not there is an error, not a silent CPU run.
* :func:`reseed_worker`: a DataLoader ``worker_init_fn`` that gives each worker of each epoch its own
  NumPy generator (a forked worker would otherwise repeat the parent's augmentations every epoch).
* :func:`epochs_for_budget` / :func:`plan_epochs`: how many epochs fit a wall-clock budget, from a
  timed one-epoch trial run (the project's rule: time one epoch before a long run); :func:`budgeted_epochs`
  runs the trial into a temporary folder for a training script.
* :func:`add_hardware_arguments`: the training scripts' ``--device``, ``--workers`` and ``--time-budget-s``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "training_device", "reseed_worker", "epochs_for_budget", "plan_epochs", "budgeted_epochs", "add_hardware_arguments",
]


def training_device(name: str | torch.device | None = "cpu") -> torch.device:
    """The ``torch.device`` a training run asked for.

    Args:
        name: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (the first GPU when there is one, else the
            CPU), or a ``torch.device``. ``None`` means ``"cpu"``.

    Raises:
        ValueError: an unknown name, or a GPU asked for on a machine without one.
    """
    text = "cpu" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"training device {name!r}: no CUDA GPU on this machine (use 'cpu' or 'auto')")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"training device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    raise ValueError(f"training device {name!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")


def reseed_worker(worker_id: int) -> None:
    """``worker_init_fn``: the worker's dataset draws from ``np.random.default_rng(worker seed)``.

    The worker seed is torch's (``get_worker_info().seed``: the loader's base seed, drawn from its
    generator every epoch, plus the worker id), so a seeded loader gives reproducible and different
    augmentations in every worker and every epoch. The dataset must keep its generator in ``rng``.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:  # called outside a worker: nothing to do
        return
    if not hasattr(info.dataset, "rng"):
        raise ValueError(f"reseed_worker: dataset {type(info.dataset).__name__} has no 'rng' attribute to reseed")
    info.dataset.rng = np.random.default_rng(int(info.seed) % (2**63))


def epochs_for_budget(seconds_per_epoch: float, budget_s: float, max_epochs: int, min_epochs: int = 1) -> int:
    """Epochs that fit ``budget_s`` at ``seconds_per_epoch``, between ``min_epochs`` and ``max_epochs``.

    Example: 6.5 s per epoch and a 300 s budget give 46 epochs (``floor(300 / 6.5)``), or ``max_epochs``
    if that is fewer.

    Raises:
        ValueError: a non-positive epoch time or budget, or ``min_epochs > max_epochs``.
    """
    if not (seconds_per_epoch > 0 and math.isfinite(seconds_per_epoch)):
        raise ValueError(f"epochs_for_budget: seconds_per_epoch must be positive, got {seconds_per_epoch}")
    if not budget_s > 0:
        raise ValueError(f"epochs_for_budget: budget_s must be positive, got {budget_s}")
    if min_epochs > max_epochs:
        raise ValueError(f"epochs_for_budget: min_epochs {min_epochs} > max_epochs {max_epochs}")
    return int(min(max_epochs, max(min_epochs, math.floor(budget_s / seconds_per_epoch))))


def plan_epochs(trial: Callable[[], object], budget_s: float, max_epochs: int) -> tuple[int, float]:
    """Time ``trial`` (a one-epoch run, data loading and warm-up included) and plan the long run after it.

    The trial's time is taken from the budget as well, and the same time is assumed for every epoch of
    the long run (its data loading counted again: a safe over-estimate).

    Returns:
        ``(epochs, trial seconds)``; at least one epoch, at most ``max_epochs``.

    Raises:
        ValueError: a non-positive budget (see :func:`epochs_for_budget`).
    """
    t0 = time.perf_counter()
    trial()
    seconds = max(time.perf_counter() - t0, 1e-6)
    return epochs_for_budget(seconds, max(budget_s - seconds, seconds), max_epochs), seconds


def budgeted_epochs(train_into: Callable[[str], object], budget_s: float, max_epochs: int,
                    log: Callable[[str], None] = print) -> tuple[int, dict[str, Any]]:
    """The epochs of a script's long run: ``max_epochs``, or with a budget as many as :func:`plan_epochs` fits.

    Args:
        train_into: trains one epoch into the folder it is given (a temporary one, removed afterwards).
        budget_s: wall-clock budget of trial and long run, seconds; ``<= 0``: no trial, ``max_epochs``.
        max_epochs: the most epochs.
        log: receives one line on the trial.

    Returns:
        ``(epochs, record)``: the record (``budget_s``, ``trial_epoch_s``, ``epochs``) is for the model's
        meta; empty without a budget.
    """
    if budget_s <= 0:
        return int(max_epochs), {}
    with tempfile.TemporaryDirectory() as trial_dir:
        epochs, trial_s = plan_epochs(lambda: train_into(trial_dir), budget_s, max_epochs)
    log(f"one-epoch trial {trial_s:.0f} s: {epochs} epochs fit {budget_s:.0f} s")
    return epochs, {"budget_s": float(budget_s), "trial_epoch_s": round(trial_s, 1), "epochs": epochs}


def add_hardware_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--device`` (default cpu), ``--workers`` (default 0) and ``--time-budget-s`` (default 0: none)."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes cutting the samples")
    parser.add_argument("--time-budget-s", type=float, default=0.0,
                        help="time a one-epoch trial first and train as many epochs (at most --epochs) as fit this "
                             "wall-clock budget, the trial included (0: exactly --epochs)")
    return parser
