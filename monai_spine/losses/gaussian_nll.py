"""Losses of the BayeRegX keypoint regressors, with an optional visibility mask.

* :class:`GaussianNLLLoss` trains :class:`~monai_spine.networks.regressor.BayeCBAM` (heteroscedastic,
  aleatoric uncertainty): for every coordinate with residual ``r = y - mean`` and predicted
  ``s = log(sigma^2)``, ``0.5 * exp(-s) * r^2 + 0.5 * s``, averaged over the visible coordinates and
  the batch (BayeRegX eq. 14; eq. 16 writes the same average, ``1 / (B * 2K)``, with the
  ``1/2`` of the ``log sigma^2`` term dropped, a typo: eq. 14 follows from the Gaussian likelihood).
  The constant ``0.5 * log(2 pi)`` is left out.
  With ``beta > 0`` it is the beta-NLL of Seitzer et al. (ICLR 2022): each coordinate's term is
  multiplied by ``stop_gradient(sigma^2) ** beta``, so a point the network calls uncertain does not
  stop learning its mean (``beta = 0``: the plain NLL; ``beta = 1``: the mean's gradient equals MSE's).
* :class:`MaskedMSELoss` trains :class:`~monai_spine.networks.regressor.Baseline` and
  :class:`~monai_spine.networks.regressor.CBAMRegressor`: the mean of ``r^2`` over visible coordinates
  (eq. 1-2, ``MSE(Y_hat, Y)``).

Both are called as ``loss(y_pred, y)`` (the MONAI ``SupervisedTrainer`` ``loss_function`` signature).
Invisible points are excluded in any of three ways, combined with a logical AND:

1. targets of shape ``(B, K, 3)``: ``y[..., :2]`` are the fractional coordinates and ``y[..., 2]``
   the visibility (non-zero = visible); build them with :func:`pack_targets`. This is how a MONAI
   trainer passes a mask through its single ``label`` tensor.
2. an explicit ``mask`` argument ``(B, K)`` (bool or 0/1): ``loss(y_pred, y, mask)``.
3. non-finite target coordinates (NaN for a missing point) always count as invisible.

With ``reduction="mean"`` a batch with no visible point gives a loss of 0 that is still attached to
the graph (its gradient is zero), so a training step does not fail.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LOGVAR_RANGE", "GaussianNLLLoss", "MaskedMSELoss", "pack_targets", "unpack_targets"]

#: default clamp range of the predicted log-variance ``s = log(sigma^2)`` (squared fractions):
#: sigma from about 4.5e-5 to 2.2e4 crop widths, so ``exp(-s)`` never overflows in float32
LOGVAR_RANGE: tuple[float, float] = (-20.0, 20.0)

_REDUCTIONS = ("mean", "sum", "none")


def pack_targets(keypoints_frac: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Stack coordinates and visibility into the ``(B, K, 3)`` target form accepted by the losses.

    Args:
        keypoints_frac: ``(B, K, 2)`` target fractions ``(x_frac, y_frac)``.
        visible: ``(B, K)`` visibility (bool or 0/1); all visible when None.

    Returns:
        ``(B, K, 3)`` float tensor ``(x_frac, y_frac, visible)``.
    """
    if keypoints_frac.ndim != 3 or keypoints_frac.shape[-1] != 2:
        raise ValueError(f"keypoints_frac must have shape (B, K, 2), got {tuple(keypoints_frac.shape)}")
    if visible is None:
        vis = torch.ones(keypoints_frac.shape[:2], dtype=keypoints_frac.dtype, device=keypoints_frac.device)
    else:
        vis = torch.as_tensor(visible, device=keypoints_frac.device)
        if vis.shape != keypoints_frac.shape[:2]:
            raise ValueError(f"visible must have shape {tuple(keypoints_frac.shape[:2])}, got {tuple(vis.shape)}")
        vis = vis.to(keypoints_frac.dtype)
    return torch.cat([keypoints_frac, vis[..., None]], dim=-1)


