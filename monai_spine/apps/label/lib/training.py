"""The Label app's training task, free of MONAI Label: fine-tune the regressor on the submitted labels.

The only module of the Label app that imports training code (:mod:`monai_spine.engines`, for the
regressor's loss; ``tests/test_layering.py`` checks it).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from monai_spine.apps.label.lib.core import LabelAppConfig, LabelAppError

__all__ = ["finetune_regressor"]


def _crop_samples(items: Sequence[tuple[str, Any]], spatial_size: Sequence[int], margin_mm: float,
                  num_points: int | None = None, predictor: Any = None) -> tuple[Any, Any, list[str]]:
    """Per-vertebra crops ``(B, 1, H, W)`` and targets ``(B, K, 3)`` (fractions + visibility) of labelled images.

    A label with another number of points per vertebra than ``num_points`` (another keypoint scheme),
    or whose image or crops fail, is skipped, not fatal. A ``predictor`` with a box rule (a model
    trained in spine-frame boxes around the vertebra centres) gets its own framing around the labelled
    centres (:meth:`~monai_spine.inference.regressor.KeypointPredictor.annotation_boxes`), not the
    keypoints' box: fine-tuning must show the model the crops it will be fed.

    Returns:
        ``(x, y, skipped)``; ``x``/``y`` None when nothing is usable; ``skipped``: ``"<image>: <reason>"``.
    """
    import torch
    from monai.transforms import Compose, ScaleIntensityRangePercentilesd

    from monai_spine.data.readers import read_xray
    from monai_spine.losses.gaussian_nll import pack_targets
    from monai_spine.transforms.crop import VertebraCropd

    crop = Compose([
        VertebraCropd(keys="image", spatial_size=tuple(spatial_size), margin_mm=margin_mm),
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
    ])
    xs, ys, vs, skipped = [], [], [], []
    for image_path, ann in items:
        label = os.path.basename(str(image_path))
        k = int(np.asarray(ann.keypoints_px).shape[1])
        if num_points is not None and k != num_points:
            skipped.append(f"{label}: scheme {getattr(ann, 'scheme', '?')!r} has {k} points per vertebra, "
                           f"the model {num_points}")
            continue
        try:
            img = read_xray(image_path)
            sp = np.full(2, np.nan, np.float32) if img.spacing_mm is None else np.asarray(img.spacing_mm, np.float32)
            mine = []
            boxes = ann.boxes_px if ann.boxes_px is not None else np.full((len(ann.levels), 4), np.nan)
            angles = np.zeros(len(ann.levels))
            if getattr(predictor, "box_rule", None) is not None:
                boxes, angles = predictor.annotation_boxes(ann)
            for i in range(len(ann.levels)):
                vis = np.asarray(ann.visible[i], bool)
                if vis.sum() < 2:
                    continue
                d = crop({"image": img.channel_first(), "keypoints_px": ann.keypoints_px[i].astype(np.float32),
                          "visible": vis, "box_px": np.asarray(boxes[i], np.float32), "spacing_mm": sp,
                          "box_angle_rad": float(angles[i])})
                mine.append((torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32),
                             np.nan_to_num(np.asarray(d["keypoints_frac"], dtype=np.float32)), vis))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            skipped.append(f"{label}: {type(e).__name__}: {e}")
            continue
        for x_i, y_i, v_i in mine:
            xs.append(x_i)
            ys.append(y_i)
            vs.append(v_i)
    if not xs:
        return None, None, skipped
    x = torch.stack(xs)
    y = pack_targets(torch.as_tensor(np.stack(ys)), torch.as_tensor(np.stack(vs)))
    return x, y, skipped


def finetune_regressor(config: LabelAppConfig, items: Sequence[tuple[str, Any]], epochs: int | None = None,
                       lr: float | None = None, batch_size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Fine-tune the bundle's regressor on labelled images and replace ``<models>/model.pt`` atomically.

    The previous weights are kept as ``<models>/model.previous.pt``. Inference picks the new weights
    up on its next request (:class:`ModelStore` watches the file).

    Args:
        config: the app configuration (network shape, crop size and margin, model folder).
        items: ``(image_path, SpineAnnotation)`` pairs (the labels submitted so far).
        epochs, lr, batch_size: training settings (default: the configuration's).
        seed: torch seed (dropout, shuffling).

    Returns:
        Statistics: ``epochs``, ``images`` (given), ``samples`` (vertebra crops), ``loss`` per epoch,
        ``checkpoint``, ``seconds``, ``skipped`` (labels not used and why: another scheme, unreadable).

    Raises:
        LabelAppError: no usable label.
    """
    import torch

    from monai_spine.engines.regressor import build_loss
    from monai_spine.inference.regressor import KeypointPredictor

    t0 = time.time()
    epochs = int(epochs or config.train_epochs)
    lr = float(lr or config.train_lr)
    bs = max(1, int(batch_size or config.train_batch_size))
    det_region = None
    if config.region is None:
        from monai_spine.inference.detector import DetectorSpec

        det_region = DetectorSpec.load(config.detector_dir).region
    ckpt = config.regressor_checkpoint
    pred = KeypointPredictor.from_checkpoint(ckpt, **config.regressor_kwargs(config.region or det_region))
    net = pred.network
    x, y, skipped = _crop_samples(items, config.spatial_size, config.margin_mm, pred.scheme.num_points, pred)
    if x is None:
        raise LabelAppError("training: no labelled vertebra with at least two visible points"
                            + (f" (skipped: {'; '.join(skipped)})" if skipped else ""))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loss_fn = build_loss(config.variant)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            if len(idx) < 2 and len(x) >= 2:  # batch norm needs two samples
                idx = perm[max(0, i - 1) : i + bs]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        losses.append(total / len(x))
    net.eval()
    tmp = ckpt.with_name(f".{ckpt.name}.tmp-{os.getpid()}")
    torch.save(net.state_dict(), tmp)
    if ckpt.is_file():
        import shutil

        prev = ckpt.with_name("model.previous.pt")
        shutil.copy2(ckpt, prev.with_name(f".{prev.name}.tmp-{os.getpid()}"))
        os.replace(prev.with_name(f".{prev.name}.tmp-{os.getpid()}"), prev)
    os.replace(tmp, ckpt)
    return {"epochs": epochs, "images": len(items), "samples": int(len(x)), "loss": losses, "skipped": skipped,
            "checkpoint": str(ckpt), "seconds": round(time.time() - t0, 3), "lr": lr, "batch_size": bs}
