"""Losses of the vertebra detector (:mod:`monai_spine.networks.detector`).

* :func:`heatmap_focal_loss`: CenterNet's penalty-reduced focal loss of heatmap logits;
* :class:`SpineStripLoss`: the spine-strip refiner's loss (focal heatmap loss + level index error);
* :class:`DetectionLoss`: CenterNet's penalty-reduced focal loss (or a squared error) on the level
  heatmaps plus a weighted L1 on the box distances at the centres; the loss of the bundle's
  ``detector_train.json`` (targets from :class:`monai_spine.transforms.detection.CentreHeatmapTargetd`);
* :class:`ChainDetectionLoss`: the ``chain`` detector's loss, :class:`DetectionLoss` on its single
  heatmap and boxes plus the error, in levels, of its level channel
  (:func:`monai_spine.engines.detector.train_chain_detector`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_spine.networks.detector import NUM_BOX_CHANNELS

__all__ = ["heatmap_focal_loss", "SpineStripLoss", "DetectionLoss", "ChainDetectionLoss"]


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss of heatmap logits against Gaussian targets (peaks exactly 1).

    ``-sum[(1-p)^alpha log p]`` at the positives (target == 1) and ``-sum[(1-y)^beta p^alpha log(1-p)]``
    elsewhere, divided by the number of positives (at least 1); ``logits`` and ``target`` of one shape.

    Raises:
        ValueError: the shapes differ.
    """
    if logits.shape != target.shape:
        raise ValueError(f"heatmap_focal_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    logits, y = logits.float(), target.float()
    pos = (y >= 1.0).float()
    p = torch.sigmoid(logits)
    pos_loss = -((1 - p) ** alpha) * F.logsigmoid(logits) * pos
    neg_loss = -((1 - y) ** beta) * (p**alpha) * F.logsigmoid(-logits) * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


class SpineStripLoss(torch.nn.Module):
    """Loss of the spine-strip refiner (:class:`~monai_spine.networks.spine_strip.SpineStripNet`).

    ``forward(pred, target)``: ``pred`` ``(B, 2, R, W)`` (heatmap logits, level index of each row),
    ``target`` ``(B, 3, R, W)`` (heatmap, level index, level mask; the level channels are constant
    along a row). :func:`heatmap_focal_loss` on the heatmap plus ``level_weight`` times the smooth-L1
    error, in levels, of the level index over the masked rows (read in the middle column).
    """

    def __init__(self, level_weight: float = 0.1, alpha: float = 2.0, beta: float = 4.0) -> None:
        super().__init__()
        self.level_weight, self.alpha, self.beta = float(level_weight), float(alpha), float(beta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.ndim != 4 or pred.shape[1] != 2 or target.shape != (pred.shape[0], 3, *pred.shape[2:]):
            raise ValueError(f"SpineStripLoss: expected pred (B, 2, R, W) and target (B, 3, R, W), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        hm = heatmap_focal_loss(pred[:, :1], target[:, :1], self.alpha, self.beta)
        mid = pred.shape[-1] // 2
        mask = target[:, 2, :, mid].float()
        err = F.smooth_l1_loss(pred[:, 1, :, mid].float(), target[:, 1, :, mid].float(), reduction="none")
        return hm + self.level_weight * (err * mask).sum() / mask.sum().clamp(min=1.0)


class DetectionLoss(torch.nn.Module):
    """Heatmap loss plus weighted L1 on the box distances where the target's box mask is set.

    ``forward(pred, target)``: ``pred`` ``(B, L + 4, H, W)`` (heatmap logits, box distances),
    ``target`` ``(B, L + 5, H, W)`` from :class:`monai_spine.transforms.detection.CentreHeatmapTarget`.

    * ``heatmap="focal"``: CenterNet's penalty-reduced focal loss, ``-sum[(1-p)^a log p]`` at the
      positives (target == 1) and ``-sum[(1-y)^b p^a log(1-p)]`` elsewhere, divided by the number of
      positives (at least 1);
    * ``heatmap="mse"``: ``sum (p - y)^2`` divided by the number of positives.

    Args:
        size_weight: weight of the box L1 term (box distances are fractions of the input size).
        heatmap: ``"focal"`` or ``"mse"``.
        alpha, beta: focal loss exponents (CenterNet: 2 and 4).
    """

    def __init__(self, size_weight: float = 5.0, heatmap: str = "focal", alpha: float = 2.0, beta: float = 4.0) -> None:
        super().__init__()
        if heatmap not in ("focal", "mse"):
            raise ValueError(f"heatmap must be 'focal' or 'mse', got {heatmap!r}")
        self.size_weight = float(size_weight)
        self.heatmap = heatmap
        self.alpha = float(alpha)
        self.beta = float(beta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bad = pred.ndim != 4 or target.ndim != 4 or pred.shape[1] <= NUM_BOX_CHANNELS
        if bad or target.shape[1] != pred.shape[1] + 1:
            raise ValueError(f"DetectionLoss: expected pred (B, L+4, H, W) and target (B, L+5, H, W), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.shape[-2:] != target.shape[-2:] or pred.shape[0] != target.shape[0]:
            raise ValueError(f"DetectionLoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
        n_lev = pred.shape[1] - NUM_BOX_CHANNELS
        logits = pred[:, :n_lev].float()
        y = target[:, :n_lev].float()
        if self.heatmap == "focal":
            hm = heatmap_focal_loss(logits, y, self.alpha, self.beta)
        else:
            hm = ((torch.sigmoid(logits) - y) ** 2).sum() / (y >= 1.0).float().sum().clamp(min=1.0)
        mask = target[:, n_lev + NUM_BOX_CHANNELS : n_lev + NUM_BOX_CHANNELS + 1].float()
        l1 = (torch.abs(pred[:, n_lev : n_lev + NUM_BOX_CHANNELS].float() - target[:, n_lev : n_lev + NUM_BOX_CHANNELS])
              * mask).sum() / (NUM_BOX_CHANNELS * mask.sum()).clamp(min=1.0)
        return hm + self.size_weight * l1


class ChainDetectionLoss(torch.nn.Module):
    """Loss of the ``chain`` detector with a level channel.

    ``forward(pred, target)``: ``pred`` ``(B, 2 + 4, H, W)`` (heatmap logit, level logit, box distances),
    ``target`` ``(B, 2 + 5 + 1, H, W)`` from
    :func:`~monai_spine.engines.detector.chain_training_sample`. The heatmap and box terms are
    :class:`DetectionLoss`'s; the level term is the mean absolute error, in levels, of
    ``sigmoid(level logit) * (L - 1)`` inside the level mask, times ``level_weight``.

    Args:
        num_levels: L.
        size_weight: weight of the box L1 term.
        level_weight: weight of the level term (per level of error).
    """

    def __init__(self, num_levels: int, size_weight: float = 5.0, level_weight: float = 0.1) -> None:
        super().__init__()
        if int(num_levels) < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        self.num_levels = int(num_levels)
        self.level_weight = float(level_weight)
        self.base = DetectionLoss(size_weight=size_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.ndim != 4 or pred.shape[1] != 2 + NUM_BOX_CHANNELS or target.shape[1] != 3 + NUM_BOX_CHANNELS + 1:
            raise ValueError(f"ChainDetectionLoss: expected pred (B, 6, H, W) and target (B, 8, H, W), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        base = self.base(torch.cat([pred[:, :1], pred[:, 2:]], 1), torch.cat([target[:, :1], target[:, 2:-1]], 1))
        mask = target[:, -1:].float()
        err = torch.abs(torch.sigmoid(pred[:, 1:2].float()) - target[:, 1:2]) * (self.num_levels - 1)
        return base + self.level_weight * (err * mask).sum() / mask.sum().clamp(min=1.0)
