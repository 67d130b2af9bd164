"""Probabilistic spatial regression FCN of Al Arif et al., BMVC 2017 (method 2 of monai-spine).

The network maps a one-channel image patch ``(B, 1, 64, 64)`` to a probability distribution over its
pixels ``(B, 1, 64, 64)`` (every value >= 0, each map sums to 1), with high mass at the vertebral-body
corners in the patch.

Architecture (paper, Sec. 3.1): a UNet-like FCN with a down path of max-pooling, an up path of
deconvolutions (transposed convolutions), concatenation skips between the two, "a total of 19
convolutional layers", each "followed by a batch normalization and a ReLU except the last", and a new
*spatial normalization* layer instead of a softmax: it "forces the minimum to be zero and the
integration to be unity".

The paper's Fig. 3 (channel counts) is not available in text; it states 24,237,633 parameters.
This implementation uses the standard UNet layout that gives exactly 19 convolutions
(2 per level on 5 levels = 10 down, 2 per level on 4 levels = 8 up, 1 final 1x1), four 2x2
stride-2 transposed convolutions that halve the channels, and channel widths
``(w, 2w, 4w, 8w, 12w)``. At the full width ``w = 64`` it has 24,224,961 parameters, 0.05 % from
the paper's count (the classic ``16w`` bottleneck would give 31.0 M). Padding is zero ("same") so
the output has the input's size, as in the paper; the input side must be divisible by 16.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["SpatialNormalization", "ProbabilisticUNet", "count_conv_layers", "FULL_WIDTH", "PAPER_NUM_PARAMETERS"]

#: base width of the paper-size network
FULL_WIDTH = 64
#: parameter count stated in the paper (Sec. 3.1)
PAPER_NUM_PARAMETERS = 24_237_633


class SpatialNormalization(nn.Module):
    """Turn each sample's activation map into a probability distribution over its pixels.

    ``p = (x - min(x)) / sum(x - min(x))`` per sample (min and sum over all non-batch dimensions),
    so ``p >= 0`` and ``sum(p) = 1``. A flat map (all values equal, so the sum is below ``eps``)
    becomes the uniform distribution ``1 / n_pixels``; no NaN or inf is produced, in the forward
    pass or in the gradient.

    Args:
        eps: sums at or below this are treated as a flat map.

    Shapes:
        input ``(B, ...)`` (typically ``(B, 1, H, W)``), output the same shape; half-precision input
        (autocast) is computed and returned in float32.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise ValueError(f"SpatialNormalization expects (B, ...) with at least one non-batch dim, got {tuple(x.shape)}")
        if x.dtype in (torch.float16, torch.bfloat16):  # 1 / n_pixels and its products need float32
            x = x.float()
        flat = x.reshape(x.shape[0], -1)
        shifted = flat - flat.min(dim=1, keepdim=True).values
        total = shifted.sum(dim=1, keepdim=True)
        ok = total > self.eps
        prob = shifted / torch.where(ok, total, torch.ones_like(total))
        uniform = torch.full_like(prob, 1.0 / flat.shape[1])
        return torch.where(ok, prob, uniform).reshape(x.shape)


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class _DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(_conv_bn_relu(in_ch, out_ch), _conv_bn_relu(out_ch, out_ch))


class ProbabilisticUNet(nn.Module):
    """UNet-like probabilistic spatial regressor (Al Arif et al. 2017) ending in :class:`SpatialNormalization`.

    Args:
        in_channels: input channels (1 in the paper).
        out_channels: output maps (1 in the paper; each is normalised on its own).
        width: base number of features ``w``; channels per level are ``w * multipliers``.
            ``64`` is the paper-size network (24.2 M parameters); tests use e.g. ``4``.
        multipliers: channel multipliers of the levels, top to bottom; the number of pooling steps
            is ``len(multipliers) - 1``. Default ``(1, 2, 4, 8, 12)`` (see the module docstring).
        normalize: append :class:`SpatialNormalization` (set False to get the raw activation,
            e.g. to try another normalisation).

    Shapes:
        input ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by ``2 ** (len(multipliers) - 1)``;
        output ``(B, out_channels, H, W)``, each map >= 0 and summing to 1 when ``normalize``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = FULL_WIDTH,
        multipliers: Sequence[int] = (1, 2, 4, 8, 12),
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if width < 1 or len(multipliers) < 2 or any(int(m) < 1 for m in multipliers):
            raise ValueError(f"width must be >= 1 and multipliers at least two positive ints, got {width}, {multipliers}")
        chans = [int(width) * int(m) for m in multipliers]
        self.levels = len(chans)
        self.down = nn.ModuleList()
        prev = in_channels
        for c in chans:
            self.down.append(_DoubleConv(prev, c))
            prev = c
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for c in reversed(chans[:-1]):
            up_ch = max(prev // 2, 1)
            self.upconv.append(nn.ConvTranspose2d(prev, up_ch, kernel_size=2, stride=2))
            self.up.append(_DoubleConv(up_ch + c, c))
            prev = c
        self.final = nn.Conv2d(prev, out_channels, kernel_size=1)  # no BN / ReLU after the last conv
        self.spatial_norm = SpatialNormalization() if normalize else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"ProbabilisticUNet expects (B, C, H, W) with H, W divisible by {factor}, got {tuple(x.shape)}")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for upconv, block in zip(self.upconv, self.up):
            x = block(torch.cat([upconv(x), skips.pop()], dim=1))
        return self.spatial_norm(self.final(x))


def count_conv_layers(module: nn.Module, include_transposed: bool = False) -> int:
    """Number of ``nn.Conv2d`` layers in ``module`` (plus ``nn.ConvTranspose2d`` when asked)."""
    kinds: tuple[type, ...] = (nn.Conv2d, nn.ConvTranspose2d) if include_transposed else (nn.Conv2d,)
    return sum(1 for m in module.modules() if isinstance(m, kinds))
