"""A CenterNet-style vertebra detector: one centre heatmap per level and a box per centre.

The whole radiograph, resized with its aspect kept and padded to a fixed ``(H, W)`` (see
:mod:`transforms.detection`), goes through a MONAI :class:`~monai.networks.nets.BasicUNet`
(``spatial_dims=2``) whose ``L + 4`` output channels, at the input's resolution, are

* ``0 .. L-1``: heatmap **logits**, one channel per vertebra level of the region (``C3..C7``,
  ``L1..L5``, ``T1..L5``); ``sigmoid`` of a channel peaks at that level's vertebral-body centre;
* ``L .. L+3``: the box around the vertebra, read at its centre pixel, as distances from the centre
  to the box's left, top, right and bottom edges, in fractions of the network input's width (left,
  right) and height (top, bottom).

Since each level has its own channel, a level is found by the argmax of its channel (see
:func:`monai_spine.codecs.detection.decode_detections`); nothing has to be matched or suppressed.
The heatmap biases start at ``logit(prior_prob)`` (CenterNet's focal-loss initialisation), so the
first steps do not drown in background gradients.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.networks.nets import BasicUNet

from monai_spine.codecs.detection import NUM_BOX_CHANNELS

__all__ = ["VertebraDetectorNet", "NUM_BOX_CHANNELS", "DEFAULT_FEATURES"]

#: BasicUNet features of the default detector (five encoder levels, then the last decoder level)
DEFAULT_FEATURES = (16, 16, 32, 64, 128, 16)


class VertebraDetectorNet(torch.nn.Module):
    """Level heatmaps and box sizes from a whole radiograph.

    Args:
        num_levels: L, heatmap channels (levels of the region).
        in_channels: image channels (1 for radiographs).
        features: six BasicUNet feature sizes (encoder levels 0-4, last decoder level).
        norm: BasicUNet normalisation (default instance norm with affine parameters).
        dropout: BasicUNet dropout.
        prior_prob: initial heatmap probability everywhere (sets the heatmap biases to its logit).

    Input ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by 16 (four 2x poolings); output
    ``(B, L + 4, H, W)``: heatmap logits, then box distances (see the module docstring).

    Raises:
        ValueError: ``num_levels < 1``, not six features, or ``prior_prob`` outside (0, 1).
    """

    def __init__(
        self,
        num_levels: int,
        in_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if int(num_levels) < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        feats = tuple(int(f) for f in features)
        if len(feats) != 6 or min(feats) < 1:
            raise ValueError(f"features must be six positive ints (BasicUNet), got {features!r}")
        if not 0.0 < float(prior_prob) < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.num_levels = int(num_levels)
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=int(in_channels),
            out_channels=self.num_levels + NUM_BOX_CHANNELS,
            features=feats,
            norm=norm,
            dropout=dropout,
        )
        with torch.no_grad():
            bias = self.unet.final_conv.bias
            bias[: self.num_levels].fill_(-math.log((1.0 - prior_prob) / prior_prob))
            bias[self.num_levels :].fill_(0.05)  # boxes start small and positive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, L + 4, H, W)``; ``ValueError`` if ``H`` or ``W`` is not divisible by 16."""
        if x.ndim != 4 or x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(
                f"VertebraDetectorNet: expected (B, C, H, W) with H, W divisible by 16, got {tuple(x.shape)}"
            )
        return self.unet(x)
