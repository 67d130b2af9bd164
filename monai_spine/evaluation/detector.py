"""Evaluation of the vertebra detector against annotations (no training).

* :func:`evaluate_detector`: a trained :class:`~monai_spine.inference.detector.VertebraDetector` over
  annotated radiographs (the benchmark's figures, ``scripts/bench_detector.py``);
* :func:`evaluate_chain_items`: a ``chain`` detector network over the shrunk films of
  :func:`~monai_spine.engines.detector.load_detector_arrays` (a quick check during development).

Both match with :func:`~monai_spine.metrics.detection.match_detections` and summarise with
:class:`~monai_spine.metrics.detection.DetectionAccumulator` (the metrics are defined there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from monai_spine.codecs.detection import decode_detections
from monai_spine.metrics.detection import DetectionAccumulator, match_detections
from monai_spine.transforms.detection import letterbox_affine, points_to_image_px, resample_to_net

__all__ = ["evaluate_detector", "evaluate_chain_items"]


def evaluate_detector(
    detector: Any,
    cases: Sequence[Mapping[str, Any]],
    score_threshold: float | None = None,
    match_radius: float | None = None,
) -> tuple[dict[str, float], DetectionAccumulator, list[dict[str, Any]]]:
    """Run a detector over annotated radiographs and summarise its metrics.

    Args:
        detector: a :class:`~monai_spine.inference.detector.VertebraDetector` (``levels``,
            ``score_threshold`` and ``predict_levels(image, spacing_mm, score_threshold=...)``).
        cases: items of :func:`~monai_spine.engines.detector.detector_cases`.
        score_threshold: override of the detector's threshold (decoding and matching).
        match_radius: see :func:`~monai_spine.metrics.detection.match_detections`.

    Returns:
        ``(summary, accumulator, rows)``; one row per case with ``image``, ``image_id``, ``found``
        / ``present`` level names, ``missed`` and ``false_positive`` level names, ``seconds``.
    """
    import time

    from monai_spine.data.readers import read_xray

    thr = detector.score_threshold if score_threshold is None else float(score_threshold)
    acc = DetectionAccumulator(detector.levels)
    rows: list[dict[str, Any]] = []
    for case in cases:
        sidecar = case.get("sidecar_spacing_mm")
        img = read_xray(case["image"], spacing_mm=None if sidecar is None else [float(v) for v in np.ravel(sidecar)])
        t0 = time.perf_counter()
        res = detector.predict_levels(img.channel_first(), img.spacing_mm, score_threshold=thr)
        dt = time.perf_counter() - t0
        m = match_detections(res["centres_px"], res["scores"], case["centres_px"], case["boxes_px"], case["present"],
                             img.spacing_mm, thr, match_radius, res["boxes_px"])
        acc.add(int(case["image_id"]), m)
        names = np.asarray(detector.levels)
        rows.append({
            "image": str(case["image"]), "image_id": int(case["image_id"]),
            "present": names[m["present"]].tolist(), "found": names[m["found"]].tolist(),
            "missed": names[m["present"] & ~m["found"]].tolist(),
            "false_positive": names[m["false_positive"]].tolist(), "seconds": dt,
        })
    return acc.summary(), acc, rows


def evaluate_chain_items(
    network: torch.nn.Module,
    items: Sequence[Mapping[str, Any]],
    spatial_size: Sequence[int],
    profile: Any,
    score_threshold: float = 0.2,
    nms_radius_px: int = 2,
    chain_kwargs: Mapping[str, Any] | None = None,
    level_y_frac: Any = None,
) -> dict[str, float]:
    """Recall at the right level and films with every level found, on
    :func:`~monai_spine.engines.detector.load_detector_arrays` items.

    A quick check during development and training (the kept images' pixels, no augmentation); the
    benchmark's figures come from :func:`evaluate_detector` on the full films. Each item is letterboxed
    onto the net input as :func:`~monai_spine.engines.detector.chain_training_sample` does without
    augmentation.
    """
    hn, wn = (int(v) for v in spatial_size)
    acc = DetectionAccumulator()
    network.eval()
    with torch.inference_mode():
        for i, it in enumerate(items):
            img = it["image"]
            a = letterbox_affine((img.shape[2], img.shape[1]), (hn, wn))
            x = resample_to_net(img, a, (hn, wn)).astype(np.float32)
            pred = network(torch.from_numpy(x[None]))[0]
            h_item = float(it["image"].shape[-2])
            dec = decode_detections(pred, score_threshold, method="chain", nms_radius_px=nms_radius_px,
                                    profile=profile, chain_kwargs=chain_kwargs, level_y_frac=level_y_frac,
                                    y_frac_map=(a[1, 1] / h_item, a[1, 2] / h_item))
            c = points_to_image_px(dec["centres_net_px"], a)
            m = match_detections(c, dec["scores"], it["centres_px"], it["boxes_px"], it["present"], None,
                                 score_threshold)
            acc.add(i, m)
    return acc.summary()