def unpack_targets(y: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split targets into coordinates and a boolean visibility mask.

    Args:
        y: ``(B, K, 2)`` coordinates or ``(B, K, 3)`` coordinates plus visibility.
        mask: optional ``(B, K)`` visibility, combined (AND) with the one in ``y``.

    Returns:
        ``(coords (B, K, 2), visible (B, K) bool)``; non-finite coordinates are marked invisible.

    Raises:
        ValueError: naming the bad shape.
    """
    if y.ndim != 3 or y.shape[-1] not in (2, 3):
        raise ValueError(f"targets must have shape (B, K, 2) or (B, K, 3), got {tuple(y.shape)}")
    coords = y[..., :2]
    visible = torch.isfinite(coords).all(dim=-1)
    if y.shape[-1] == 3:
        visible = visible & (y[..., 2] != 0)
    if mask is not None:
        m = torch.as_tensor(mask, device=y.device)
        if m.shape != y.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(y.shape[:2])}, got {tuple(m.shape)}")
        visible = visible & (m != 0)
    return coords, visible


def _reduce(per_coord: torch.Tensor, visible: torch.Tensor, reduction: str) -> torch.Tensor:
    """Zero invisible entries of ``per_coord`` (B, K, 2) and reduce."""
    per_coord = torch.where(visible[..., None], per_coord, torch.zeros_like(per_coord))
    if reduction == "none":
        return per_coord
    total = per_coord.sum()
    if reduction == "sum":
        return total
    count = 2 * visible.sum()
    return total / count.clamp(min=1).to(per_coord.dtype)


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


class GaussianNLLLoss(nn.Module):
    """Heteroscedastic Gaussian negative log-likelihood for BayeCBAM outputs (BayeRegX eq. 14/16).

    ``loss = mean over visible coordinates of 0.5 * exp(-s) * (y - mean)^2 + 0.5 * s`` with
    ``s = clamp(log sigma^2, logvar_min, logvar_max)``. The clamp keeps ``exp(-s)`` finite; outside
    the range the gradient with respect to ``s`` is zero.

    Args:
        logvar_min: lower clamp of the predicted log-variance (default -20).
        logvar_max: upper clamp of the predicted log-variance (default 20).
        reduction: ``"mean"`` (over visible coordinates of the batch), ``"sum"`` or ``"none"``
            (``(B, K, 2)``, zeros at invisible points).
        beta: beta-NLL exponent in [0, 1] (module docstring); 0 is the paper's loss.

    Call:
        ``loss(y_pred, y, mask=None)`` with ``y_pred`` ``(B, K, 4)`` =
        ``(mean_x, mean_y, logvar_x, logvar_y)``, ``y`` ``(B, K, 2)`` or ``(B, K, 3)`` (last channel
        visibility) and ``mask`` ``(B, K)``; see the module docstring.
    """

    def __init__(
        self,
        logvar_min: float = LOGVAR_RANGE[0],
        logvar_max: float = LOGVAR_RANGE[1],
        reduction: str = "mean",
        beta: float = 0.0,
    ) -> None:
        super().__init__()
        if not logvar_min < logvar_max:
            raise ValueError(f"logvar_min must be < logvar_max, got {logvar_min}, {logvar_max}")
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)
        self.logvar_min = float(logvar_min)
        self.logvar_max = float(logvar_max)
        self.reduction = _check_reduction(reduction)

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss; see the class docstring for shapes."""
        if y_pred.ndim != 3 or y_pred.shape[-1] != 4:
            raise ValueError(f"GaussianNLLLoss: y_pred must have shape (B, K, 4), got {tuple(y_pred.shape)}")
        coords, visible = unpack_targets(y, mask)
        if coords.shape != y_pred.shape[:-1] + (2,):
            raise ValueError(
                f"GaussianNLLLoss: targets {tuple(y.shape)} do not match predictions {tuple(y_pred.shape)}"
            )
        mean, logvar = y_pred[..., :2], y_pred[..., 2:]
        s = logvar.clamp(self.logvar_min, self.logvar_max)
        coords = torch.where(visible[..., None], coords, mean.detach()).to(mean.dtype)
        per_coord = 0.5 * torch.exp(-s) * (coords - mean) ** 2 + 0.5 * s
        if self.beta > 0:
            per_coord = per_coord * torch.exp(self.beta * s).detach()
        return _reduce(per_coord, visible, self.reduction)


class MaskedMSELoss(nn.Module):
    """Mean squared error of fractional coordinates over visible points (Baseline and CBAM training).

    Args:
        reduction: ``"mean"`` (over visible coordinates), ``"sum"`` or ``"none"`` (``(B, K, 2)``).

    Call:
        ``loss(y_pred, y, mask=None)`` with ``y_pred`` ``(B, K, 2)`` (or a BayeCBAM ``(B, K, 4)``
        output, whose means ``y_pred[..., :2]`` are then used), ``y`` ``(B, K, 2)`` or ``(B, K, 3)``
        (last channel visibility) and ``mask`` ``(B, K)``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss; see the class docstring for shapes."""
        if y_pred.ndim != 3 or y_pred.shape[-1] not in (2, 4):
            raise ValueError(f"MaskedMSELoss: y_pred must have shape (B, K, 2) or (B, K, 4), got {tuple(y_pred.shape)}")
        coords, visible = unpack_targets(y, mask)
        mean = y_pred[..., :2]
        if coords.shape != mean.shape:
            raise ValueError(f"MaskedMSELoss: targets {tuple(y.shape)} do not match predictions {tuple(y_pred.shape)}")
        coords = torch.where(visible[..., None], coords, mean.detach()).to(mean.dtype)
        return _reduce((coords - mean) ** 2, visible, self.reduction)
