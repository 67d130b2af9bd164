"""Training checkpoints of the bundle's engines: initialisation, the best model, the resumable training state.

* :func:`init_from_checkpoint`: initialise a model from another checkpoint (cervical -> lumbar), the
  tensors whose shapes match.
* :func:`atomic_torch_save`: ``torch.save`` to a temporary file, then rename (no half-written file).
* :class:`BestModelSaver`: the evaluator's best weights as ``model.pt``, written atomically.
* :class:`TrainStateCheckpoint`: the whole training state (network, optimizer, LR scheduler,
  trainer epoch/iteration, best validation metric) written atomically after every epoch, and
  restored by ``--resume true`` so that a killed run goes on from its last finished epoch.

Checkpoints are always loaded with ``torch.load(weights_only=True)``: a checkpoint file cannot run
code. Prediction loads weights with :func:`monai_spine.inference.model_zoo.load_weights`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from monai_spine.engines.distributed import is_secondary_rank

__all__ = ["init_from_checkpoint", "TRAIN_STATE_FORMAT", "atomic_torch_save", "BestModelSaver", "TrainStateCheckpoint"]

logger = logging.getLogger(__name__)


def init_from_checkpoint(network: torch.nn.Module, checkpoint: str | os.PathLike | None, strict: bool = False) -> None:
    """Initialise ``network`` from a checkpoint of another run (e.g. the cervical model for lumbar).

    Loads with ``torch.load(weights_only=True)``. Accepts a bare state dict or a MONAI
    CheckpointSaver file (``{"network": state_dict, ...}``). Tensors whose shapes differ are skipped
    and reported, and so is the other run's target codec (``codec.*``: this run's is fitted on its own
    training crops). An empty path does nothing.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    if not checkpoint:
        return
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"initial checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]
    own = network.state_dict()
    # the target codec (mean shape, spread) belongs to this run's training data, not to the other run's
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith("codec.")}
    skipped = sorted(set(state) - set(usable))
    if strict and (skipped or set(own) - set(usable)):
        raise ValueError(f"{path}: checkpoint does not match the network (skipped {skipped})")
    network.load_state_dict(usable, strict=False)
    logger.info("initialised %d/%d tensors from %s (skipped: %s)", len(usable), len(own), path, skipped or "none")


#: ``format`` entry of a training-state file (:class:`TrainStateCheckpoint`).
TRAIN_STATE_FORMAT = "monai-spine-train-state"
_TRAIN_STATE_VERSION = 1


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (state dicts without ``module.``)."""
    return network.module if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else network


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``.

    A crash (even SIGKILL) leaves either the previous file or the new one, never a partial file;
    at worst a stray ``.<name>.*.tmp`` file remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class BestModelSaver:
    """Evaluator handler: the network's weights as ``save_dir/filename`` at every new best key metric.

    "Best" is the evaluator's own bookkeeping (``state.best_metric_epoch == state.epoch`` after its
    ``metric_cmp_fn``), so a resumed run that restores the evaluator's best metric only overwrites
    the file on a real improvement. The file is a bare state dict (as MONAI's ``CheckpointSaver``
    writes a single-entry ``save_dict``), written with :func:`atomic_torch_save`; MONAI's saver
    deletes the old file before writing the new one, so a crash in between would lose the best model.
    Only rank 0 writes in a distributed run.

    Args:
        save_dir: output folder.
        network: the model (``DistributedDataParallel`` is unwrapped).
        filename: file name in ``save_dir``.
        spec: the model's :class:`~monai_spine.inference.regressor.RegressorSpec`, written beside
            the weights as ``regressor_model.json`` (a model folder describes itself).
    """

    def __init__(
        self, save_dir: str | os.PathLike, network: torch.nn.Module, filename: str = "model.pt", spec: Any = None
    ) -> None:
        self.path = Path(save_dir) / filename
        self.network = network
        self.spec = spec

    def attach(self, engine: Any) -> None:
        """Save after the evaluator's epoch (its best-metric update runs first: it is registered first)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if is_secondary_rank() or getattr(engine.state, "best_metric_epoch", -1) != engine.state.epoch:
            return
        atomic_torch_save(_unwrap(self.network).state_dict(), self.path)
        if self.spec is not None:
            self.spec.save(self.path.parent)
        logger.info("best %s %s at epoch %d: saved %s", getattr(engine.state, "key_metric_name", "metric"),
                    engine.state.best_metric, engine.state.epoch, self.path)


