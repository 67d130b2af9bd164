"""Pieces the bundle's ignite engines use to train and evaluate the keypoint regressor.

The bundle (``bundle/configs/train.json``) builds MONAI ``SupervisedTrainer`` and
``SupervisedEvaluator`` from these:

* :func:`build_loss`: MSE for Baseline/CBAM, Gaussian NLL for BayeCBAM, both masked by visibility.
* :class:`RegressorPostprocess`: the evaluator's per-sample post-processing: the network's fractions
  of the crop go back to pixels of the original radiograph through the crop's ``crop_to_image``
  affine, so errors are measured in the original image (in mm with its spacing).
* :func:`init_from_checkpoint`: initialise a model from another checkpoint (cervical -> lumbar).
* :func:`sqlite_tracking_uri`: the MLflow tracking URI of a local SQLite store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from transforms.keypoints import frac_to_image_px

__all__ = [
    "build_loss",
    "lower_is_better",
    "RegressorPostprocess",
    "EVAL_KEYS",
    "init_from_checkpoint",
    "sqlite_tracking_uri",
    "attach_progress",
    "experiment_params",
    "config_files",
    "load_weights",
    "load_thresholds",
    "distributed_device",
    "init_distributed",
    "destroy_distributed",
    "is_secondary_rank",
]

logger = logging.getLogger(__name__)

#: keys the post-processing writes to the evaluator output for the metric handlers
EVAL_KEYS = ("pred_px", "gt_px", "gt_visible", "gt_spacing_mm", "gt_image_id")


def build_loss(variant: str) -> torch.nn.Module:
    """Loss of a regressor variant: Gaussian NLL for ``bayecbam``, masked MSE otherwise."""
    from monai_spine.losses.gaussian_nll import GaussianNLLLoss, MaskedMSELoss

    key = str(variant).lower()
    if key == "bayecbam":
        return GaussianNLLLoss()
    if key in ("baseline", "cbam"):
        return MaskedMSELoss()
    raise KeyError(f"unknown regressor variant {variant!r}; known: ['baseline', 'bayecbam', 'cbam']")


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class RegressorPostprocess:
    """Evaluator post-processing of one decollated sample (a dict of batch and output keys).

    Reads ``pred`` ((K, 2) fractions, or (K, 4) means and log-variances for BayeCBAM) and the crop's
    ``crop_to_image``; writes ``pred_frac`` (K, 2), ``pred_px`` (K, 2) original-image pixels,
    ``pred_logvar`` (K, 2) when present, ``sigma_frac`` (K,) aleatoric point sigma
    ``sqrt(sx^2 + sy^2)`` in crop fractions, and copies of the ground truth the metrics need under
    :data:`EVAL_KEYS` (MONAI keeps keys that came with the batch out of the engine output, so they
    are copied under new names).

    Args:
        spatial_size: crop size (H, W) the network sees.
        keypoints_key, visible_key, spacing_key, image_id_key: ground-truth keys of the sample.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] = (224, 448),
        keypoints_key: str = "keypoints_px",
        visible_key: str = "visible",
        spacing_key: str = "spacing_mm",
        image_id_key: str = "image_id",
    ) -> None:
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.keys = (keypoints_key, visible_key, spacing_key, image_id_key)

    def __call__(self, data: dict) -> dict:
        if "pred" not in data or "crop_to_image" not in data:
            raise KeyError(f"post-processing needs 'pred' and 'crop_to_image', got keys {sorted(data)}")
        pred = _np(data["pred"]).astype(np.float64)
        if pred.ndim != 2 or pred.shape[-1] not in (2, 4):
            raise ValueError(f"pred must be (K, 2) or (K, 4), got {pred.shape}")
        d = dict(data)
        d["pred_frac"] = torch.as_tensor(pred[:, :2], dtype=torch.float32)
        d["pred_px"] = torch.as_tensor(
            frac_to_image_px(pred[:, :2], _np(data["crop_to_image"]).astype(np.float64), self.spatial_size),
            dtype=torch.float32,
        )
        if pred.shape[-1] == 4:
            d["pred_logvar"] = torch.as_tensor(pred[:, 2:], dtype=torch.float32)
            d["sigma_frac"] = torch.as_tensor(np.sqrt(np.exp(pred[:, 2:]).sum(-1)), dtype=torch.float32)
        kp, vis, sp, img_id = self.keys
        d["gt_px"] = torch.as_tensor(_np(data[kp]), dtype=torch.float32)
        d["gt_visible"] = torch.as_tensor(_np(data[vis]).astype(bool))
        d["gt_spacing_mm"] = torch.as_tensor(_np(data[sp]), dtype=torch.float32)
        d["gt_image_id"] = torch.as_tensor(_np(data[img_id]), dtype=torch.long)
        return d


