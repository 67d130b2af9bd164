"""Losses of the vertebra detector (:mod:`monai_spine.networks.detector`).

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

__all__ = ["DetectionLoss", "ChainDetectionLoss"]


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
        pos = (y >= 1.0).float()
        num_pos = pos.sum().clamp(min=1.0)
        p = torch.sigmoid(logits)
        if self.heatmap == "focal":
            pos_loss = -((1 - p) ** self.alpha) * F.logsigmoid(logits) * pos
            neg_loss = -((1 - y) ** self.beta) * (p**self.alpha) * F.logsigmoid(-logits) * (1 - pos)
            hm = (pos_loss.sum() + neg_loss.sum()) / num_pos
        else:
            hm = ((p - y) ** 2).sum() / num_pos
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
