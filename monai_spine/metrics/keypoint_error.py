"""Keypoint error metrics: point-to-point distance in mm (or pixels when spacing is unknown).

Two layers:

* plain functions :func:`keypoint_errors` (per-point Euclidean error of one batch) and
  :func:`summarize_errors` (mean / median / std / SDR / share of scans / fit failure, overall and per
  point type), usable from scripts and notebooks on numpy arrays or torch tensors;
* :class:`KeypointErrorMetric`, a MONAI :class:`~monai.metrics.CumulativeIterationMetric` that
  accumulates the per-point pixel offsets, spacing and image ids of every iteration and reduces them
  at the end of an epoch.

Units. Errors are in millimetres when the pixel spacing ``(sx, sy)`` of **every** sample is known:
``error = sqrt((dx * sx) ** 2 + (dy * sy) ** 2)`` (anisotropic spacing handled). When the spacing of
any sample is unknown (NaN, or ``spacing_mm=None``), all errors are in pixels and the unit is ``"px"``
(``on_mixed_spacing="px"``, the default, with a warning when only some samples lack spacing), or a
``ValueError`` is raised (``on_mixed_spacing="raise"``). Pixels are never labelled as millimetres,
and a batch is never a mix of both units.

Point errors of invisible points (``visible=False``, or non-finite ground truth) are NaN and are not
counted. A visible point whose prediction is not finite (NaN/inf) is a failed prediction: its error
is ``+inf`` (it counts as a miss for SDR and as a fit failure, and makes the mean infinite) rather than
being silently dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from monai_spine.data.keypoints import KeypointScheme, get_scheme

__all__ = [
    "UNITS",
    "DEFAULT_THRESHOLDS_MM",
    "keypoint_errors",
    "summarize_errors",
    "summary_keys",
    "KeypointErrorMetric",
]

#: the two units an error can have
UNITS = ("mm", "px")
#: success detection rate thresholds (in the unit of the errors)
DEFAULT_THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)
_MIXED_POLICIES = ("px", "raise")
_REDUCTIONS = ("mean", "median", "none")


# ----------------------------------------------------------------------------------------------
# conversion helpers
# ----------------------------------------------------------------------------------------------
def _to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Tensor / MetaTensor / array / sequence to a numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        if hasattr(x, "as_tensor"):  # MetaTensor: drop the metadata
            x = x.as_tensor()
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _as_batch(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """A batch-first tensor/array, or a list of per-sample items (decollated), as one numpy array."""
    if isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (torch.Tensor, np.ndarray)):
        return np.stack([_to_numpy(i, dtype) for i in x], axis=0)
    return _to_numpy(x, dtype)


def _check_points(points: np.ndarray, name: str) -> None:
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"{name}: keypoints must have shape (B, K, 2) in (x, y) pixels, got {points.shape}")


def _spacing_batch(spacing_mm: Any, batch: int) -> np.ndarray:
    """(B, 2) float64 spacing with NaN rows for unknown; validates known values."""
    if spacing_mm is None:
        return np.full((batch, 2), np.nan)
    sp = _as_batch(spacing_mm)
    if sp.shape == (2,):
        sp = np.broadcast_to(sp, (batch, 2)).copy()
    if sp.shape != (batch, 2):
        raise ValueError(f"spacing_mm: expected shape (B, 2) = ({batch}, 2) or (2,), got {sp.shape}")
    unknown = np.any(np.isnan(sp), axis=-1)
    known = sp[~unknown]
    if known.size and (not np.all(np.isfinite(known)) or np.any(known <= 0)):
        raise ValueError(
            f"spacing_mm: known spacings must be positive and finite (unknown is NaN), got {sp[~unknown].tolist()}"
        )
    sp[unknown] = np.nan
    return sp


def _offsets_px(pred_px: Any, gt_px: Any, visible: Any = None) -> np.ndarray:
    """(B, K, 2) pixel offsets ``pred - gt``: NaN for invisible points, +inf for failed predictions."""
    pred = _as_batch(pred_px)
    gt = _as_batch(gt_px)
    _check_points(pred, "pred_px")
    _check_points(gt, "keypoints_px")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_px shape {pred.shape} does not match keypoints_px shape {gt.shape}")
    vis = np.all(np.isfinite(gt), axis=-1)
    if visible is not None:
        v = _as_batch(visible, dtype=bool)
        if v.shape != gt.shape[:2]:
            raise ValueError(f"visible: mask shape {v.shape} does not match keypoints {gt.shape[:2]}")
        vis &= v
    with np.errstate(invalid="ignore"):
        delta = pred - gt
    failed = vis[..., None] & ~np.isfinite(delta)
    delta[failed] = np.inf
    delta[~vis] = np.nan
    return delta


def _errors_from_offsets(
    delta_px: np.ndarray, spacing_mm: np.ndarray, on_mixed_spacing: str = "px"
) -> tuple[np.ndarray, str]:
    """Euclidean error per point from (B, K, 2) offsets and (B, 2) spacing (NaN = unknown)."""
    if on_mixed_spacing not in _MIXED_POLICIES:
        raise ValueError(f"on_mixed_spacing must be one of {_MIXED_POLICIES}, got {on_mixed_spacing!r}")
    known = ~np.any(np.isnan(spacing_mm), axis=-1) if spacing_mm.size else np.zeros(0, dtype=bool)
    if known.size and np.all(known):
        scaled = delta_px * spacing_mm[:, None, :]
        unit = "mm"
    else:
        if known.any():
            msg = (
                f"pixel spacing is unknown for {int((~known).sum())} of {known.size} samples: "
                "all keypoint errors are reported in pixels (unit 'px')"
            )
            if on_mixed_spacing == "raise":
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=3)
        scaled = delta_px
        unit = "px"
    with np.errstate(invalid="ignore", over="ignore"):
        errors = np.sqrt(np.sum(scaled**2, axis=-1))
    # an invisible point has NaN offsets; a failed one +inf: keep both through the sum
    errors[np.any(np.isnan(delta_px), axis=-1)] = np.nan
    return errors, unit


# ----------------------------------------------------------------------------------------------
# plain functions
# ----------------------------------------------------------------------------------------------
def keypoint_errors(
    pred_px: Any,
    gt_px: Any,
    visible: Any = None,
    spacing_mm: Any = None,
    on_mixed_spacing: str = "px",
) -> tuple[np.ndarray | torch.Tensor, str]:
    """Euclidean error of every predicted point, in mm when the spacing is known, else in pixels.

    Args:
        pred_px: (B, K, 2) predicted points in (x, y) pixels of the original image (tensor, array, or
            a list of B (K, 2) items).
        gt_px: (B, K, 2) ground-truth points, same convention.
        visible: (B, K) bool mask; None means every point with finite ground truth is visible.
        spacing_mm: (B, 2) or (2,) spacing ``(sx, sy)`` in mm per pixel, NaN rows for unknown spacing;
            None means unknown for all samples.
        on_mixed_spacing: what to do when only some samples have a spacing: ``"px"`` (default) reports
            every error of the batch in pixels with a warning; ``"raise"`` raises ``ValueError``.

    Returns:
        ``(errors, unit)``: errors (B, K) float64 (a torch tensor when ``pred_px`` is a tensor, else a
        numpy array), NaN for invisible points, +inf for visible points with a non-finite prediction;
        unit ``"mm"`` (spacing known for all samples) or ``"px"``.

    Raises:
        ValueError: bad shapes, non-positive spacing, or mixed spacing with ``on_mixed_spacing="raise"``.
    """
    delta = _offsets_px(pred_px, gt_px, visible)
    spacing = _spacing_batch(spacing_mm, delta.shape[0])
    errors, unit = _errors_from_offsets(delta, spacing, on_mixed_spacing)
    if isinstance(pred_px, torch.Tensor):
        return torch.as_tensor(errors, device=pred_px.device), unit
    return errors, unit


def _fmt(threshold: float) -> str:
    """Threshold as it appears in a key: 2 -> '2.0', 2.5 -> '2.5', 2.25 -> '2.25'."""
    return str(float(threshold))


def summary_keys(
    unit: str = "mm",
    point_types: Sequence[str] | None = None,
    thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
    scan_threshold_mm: float = 2.0,
    fit_failure_mm: float = 3.0,
    with_scans: bool = True,
) -> list[str]:
    """The keys :func:`summarize_errors` returns, in order (useful for CSV headers and configs)."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    base = ["count", f"mean_{unit}", f"median_{unit}", f"std_{unit}", f"max_{unit}"]
    base += [f"sdr_{_fmt(t)}{unit}" for t in thresholds_mm]
    base += [f"fit_failure_{_fmt(fit_failure_mm)}{unit}"]
    if with_scans:
        base += ["num_scans", f"scans_below_{_fmt(scan_threshold_mm)}{unit}"]
    keys = list(base)
    if point_types is not None:
        for ptype in dict.fromkeys(point_types):  # unique, in order of first appearance
            keys += [f"{ptype}/{k}" for k in base]
    return keys


