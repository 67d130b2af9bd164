"""Ignite handler of the vertebra detector's metrics (:mod:`monai_spine.metrics.detection`): the
evaluator's key metric in the bundle's ``detector_train.json``.

It reads the network maps from ``engine.state.output`` and each sample's geometry and ground truth
from ``engine.state.batch`` (:class:`~monai_spine.handlers.batch_metric.BatchSummaryMetric`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from monai_spine.codecs.detection import _np, decode_detections
from monai_spine.handlers.batch_metric import BatchSummaryMetric, batch_field
from monai_spine.metrics.detection import DetectionAccumulator, match_detections
from monai_spine.networks.detector import NUM_BOX_CHANNELS
from monai_spine.transforms.detection import boxes_to_image_px, points_to_image_px

__all__ = ["DetectionErrorHandler"]


def _field(container: Any, key: str) -> np.ndarray | None:
    return batch_field(container, key, _np)


class DetectionErrorHandler(BatchSummaryMetric):
    """Evaluator key metric: the detector's recall and centre errors on the validation radiographs.

    Every iteration it reads the network output ``engine.state.output[pred_key]`` ``(B, L + 4, H, W)``
    and, from ``engine.state.batch``, each sample's ``det_to_image`` affine, ground truth
    (``centres_px``, ``boxes_px``, ``present``), ``spacing_mm`` and ``image_id``; decodes
    (:func:`~monai_spine.codecs.detection.decode_detections`), maps to image pixels and matches
    (:func:`~monai_spine.metrics.detection.match_detections`). Batches
    may be a dict of batched values (``decollate=False``) or per-sample dicts.

    At the end of the epoch the value is ``penalised_error_{u}`` (lower is better) and every entry of
    :meth:`~monai_spine.metrics.detection.DetectionAccumulator.summary` goes to ``engine.state.metrics``
    as ``prefix + key`` (``val_recall``, ``val_centre_error_mean_mm``, ``val_recall/C3``, ...), so StatsHandler and
    MLFlowHandler log them.

    Args:
        levels: the region's level names (L).
        score_threshold, match_radius: see :func:`~monai_spine.metrics.detection.match_detections`.
        decode_method, nms_radius_px, gap_penalty: see :func:`~monai_spine.codecs.detection.decode_detections`.
        prefix: prepended to the summary keys.
        pred_key: engine output key of the network maps.
        affine_key, centres_key, boxes_key, present_key, spacing_key, image_id_key: batch keys.
    """

    def __init__(
        self,
        levels: Sequence[str],
        score_threshold: float = 0.2,
        match_radius: float | None = None,
        decode_method: str = "sequence",
        nms_radius_px: int = 2,
        gap_penalty: float = 0.5,
        prefix: str = "val_",
        pred_key: str = "pred",
        affine_key: str = "det_to_image",
        centres_key: str = "centres_px",
        boxes_key: str = "boxes_px",
        present_key: str = "present",
        spacing_key: str = "spacing_mm",
        image_id_key: str = "image_id",
        output_transform: Callable = lambda x: x,
    ) -> None:
        self.levels = list(levels)
        self.score_threshold = float(score_threshold)
        self.match_radius = match_radius
        self.decode_kwargs = {"method": str(decode_method), "nms_radius_px": int(nms_radius_px),
                              "gap_penalty": float(gap_penalty)}
        self.pred_key = pred_key
        self.batch_keys = (affine_key, centres_key, boxes_key, present_key, spacing_key, image_id_key)
        self.acc = DetectionAccumulator(self.levels)
        super().__init__(prefix=prefix, output_transform=output_transform)

    def reset(self) -> None:
        self.acc.reset()

    @torch.no_grad()
    def update(self, output: tuple[Any, Any]) -> None:  # type: ignore[override]
        """Add ``(batch, engine_output)`` of one iteration."""
        batch, out = output
        pred = _field(out, self.pred_key)
        if pred is None:
            raise KeyError(f"{type(self).__name__}: engine output has no {self.pred_key!r}")
        affine_k, centres_k, boxes_k, present_k, spacing_k, id_k = self.batch_keys
        fields = {}
        for k in (affine_k, centres_k, boxes_k, present_k):
            v = _field(batch, k)
            if v is None:
                raise KeyError(f"{type(self).__name__}: batch has no {k!r} (use detector_cases and LetterboxResized)")
            fields[k] = v
        spacing = _field(batch, spacing_k)
        ids = _field(batch, id_k)
        if pred.shape[1] != len(self.levels) + NUM_BOX_CHANNELS:
            raise ValueError(f"{type(self).__name__}: {pred.shape[1]} output channels for {len(self.levels)} levels")
        for b in range(pred.shape[0]):
            dec = decode_detections(pred[b], self.score_threshold, **self.decode_kwargs)
            a = fields[affine_k][b]
            m = match_detections(
                points_to_image_px(dec["centres_net_px"], a), dec["scores"], fields[centres_k][b], fields[boxes_k][b],
                fields[present_k][b], None if spacing is None else spacing[b], self.score_threshold,
                self.match_radius, boxes_to_image_px(dec["boxes_net_px"], a),
            )
            self.acc.add(int(ids[b]) if ids is not None else len(self.acc.image_ids), m)

    def compute(self) -> float:
        """Penalised centre error of the epoch (in ``self.acc.unit``)."""
        summary = self.acc.summary()
        return self._publish(summary, f"penalised_error_{self.acc.unit}")
