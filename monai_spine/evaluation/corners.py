"""Evaluation of the semi-automatic corner predictor against annotations (no training).

:func:`evaluate_corner_model` runs a :class:`~monai_spine.inference.heatmap.CornerPredictor` on annotated
images with the ground-truth centres and reports the metrics of :mod:`monai_spine.metrics.corners`
(P2P, P2C, patch Bhattacharyya coefficient, prior fallback): the benchmark's figures
(``scripts/bench_heatmap.py``) and the notebooks'.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_spine.codecs.corner_maps import corner_maps
from monai_spine.data.frames import annotation_frames
from monai_spine.inference.heatmap import CornerPredictor
from monai_spine.losses.bhattacharyya import bhattacharyya_coefficient
from monai_spine.metrics.corners import CornerErrorAccumulator, corner_errors
from monai_spine.metrics.keypoint_error import DEFAULT_THRESHOLDS_MM

__all__ = ["evaluate_corner_model"]

logger = logging.getLogger(__name__)


def evaluate_corner_model(
    predictor: CornerPredictor,
    cases: Sequence[Mapping[str, Any]],
    thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM,
    fit_failure_mm: float = 3.0,
    with_bc: bool = True,
) -> tuple[dict[str, float], CornerErrorAccumulator]:
    """Run the semi-automatic predictor on annotated images with the ground-truth centres.

    For each case, the "clicked" centres are the means of the four corners of its selected vertebrae
    (those :func:`monai_spine.transforms.patches` would use); the predictor sees only these centres and their levels.

    Args:
        predictor: a loaded :class:`~monai_spine.inference.heatmap.CornerPredictor`.
        cases: items of :func:`~monai_spine.engines.heatmap.heatmap_cases`.
        thresholds_mm, fit_failure_mm: summary settings.
        with_bc: also compute the patch-level Bhattacharyya coefficient against the target maps.

    Returns:
        ``(summary, accumulator)``: :meth:`~monai_spine.metrics.corners.CornerErrorAccumulator.summary` plus
        ``images`` and ``vertebrae`` counts; the accumulator holds the per-corner errors.
    """
    from monai_spine.data.readers import read_xray

    acc = CornerErrorAccumulator(thresholds_mm, fit_failure_mm)
    spec = predictor.spec
    idx = list(spec.corner_indices)
    n_img = n_vert = 0
    for case in cases:
        rows, centres, _, _ = annotation_frames(case["keypoints_px"], case.get("visible"), idx, spec.size_ratio,
                                                case.get("select"), case.get("levels"))
        if len(rows) < 2:
            logger.info("%s: fewer than two usable vertebrae, skipped", case.get("label_path", case.get("image")))
            continue
        override = case.get("sidecar_spacing_mm")
        img = read_xray(case["image"], spacing_mm=None if override is None else [float(v) for v in np.ravel(override)])
        levels = [case["levels"][r] for r in rows] if "levels" in case else None
        pred = predictor.predict(img.array, centres, img.spacing_mm, img.spacing_source, levels=levels, return_maps=with_bc)
        kp = np.asarray(case["keypoints_px"], dtype=np.float64)
        vis = np.asarray(case["visible"], dtype=bool)
        outlines = [case["outlines_px"][r] for r in rows] if case.get("outlines_px") is not None else None
        acc.add(int(case.get("image_id", n_img)),
                corner_errors(pred.corners_px, kp[rows][:, idx], vis[rows][:, idx], outlines, img.spacing_mm),
                pred.used_prior, pred.sigma_px, img.spacing_mm)
        if with_bc and pred.patches is not None:
            t = spec.target
            targets = np.stack([
                corner_maps(kp, vis, a, spec.out_size, idx, t.get("sigma_along_frac", 0.1),
                            t.get("sigma_across_frac", 0.06), t.get("empty", "uniform"))
                for a in pred.patches.affines
            ])
            acc.add_bc(bhattacharyya_coefficient(torch.as_tensor(pred.maps), torch.as_tensor(targets)).numpy())
        n_img += 1
        n_vert += len(rows)
    summary = acc.summary()
    summary["images"] = float(n_img)
    summary["vertebrae"] = float(n_vert)
    return summary, acc
