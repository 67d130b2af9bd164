"""Pieces the bundle's ignite engines use to train and evaluate the keypoint regressor.

The bundle (``bundle/configs/train.json``) builds MONAI ``SupervisedTrainer`` and
``SupervisedEvaluator`` from these:

* :func:`build_loss`: MSE for Baseline/CBAM, Gaussian NLL (optionally beta-NLL) for BayeCBAM, both
  masked by visibility and computed in the network codec's standardised units.
* :func:`fit_codec`: the target codec (mean shape and per-coordinate spread of the training crops).
* :func:`cache_crops`: every training/validation crop prepared once (the deterministic transforms),
  so a training step costs the network, not the data; :class:`AugmentedBatch` (the trainer's
  ``prepare_batch``) augments each batch of cached crops in one call
  (:class:`monai_spine.transforms.batch.RandZoomFlipKeypointsBatchd`).
* :func:`warmup_cosine`: a per-iteration linear warm-up then cosine learning-rate schedule.
* :class:`RegressorPostprocess`: the evaluator's per-sample post-processing: the network's fractions
  of the crop go back to pixels of the original radiograph through the crop's ``crop_to_image``
  affine, so errors are measured in the original image (in mm with its spacing).
* :func:`sqlite_tracking_uri`: the MLflow tracking URI of a local SQLite store.

Checkpoints (initialisation, the best model, the resumable training state) are
:mod:`monai_spine.engines.checkpoints`. Bundle configs can (``$`` expressions, ``_target_``): run only configs from trusted sources.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from monai_spine.transforms.keypoints import frac_to_image_px

__all__ = [
    "build_loss",
    "fit_codec",
    "cache_crops",
    "AugmentedBatch",
    "warmup_cosine",
    "lower_is_better",
    "RegressorPostprocess",
    "EVAL_KEYS",
    "sqlite_tracking_uri",
    "attach_progress",
    "experiment_params",
    "config_files",
    "log_to_latest_run",
]

logger = logging.getLogger(__name__)

#: keys the post-processing writes to the evaluator output for the metric handlers
EVAL_KEYS = ("pred_px", "gt_px", "gt_visible", "gt_spacing_mm", "gt_image_id")


def build_loss(variant: str, codec: Any = None, beta: float = 0.0) -> torch.nn.Module:
    """Loss of a regressor variant: Gaussian NLL for ``bayecbam``, masked MSE otherwise.

    Args:
        variant: ``baseline``, ``cbam`` or ``bayecbam``.
        codec: the network's :class:`~monai_spine.codecs.regression.KeypointRegressionCodec`; the
            loss is then computed in its standardised units (:class:`~monai_spine.losses.encoded.EncodedLoss`).
        beta: beta-NLL exponent of the BayeCBAM loss (0: the paper's NLL).

    Raises:
        KeyError: unknown variant.
    """
    from monai_spine.losses.encoded import EncodedLoss
    from monai_spine.losses.gaussian_nll import GaussianNLLLoss, MaskedMSELoss

    key = str(variant).lower()
    if key == "bayecbam":
        loss: torch.nn.Module = GaussianNLLLoss(beta=beta)
    elif key in ("baseline", "cbam"):
        loss = MaskedMSELoss()
    else:
        raise KeyError(f"unknown regressor variant {variant!r}; known: ['baseline', 'bayecbam', 'cbam']")
    return loss if codec is None else EncodedLoss(loss, codec)


def cache_crops(items: Sequence[dict], transform: Any, keep_keys: Sequence[str] | None = None) -> list[dict]:
    """Apply the deterministic ``transform`` to every item once (the crop pool of a split).

    MONAI's ``CacheDataset`` stops caching at the first randomizable transform, and the vertebra
    crop is one (it can pad at random); here the crop is used without random padding, so the whole
    chain is cached. Use the result as the ``data`` of a plain ``Dataset`` without a transform.

    Args:
        items: per-vertebra datalist items.
        transform: callable item -> prepared dict (load, crop, intensity scaling, targets).
        keep_keys: keep only these keys of each prepared item (less to collate per batch).

    Raises:
        KeyError: a kept key is missing (names the key and the item's image).
    """
    out = []
    for it in items:
        d = transform(it)
        if keep_keys is not None:
            missing = [k for k in keep_keys if k not in d]
            if missing:
                raise KeyError(f"cache_crops: {missing} not produced for {it.get('image')!r}")
            d = {k: d[k] for k in keep_keys}
        out.append(d)
    return out


def fit_codec(
    items: Sequence[dict],
    transform: Any,
    num_points: int,
    enabled: bool = True,
    flip_prob: float = 0.0,
    flip_perm: Sequence[int] | None = None,
) -> Any:
    """The target codec fitted on the training crops (``enabled=False``: the identity, paper targets).

    Args:
        items: training datalist items.
        transform: callable item -> dict with ``keypoints_frac`` (K, 2) and ``visible`` (K,): the
            validation crop geometry (the mid-range margin), so the mean shape is the no-network
            reference on validation crops.
        num_points: K.
        enabled: fit (True) or return the identity codec.
        flip_prob, flip_perm: the training's flip augmentation; when it flips, the codec is fitted
            on the crops and their mirror images (``x -> 1 - x``, labels permuted), the targets the
            network really sees (a lateral mirror image puts the spinous process on the other side,
            many standard deviations from the unflipped mean).
    """
    from monai_spine.codecs import KeypointRegressionCodec, fit_regression_codec

    if not enabled:
        return KeypointRegressionCodec.identity(num_points)
    kp, vis = [], []
    for it in items:
        d = transform(it)
        kp.append(np.asarray(d["keypoints_frac"], np.float64))
        vis.append(np.asarray(d.get("visible", np.ones(len(kp[-1]), bool)), bool))
    kp_a, vis_a = np.stack(kp), np.stack(vis)
    if float(flip_prob) > 0:
        if flip_perm is None:
            raise ValueError("fit_codec: flip_perm is required when flip_prob > 0")
        perm = np.asarray(flip_perm, np.int64)
        mirrored = kp_a[:, perm].copy()
        mirrored[..., 0] = 1.0 - mirrored[..., 0]
        kp_a, vis_a = np.concatenate([kp_a, mirrored]), np.concatenate([vis_a, vis_a[:, perm]])
    codec = fit_regression_codec(kp_a, vis_a)
    if codec.num_points != int(num_points):
        raise ValueError(f"training crops have {codec.num_points} points, the network {num_points}")
    return codec


class AugmentedBatch:
    """The trainer's ``prepare_batch``: augment a collated batch of cached crops, return ``(image, label)``.

    Args:
        augment: a batch transform of the collated dict (e.g.
            :class:`monai_spine.transforms.batch.RandZoomFlipKeypointsBatchd`), or None for none.
        image_key, label_key: the network input and the target keys.
    """

    def __init__(self, augment: Any = None, image_key: str = "image", label_key: str = "label") -> None:
        self.augment = augment
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, batchdata: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any):
        d = self.augment(batchdata) if self.augment is not None else batchdata
        for k in (self.image_key, self.label_key):
            if k not in d:
                raise KeyError(f"AugmentedBatch: the batch has no {k!r} (keys {sorted(d)})")
        image = torch.as_tensor(d[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        label = torch.as_tensor(d[self.label_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        return image, label


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, final_frac: float = 0.0):
    """``LambdaLR``: linear warm-up over ``warmup_steps`` iterations, then cosine decay to
    ``final_frac`` of the base learning rate at ``total_steps`` (step it every iteration). A run
    shorter than its warm-up warms up over a tenth of the run instead.

    Raises:
        ValueError: ``total_steps < 1`` or a negative warm-up.
    """
    total = int(total_steps)
    warm = int(warmup_steps)
    if total < 1 or warm < 0:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
    if warm >= total:
        warm = total // 10

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        t = min(1.0, (i - warm) / max(1, total - warm))
        return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
    recipe: dict | None = None,
) -> dict[str, Any]:
    """The parameters an MLflow run records (strings and numbers only).

    ``recipe`` (the bundle's ``train#recipe``: optimizer, schedule, target codec, beta-NLL, dropout,
    augmentation) is recorded as given and wins over the defaults.
    """
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
    if recipe:
        params.update({str(k): (v if isinstance(v, (int, float, str)) else str(v)) for k, v in recipe.items()})
    if not dataset_dir and synthetic:
        params.update({f"synthetic_{k}": (str(v) if isinstance(v, (list, tuple)) else v) for k, v in synthetic.items()})
    return params


def config_files(bundle_root: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None) -> list[str]:
    """Files an MLflow training run keeps as artifacts when it ends: the bundle's config files and,
    with ``ckpt_dir``, the best checkpoint ``model.pt`` and its spec ``regressor_model.json``."""
    cfg = Path(bundle_root) / "configs"
    files = sorted(str(p) for p in cfg.glob("*.json")) if cfg.is_dir() else []
    if ckpt_dir:
        files += [str(Path(ckpt_dir) / "model.pt"), str(Path(ckpt_dir) / "regressor_model.json")]
    return files


def log_to_latest_run(tracking_uri: str, experiment_name: str, files: Sequence[str | os.PathLike],
                      artifact_path: str | None = None, skip_prefix: str = "evaluate-") -> str | None:
    """Add ``files`` (those that exist) as artifacts of the experiment's most recent training run
    (the newest run whose name does not start with ``skip_prefix``: evaluations log runs too).

    The demo uses it to keep the calibration files, the test metrics and a few overlays with the
    training run they belong to. Returns the run id, or None when the experiment has no run.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=20)
    runs = [r for r in runs if not (r.info.run_name or "").startswith(skip_prefix)]
    if not runs:
        return None
    run_id = runs[0].info.run_id
    for f in files:
        if Path(f).is_file():
            client.log_artifact(run_id, str(f), artifact_path)
    return run_id
