"""A regressor loss computed in the target codec's standardised units.

The regressors decode their outputs to crop fractions inside the network (see
:class:`~monai_spine.codecs.regression.KeypointRegressionCodec`), so everything after the network
(metrics, MC dropout, inference) sees fractions. For training, :class:`EncodedLoss` encodes the
prediction and the target again with the same codec and applies the wrapped loss there: a squared
error in units of each coordinate's training standard deviation, or a Gaussian NLL of standardised
residuals. With the identity codec it is the wrapped loss unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_spine.codecs.regression import KeypointRegressionCodec

__all__ = ["EncodedLoss"]


class EncodedLoss(nn.Module):
    """``loss(codec.encode_output(y_pred), codec.encode_output(y), mask)``.

    Args:
        loss: a loss called as ``loss(y_pred, y, mask=None)``, e.g.
            :class:`~monai_spine.losses.gaussian_nll.MaskedMSELoss` or
            :class:`~monai_spine.losses.gaussian_nll.GaussianNLLLoss`.
        codec: the network's codec (share the module, not a copy, so a fitted codec is used).

    Shapes:
        ``y_pred`` ``(B, K, 2)`` fractions or ``(B, K, 4)`` fractions and log-variances of squared
        fractions; ``y`` ``(B, K, 2)`` or ``(B, K, 3)`` (last channel visibility, untouched).
    """

    def __init__(self, loss: nn.Module, codec: KeypointRegressionCodec) -> None:
        super().__init__()
        if not isinstance(codec, KeypointRegressionCodec):
            raise ValueError(f"codec must be a KeypointRegressionCodec, got {type(codec).__name__}")
        self.loss = loss
        self.codec = codec

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """See the class docstring."""
        return self.loss(self.codec.encode_output(y_pred), self.codec.encode_output(y), mask)