def _summary_block(
    err: np.ndarray,
    ids: np.ndarray | None,
    unit: str,
    thresholds: Sequence[float],
    scan_threshold: float,
    fit_failure: float,
) -> dict[str, float]:
    """Statistics of a (N, k) error block (NaN = not counted); ids (N,) or None."""
    out: dict[str, float] = {}
    counted = ~np.isnan(err)
    values = err[counted]
    n = int(values.size)
    out["count"] = float(n)
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out[f"mean_{unit}"] = float(np.mean(values)) if n else float("nan")
        out[f"median_{unit}"] = float(np.median(values)) if n else float("nan")
        out[f"std_{unit}"] = float(np.std(values)) if n else float("nan")
        out[f"max_{unit}"] = float(np.max(values)) if n else float("nan")
    for t in thresholds:
        out[f"sdr_{_fmt(t)}{unit}"] = float(np.mean(values <= t)) if n else float("nan")
    out[f"fit_failure_{_fmt(fit_failure)}{unit}"] = float(np.mean(values > fit_failure)) if n else float("nan")
    if ids is not None:
        scan_means = []
        for image_id in np.unique(ids):
            scan_values = err[ids == image_id][counted[ids == image_id]]
            if scan_values.size:
                scan_means.append(float(np.mean(scan_values)))
        out["num_scans"] = float(len(scan_means))
        key = f"scans_below_{_fmt(scan_threshold)}{unit}"
        out[key] = float(np.mean(np.asarray(scan_means) < scan_threshold)) if scan_means else float("nan")
    return out


