"""The spine-strip refiner's network: a vertebra-centre heatmap and a level reading along the whole strip.

A MONAI ``BasicUNet`` sees the straightened strip (``(B, 1, R, W)``) and gives ``1 + embed`` channels: the
centre heatmap's logit and ``embed`` feature channels. The feature channels are averaged over the middle
band of columns (``band_half_width`` either side of the spine), pooled ``pool`` rows at a time, and read
by a bidirectional GRU along the strip, which sees the whole spine at once (the pelvis below L5, the
ribs' end at T12, the neck above T1) and says, for every row, which level it is at (a continuous level
index: 0 at the first level's centre, 1 at the second's, negative above, more than L - 1 below).

Output ``(B, 2, R, W)``: channel 0 the heatmap logits, channel 1 the level index of each row (the same
across the row's columns).
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn.functional as F

__all__ = ["SpineStripNet"]


class SpineStripNet(torch.nn.Module):
    """Heatmap + level network of the spine strip.

    Args:
        features: six ``BasicUNet`` feature sizes.
        embed: feature channels handed to the level reader.
        hidden: GRU hidden size (per direction).
        band_half_width: columns either side of the middle averaged for the level reader.
        pool: rows pooled per GRU step.
        prior_prob: initial heatmap probability (the heatmap bias starts at its logit).
    """

    def __init__(self, features: Sequence[int] = (8, 16, 32, 64, 128, 8), embed: int = 8, hidden: int = 32,
                 band_half_width: int = 24, pool: int = 4, prior_prob: float = 0.01) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        if len(tuple(features)) != 6:
            raise ValueError(f"SpineStripNet: features must be six ints (BasicUNet), got {list(features)}")
        if int(embed) < 1 or int(hidden) < 1 or int(pool) < 1:
            raise ValueError(f"SpineStripNet: embed, hidden and pool must be positive, got {embed}, {hidden}, {pool}")
        self.unet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1 + int(embed), features=tuple(features))
        with torch.no_grad():
            self.unet.final_conv.bias[0].fill_(-math.log((1.0 - prior_prob) / prior_prob))
        self.band_half_width = int(band_half_width)
        self.pool = int(pool)
        self.gru = torch.nn.GRU(int(embed), int(hidden), batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * int(hidden), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"SpineStripNet: expected input (B, 1, R, W), got {tuple(x.shape)}")
        y = self.unet(x)
        rows, width = y.shape[-2:]
        mid = width // 2
        lo, hi = max(0, mid - self.band_half_width), min(width, mid + self.band_half_width + 1)
        seq = y[:, 1:, :, lo:hi].mean(-1)  # (B, E, R)
        seq = F.avg_pool1d(seq, self.pool, ceil_mode=True) if self.pool > 1 else seq
        out, _ = self.gru(seq.transpose(1, 2))  # (B, R / pool, 2H)
        level = self.head(out).transpose(1, 2)  # (B, 1, R / pool)
        level = F.interpolate(level, size=rows, mode="linear", align_corners=False)
        return torch.cat([y[:, :1], level[..., None].expand(-1, -1, -1, width)], 1)
