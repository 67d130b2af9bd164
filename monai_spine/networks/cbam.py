"""Convolutional Block Attention Module (CBAM, Woo et al., ECCV 2018) for 2D feature maps.

CBAM refines a feature map ``F`` of shape ``(B, C, H, W)`` in two steps:

1. channel attention ``Mc`` of shape ``(B, C, 1, 1)`` from a shared MLP applied to the spatially
   average-pooled and max-pooled features, ``F' = Mc * F``;
2. spatial attention ``Ms`` of shape ``(B, 1, H, W)`` from a ``k x k`` convolution of the
   channel-wise average and maximum of ``F'`` (stacked in that order), ``F'' = Ms * F'``.

This is the attention used by the BayeRegX keypoint regressors (Baseline + CBAM, Baseline + BayeCBAM,
paper section 3.2.2, eqs. 3-6).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM"]


def _check_feature_map(x: torch.Tensor, channels: int | None, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got shape {tuple(x.shape)}")


class ChannelAttention(nn.Module):
    """Channel ("spectral") attention map ``Mc`` of CBAM.

    ``Mc = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))`` (Woo et al. 2018, eq. 2), where the pools run
    over the spatial axes and the MLP (``C -> C // reduction -> C`` with a ReLU between, biases on) is
    shared by both branches.

    The BayeRegX paper (eq. 3) writes the *sum of two sigmoids*,
    ``Mc = sigmoid(MLP(AvgPool(F))) + sigmoid(MLP(MaxPool(F)))``, whose values lie in (0, 2) rather
    than (0, 1). That variant is available with ``paper_eq3=True``; the default follows the original
    CBAM definition.

    Args:
        channels: C, number of channels of the input feature map.
        reduction: reduction ratio r of the MLP's hidden layer, ``hidden = max(1, C // r)``.
        paper_eq3: use the BayeRegX eq. 3 form (sum of two sigmoids) instead of the sigmoid of the sum.
    """

    def __init__(self, channels: int, reduction: int = 16, paper_eq3: bool = False) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1, got channels={channels}, reduction={reduction}")
        self.channels = int(channels)
        self.hidden = max(1, self.channels // int(reduction))
        self.paper_eq3 = bool(paper_eq3)
        self.mlp = nn.Sequential(
            nn.Linear(self.channels, self.hidden), nn.ReLU(inplace=True), nn.Linear(self.hidden, self.channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the attention map ``Mc``, shape ``(B, C, 1, 1)``, for ``x`` of shape ``(B, C, H, W)``."""
        _check_feature_map(x, self.channels, "ChannelAttention")
        avg = self.mlp(x.mean(dim=(2, 3)))
        mx = self.mlp(x.amax(dim=(2, 3)))
        att = torch.sigmoid(avg) + torch.sigmoid(mx) if self.paper_eq3 else torch.sigmoid(avg + mx)
        return att[:, :, None, None]


class SpatialAttention(nn.Module):
    """Spatial attention map ``Ms = sigmoid(conv_kxk([mean_c(F); max_c(F)]))`` of CBAM.

    The convolution maps the 2 stacked maps (channel-wise mean first, then maximum) to one map with
    zero padding ``k // 2`` (so the size is kept) and no bias, as in the reference CBAM code (which
    follows it with a batch norm; this module does not, matching the papers' equations).

    Args:
        kernel_size: k, odd; 7 in CBAM and BayeRegX.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.kernel_size = int(kernel_size)
        self.conv = nn.Conv2d(2, 1, kernel_size=self.kernel_size, padding=self.kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the attention map ``Ms``, shape ``(B, 1, H, W)``, for ``x`` of shape ``(B, C, H, W)``."""
        _check_feature_map(x, None, "SpatialAttention")
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention: ``out = Ms(Mc * F) * (Mc * F)``.

    Args:
        channels: C of the input feature map.
        reduction: channel-MLP reduction ratio (hidden size ``max(1, C // reduction)``).
        kernel_size: spatial-attention kernel size (odd).
        paper_eq3: channel attention as the sum of two sigmoids (BayeRegX eq. 3) instead of
            the sigmoid of the sum (CBAM); see :class:`ChannelAttention`.
        unit_gain: scale both attention maps so that they average 1 when the network is
            initialised (``2 * Ms`` and ``2 * Mc``; ``Mc`` of eq. 3 already lies in (0, 2)), so the
            module starts close to the identity. Without it every CBAM multiplies the features by
            about 1/4 at initialisation, and five of them in a row (the BayeRegX trunk) shrink the
            head's input by about 1000 and stall early training. Default False (the papers' maps).

    Shapes:
        input ``(B, C, H, W)`` -> output ``(B, C, H, W)``.
    """

    def __init__(
        self, channels: int, reduction: int = 16, kernel_size: int = 7, paper_eq3: bool = False, unit_gain: bool = False
    ) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction=reduction, paper_eq3=paper_eq3)
        self.spatial_attention = SpatialAttention(kernel_size=kernel_size)
        self.unit_gain = bool(unit_gain)
        self._channel_gain = 1.0 if (paper_eq3 or not unit_gain) else 2.0
        self._spatial_gain = 2.0 if unit_gain else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Refine ``x`` (``(B, C, H, W)``) with channel then spatial attention."""
        refined = (self._channel_gain * self.channel_attention(x)) * x
        return (self._spatial_gain * self.spatial_attention(refined)) * refined