def summarize_errors(
    errors: Any,
    image_ids: Any = None,
    point_types: Sequence[str] | None = None,
    unit: str = "mm",
    thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
    scan_threshold_mm: float = 2.0,
    fit_failure_mm: float = 3.0,
) -> dict[str, float]:
    """Summary statistics of per-point errors, overall and split by point type.

    All thresholds are in the unit of ``errors``: with ``unit="px"`` (spacing unknown) the same
    numbers are read as pixels and the keys end in ``px`` (``"sdr_2.0px"``), so a pixel result can never
    be mistaken for a millimetre one.

    Keys (``{u}`` is the unit, ``{t}`` a threshold written as ``str(float(t))``, e.g. ``2.0``, ``2.5``):

    * ``count``: number of counted (visible) points;
    * ``mean_{u}``, ``median_{u}``, ``std_{u}`` (population std, ddof=0), ``max_{u}`` of point errors;
    * ``sdr_{t}{u}``: success detection rate, share of points with ``error <= t``, per ``thresholds_mm``;
    * ``fit_failure_{t}{u}``: share of points with ``error > fit_failure_mm``;
    * with ``image_ids`` only: ``num_scans`` (images with at least one counted point) and
      ``scans_below_{t}{u}``, the share of those images whose mean error over all their counted
      points is ``< scan_threshold_mm``;
    * with ``point_types``: every key above again for each type, prefixed ``"{type}/"``
      (``"corner/mean_mm"``, ``"spinous_process/sdr_2.0mm"``); per type, a scan's mean is over the
      points of that type.

    Shares are fractions in [0, 1]. Statistics of an empty set are NaN (``count`` 0). Keys contain
    only letters, digits, ``_``, ``.`` and ``/``, which MLflow accepts as metric names.

    Args:
        errors: (N, K) errors (NaN = invisible, not counted; +inf = failed prediction, counted).
        image_ids: (N,) id of the image each row comes from; None omits the scan statistics.
        point_types: K type names (``scheme.point_types``); None omits the split.
        unit: ``"mm"`` or ``"px"``, the unit of ``errors``.
        thresholds_mm: SDR thresholds, in ``unit``.
        scan_threshold_mm: threshold on the mean error of a scan, in ``unit``.
        fit_failure_mm: a point with a larger error is a fit failure, in ``unit``.

    Returns:
        dict of key -> float, in the order of :func:`summary_keys`.

    Raises:
        ValueError: bad unit, or shapes of ``errors``, ``image_ids``, ``point_types`` that disagree.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    err = _to_numpy(errors)
    if err.ndim == 1:
        err = err[:, None]
    if err.ndim != 2:
        raise ValueError(f"errors: expected shape (N, K), got {err.shape}")
    ids = None
    if image_ids is not None:
        ids = _as_batch(image_ids).reshape(-1)
        if ids.shape != (err.shape[0],):
            raise ValueError(f"image_ids: expected {err.shape[0]} ids (one per row of errors), got {ids.shape}")
    kwargs = dict(unit=unit, thresholds=thresholds_mm, scan_threshold=scan_threshold_mm, fit_failure=fit_failure_mm)
    out = _summary_block(err, ids, **kwargs)
    if point_types is not None:
        types = list(point_types)
        if len(types) != err.shape[1]:
            raise ValueError(f"point_types: expected {err.shape[1]} types (one per point), got {len(types)}")
        for ptype in dict.fromkeys(types):
            cols = [i for i, t in enumerate(types) if t == ptype]
            block = _summary_block(err[:, cols], ids, **kwargs)
            out.update({f"{ptype}/{k}": v for k, v in block.items()})
    return out


# ----------------------------------------------------------------------------------------------
# cumulative metric
# ----------------------------------------------------------------------------------------------
class KeypointErrorMetric(CumulativeIterationMetric):
    """Cumulative keypoint error over the iterations of an epoch (MONAI metric API).

    Each call adds one batch; the metric buffers the per-point pixel offsets (B, K, 2), the spacing
    (B, 2) (NaN when unknown) and the image ids (B,) (NaN when not given), so the unit is decided once
    for the whole epoch in :meth:`errors`: mm when every sample had a spacing, else px.

    Example::

        metric = KeypointErrorMetric(scheme="lateral5")
        for batch in loader:
            metric(y_pred=pred_px, y=batch["keypoints_px"], visible=batch["visible"],
                   spacing_mm=batch["spacing_mm"], image_id=batch["image_id"])
        mean_error = metric.aggregate().item()    # in metric.unit
        report = metric.summary()                 # {"mean_mm": ..., "sdr_2.0mm": ..., "corner/mean_mm": ...}
        metric.reset()

    Args:
        scheme: keypoint scheme name or :class:`KeypointScheme` (its ``point_types`` split the
            summary), or None for no split.
        reduction: what :meth:`aggregate` returns: ``"mean"`` or ``"median"`` error (0-d tensor), or
            ``"none"`` for the (N, K) error tensor.
        return_summary: when True :meth:`aggregate` returns the :meth:`summary` dict instead.
        thresholds_mm: SDR thresholds (in the unit of the errors, see :func:`summarize_errors`).
        scan_threshold_mm: threshold on a scan's mean error.
        fit_failure_mm: fit failure threshold.
        on_mixed_spacing: ``"px"`` (report everything in pixels, with a warning) or ``"raise"``.
    """

    def __init__(
        self,
        scheme: str | KeypointScheme | None = "lateral5",
        reduction: str = "mean",
        return_summary: bool = False,
        thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
        scan_threshold_mm: float = 2.0,
        fit_failure_mm: float = 3.0,
        on_mixed_spacing: str = "px",
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if on_mixed_spacing not in _MIXED_POLICIES:
            raise ValueError(f"on_mixed_spacing must be one of {_MIXED_POLICIES}, got {on_mixed_spacing!r}")
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        self.reduction = reduction
        self.return_summary = return_summary
        self.thresholds_mm = tuple(float(t) for t in thresholds_mm)
        self.scan_threshold_mm = float(scan_threshold_mm)
        self.fit_failure_mm = float(fit_failure_mm)
        self.on_mixed_spacing = on_mixed_spacing

    @property
    def point_types(self) -> tuple[str, ...] | None:
        """Point types of the scheme (None without a scheme)."""
        return None if self.scheme is None else self.scheme.point_types

    def __call__(  # type: ignore[override]
        self,
        y_pred: Any,
        y: Any = None,
        visible: Any = None,
        spacing_mm: Any = None,
        image_id: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Add one batch; return its (B, K) per-point errors (in the batch's own unit).

        Args:
            y_pred: (B, K, 2) predicted points in original image pixels, or a list of B (K, 2) items.
            y: (B, K, 2) ground-truth points, same forms.
            visible: (B, K) mask (or list of (K,)); None = finite ground truth.
            spacing_mm: (B, 2) / (2,) spacing, NaN rows unknown (or list of (2,)); None = unknown.
            image_id: (B,) image ids (or list of scalars); None = not known (no scan statistics).
            kwargs: ignored (MONAI API compatibility).
        """
        if y is None:
            raise ValueError(f"{self.__class__.__name__} needs ground-truth keypoints `y`")
        buffers = self._compute_tensor(y_pred, y, visible=visible, spacing_mm=spacing_mm, image_id=image_id)
        self.extend(*buffers)
        delta, spacing = buffers[0].numpy(), buffers[1].numpy()
        errors, _ = _errors_from_offsets(delta, spacing, self.on_mixed_spacing)
        return torch.as_tensor(errors)

    def _compute_tensor(  # type: ignore[override]
        self,
        y_pred: Any,
        y: Any = None,
        visible: Any = None,
        spacing_mm: Any = None,
        image_id: Any = None,
        **kwargs: Any,
    ) -> list[torch.Tensor]:
        """Batch-first buffers of one iteration: [offsets_px (B, K, 2), spacing_mm (B, 2), image_id (B,)]."""
        delta = _offsets_px(y_pred, y, visible)
        batch, k = delta.shape[:2]
        if self.scheme is not None and k != self.scheme.num_points:
            raise ValueError(
                f"y_pred: scheme {self.scheme.name!r} has {self.scheme.num_points} points per vertebra, "
                f"got shape {delta.shape}"
            )
        spacing = _spacing_batch(spacing_mm, batch)
        if image_id is None:
            ids = np.full(batch, np.nan)
        else:
            ids = _as_batch(image_id).reshape(-1)
            if ids.shape != (batch,):
                raise ValueError(f"image_id: expected {batch} ids, got shape {ids.shape}")
        return [torch.as_tensor(delta), torch.as_tensor(spacing), torch.as_tensor(ids)]

    def errors(self) -> tuple[torch.Tensor, str, torch.Tensor | None]:
        """All buffered errors.

        Returns:
            ``(errors, unit, image_ids)``: (N, K) float64 errors (NaN invisible), ``"mm"``/``"px"``, and
            (N,) image ids, or None when any iteration had no ids. With nothing buffered: a (0, K)
            tensor (K of the scheme, 0 without one), unit ``"px"`` (nothing is claimed in mm).
        """
        buffers = self.get_buffer()
        if buffers is None:
            k = 0 if self.scheme is None else self.scheme.num_points
            return torch.zeros((0, k), dtype=torch.float64), "px", None
        delta, spacing, ids = (b.numpy() for b in buffers)
        errors, unit = _errors_from_offsets(delta, spacing, self.on_mixed_spacing)
        ids_t = None if np.any(np.isnan(ids)) else torch.as_tensor(ids)
        return torch.as_tensor(errors), unit, ids_t

    @property
    def unit(self) -> str:
        """Unit of the buffered errors: ``"mm"`` when every sample so far had a spacing, else ``"px"``."""
        return self.errors()[1]

    def summary(self) -> dict[str, float]:
        """:func:`summarize_errors` of everything buffered (keys end in the unit)."""
        errors, unit, ids = self.errors()
        return summarize_errors(
            errors,
            image_ids=ids,
            point_types=self.point_types,
            unit=unit,
            thresholds_mm=self.thresholds_mm,
            scan_threshold_mm=self.scan_threshold_mm,
            fit_failure_mm=self.fit_failure_mm,
        )

    def aggregate(  # type: ignore[override]
        self, reduction: str | None = None, return_summary: bool | None = None
    ) -> Any:
        """Reduce the buffered errors.

        Args:
            reduction: overrides the constructor's ``reduction``.
            return_summary: overrides the constructor's ``return_summary``.

        Returns:
            the summary dict, or the mean/median error as a 0-d float64 tensor (NaN when no point was
            counted; in :attr:`unit`), or the (N, K) error tensor for ``"none"``.
        """
        if return_summary if return_summary is not None else self.return_summary:
            return self.summary()
        reduction = self.reduction if reduction is None else reduction
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        errors, _, _ = self.errors()
        if reduction == "none":
            return errors
        values = errors[~torch.isnan(errors)]
        if values.numel() == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        with np.errstate(invalid="ignore"):  # +inf errors (failed predictions) stay +inf
            value = np.mean(values.numpy()) if reduction == "mean" else np.median(values.numpy())
        return torch.tensor(float(value), dtype=torch.float64)
