"""Aleatoric and epistemic keypoint uncertainty: Monte-Carlo dropout and point uncertainty ``sigma_p``.

Epistemic (model) uncertainty comes from MC dropout (Gal & Ghahramani 2016): ``T`` stochastic
forward passes with dropout active; the variance of the ``T`` predicted means estimates it.
Aleatoric (data) uncertainty is the variance the network itself predicts (BayeCBAM's
``exp(log sigma^2)``), averaged over the ``T`` passes; it is zero for networks that do not predict it.
Total variance = epistemic + aleatoric (Kendall & Gal 2017).

The regressors of :mod:`monai_spine.networks.regressor` keep every dropout layer in the head, so
:func:`mc_dropout_predict` runs the convolutional trunk once, in eval mode, then sends the features,
repeated ``T`` times, through the head in one batched call with only the dropout layers switched to
training mode.

The point uncertainty of BayeRegX eq. 17 is ``sigma_p = sqrt(sigma_x^2 + sigma_y^2)``, in fractional
units (a fraction of the crop width for x, of the crop height for y, as in the paper, whose thresholds
(0.0087, 0.0097) are in these units). :func:`sigma_frac_to_mm` converts to millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from monai_spine.losses.gaussian_nll import LOGVAR_RANGE

__all__ = [
    "UNCERTAINTY_KINDS",
    "MCDropoutResult",
    "mc_dropout_predict",
    "mc_dropout_reference",
    "predict_deterministic",
    "sigma_p",
    "sigma_xy_frac_to_mm",
    "sigma_frac_to_mm",
]

#: the kinds of uncertainty a :class:`MCDropoutResult` reports
UNCERTAINTY_KINDS = ("aleatoric", "epistemic", "total")


def sigma_p(var_xy: torch.Tensor) -> torch.Tensor:
    """Point uncertainty ``sqrt(var_x + var_y)`` (BayeRegX eq. 17) from per-axis variances.

    Args:
        var_xy: ``(..., 2)`` variances (x, y), e.g. in squared fractions.

    Returns:
        ``(...)`` standard deviation in the same (unsquared) units.
    """
    if var_xy.shape[-1] != 2:
        raise ValueError(f"expected (..., 2) per-axis variances, got shape {tuple(var_xy.shape)}")
    return torch.sqrt(var_xy[..., 0] + var_xy[..., 1])


@dataclass
class MCDropoutResult:
    """Prediction and uncertainty of a batch of crops (all tensors on the model's device).

    Attributes:
        mean_frac: ``(B, K, 2)`` predicted points (mean over the ``T`` passes), fractions (x, y).
        epistemic_var_frac: ``(B, K, 2)`` variance of the ``T`` predicted means (divided by ``T``),
            squared fractions; zero when ``T == 1`` or without dropout.
        aleatoric_var_frac: ``(B, K, 2)`` mean over the passes of the predicted ``exp(logvar)``;
            zeros for networks without a log-variance output.
        num_samples: T.
        samples_frac: ``(T, B, K, 2)`` the per-pass means when requested, else None.
    """

    mean_frac: torch.Tensor
    epistemic_var_frac: torch.Tensor
    aleatoric_var_frac: torch.Tensor
    num_samples: int
    samples_frac: torch.Tensor | None = None

    @property
    def total_var_frac(self) -> torch.Tensor:
        """``(B, K, 2)`` epistemic + aleatoric variance, squared fractions."""
        return self.epistemic_var_frac + self.aleatoric_var_frac

    def var_frac(self, kind: str = "total") -> torch.Tensor:
        """``(B, K, 2)`` variance of one kind (``"aleatoric"``, ``"epistemic"`` or ``"total"``)."""
        if kind not in UNCERTAINTY_KINDS:
            raise KeyError(f"unknown uncertainty kind {kind!r}; known: {list(UNCERTAINTY_KINDS)}")
        return {"aleatoric": self.aleatoric_var_frac, "epistemic": self.epistemic_var_frac}.get(
            kind, self.total_var_frac
        )

    def sigma_xy_frac(self, kind: str = "total") -> torch.Tensor:
        """``(B, K, 2)`` per-axis standard deviations ``(sigma_x, sigma_y)`` in fractions."""
        return torch.sqrt(self.var_frac(kind))

    def sigma_p_frac(self, kind: str = "total") -> torch.Tensor:
        """``(B, K)`` point uncertainty ``sqrt(sigma_x^2 + sigma_y^2)`` in fractions (eq. 17)."""
        return sigma_p(self.var_frac(kind))

    @property
    def sigma_p_aleatoric_frac(self) -> torch.Tensor:
        """``(B, K)`` aleatoric ``sigma_p`` in fractions."""
        return self.sigma_p_frac("aleatoric")

    @property
    def sigma_p_epistemic_frac(self) -> torch.Tensor:
        """``(B, K)`` epistemic ``sigma_p`` in fractions."""
        return self.sigma_p_frac("epistemic")

    @property
    def sigma_p_total_frac(self) -> torch.Tensor:
        """``(B, K)`` total ``sigma_p`` in fractions."""
        return self.sigma_p_frac("total")

    def sigma_p_mm(self, crop_size_wh: Any, crop_spacing_mm: Any, kind: str = "total") -> torch.Tensor:
        """``(B, K)`` point uncertainty in millimetres; see :func:`sigma_frac_to_mm`."""
        return sigma_frac_to_mm(self.sigma_xy_frac(kind), crop_size_wh, crop_spacing_mm)

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Numpy copies: means, the three variances and the three ``sigma_p`` (all fractions)."""
        out = {
            "mean_frac": self.mean_frac,
            "aleatoric_var_frac": self.aleatoric_var_frac,
            "epistemic_var_frac": self.epistemic_var_frac,
            "total_var_frac": self.total_var_frac,
            "sigma_p_aleatoric_frac": self.sigma_p_aleatoric_frac,
            "sigma_p_epistemic_frac": self.sigma_p_epistemic_frac,
            "sigma_p_total_frac": self.sigma_p_total_frac,
        }
        if self.samples_frac is not None:
            out["samples_frac"] = self.samples_frac
        return {k: v.detach().cpu().numpy() for k, v in out.items()}


def _predicts_logvar(model: nn.Module, out: torch.Tensor) -> bool:
    flag = getattr(model, "predicts_logvar", None)
    if flag is not None:
        return bool(flag)
    return out.shape[-1] == 4


def _split(model: nn.Module, out: torch.Tensor, logvar_range: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output (..., K, 2|4) -> (mean, variance) each (..., K, 2)."""
    if out.shape[-1] not in (2, 4):
        raise ValueError(f"model output must have shape (..., K, 2) or (..., K, 4), got {tuple(out.shape)}")
    if _predicts_logvar(model, out):
        if out.shape[-1] != 4:
            raise ValueError(f"model predicts log-variances but its output has shape {tuple(out.shape)}")
        var = torch.exp(out[..., 2:].clamp(float(logvar_range[0]), float(logvar_range[1])))
        return out[..., :2], var
    return out[..., :2], torch.zeros_like(out[..., :2])


def _dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def mc_dropout_predict(
    model: nn.Module,
    x: torch.Tensor,
    num_samples: int = 20,
    *,
    max_head_batch: int | None = None,
    return_samples: bool = False,
    logvar_range: Sequence[float] = LOGVAR_RANGE,
) -> MCDropoutResult:
    """Monte-Carlo dropout prediction with aleatoric and epistemic uncertainty.

    With a model that has ``features(x)`` and ``head(feats)`` (all regressors of
    :mod:`monai_spine.networks.regressor`), the trunk runs once in eval mode and the ``T`` passes go
    through the head as one batch of ``T * B`` rows (or chunks of at most ``max_head_batch`` rows).
    Other models are run ``T`` times in full, with only their dropout layers in training mode.
    Batch norms always use their running statistics. Runs without gradients; the train/eval flag
    of every submodule is restored afterwards, also on error.

    Args:
        model: a keypoint regressor returning ``(B, K, 2)`` means or ``(B, K, 4)`` means and
            log-variances (``model.predicts_logvar`` decides when present, else the last axis).
        x: ``(B, C, H, W)`` crops.
        num_samples: T >= 1, the number of stochastic passes.
        max_head_batch: cap on rows per head call (None: all ``T * B`` at once).
        return_samples: keep the ``(T, B, K, 2)`` per-pass means in the result.
        logvar_range: clamp of the log-variances before ``exp`` (as in the loss).

    Returns:
        :class:`MCDropoutResult`.

    Raises:
        ValueError: ``num_samples < 1`` or a malformed model output.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if max_head_batch is not None and max_head_batch < 1:
        raise ValueError(f"max_head_batch must be >= 1 or None, got {max_head_batch!r}")
    t = int(num_samples)
    states = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            if callable(getattr(model, "features", None)) and callable(getattr(model, "head", None)):
                feats = model.features(x)
                b = feats.shape[0]
                for m in _dropout_modules(model):
                    m.train()
                rows = feats.unsqueeze(0).expand(t, *feats.shape).reshape(t * b, *feats.shape[1:])
                step = rows.shape[0] if max_head_batch is None else int(max_head_batch)
                outs = [model.head(rows[i : i + step]) for i in range(0, rows.shape[0], step)]
                out = torch.cat(outs, dim=0)
                out = out.reshape(t, b, *out.shape[1:])
            else:
                for m in _dropout_modules(model):
                    m.train()
                out = torch.stack([model(x) for _ in range(t)], dim=0)
    finally:
        for m, flag in states:
            m.training = flag
    means, var = _split(model, out, logvar_range)
    mean = means.mean(dim=0)
    epistemic = ((means - mean) ** 2).mean(dim=0)
    return MCDropoutResult(
        mean_frac=mean,
        epistemic_var_frac=epistemic,
        aleatoric_var_frac=var.mean(dim=0),
        num_samples=t,
        samples_frac=means if return_samples else None,
    )


def mc_dropout_reference(
    model: nn.Module,
    x: torch.Tensor,
    num_samples: int = 20,
    *,
    return_samples: bool = False,
    logvar_range: Sequence[float] = LOGVAR_RANGE,
) -> MCDropoutResult:
    """Plain reference of :func:`mc_dropout_predict`: one crop at a time, ``T`` full passes one by one.

    The eager textbook loop (the whole network, trunk included, runs ``T * B`` times on batches of
    one), kept as the baseline of ``scripts/bench_speed.py`` and the tests. It draws its dropout
    masks in another order than the batched function, so with dropout active the two agree in
    distribution, not sample by sample; without dropout (``p = 0``) they agree to float rounding.
    The train/eval flags are restored afterwards, also on error.

    Args:
        model, x, num_samples, return_samples, logvar_range: as in :func:`mc_dropout_predict`.

    Returns:
        :class:`MCDropoutResult`.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    t = int(num_samples)
    states = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in _dropout_modules(model):
            m.train()
        with torch.no_grad():
            per_crop = [torch.cat([model(x[i : i + 1]) for _ in range(t)], dim=0) for i in range(x.shape[0])]
    finally:
        for m, flag in states:
            m.training = flag
    out = torch.stack(per_crop, dim=1)  # (T, B, K, 2|4)
    means, var = _split(model, out, logvar_range)
    mean = means.mean(dim=0)
    return MCDropoutResult(
        mean_frac=mean,
        epistemic_var_frac=((means - mean) ** 2).mean(dim=0),
        aleatoric_var_frac=var.mean(dim=0),
        num_samples=t,
        samples_frac=means if return_samples else None,
    )


def predict_deterministic(
    model: nn.Module, x: torch.Tensor, *, logvar_range: Sequence[float] = LOGVAR_RANGE
) -> MCDropoutResult:
    """One eval-mode pass (no dropout): means and aleatoric variance; epistemic variance is zero.

    Args:
        model: as in :func:`mc_dropout_predict`.
        x: ``(B, C, H, W)`` crops.

    Returns:
        :class:`MCDropoutResult` with ``num_samples == 1``.
    """
    states = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    finally:
        for m, flag in states:
            m.training = flag
    mean, var = _split(model, out, logvar_range)
    return MCDropoutResult(mean, torch.zeros_like(mean), var, 1)


def _as_float_array(v: Any, like: Any, name: str) -> Any:
    """``v`` as a float tensor (when ``like`` is a tensor) or float64 numpy array, last axis 2."""
    if isinstance(like, torch.Tensor):
        arr = torch.as_tensor(v, dtype=like.dtype if like.is_floating_point() else torch.float64, device=like.device)
    else:
        arr = np.asarray(v, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise ValueError(f"{name} must be (x, y) pairs with last axis 2, got shape {tuple(arr.shape)}")
    return arr


def _batch_align(arr: Any, ndim: int) -> Any:
    """Insert singleton axes after the batch axis so a (B, 2) array broadcasts against (B, ..., 2)."""
    if arr.ndim <= 1 or arr.ndim >= ndim:
        return arr
    return arr.reshape(tuple(arr.shape[:-1]) + (1,) * (ndim - arr.ndim) + (2,))


def sigma_xy_frac_to_mm(sigma_frac: Any, crop_size_wh: Any, crop_spacing_mm: Any) -> Any:
    """Per-axis standard deviations from fractions to millimetres.

    ``sigma_x_mm = sigma_x_frac * W * crop_sx_mm`` and ``sigma_y_mm = sigma_y_frac * H * crop_sy_mm``.

    Args:
        sigma_frac: ``(..., 2)`` ``(sigma_x, sigma_y)`` in fractions (tensor or array).
        crop_size_wh: ``(W, H)`` of the crop in crop pixels, or ``(B, 2)`` per sample.
        crop_spacing_mm: ``(sx, sy)`` millimetres per crop pixel, ``(B, 2)`` per sample, or None.
            None, NaN, zero or negative values mean unknown spacing: the result is NaN there.

    Returns:
        ``(..., 2)`` in millimetres, a tensor for tensor input, else a float64 numpy array.
    """
    is_t = isinstance(sigma_frac, torch.Tensor)
    sig = sigma_frac if is_t else np.asarray(sigma_frac, dtype=np.float64)
    if sig.ndim < 1 or sig.shape[-1] != 2:
        raise ValueError(f"sigma_frac must have shape (..., 2), got {tuple(sig.shape)}")
    size = _as_float_array(crop_size_wh, sig, "crop_size_wh")
    if crop_spacing_mm is None:
        spacing = _as_float_array([float("nan"), float("nan")], sig, "crop_spacing_mm")
    else:
        spacing = _as_float_array(crop_spacing_mm, sig, "crop_spacing_mm")
    nan = float("nan")
    if is_t:
        spacing = torch.where(spacing > 0, spacing, torch.full_like(spacing, nan))
    else:
        with np.errstate(invalid="ignore"):
            spacing = np.where(spacing > 0, spacing, nan)
    size = _batch_align(size, sig.ndim)
    spacing = _batch_align(spacing, sig.ndim)
    return sig * size * spacing


def sigma_frac_to_mm(sigma_frac: Any, crop_size_wh: Any, crop_spacing_mm: Any) -> Any:
    """Point uncertainty in millimetres, ``sigma_p_mm = sqrt(sigma_x_mm^2 + sigma_y_mm^2)``.

    Args:
        sigma_frac: ``(..., 2)`` per-axis standard deviations ``(sigma_x, sigma_y)`` in fractions
            (e.g. ``result.sigma_xy_frac("total")``), tensor or array.
        crop_size_wh: ``(W, H)`` crop size in crop pixels, or ``(B, 2)`` per sample.
        crop_spacing_mm: ``(sx, sy)`` mm per crop pixel, ``(B, 2)`` per sample, or None (unknown).

    Returns:
        ``(...)`` ``sigma_p_mm``; NaN where the spacing is unknown (None, NaN, <= 0).
    """
    mm = sigma_xy_frac_to_mm(sigma_frac, crop_size_wh, crop_spacing_mm)
    if isinstance(mm, torch.Tensor):
        return torch.sqrt((mm**2).sum(dim=-1))
    return np.sqrt((mm**2).sum(axis=-1))
