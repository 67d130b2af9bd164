"""Ignite handler of the corner errors (:mod:`monai_spine.metrics.corners`): the evaluator's key metric
in the bundle's ``heatmap_train.json``.

It collects the network's patch maps (``engine.state.output``) with their geometry
(``engine.state.batch``, :class:`~monai_spine.handlers.batch_metric.BatchSummaryMetric`) and, at the end
of the epoch, runs the predictor's post-processing on every validation image with the ground-truth
centres (exactly what :class:`~monai_spine.inference.heatmap.CornerPredictor` does with clicked centres).
The value is the mean corner P2P error (lower is better), in the unit of the metrics (mm, or px when a
validation image lacks a spacing, as ``spacing_known`` and the key suffixes say).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from monai_spine.handlers.batch_metric import BatchSummaryMetric, batch_field
from monai_spine.inference.heatmap import HeatmapModelSpec, localize
from monai_spine.losses.bhattacharyya import bhattacharyya_coefficient
from monai_spine.metrics.corners import CornerErrorAccumulator, corner_errors
from monai_spine.metrics.keypoint_error import DEFAULT_THRESHOLDS_MM

__all__ = ["CornerErrorHandler"]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _field(container: Any, key: str) -> np.ndarray | None:
    return batch_field(container, key, _np)


class CornerErrorHandler(BatchSummaryMetric):
    """Evaluator key metric: corner P2P / P2C errors and patch BC of the validation images.

    Reads, every iteration, the network maps ``engine.state.output["pred"]`` ``(P, 1, S, S)`` and from
    ``engine.state.batch`` the patch geometry of :mod:`monai_spine.transforms.patches` (``patch_affine``,
    ``vertebra``, ``centre_px``, ``orientation_deg``, ``size_px``, ``image_id``, ``spacing_mm``,
    ``image_size``) and the target ``label`` (for BC). Batches may hold patches of several images in
    any order; a batch may be a dict of batched values (``decollate=False``) or per-sample dicts.

    At the end of the epoch the patches of every image are post-processed together
    (:func:`monai_spine.inference.heatmap.localize`, the predictor's own code) and compared with the
    ground truth of ``cases`` (matched by ``image_id``). The value is the mean P2P error (lower is
    better); every entry of :meth:`~monai_spine.metrics.corners.CornerErrorAccumulator.summary` goes to
    ``engine.state.metrics`` as ``prefix + key`` (``val_p2p_mean_mm``, ``val_p2p_fit_failure_3.0mm``, ``val_p2c_mean_mm``,
    ``val_bc_mean``, ...), so StatsHandler and MLFlowHandler log them.

    Args:
        cases: the validation items of :func:`~monai_spine.engines.heatmap.heatmap_cases` (ground truth, levels,
            outlines).
        model: the :class:`~monai_spine.inference.heatmap.HeatmapModelSpec` (prior, post-processing, scheme).
        prefix: prepended to the summary keys.
        pred_key, label_key: output key of the maps, batch key of the targets.
        thresholds_mm, fit_failure_mm, scan_threshold_mm: see
            :class:`~monai_spine.metrics.corners.CornerErrorAccumulator`.
    """

    def __init__(
        self,
        cases: Sequence[Mapping[str, Any]],
        model: HeatmapModelSpec,
        prefix: str = "val_",
        pred_key: str = "pred",
        label_key: str = "label",
        thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
        fit_failure_mm: float = 3.0,
        scan_threshold_mm: float = 2.0,
        output_transform: Callable = lambda x: x,
    ) -> None:
        self.cases = {int(c["image_id"]): c for c in cases}
        self.model = model
        self.pred_key = pred_key
        self.label_key = label_key
        self.acc = CornerErrorAccumulator(thresholds_mm, fit_failure_mm, scan_threshold_mm)
        super().__init__(prefix=prefix, output_transform=output_transform)

    def reset(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []
        self.acc.reset()

    @torch.no_grad()
    def update(self, output: tuple[Any, Any]) -> None:  # type: ignore[override]
        """Add ``(batch, engine_output)`` of one iteration."""
        batch, out = output
        pred = _field(out, self.pred_key)
        if pred is None:
            raise KeyError(f"{self.__class__.__name__}: engine output has no {self.pred_key!r}")
        maps = pred.reshape(pred.shape[0], -1, pred.shape[-2], pred.shape[-1])[:, 0].astype(np.float32)
        part = {"maps": maps}
        for key in ("patch_affine", "vertebra", "centre_px", "orientation_deg", "size_px", "image_id"):
            v = _field(batch, key)
            if v is None:
                raise KeyError(f"{self.__class__.__name__}: batch has no {key!r} (use monai_spine.transforms.patches.CornerPatchesd)")
            part[key] = v
        for key in ("spacing_mm", "image_size"):
            v = _field(batch, key)
            if v is not None:
                part[key] = v
        label = _field(batch, self.label_key)
        if label is not None:
            y = torch.as_tensor(label.reshape(maps.shape), dtype=torch.float32)
            self.acc.add_bc(bhattacharyya_coefficient(torch.as_tensor(maps), y).numpy())
        self._parts.append(part)

    def _localize_all(self) -> None:
        if not self._parts:
            return
        cat = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
        ids = cat["image_id"].astype(np.int64).reshape(-1)
        idx = list(self.model.corner_indices)
        for image_id in np.unique(ids):
            case = self.cases.get(int(image_id))
            if case is None:
                raise KeyError(f"{self.__class__.__name__}: image_id {int(image_id)} is not among the validation cases")
            sel = np.nonzero(ids == image_id)[0]
            vert = cat["vertebra"][sel].astype(np.int64)
            rows, first = np.unique(vert, return_index=True)
            compact = np.searchsorted(rows, vert)
            spacing = None
            if "spacing_mm" in cat:
                sp = cat["spacing_mm"][sel[0]].astype(np.float64)
                spacing = tuple(sp) if np.all(np.isfinite(sp)) and np.all(sp > 0) else None
            shape = None
            if "image_size" in cat:
                w, h = cat["image_size"][sel[0]]
                shape = (int(h), int(w))
            levels = [case["levels"][r] for r in rows] if "levels" in case else None
            res = localize(cat["maps"][sel], cat["patch_affine"][sel].astype(np.float64), compact,
                           cat["centre_px"][sel][first].astype(np.float64), cat["orientation_deg"][sel][first],
                           cat["size_px"][sel][first], self.model, levels, spacing, shape)
            kp = np.asarray(case["keypoints_px"], dtype=np.float64)[rows][:, idx]
            vis = np.asarray(case["visible"], dtype=bool)[rows][:, idx]
            outlines = [case["outlines_px"][r] for r in rows] if case.get("outlines_px") is not None else None
            self.acc.add(int(image_id), corner_errors(res.corners_px, kp, vis, outlines, spacing), res.used_prior,
                         res.sigma_px, spacing)

    def compute(self) -> float:
        """Mean corner P2P error of the epoch (in ``self.acc.unit``)."""
        self._localize_all()
        summary = self.acc.summary()
        return self._publish(summary, f"p2p_mean_{self.acc.unit}")
