"""The regressor's target codec: crop fractions <-> coordinates standardised on the training shape.

A BayeRegX regressor predicts the ``K`` keypoints of a vertebra crop. Regressing raw crop
fractions ``frac = (x + 0.5) / W`` (BayeRegX's own choice) makes every output start near 0 when the
network is initialised, far from the targets (about 0.2-0.8), and gives all coordinates the same
weight although they vary by different amounts. The codec centres each coordinate on the training
set's mean shape and divides it by its standard deviation::

    encode:  z = (frac - mean_frac) / scale_frac          (K, 2) per point and axis
    decode:  frac = mean_frac + z * scale_frac

so a fresh network predicts the mean shape and the loss weighs every coordinate by how much it
varies. Log-variances of :class:`~monai_spine.networks.regressor.BayeCBAM` move with the scale:
``logvar_frac = logvar_z + 2 log(scale_frac)``. With ``mean_frac = 0`` and ``scale_frac = 1`` (the
default, :meth:`KeypointRegressionCodec.identity`) the codec is the identity: the paper's targets.

The codec is an ``nn.Module`` whose two buffers sit inside the regressor (see
:class:`~monai_spine.networks.regressor.Baseline`, argument ``codec``), so a checkpoint carries it
and decoding at inference is exact; the network's ``forward`` returns decoded fractions, and the
training loss encodes both prediction and target again (:class:`~monai_spine.losses.gaussian_nll.EncodedLoss`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["KeypointRegressionCodec", "fit_regression_codec", "MIN_SCALE_FRAC"]

#: smallest standard deviation a coordinate may be divided by (crop fractions): a coordinate that
#: never varies in the training set is not blown up
MIN_SCALE_FRAC = 1e-3


class KeypointRegressionCodec(nn.Module):
    """Standardise ``(..., K, 2)`` crop fractions on a mean shape and a per-coordinate scale.

    Args:
        num_points: K.
        mean_frac: ``(K, 2)`` mean shape in crop fractions (default zeros: identity).
        scale_frac: ``(K, 2)`` standard deviation per coordinate in crop fractions, or a scalar
            (default ones: identity). Values below :data:`MIN_SCALE_FRAC` are raised to it.

    Buffers ``mean_frac`` and ``scale_frac`` are saved in the owning network's state dict.
    """

    def __init__(self, num_points: int, mean_frac: Any = None, scale_frac: Any = None) -> None:
        super().__init__()
        k = int(num_points)
        if k < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        mean = torch.zeros(k, 2) if mean_frac is None else torch.as_tensor(np.asarray(mean_frac, np.float32))
        scale = torch.ones(k, 2) if scale_frac is None else torch.as_tensor(np.asarray(scale_frac, np.float32))
        if scale.ndim == 0:
            scale = scale.expand(k, 2).clone()
        for name, t in (("mean_frac", mean), ("scale_frac", scale)):
            if tuple(t.shape) != (k, 2):
                raise ValueError(f"{name} must have shape ({k}, 2), got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite, got {t.tolist()}")
        if (scale <= 0).any():
            raise ValueError(f"scale_frac must be > 0, got {scale.tolist()}")
        self.register_buffer("mean_frac", mean.float().clone())
        self.register_buffer("scale_frac", scale.float().clamp(min=MIN_SCALE_FRAC))

    @classmethod
    def identity(cls, num_points: int) -> "KeypointRegressionCodec":
        """The paper's targets: ``z = frac``."""
        return cls(num_points)

    @property
    def num_points(self) -> int:
        """K."""
        return int(self.mean_frac.shape[0])

    @property
    def is_identity(self) -> bool:
        """Whether the codec leaves fractions unchanged."""
        return bool((self.mean_frac == 0).all() and (self.scale_frac == 1).all())

    # ------------------------------------------------------------------ coordinates
    def encode(self, frac: torch.Tensor) -> torch.Tensor:
        """``(..., K, 2)`` crop fractions -> standardised coordinates."""
        return (frac - self.mean_frac.to(frac)) / self.scale_frac.to(frac)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., K, 2)`` standardised coordinates -> crop fractions."""
        return self.mean_frac.to(z) + z * self.scale_frac.to(z)

    # ------------------------------------------------------------------ log-variances
    def encode_logvar(self, logvar_frac: torch.Tensor) -> torch.Tensor:
        """``(..., K, 2)`` log of squared fractions -> log of squared standardised units."""
        return logvar_frac - 2.0 * torch.log(self.scale_frac.to(logvar_frac))

    def decode_logvar(self, logvar_z: torch.Tensor) -> torch.Tensor:
        """``(..., K, 2)`` log of squared standardised units -> log of squared fractions."""
        return logvar_z + 2.0 * torch.log(self.scale_frac.to(logvar_z))

    # ------------------------------------------------------------------ network outputs and targets
    def encode_output(self, y: torch.Tensor) -> torch.Tensor:
        """Encode a network output or a target: ``(..., K, 2)`` coordinates, ``(..., K, 3)`` with a
        visibility channel (left as is) or ``(..., K, 4)`` means and log-variances."""
        c = y.shape[-1]
        if c == 2:
            return self.encode(y)
        if c == 3:
            return torch.cat([self.encode(y[..., :2]), y[..., 2:]], dim=-1)
        if c == 4:
            return torch.cat([self.encode(y[..., :2]), self.encode_logvar(y[..., 2:])], dim=-1)
        raise ValueError(f"expected (..., K, 2|3|4), got shape {tuple(y.shape)}")

    def decode_output(self, out: torch.Tensor) -> torch.Tensor:
        """Decode a raw network output: ``(..., K, 2)`` coordinates or ``(..., K, 4)`` with log-variances."""
        c = out.shape[-1]
        if c == 2:
            return self.decode(out)
        if c == 4:
            return torch.cat([self.decode(out[..., :2]), self.decode_logvar(out[..., 2:])], dim=-1)
        raise ValueError(f"expected (..., K, 2|4), got shape {tuple(out.shape)}")

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"mean_frac": [[x, y], ...], "scale_frac": [[sx, sy], ...]}``."""
        return {"mean_frac": self.mean_frac.tolist(), "scale_frac": self.scale_frac.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KeypointRegressionCodec":
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError: a key is missing.
        """
        for k in ("mean_frac", "scale_frac"):
            if k not in d:
                raise KeyError(f"codec record needs {k!r}, got keys {sorted(d)}")
        mean = np.asarray(d["mean_frac"], np.float32)
        return cls(mean.shape[0] if mean.ndim == 2 else 0, mean, d["scale_frac"])

    def extra_repr(self) -> str:
        return f"num_points={self.num_points}, identity={self.is_identity}"


def fit_regression_codec(
    keypoints_frac: Any, visible: Any = None, min_scale_frac: float = MIN_SCALE_FRAC
) -> KeypointRegressionCodec:
    """Fit the codec on training targets: per point and axis the mean and standard deviation.

    Args:
        keypoints_frac: ``(N, K, 2)`` crop fractions of the training crops (or an iterable of
            ``(K, 2)`` arrays).
        visible: ``(N, K)`` visibility (default: all finite points).
        min_scale_frac: floor of the scale.

    Returns:
        the fitted :class:`KeypointRegressionCodec`.

    Raises:
        ValueError: wrong shape, or a point visible in fewer than two crops.
    """
    kp = np.asarray(list(keypoints_frac) if not hasattr(keypoints_frac, "shape") else keypoints_frac, np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints_frac must have shape (N, K, 2), got {kp.shape}")
    vis = np.isfinite(kp).all(-1)
    if visible is not None:
        v = np.asarray(list(visible) if not hasattr(visible, "shape") else visible).astype(bool)
        if v.shape != kp.shape[:2]:
            raise ValueError(f"visible must have shape {kp.shape[:2]}, got {v.shape}")
        vis &= v
    counts = vis.sum(0)
    if (counts < 2).any():
        raise ValueError(f"every point must be visible in at least two training crops, counts per point {counts.tolist()}")
    x = np.where(vis[..., None], kp, 0.0)
    mean = x.sum(0) / counts[:, None]
    var = (np.where(vis[..., None], kp - mean, 0.0) ** 2).sum(0) / (counts[:, None] - 1)
    scale = np.maximum(np.sqrt(var), float(min_scale_frac))
    if not math.isfinite(float(scale.sum())):
        raise ValueError("codec scale is not finite")
    return KeypointRegressionCodec(kp.shape[1], mean, scale)
