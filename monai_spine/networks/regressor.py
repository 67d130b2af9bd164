"""BayeRegX keypoint regression networks: Baseline, Baseline + CBAM and Baseline + BayeCBAM.

All three regress the ``K`` keypoints of one vertebra crop (1 channel, 224 rows x 448 columns in the
BayeRegX paper, section 3.3) as fractions of the crop's width and height (``x_frac = (x + 0.5) / W``,
``y_frac = (y + 0.5) / H``, see :mod:`monai_spine.data.keypoints`), in the scheme's point order
(K = 5 for lateral crops, 4 for AP crops).

Return convention (a plain tensor, so MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` work):

* :class:`Baseline`, :class:`CBAMRegressor`: ``(B, K, 2)`` = ``(x_frac, y_frac)`` per point;
  the flat ``2K`` head output is in the paper's order ``(x1, y1, x2, y2, ...)`` (eq. 1).
* :class:`BayeCBAM`: ``(B, K, 4)`` = ``(mean_x, mean_y, logvar_x, logvar_y)`` per point, where
  ``logvar = log(sigma^2)`` in squared fractional units (paper eq. 15-16);
  :func:`split_mean_logvar` splits it into ``(mean (B, K, 2), logvar (B, K, 2))``.

Every network exposes ``features(x) -> (B, F)`` (the convolutional trunk, adaptive pooling and
flattening) and ``head(feats) -> output`` (the fully-connected layers, the only place with dropout),
with ``forward(x) == head(features(x))``, so Monte-Carlo dropout can run the trunk once
(:mod:`monai_spine.uncertainty.mc_dropout`).

Architecture (AlexNet, Krizhevsky et al. 2012, with 1 input channel and a regression head)::

    conv 11x11/4 (64) - ReLU - maxpool 3/2
    conv 5x5     (192) - ReLU - maxpool 3/2
    conv 3x3     (384) - ReLU
    conv 3x3     (256) - ReLU
    conv 3x3     (256) - ReLU - maxpool 3/2
    adaptive average pool to ``pool_size`` (default (6, 12), the trunk's own 6 x 13 output at 224 x 448)
    [dropout - linear(fc_features) - ReLU] x num_hidden_fc - linear(2K)    (BayeCBAM: two outputs)

Channel widths are multiplied by ``width`` (``max(1, round(c * width))``); an optional batch norm
follows each convolution; CBAM (after the ReLU of the chosen conv layers, before any pooling)
turns the Baseline into Baseline + CBAM. The smallest accepted input is 63 x 63 pixels.

Parameter counts at ``width=1.0``, ``fc_features=1024``, ``num_hidden_fc=2``, ``pool_size=(6, 12)``,
``num_points=5``, 1 input channel (measured with ``sum(p.numel() for p in net.parameters())``):

* ``Baseline``: 22,389,450
* ``CBAMRegressor`` (CBAM after all 5 conv layers, reduction 16): 22,431,100
* ``BayeCBAM`` (shared hidden layers, two output layers): 22,441,350 (22,437,250 with ``num_points=4``)

Most of them (18.9 M) sit in the first fully-connected layer (256 * 6 * 12 inputs).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from monai_spine.codecs.regression import KeypointRegressionCodec
from monai_spine.networks.cbam import CBAM

__all__ = [
    "ALEXNET_CHANNELS",
    "MIN_INPUT_SIZE",
    "Baseline",
    "CBAMRegressor",
    "BayeCBAM",
    "REGRESSOR_VARIANTS",
    "build_regressor",
    "split_mean_logvar",
]

#: output channels of AlexNet's five convolutions at ``width=1.0``
ALEXNET_CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)
#: (kernel, stride, padding, followed by max-pool) of the five convolutions
_CONV_SPECS: tuple[tuple[int, int, int, bool], ...] = (
    (11, 4, 2, True),
    (5, 1, 2, True),
    (3, 1, 1, False),
    (3, 1, 1, False),
    (3, 1, 1, True),
)
#: smallest input height/width (pixels) the trunk accepts: every max-pool needs a 3 x 3 input
MIN_INPUT_SIZE = 63

_ACTIVATIONS = ("none", "sigmoid")


def split_mean_logvar(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a BayeCBAM output into means and log-variances.

    Args:
        out: ``(..., K, 4)`` tensor ``(mean_x, mean_y, logvar_x, logvar_y)``.

    Returns:
        ``(mean, logvar)``, each ``(..., K, 2)`` (fractions, log of squared fractions).

    Raises:
        ValueError: the last axis is not 4 long.
    """
    if out.ndim < 2 or out.shape[-1] != 4:
        raise ValueError(f"expected a (..., K, 4) mean/log-variance tensor, got shape {tuple(out.shape)}")
    return out[..., :2], out[..., 2:]