def lower_is_better(current: float, prev: float) -> bool:
    """Metric comparison for a loss or an error: lower is better.

    MONAI engines start with ``best_metric = -1`` as "no best yet"; a loss can be negative (the
    Gaussian NLL), so the sentinel is tested by equality, not by sign.
    """
    return prev == -1 or current < prev


def init_from_checkpoint(network: torch.nn.Module, checkpoint: str | os.PathLike | None, strict: bool = False) -> None:
    """Initialise ``network`` from a checkpoint of another run (e.g. the cervical model for lumbar).

    Loads with ``torch.load(weights_only=True)``. Accepts a bare state dict or a MONAI
    CheckpointSaver file (``{"network": state_dict, ...}``). Tensors whose shapes differ are skipped
    and reported. An empty path does nothing.

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
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    if strict and (skipped or set(own) - set(usable)):
        raise ValueError(f"{path}: checkpoint does not match the network (skipped {skipped})")
    network.load_state_dict(usable, strict=False)
    logger.info("initialised %d/%d tensors from %s (skipped: %s)", len(usable), len(own), path, skipped or "none")


def sqlite_tracking_uri(store_dir: str | os.PathLike) -> str:
    """``sqlite:///<abs>/mlruns.db`` for an MLflow store in ``store_dir`` (created if missing)."""
    d = Path(store_dir).expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlruns.db'}"


def attach_progress(trainer: Any, enabled: bool = True) -> None:
    """Attach an ignite progress bar (loss shown) to ``trainer`` when ``enabled``."""
    if not enabled:
        return
    from ignite.contrib.handlers import ProgressBar
    from monai.handlers import from_engine

    loss_of = from_engine(["loss"], first=True)
    ProgressBar(persist=True, desc="train").attach(trainer, output_transform=lambda out: {"loss": loss_of(out)})


def experiment_params(
    variant: str,
    region: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    spatial_size: Sequence[int],
    network_width: float,
    dataset_dir: str | None,
    synthetic: dict | None = None,
) -> dict[str, Any]:
    """The parameters an MLflow run records (strings and numbers only)."""
    params: dict[str, Any] = {
        "variant": variant,
        "region": region,
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "learning_rate": float(learning_rate),
        "spatial_size_hw": "x".join(str(int(s)) for s in spatial_size),
        "network_width": float(network_width),
        "dataset": dataset_dir or "synthetic (embedded default)",
        "optimizer": "Adam(0.9, 0.999)",
        "lr_schedule": "cosine annealing",
    }
    if not dataset_dir and synthetic:
        params.update({f"synthetic_{k}": (str(v) if isinstance(v, (list, tuple)) else v) for k, v in synthetic.items()})
    return params


def config_files(bundle_root: str | os.PathLike) -> list[str]:
    """The bundle's config files, logged as MLflow artifacts so a run records its configuration."""
    cfg = Path(bundle_root) / "configs"
    return sorted(str(p) for p in cfg.glob("*.json")) if cfg.is_dir() else []


def load_weights(network: torch.nn.Module, checkpoint: str | os.PathLike) -> torch.nn.Module:
    """Load a bundle checkpoint (``{"model": state_dict}`` or a bare state dict) strictly, weights only.

    Raises:
        FileNotFoundError: no checkpoint at ``checkpoint`` (train first, or pass ``--checkpoint``).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train the bundle first or pass --checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    target = network.module if hasattr(network, "module") else network
    target.load_state_dict(state)
    return network


def load_thresholds(path: str | os.PathLike | None):
    """Uncertainty thresholds stored with the model (``thresholds.json``), else the paper's."""
    from monai_spine.uncertainty.classes import PAPER_THRESHOLDS, Thresholds

    if path and Path(path).is_file():
        return Thresholds.load(path)
    return PAPER_THRESHOLDS


def distributed_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:LOCAL_RANK`` with GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed() -> None:
    """Join the ``torchrun`` process group (NCCL on GPUs, gloo on the CPU) and sync ignite to it."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(distributed_device())
    # ignite sets up its own view of the group lazily, with a collective call: do it here, on every
    # rank at the same point, or a handler present on rank 0 only would deadlock the others
    import ignite.distributed as idist

    idist.sync()


def destroy_distributed() -> None:
    """Leave the process group (no-op outside ``torchrun``)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def is_secondary_rank() -> bool:
    """True in a ``torchrun`` process other than rank 0 (which alone logs, tracks and saves)."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_rank() > 0
