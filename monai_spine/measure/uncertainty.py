"""Carry keypoint uncertainty through to clinical measurements by sampling.

A keypoint predictor gives, per point, a mean position and a standard deviation (``sigma``). Every
measurement of :mod:`monai_spine.measure` is a deterministic function of the points, so its
uncertainty is obtained by Monte-Carlo propagation:

1. draw ``S`` keypoint sets from independent normal distributions, one per point and axis,
   ``x_s = x + sigma_x * z``, ``y_s = y + sigma_y * z'`` (``z, z'`` standard normal, seeded);
2. compute the measurement on each set (all measurement functions accept a leading sample axis);
3. report the mean, the standard deviation and a central interval (default 95 %: the 2.5th and
   97.5th percentiles) of the ``S`` values, next to the value computed on the mean points.

``sigma`` may be isotropic (one number per point, the same on both axes) or per axis. Note that
the predictor's ``sigma_p = sqrt(sigma_x^2 + sigma_y^2)`` is a *radial* uncertainty: the isotropic
per-axis value it implies is ``sigma_p / sqrt(2)`` (see :func:`sigma_p_to_axis`).

Samples are independent between points (the predictor gives no covariances), which is a
conservative choice for measurements built from neighbouring points of one vertebra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_CI",
    "Summary",
    "sigma_p_to_axis",
    "expand_sigma_px",
    "sample_keypoints",
    "summarize_samples",
    "propagate",
]

#: default number of Monte-Carlo samples
DEFAULT_NUM_SAMPLES = 500
#: default central interval (probability mass between ``ci_low`` and ``ci_high``)
DEFAULT_CI = 0.95


@dataclass
class Summary:
    """A measurement and its sampled uncertainty (all arrays of one shape, the measurement's).

    Attributes:
        value: the measurement computed on the given (mean) keypoints.
        mean: mean over the samples (NaN samples ignored).
        std: standard deviation over the samples (``ddof=0``).
        ci_low: lower end of the central interval.
        ci_high: upper end of the central interval.
        num_valid: number of finite samples.
        ci: the interval's probability mass (e.g. 0.95).
    """

    value: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    num_valid: np.ndarray
    ci: float = DEFAULT_CI

    def item(self, index: Any = ()) -> dict[str, float | int | None]:
        """JSON-ready dict of one element: ``value, mean, std, ci_low, ci_high, num_valid``."""

        def f(a: np.ndarray) -> float | None:
            v = float(np.asarray(a)[index])
            return v if np.isfinite(v) else None

        return {
            "value": f(self.value),
            "mean": f(self.mean),
            "std": f(self.std),
            "ci_low": f(self.ci_low),
            "ci_high": f(self.ci_high),
            "num_valid": int(np.asarray(self.num_valid)[index]),
        }


def sigma_p_to_axis(sigma_p: Any) -> np.ndarray:
    """Per-axis standard deviation implied by a radial ``sigma_p`` under isotropy: ``sigma_p / sqrt(2)``."""
    return np.asarray(sigma_p, dtype=np.float64) / np.sqrt(2.0)


def expand_sigma_px(sigma_px: Any, shape: tuple[int, ...], name: str = "sigma_px") -> np.ndarray:
    """Broadcast a point sigma to the ``(..., N, K, 2)`` shape of the keypoints.

    Args:
        sigma_px: a number (all points and axes), ``(N, K)`` (isotropic per point) or ``(N, K, 2)``
            (per axis, ``(sigma_x, sigma_y)``), in pixels. NaN (unknown) is treated as 0 only where
            the keypoint itself is NaN; otherwise it is an error.
        shape: the keypoints' shape ``(N, K, 2)``.
        name: what to call the argument in error messages.

    Returns:
        float64 array of ``shape``.

    Raises:
        ValueError: negative values or a shape that does not fit.
    """
    sig = np.asarray(sigma_px, dtype=np.float64)
    if sig.ndim == len(shape) - 1 and sig.shape == tuple(shape[:-1]):
        sig = np.repeat(sig[..., None], shape[-1], axis=-1)
    try:
        out = np.broadcast_to(sig, shape).astype(np.float64)
    except ValueError:
        raise ValueError(
            f"{name}: shape {sig.shape} fits neither the points {tuple(shape[:-1])} nor {tuple(shape)}"
        ) from None
    if np.any(out[np.isfinite(out)] < 0):
        raise ValueError(f"{name}: standard deviations must be >= 0")
    return out


def sample_keypoints(
    keypoints_px: Any, sigma_px: Any, num_samples: int = DEFAULT_NUM_SAMPLES, seed: int | None = 0
) -> np.ndarray:
    """Draw keypoint sets from independent normal distributions around the given points.

    Args:
        keypoints_px: (N, K, 2) mean points (x, y) in pixels; NaN points stay NaN.
        sigma_px: standard deviation in pixels: a number, (N, K) or (N, K, 2) (see
            :func:`expand_sigma_px`). A point with a NaN sigma (and a finite position) raises.
        num_samples: S >= 1.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same samples.

    Returns:
        (S, N, K, 2) float64 samples.

    Raises:
        ValueError: bad shapes, ``num_samples < 1`` or an unknown sigma at a finite point.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    if kp.ndim < 1 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints_px must have shape (..., 2), got {kp.shape}")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    sig = expand_sigma_px(sigma_px, kp.shape)
    bad = np.isfinite(kp) & ~np.isfinite(sig)
    if np.any(bad):
        raise ValueError("sigma_px is NaN/inf at a point with a finite position; give every point a sigma")
    sig = np.where(np.isfinite(sig), sig, 0.0)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((int(num_samples),) + kp.shape)
    return kp[None] + sig[None] * z


def summarize_samples(samples: Any, value: Any = None, ci: float = DEFAULT_CI) -> Summary:
    """Mean, standard deviation and central interval over the first axis, ignoring NaN samples.

    Args:
        samples: (S, ...) values of one measurement.
        value: the measurement on the mean points (same shape as one sample); NaN when None.
        ci: probability mass of the central interval, in (0, 1).

    Returns:
        :class:`Summary`; where no sample is finite everything is NaN and ``num_valid`` is 0.
    """
    if not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim < 1 or s.shape[0] < 1:
        raise ValueError(f"samples must have a leading sample axis with at least one sample, got {s.shape}")
    shape = s.shape[1:]
    flat = s.reshape(s.shape[0], -1)
    finite = np.isfinite(flat)
    n = finite.sum(axis=0)
    ok = n > 0
    tail = (1.0 - float(ci)) / 2.0
    mean = np.full(flat.shape[1], np.nan)
    std = np.full(flat.shape[1], np.nan)
    lo = np.full(flat.shape[1], np.nan)
    hi = np.full(flat.shape[1], np.nan)
    if np.any(ok):
        sub = np.where(finite[:, ok], flat[:, ok], np.nan)
        mean[ok] = np.nanmean(sub, axis=0)
        std[ok] = np.nanstd(sub, axis=0)
        q = np.nanquantile(sub, [tail, 1.0 - tail], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    val = np.full(shape, np.nan) if value is None else np.broadcast_to(np.asarray(value, np.float64), shape)
    return Summary(
        value=np.array(val),
        mean=mean.reshape(shape),
        std=std.reshape(shape),
        ci_low=lo.reshape(shape),
        ci_high=hi.reshape(shape),
        num_valid=n.reshape(shape),
        ci=float(ci),
    )


def propagate(
    fn: Callable[..., Mapping[str, Any]],
    keypoints_px: Any | list[Any],
    sigma_px: Any | list[Any] | None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int | None = 0,
    ci: float = DEFAULT_CI,
) -> dict[str, Summary]:
    """Propagate point uncertainty through a vectorised measurement function.

    Args:
        fn: takes one keypoint array per input, each ``(..., N, K, 2)`` with any leading axes, and
            returns a dict ``name -> array`` whose leading axes are the inputs' leading axes.
        keypoints_px: (N, K, 2) points, or a list of such arrays (e.g. flexion and extension views;
            each gets its own independent samples).
        sigma_px: the matching sigma(s) (see :func:`sample_keypoints`); None: no sampling, the
            summaries carry only ``value`` (mean/std/interval NaN, ``num_valid`` 0).
        num_samples: S.
        seed: seed of the first input; input ``i`` uses ``seed + i`` so inputs are independent.
        ci: central interval mass.

    Returns:
        dict ``name -> Summary`` (one per output of ``fn``).
    """
    multi = isinstance(keypoints_px, (list, tuple))
    kps = [np.asarray(k, dtype=np.float64) for k in (keypoints_px if multi else [keypoints_px])]
    values = {k: np.asarray(v, dtype=np.float64) for k, v in fn(*kps).items()}
    if sigma_px is None:
        out = {}
        for k, v in values.items():
            nan = np.full(v.shape, np.nan)
            out[k] = Summary(v, nan, nan, nan, nan, np.zeros(v.shape, dtype=int), float(ci))
        return out
    sigs = list(sigma_px) if multi else [sigma_px]
    if len(sigs) != len(kps):
        raise ValueError(f"got {len(kps)} keypoint arrays but {len(sigs)} sigmas")
    base = 0 if seed is None else int(seed)
    draws = [
        sample_keypoints(k, sg, num_samples, None if seed is None else base + i)
        for i, (k, sg) in enumerate(zip(kps, sigs))
    ]
    sampled = fn(*draws)
    return {k: summarize_samples(sampled[k], values[k], ci) for k in values}