def _hidden_fc(in_features: int, fc_features: int, num_hidden_fc: int, dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    n_in = in_features
    for _ in range(num_hidden_fc):
        layers += [nn.Dropout(dropout), nn.Linear(n_in, fc_features), nn.ReLU(inplace=True)]
        n_in = fc_features
    return nn.Sequential(*layers), n_in


class Baseline(nn.Module):
    """AlexNet-like keypoint regressor (BayeRegX "Baseline", paper section 3.2.1, eq. 1).

    Args:
        num_points: K, points per vertebra (5 lateral, 4 AP).
        in_channels: image channels (1 for X-ray crops).
        width: multiplier of AlexNet's conv channels (64, 192, 384, 256, 256); e.g. 0.125 for tests.
        fc_features: width of the hidden fully-connected layers.
        dropout: dropout probability before each hidden fully-connected layer (head only).
        spatial_size: expected input ``(H, W)``; informational (any size >= 63 x 63 works).
        batch_norm: add a batch norm after each convolution.
        pool_size: ``(h, w)`` of the adaptive average pool between trunk and head.
        num_hidden_fc: number of hidden fully-connected layers (AlexNet: 2).
        output_activation: ``"none"`` (default: plain linear output, so points slightly outside the
            crop stay representable) or ``"sigmoid"`` (outputs forced into (0, 1)).
        codec: the target codec (:class:`~monai_spine.codecs.regression.KeypointRegressionCodec`,
            or its :meth:`~monai_spine.codecs.regression.KeypointRegressionCodec.to_dict` record): the
            linear layer predicts standardised coordinates and :meth:`head` decodes them to
            fractions. Default: the identity (the paper's fraction targets). Its buffers are part
            of the state dict, so a checkpoint carries its codec.

    Shapes:
        input ``(B, in_channels, H, W)`` -> output ``(B, K, 2)`` fractions ``(x_frac, y_frac)``.
    """

    #: whether the output carries log-variances (``(B, K, 4)``) or only means (``(B, K, 2)``)
    predicts_logvar: bool = False

    def __init__(
        self,
        num_points: int,
        in_channels: int = 1,
        width: float = 1.0,
        fc_features: int = 1024,
        dropout: float = 0.5,
        spatial_size: Sequence[int] = (224, 448),
        batch_norm: bool = False,
        pool_size: Sequence[int] = (6, 12),
        num_hidden_fc: int = 2,
        output_activation: str | None = "none",
        *,
        codec: KeypointRegressionCodec | dict | None = None,
        cbam_layers: Sequence[int] = (),
        cbam_reduction: int = 16,
        cbam_kernel_size: int = 7,
        cbam_paper_eq3: bool = False,
        cbam_unit_gain: bool = False,
    ) -> None:
        super().__init__()
        if int(num_points) < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if int(fc_features) < 1 or int(num_hidden_fc) < 0:
            raise ValueError(f"fc_features must be >= 1 and num_hidden_fc >= 0, got {fc_features}, {num_hidden_fc}")
        act = "none" if output_activation is None else str(output_activation).lower()
        if act not in _ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {_ACTIVATIONS}, got {output_activation!r}")
        pool = tuple(int(p) for p in pool_size)
        if len(pool) != 2 or min(pool) < 1:
            raise ValueError(f"pool_size must be two positive integers (h, w), got {pool_size!r}")
        cbam_set = sorted({int(i) for i in cbam_layers})
        if any(i < 0 or i >= len(_CONV_SPECS) for i in cbam_set):
            raise ValueError(f"cbam_layers must be conv indices in 0..{len(_CONV_SPECS) - 1}, got {list(cbam_layers)}")

        self.num_points = int(num_points)
        self.in_channels = int(in_channels)
        self.width = float(width)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.output_activation = act
        self.cbam_layers = tuple(cbam_set)
        if codec is None:
            codec = KeypointRegressionCodec.identity(self.num_points)
        elif isinstance(codec, dict):
            codec = KeypointRegressionCodec.from_dict(codec)
        if not isinstance(codec, KeypointRegressionCodec) or codec.num_points != self.num_points:
            raise ValueError(f"codec must be a KeypointRegressionCodec of {self.num_points} points, got {codec!r}")
        #: target codec (decodes the linear outputs to crop fractions)
        self.codec = codec
        self.channels = tuple(max(1, int(round(c * self.width))) for c in ALEXNET_CHANNELS)

        layers: list[nn.Module] = []
        c_in = self.in_channels
        for i, ((k, s, p, pool_after), c_out) in enumerate(zip(_CONV_SPECS, self.channels)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=p, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            if i in cbam_set:
                layers.append(
                    CBAM(c_out, reduction=cbam_reduction, kernel_size=cbam_kernel_size, paper_eq3=cbam_paper_eq3,
                         unit_gain=cbam_unit_gain)
                )
            if pool_after:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            c_in = c_out
        #: convolutional trunk (conv blocks, optional CBAM, max-pools)
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.num_features = c_in * pool[0] * pool[1]
        self.regressor_hidden, n_hidden_out = _hidden_fc(
            self.num_features, int(fc_features), int(num_hidden_fc), float(dropout)
        )
        self._build_output(n_hidden_out)

    # ------------------------------------------------------------------ construction hooks
    def _build_output(self, in_features: int) -> None:
        self.regressor_out = nn.Linear(in_features, 2 * self.num_points)

    def _activate(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(mean) if self.output_activation == "sigmoid" else mean

    # ------------------------------------------------------------------ forward parts
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        if min(x.shape[2], x.shape[3]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"{type(self).__name__}: input must be at least {MIN_INPUT_SIZE} x {MIN_INPUT_SIZE} pixels, "
                f"got shape {tuple(x.shape)}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional trunk, adaptive pool and flatten.

        Args:
            x: ``(B, in_channels, H, W)`` image crops.

        Returns:
            ``(B, num_features)`` feature vectors.
        """
        self._check_input(x)
        return torch.flatten(self.pool(self.trunk(x)), 1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Fully-connected regression head (holds all dropout layers).

        Args:
            feats: ``(N, num_features)`` from :meth:`features`.

        Returns:
            ``(N, K, 2)`` fractions ``(x_frac, y_frac)``.
        """
        if feats.ndim != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}.head: expected (N, {self.num_features}), got {tuple(feats.shape)}")
        out = self.regressor_out(self.regressor_hidden(feats))
        return self.codec.decode(self._activate(out.view(-1, self.num_points, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``head(features(x))``: ``(B, C, H, W)`` -> ``(B, K, 2)`` (BayeCBAM: ``(B, K, 4)``)."""
        return self.head(self.features(x))


class CBAMRegressor(Baseline):
    """Baseline + CBAM (paper section 3.2.2): CBAM after the ReLU of the chosen conv layers.

    Args:
        num_points, in_channels, width, fc_features, dropout, spatial_size, batch_norm, pool_size,
        num_hidden_fc, output_activation: as in :class:`Baseline`.
        cbam_layers: indices (0-4) of the conv layers followed by CBAM; default all five.
        cbam_reduction: CBAM channel-MLP reduction ratio.
        cbam_kernel_size: CBAM spatial-attention kernel size.
        cbam_paper_eq3: channel attention as the sum of two sigmoids (BayeRegX eq. 3), see
            :class:`monai_spine.networks.cbam.ChannelAttention`.
        cbam_unit_gain: attention maps that average 1 at initialisation (see
            :class:`monai_spine.networks.cbam.CBAM`); the bundle's recipe uses it.

    Shapes:
        input ``(B, in_channels, H, W)`` -> output ``(B, K, 2)``.
    """

    def __init__(
        self,
        num_points: int,
        in_channels: int = 1,
        width: float = 1.0,
        fc_features: int = 1024,
        dropout: float = 0.5,
        spatial_size: Sequence[int] = (224, 448),
        batch_norm: bool = False,
        pool_size: Sequence[int] = (6, 12),
        num_hidden_fc: int = 2,
        output_activation: str | None = "none",
        cbam_layers: Sequence[int] = (0, 1, 2, 3, 4),
        cbam_reduction: int = 16,
        cbam_kernel_size: int = 7,
        cbam_paper_eq3: bool = False,
        cbam_unit_gain: bool = False,
        codec: KeypointRegressionCodec | dict | None = None,
    ) -> None:
        super().__init__(
            num_points,
            in_channels=in_channels,
            width=width,
            fc_features=fc_features,
            dropout=dropout,
            spatial_size=spatial_size,
            batch_norm=batch_norm,
            pool_size=pool_size,
            num_hidden_fc=num_hidden_fc,
            output_activation=output_activation,
            cbam_layers=cbam_layers,
            cbam_reduction=cbam_reduction,
            cbam_kernel_size=cbam_kernel_size,
            cbam_paper_eq3=cbam_paper_eq3,
            cbam_unit_gain=cbam_unit_gain,
            codec=codec,
        )


class BayeCBAM(CBAMRegressor):
    """Baseline + BayeCBAM (paper section 3.2.3, eq. 15): CBAM network with a split regression head.

    The hidden fully-connected layers are shared; two output layers predict the means and the
    log-variances ``log(sigma^2)`` of every coordinate. With ``separate_branches=True`` the whole
    head (hidden layers included) is duplicated instead. Train with
    :class:`monai_spine.losses.gaussian_nll.GaussianNLLLoss`.

    Args:
        num_points, in_channels, width, fc_features, dropout, spatial_size, batch_norm, pool_size,
        num_hidden_fc, output_activation, cbam_*: as in :class:`CBAMRegressor`
        (``output_activation`` applies to the means only).
        separate_branches: duplicate the hidden layers for the log-variance branch.
        logvar_bias_init: initial bias of the log-variance output layer, in the codec's units
            (0 means sigma = 1 codec unit: one standard deviation of the training shape with a
            fitted codec, one crop size with the identity codec; e.g. -7 then starts near 0.03).

    Shapes:
        input ``(B, in_channels, H, W)`` -> output ``(B, K, 4)`` =
        ``(mean_x, mean_y, logvar_x, logvar_y)``; see :func:`split_mean_logvar`.
    """

    predicts_logvar = True

    def __init__(
        self,
        num_points: int,
        in_channels: int = 1,
        width: float = 1.0,
        fc_features: int = 1024,
        dropout: float = 0.5,
        spatial_size: Sequence[int] = (224, 448),
        batch_norm: bool = False,
        pool_size: Sequence[int] = (6, 12),
        num_hidden_fc: int = 2,
        output_activation: str | None = "none",
        cbam_layers: Sequence[int] = (0, 1, 2, 3, 4),
        cbam_reduction: int = 16,
        cbam_kernel_size: int = 7,
        cbam_paper_eq3: bool = False,
        separate_branches: bool = False,
        logvar_bias_init: float = 0.0,
        codec: KeypointRegressionCodec | dict | None = None,
        cbam_unit_gain: bool = False,
    ) -> None:
        self._separate_branches = bool(separate_branches)
        self._fc_args = (int(fc_features), int(num_hidden_fc), float(dropout))
        self._logvar_bias_init = float(logvar_bias_init)
        super().__init__(
            num_points,
            in_channels=in_channels,
            width=width,
            fc_features=fc_features,
            dropout=dropout,
            spatial_size=spatial_size,
            batch_norm=batch_norm,
            pool_size=pool_size,
            num_hidden_fc=num_hidden_fc,
            output_activation=output_activation,
            cbam_layers=cbam_layers,
            cbam_reduction=cbam_reduction,
            cbam_kernel_size=cbam_kernel_size,
            cbam_paper_eq3=cbam_paper_eq3,
            cbam_unit_gain=cbam_unit_gain,
            codec=codec,
        )

    @property
    def separate_branches(self) -> bool:
        """Whether the log-variance branch has its own hidden layers."""
        return self._separate_branches

    def _build_output(self, in_features: int) -> None:
        self.regressor_out = nn.Linear(in_features, 2 * self.num_points)
        if self._separate_branches:
            self.logvar_hidden, n_in = _hidden_fc(self.num_features, *self._fc_args)
        else:
            self.logvar_hidden, n_in = nn.Identity(), in_features
        self.logvar_out = nn.Linear(n_in, 2 * self.num_points)
        nn.init.constant_(self.logvar_out.bias, self._logvar_bias_init)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Split regression head.

        Args:
            feats: ``(N, num_features)`` from :meth:`features`.

        Returns:
            ``(N, K, 4)`` = ``(mean_x, mean_y, logvar_x, logvar_y)``.
        """
        if feats.ndim != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}.head: expected (N, {self.num_features}), got {tuple(feats.shape)}")
        hidden = self.regressor_hidden(feats)
        mean = self._activate(self.regressor_out(hidden).view(-1, self.num_points, 2))
        lv_in = self.logvar_hidden(feats) if self._separate_branches else hidden
        logvar = self.logvar_out(lv_in).view(-1, self.num_points, 2)
        return self.codec.decode_output(torch.cat([mean, logvar], dim=-1))


#: variant name -> network class, for :func:`build_regressor`
REGRESSOR_VARIANTS: dict[str, type[Baseline]] = {
    "baseline": Baseline,
    "cbam": CBAMRegressor,
    "bayecbam": BayeCBAM,
}


def build_regressor(variant: str, num_points: int, **kw: Any) -> Baseline:
    """Build a keypoint regressor by name (usable from a MONAI bundle config).

    Example bundle entry::

        "network_def": {"_target_": "monai_spine.networks.regressor.build_regressor",
                        "variant": "bayecbam", "num_points": 5, "width": 1.0}

    Args:
        variant: ``"baseline"``, ``"cbam"`` or ``"bayecbam"`` (case-insensitive).
        num_points: K.
        kw: further constructor arguments of the chosen class.

    Raises:
        KeyError: unknown variant (the message lists the known ones).
    """
    key = str(variant).lower()
    if key not in REGRESSOR_VARIANTS:
        raise KeyError(f"unknown regressor variant {variant!r}; known: {sorted(REGRESSOR_VARIANTS)}")
    return REGRESSOR_VARIANTS[key](num_points, **kw)