class TrainStateCheckpoint:
    """Trainer handler: save the full training state after every epoch; optionally resume from it first.

    The file (``path``, written with :func:`atomic_torch_save` after the epoch's LR step and
    validation, by rank 0 only) holds ``{"format", "version", "trainer": {epoch_length, max_epochs,
    iteration}, "network", "optimizer", "lr_scheduler", "evaluator": {best_metric,
    best_metric_epoch}}``: tensors, numbers and strings only, loadable with
    ``torch.load(weights_only=True)``. A run killed at any moment (SIGKILL included) keeps the state
    of its last finished epoch.

    With ``resume``, the state is loaded when the trainer starts (every rank loads it): the trainer
    goes on at the next epoch with the same ``max_epochs``, the optimizer moments, the LR schedule
    and the best validation metric (so ``model.pt`` is only replaced by a better model). Data order
    and augmentation of the remaining epochs are not those an uninterrupted run would have drawn.

    Args:
        path: the training-state file (the bundle's ``ckpt_dir/train_state.pt``).
        network: the model (``DistributedDataParallel`` is unwrapped).
        optimizer: its optimizer.
        lr_scheduler: the LR scheduler stepped by the trainer, if any.
        evaluator: the validation engine whose best metric is kept, if any.
        resume: ``False`` (start afresh, overwrite ``path``), ``True`` (resume; ``path`` must exist)
            or ``"auto"`` (resume when ``path`` exists).
        save_interval: save every N epochs (the last epoch is always saved).

    Raises:
        FileNotFoundError: on start, ``resume=True`` and ``path`` does not exist.
        ValueError: on start, the file is not a training state, or its epoch exceeds ``max_epochs``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        evaluator: Any = None,
        resume: bool | str = False,
        save_interval: int = 1,
    ) -> None:
        if resume not in (True, False, "auto"):
            raise ValueError(f"resume must be true, false or 'auto', got {resume!r}")
        if int(save_interval) < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        self.path = Path(path)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluator = evaluator
        self.resume = resume
        self.save_interval = int(save_interval)
        self.resumed_from_epoch: int | None = None

    def attach(self, engine: Any) -> None:
        """Put this handler last in the trainer's handler list: it must save after the LR step and validation."""
        from ignite.engine import Events

        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def state_dict(self, engine: Any) -> dict[str, Any]:
        """The training state after the trainer's current epoch."""
        ev = self.evaluator.state if self.evaluator is not None else None
        best = getattr(ev, "best_metric", -1) if ev is not None else -1
        if isinstance(best, torch.Tensor):
            best = best.item()
        return {
            "format": TRAIN_STATE_FORMAT,
            "version": _TRAIN_STATE_VERSION,
            "trainer": dict(engine.state_dict()),
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "evaluator": {"best_metric": float(best),
                          "best_metric_epoch": int(getattr(ev, "best_metric_epoch", -1)) if ev is not None else -1},
        }

    def save(self, engine: Any) -> None:
        """Write the state (rank 0) every ``save_interval`` epochs and after the last one."""
        epoch = engine.state.epoch
        if is_secondary_rank() or (epoch % self.save_interval and epoch != engine.state.max_epochs):
            return
        atomic_torch_save(self.state_dict(engine), self.path)
        logger.info("training state of epoch %d saved to %s", epoch, self.path)

    def load(self, engine: Any) -> None:
        """Restore the state into the trainer and its objects (on the trainer's STARTED event)."""
        if not self.path.is_file():
            if self.resume == "auto":
                logger.info("no training state at %s: starting afresh", self.path)
                return
            raise FileNotFoundError(f"cannot resume: training state {self.path} does not exist")
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
            raise ValueError(f"{self.path}: not a monai-spine training state (format {TRAIN_STATE_FORMAT!r})")
        max_epochs = engine.state.max_epochs
        saved = state["trainer"]
        engine.load_state_dict(saved)
        if engine.state.epoch > max_epochs:
            raise ValueError(
                f"{self.path}: the saved state is at epoch {engine.state.epoch}, beyond max_epochs {max_epochs}"
            )
        if saved.get("max_epochs") != max_epochs:
            warnings.warn(f"{self.path}: saved max_epochs {saved.get('max_epochs')} differs from {max_epochs}; "
                          "the restored LR schedule is the saved one", stacklevel=2)
        engine.state.max_epochs = max_epochs
        _unwrap(self.network).load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.evaluator is not None:
            best = state["evaluator"]
            self.evaluator.state.best_metric = best["best_metric"] if math.isfinite(best["best_metric"]) else -1
            self.evaluator.state.best_metric_epoch = int(best["best_metric_epoch"])
        self.resumed_from_epoch = int(engine.state.epoch)
        logger.info("resumed from %s at the end of epoch %d of %d", self.path, engine.state.epoch, max_epochs)
