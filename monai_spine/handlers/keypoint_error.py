"""Ignite handler for :class:`~monai_spine.metrics.keypoint_error.KeypointErrorMetric`.

The handler reads the evaluator's post-processed output (``engine.state.output``), either a dict of
batched values or a list of per-sample dicts (MONAI ``decollate=True``), with the keys

``"pred_px"`` (B, K, 2), ``"keypoints_px"`` (B, K, 2), ``"visible"`` (B, K), ``"spacing_mm"`` (B, 2)
(NaN = unknown) and ``"image_id"`` (B,); only the first two are required.

At the end of an epoch:

* ``engine.state.metrics[name]`` is the mean point error (lower is better; use it as key metric
  with ``metric_cmp_fn=lambda cur, prev: prev < 0 or cur < prev``);
* every entry of :func:`~monai_spine.metrics.keypoint_error.summarize_errors` is written to
  ``engine.state.metrics`` as ``prefix + key`` (``"val_mean_mm"``, ``"val_sdr_2.0mm"``,
  ``"val_corner/mean_mm"``), so StatsHandler and MLFlowHandler log them; the keys end in the unit, so
  an epoch without spacing logs ``"val_mean_px"`` and never a pixel value under a mm name;
* ``engine.state.metrics[prefix + "spacing_known"]`` is 1.0 (errors in mm) or 0.0 (in px);
* ``engine.state.metric_units[name]`` is the unit string and, with ``save_details``,
  ``engine.state.metric_details[name]`` the (N, K) error tensor (NaN = invisible point).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler

from monai_spine.data.keypoints import KeypointScheme
from monai_spine.metrics.keypoint_error import DEFAULT_THRESHOLDS_MM, KeypointErrorMetric

__all__ = ["KeypointErrorHandler", "OUTPUT_KEYS"]

#: default keys of engine.state.output, in the order (prediction, ground truth, visible, spacing, image id)
OUTPUT_KEYS = ("pred_px", "keypoints_px", "visible", "spacing_mm", "image_id")


class KeypointErrorHandler(IgniteMetricHandler):
    """Keypoint error metric handler: mean error as the value, the full summary as extra metrics.

    Args:
        scheme: keypoint scheme name or object (its point types split the summary); None: no split.
        output_transform: maps ``engine.state.output`` to one of: a dict with ``keys``; a list of such
            per-sample dicts; or a tuple ``(pred_px, keypoints_px[, visible[, spacing_mm[, image_id]]])``
            of batched values or of per-sample lists. Default: identity.
        save_details: store the (N, K) errors in ``engine.state.metric_details[name]``.
        prefix: prepended to the summary keys written to ``engine.state.metrics``.
        keys: the five output keys, in the order of :data:`OUTPUT_KEYS`.
        thresholds_mm, scan_threshold_mm, fit_failure_mm, on_mixed_spacing: passed to
            :class:`KeypointErrorMetric`.

    Example::

        KeypointErrorHandler(scheme="lateral5", prefix="val_").attach(evaluator, "val_mean_error")
    """

    def __init__(
        self,
        scheme: str | KeypointScheme | None = "lateral5",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        prefix: str = "val_",
        keys: Sequence[str] = OUTPUT_KEYS,
        thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
        scan_threshold_mm: float = 2.0,
        fit_failure_mm: float = 3.0,
        on_mixed_spacing: str = "px",
    ) -> None:
        if len(keys) != len(OUTPUT_KEYS):
            raise ValueError(f"keys: expected {len(OUTPUT_KEYS)} names for {OUTPUT_KEYS}, got {list(keys)}")
        self.keys = tuple(keys)
        self.prefix = prefix
        self.unit: str | None = None
        metric_fn = KeypointErrorMetric(
            scheme=scheme,
            reduction="mean",
            thresholds_mm=thresholds_mm,
            scan_threshold_mm=scan_threshold_mm,
            fit_failure_mm=fit_failure_mm,
            on_mixed_spacing=on_mixed_spacing,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

    @torch.no_grad()
    def iteration_completed(self, engine: Any) -> None:
        """Feed the whole transformed output to :meth:`update` (no ignite (y_pred, y) unrolling)."""
        self.update(self._output_transform(engine.state.output))

    def _fields(self, output: Any) -> list[Any]:
        """The five fields (None where absent) from a dict, a list of dicts, or a positional tuple."""
        if isinstance(output, Mapping):
            return [output.get(k) for k in self.keys]
        if isinstance(output, Sequence) and len(output) > 0 and all(isinstance(o, Mapping) for o in output):
            return [None if k not in output[0] else [o[k] for o in output] for k in self.keys]
        if isinstance(output, Sequence) and 2 <= len(output) <= len(self.keys):
            return list(output) + [None] * (len(self.keys) - len(output))
        raise ValueError(
            f"{self.__class__.__name__}: engine output must be a dict with keys {self.keys[:2]} (and optionally "
            f"{self.keys[2:]}), a list of such dicts, or a tuple of 2 to 5 values; got {type(output).__name__}"
        )

    def update(self, output: Any) -> None:  # type: ignore[override]
        """Add one iteration's output (see :meth:`_fields` for the accepted forms)."""
        pred, gt, visible, spacing, image_id = self._fields(output)
        if pred is None or gt is None:
            raise KeyError(f"{self.__class__.__name__}: engine output lacks {self.keys[0]!r} or {self.keys[1]!r}")
        self.metric_fn(pred, gt, visible=visible, spacing_mm=spacing, image_id=image_id)

    def compute(self) -> float:
        """Mean error in the epoch's unit; writes the summary, unit and details into the engine state."""
        metric: KeypointErrorMetric = self.metric_fn  # type: ignore[assignment]
        errors, unit, _ = metric.errors()
        summary = metric.summary()
        self.unit = unit
        self._is_reduced = True
        if self._engine is not None:
            state = self._engine.state
            for key, value in summary.items():
                state.metrics[f"{self.prefix}{key}"] = value
            state.metrics[f"{self.prefix}spacing_known"] = 1.0 if unit == "mm" else 0.0
            if not isinstance(getattr(state, "metric_units", None), dict):
                state.metric_units = {}
            state.metric_units[self._name] = unit
            if self.save_details:
                if not isinstance(getattr(state, "metric_details", None), dict):
                    state.metric_details = {}
                state.metric_details[self._name] = errors
        elif self.save_details:
            raise RuntimeError("please call the attach() function to connect expected engine first.")
        return summary[f"mean_{unit}"]
