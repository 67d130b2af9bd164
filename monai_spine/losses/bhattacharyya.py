"""Bhattacharyya-coefficient loss and metric for spatial probability maps (Al Arif et al., BMVC 2017).

For a predicted distribution ``p`` and a target distribution ``y`` over the pixels of one sample,

    BC(y, p) = sum_i sqrt(y_i * p_i)                 (paper eq. 3; 0 = disjoint, 1 = identical)
    L(y, p)  = -2 * BC(y, p)                         (paper eq. 2; -2 = identical, 0 = disjoint)
    dL/dp_i  = -sqrt(y_i / p_i)                      (paper eq. 4)

The square root is evaluated as ``x / sqrt(max(x, eps))`` with ``x = y * p``: exactly ``sqrt(x)``
for ``x >= eps`` (value and gradient ``1 / (2 sqrt(x))``), and the chord ``x / sqrt(eps)`` below, which
is exactly 0 at ``x = 0`` (disjoint maps give a loss of exactly 0), differs from ``sqrt(x)`` by at
most ``sqrt(eps) / 4`` per pixel, and has the finite slope ``1 / sqrt(eps)`` instead of the infinite
derivative of ``sqrt`` at 0. Hence ``dL/dp_i = -sqrt(y_i / p_i)`` (eq. 4) wherever ``y_i p_i >= eps``
and ``-2 y_i / sqrt(eps)`` (finite) where ``p_i = 0``.

Inputs are batch-first tensors ``(B, ...)`` (typically ``(B, 1, H, W)``); the sums run over every
non-batch dimension. Both should already be distributions (>= 0, summing to 1 per sample), e.g. the
output of :class:`monai_spine.networks.fcn.SpatialNormalization` and the maps of
:func:`monai_spine.codecs.corner_maps.corner_maps`; this is not checked (negative values are clamped to 0).
"""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import LossReduction, MetricReduction
from torch.nn.modules.loss import _Loss

__all__ = ["bhattacharyya_coefficient", "BhattacharyyaLoss", "BhattacharyyaMetric"]


def _check(p: torch.Tensor, y: torch.Tensor) -> None:
    if p.shape != y.shape:
        raise ValueError(f"prediction and target shapes differ: {tuple(p.shape)} vs {tuple(y.shape)}")
    if p.ndim < 2:
        raise ValueError(f"expected batch-first tensors (B, ...) with a non-batch dim, got {tuple(p.shape)}")


def bhattacharyya_coefficient(p: torch.Tensor, y: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-sample Bhattacharyya coefficient ``sum_i sqrt(y_i p_i)`` (paper eq. 3).

    Args:
        p: predicted distributions, ``(B, ...)``.
        y: target distributions, same shape.
        eps: stabiliser of the square root (see the module docstring); 0 gives the plain root.

    Returns:
        ``(B,)`` tensor, in [0, 1] for distributions.
    """
    _check(p, y)
    if p.dtype in (torch.float16, torch.bfloat16) or y.dtype in (torch.float16, torch.bfloat16):
        p, y = p.float(), y.float()  # y * p ~ 1e-7 and eps underflow in half precision
    prod = (p.clamp_min(0) * y.clamp_min(0)).reshape(p.shape[0], -1)
    if eps > 0:
        # exactly sqrt(x) for x >= eps, the chord x / sqrt(eps) below (0 at 0, finite slope)
        roots = prod / torch.sqrt(prod.clamp_min(eps))
    else:
        roots = torch.sqrt(prod)
    return roots.sum(dim=1)


class BhattacharyyaLoss(_Loss):
    """``-2 * BC(y, p)`` per sample (paper eq. 2), reduced over the batch.

    Args:
        reduction: ``"mean"`` (default, as in the paper's sum over examples up to a constant),
            ``"sum"`` or ``"none"`` (returns ``(B,)``).
        eps: stabiliser of the square root; its gradient stays finite where ``p = 0``.

    Call as ``loss(input=p, target=y)`` with ``(B, ...)`` tensors.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN, eps: float = 1e-10) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch API)
        per_sample = -2.0 * bhattacharyya_coefficient(input, target, eps=self.eps)
        if self.reduction == LossReduction.MEAN.value:
            return per_sample.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_sample.sum()
        return per_sample


class BhattacharyyaMetric(CumulativeIterationMetric):
    """Bhattacharyya coefficient between predicted and target maps, accumulated over iterations.

    The paper reports the mean BC over its test patches (0.9794). ``metric(y_pred, y)`` buffers a
    ``(B, 1)`` tensor of per-sample coefficients; ``aggregate()`` reduces it (default: mean).

    Args:
        reduction: MONAI metric reduction (``"mean"``, ``"sum"``, ``"none"``, ...).
        get_not_nans: also return the count of non-NaN values from ``aggregate``.
        eps: stabiliser of the square root.
    """

    def __init__(
        self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False, eps: float = 1e-10
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.eps = float(eps)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError("BhattacharyyaMetric needs y_pred and y as torch tensors")
        return bhattacharyya_coefficient(y_pred.float(), y.float(), eps=self.eps).unsqueeze(1)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered ``(N, 1)`` coefficients (default: their mean)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("BhattacharyyaMetric: nothing to aggregate (call it on data first)")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f
