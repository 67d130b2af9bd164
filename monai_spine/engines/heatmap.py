"""Pieces the bundle's ignite engines use to train the probabilistic spatial regressor
(Al Arif et al., BMVC 2017; ``bundle/configs/heatmap_train.json`` over ``train.json``).

* Data: :func:`heatmap_cases` / :func:`heatmap_datalists` give **one item per radiograph** (all its
  annotated vertebrae); :mod:`monai_spine.transforms.patches` turns an item into patches and target maps
  (randomly jittered and subsampled for training, the regular test-time grid for validation).
* Model files: :func:`fit_heatmap_model` fits, on the training annotations, the
  :class:`~monai_spine.inference.corners.CornerPrior` and the ratio of vertebra size to centre
  spacing, and returns the :class:`~monai_spine.inference.heatmap.HeatmapModelSpec` that the bundle's
  ``initialize`` step saves next to the checkpoint (``corner_prior.json``, ``heatmap_model.json``).
* Post-processing chosen on validation films: :func:`choose_prior_pull` (how far each corner is moved
  toward the corner prior's mean, ``postprocess["prior_pull"]`` of the spec; ``scripts/choose_prior_pull.py``).
* Validation: the evaluator's key metric is :class:`monai_spine.handlers.corners.CornerErrorHandler`
  (the corner P2P / P2C errors and patch Bhattacharyya coefficient of :mod:`monai_spine.metrics.corners`,
  with the predictor's own post-processing on the ground-truth centres);
  :func:`monai_spine.evaluation.corners.evaluate_corner_model` reports the same metrics for a
  :class:`~monai_spine.inference.heatmap.CornerPredictor` on annotated images (benchmark, notebooks).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_spine.data.annotation import SpineAnnotation, keypoint_boxes_px, read_annotation
from monai_spine.data.frames import annotation_frames
from monai_spine.data.keypoints import get_region, get_scheme, validate_keypoints
from monai_spine.data.patches import vertebra_geometry
from monai_spine.inference.corners import CornerPrior
from monai_spine.inference.heatmap import DEFAULT_POSTPROCESS, HeatmapModelSpec

__all__ = [
    "heatmap_cases",
    "heatmap_datalists",
    "fit_size_ratio",
    "fit_corner_prior",
    "fit_heatmap_model",
    "experiment_params",
    "PRIOR_PULL_GRID",
    "choose_prior_pull",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data
def _usable_rows(ann: SpineAnnotation, levels: Sequence[str] | None) -> np.ndarray:
    idx = list(get_scheme(ann.scheme).corner_indices)
    ok = np.all(ann.visible[:, idx], axis=1) & np.all(np.isfinite(ann.keypoints_px[:, idx]), axis=(1, 2))
    if levels is not None:
        ok &= np.array([lev in levels for lev in ann.levels], dtype=bool)
    return ok


def heatmap_cases(label_paths: Sequence[str], region: str | None = None, image_id_offset: int = 0) -> list[dict]:
    """One item per annotated radiograph, for patch-based training and corner evaluation.

    Args:
        label_paths: ``monai-spine-keypoints`` annotation files (each naming its image).
        region: keep annotations of this region; its levels are the vertebrae patches are cut around
            (``select``); None keeps every annotation and vertebra.
        image_id_offset: id of the first file (ids number the radiographs across splits).

    Returns:
        dicts with ``image`` (path), ``keypoints_px`` (N, K, 2) float32, ``visible`` (N, K) bool,
        ``levels`` (N names), ``select`` (N,) bool, ``outlines_px`` (N arrays (M, 2), empty where
        the annotation has none), ``image_id``, ``scheme``, ``label_path`` and, for images whose file
        cannot carry a spacing (PNG/JPEG), ``sidecar_spacing_mm``. Images without a selected vertebra
        with four visible corners are left out (logged).

    Raises:
        AnnotationError: a malformed annotation (message names the file).
    """
    items: list[dict] = []
    for i, path in enumerate(label_paths):
        ann = read_annotation(path)
        if region is not None and ann.region != region:
            continue
        levels = get_region(region).levels if region is not None else None
        select = _usable_rows(ann, levels)
        if not select.any():
            logger.info("%s: no vertebra with four visible corners%s, skipped", path,
                        f" among {levels}" if levels else "")
            continue
        if ann.image is None:
            raise ValueError(f"{path}: annotation names no image")
        outlines = ann.outlines_px if ann.outlines_px is not None else [np.zeros((0, 2))] * ann.num_vertebrae
        item = {
            "image": ann.image,
            "keypoints_px": ann.keypoints_px.astype(np.float32),
            "visible": ann.visible.copy(),
            "levels": list(ann.levels),
            "select": select,
            "outlines_px": [np.asarray(o, dtype=np.float64) for o in outlines],
            "image_id": image_id_offset + i,
            "scheme": ann.scheme,
            "label_path": str(path),
        }
        if ann.spacing_override_mm is not None:
            item["sidecar_spacing_mm"] = np.asarray(ann.spacing_override_mm, dtype=np.float32)
        items.append(item)
    return items


def heatmap_datalists(splits: Mapping[str, Sequence[str]], region: str | None = None) -> dict[str, list[dict]]:
    """Per-image datalists of every split (``training``, ``validation``, ``test``); ids unique across splits.

    Raises:
        ValueError: the training split holds no usable image of ``region``.
    """
    out: dict[str, list[dict]] = {}
    offset = 0
    for s in ("training", "validation", "test"):
        labels = list(splits.get(s, []))
        out[s] = heatmap_cases(labels, region=region, image_id_offset=offset)
        offset += len(labels)
    if not out["training"]:
        raise ValueError(f"no {region or ''} radiograph with four visible vertebra corners in the training split")
    return out


# ---------------------------------------------------------------------------------------------- fitting
def fit_size_ratio(cases: Sequence[Mapping[str, Any]], scheme: str | None = None) -> float:
    """Median of vertebra size / mean distance to the neighbouring centres over the selected vertebrae.

    Centres are the means of the four corners; distances follow :func:`~monai_spine.data.frames.centre_frames` (gaps between
    annotated levels divided out). Images with fewer than two selected vertebrae do not count.

    Raises:
        ValueError: no image has two usable vertebrae.
    """
    ratios = []
    for case in cases:
        idx = list(get_scheme(scheme or case.get("scheme", "lateral5")).corner_indices)
        rows, centres, _, size_1 = annotation_frames(case["keypoints_px"], case.get("visible"), idx, 1.0,
                                                     case.get("select"), case.get("levels"))
        if len(rows) < 2:
            continue
        size = vertebra_geometry(np.asarray(case["keypoints_px"], np.float64)[rows][:, idx]).size
        ratios.extend(size / size_1)  # with ratio 1, size_1 is the centre spacing
    if not ratios:
        raise ValueError("fit_size_ratio: no image with two usable vertebrae")
    return float(np.median(ratios))


def fit_corner_prior(cases: Sequence[Mapping[str, Any]], scheme: str | None = None, min_count: int = 5) -> CornerPrior:
    """:meth:`CornerPrior.fit` on the selected vertebrae of ``cases`` (per level where ``min_count`` allows)."""
    kps, viss, lvls = [], [], []
    sch = None
    for case in cases:
        sch = get_scheme(scheme or case.get("scheme", "lateral5"))
        kp, vis = validate_keypoints(case["keypoints_px"], case.get("visible"))
        sel = np.asarray(case.get("select", np.ones(len(kp), bool)), dtype=bool)
        if not sel.any():
            continue
        kps.append(kp[sel])
        viss.append(vis[sel])
        lvls.append([str(case["levels"][i]) for i in np.nonzero(sel)[0]] if "levels" in case else None)
    if not kps:
        raise ValueError("fit_corner_prior: no training vertebra")
    levels = lvls if all(lv is not None for lv in lvls) else None
    return CornerPrior.fit(kps, viss, (sch or get_scheme("lateral5")).corner_indices, levels=levels, min_count=min_count)


def fit_heatmap_model(
    cases: Sequence[Mapping[str, Any]],
    region: str | None = "cervical",
    scheme: str | None = None,
    out_size: int = 64,
    grid: Sequence[float] = (3, 0.15),
    scales: Sequence[float] = (1.6, 2.0, 2.4),
    rotations_deg: Sequence[float] = (-10.0, 0.0, 10.0),
    network_width: int = 64,
    network_multipliers: Sequence[int] = (1, 2, 4, 8, 12),
    sigma_along_frac: float = 0.1,
    sigma_across_frac: float = 0.06,
    postprocess: Mapping[str, Any] | None = None,
    min_count: int = 5,
    use_prior: bool = True,
) -> HeatmapModelSpec:
    """Fit the corner prior and the size ratio on the training cases; return the model's spec.

    The bundle calls this once (config item ``heatmap_model``); its ``initialize`` step writes the
    spec and the prior into ``ckpt_dir`` with :meth:`HeatmapModelSpec.save` before training starts.

    Args:
        cases: training items of :func:`heatmap_cases`.
        region: region name (its scheme is used unless ``scheme`` is given).
        scheme: keypoint scheme name.
        out_size, grid, scales, rotations_deg: the patch grid (shared by training and inference).
        network_width, network_multipliers: :class:`ProbabilisticUNet` arguments.
        sigma_along_frac, sigma_across_frac: the target Gaussians (recorded).
        postprocess: :func:`corners_from_patches` settings (default :data:`DEFAULT_POSTPROCESS`).
        min_count: minimum vertebrae of the prior (pooled and per level).
        use_prior: fit the prior (False: corners from the network maps alone).
    """
    sch = scheme or (get_region(region).scheme.name if region else cases[0].get("scheme", "lateral5"))
    ratio = fit_size_ratio(cases, sch)
    prior = fit_corner_prior(cases, sch, min_count=min_count) if use_prior else None
    spec = HeatmapModelSpec(
        scheme=sch, region=region, size_ratio=ratio, out_size=out_size, grid=tuple(grid), scales=tuple(scales),
        rotations_deg=tuple(rotations_deg),
        network={"width": int(network_width), "multipliers": [int(m) for m in network_multipliers]},
        postprocess={**DEFAULT_POSTPROCESS, **dict(postprocess or {})},
        target={"sigma_along_frac": float(sigma_along_frac), "sigma_across_frac": float(sigma_across_frac),
                "empty": "uniform"},
        prior=prior,
        meta={"training_images": len(cases), "prior_vertebrae": prior.count if prior is not None else 0},
    )
    logger.info("heatmap model: size ratio %.3f, prior from %s vertebrae", ratio, spec.meta["prior_vertebrae"])
    return spec

def experiment_params(
    region: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patches: Mapping[str, Any],
    fcn_width: int,
    dataset_dir: str | None,
    synthetic: Mapping[str, Any] | None = None,
    model: HeatmapModelSpec | None = None,
) -> dict[str, Any]:
    """The parameters an MLflow run of the heatmap model records (strings and numbers only)."""
    params: dict[str, Any] = {
        "method": "alarif2017-probabilistic-spatial-regression",
        "region": region,
        "epochs": int(epochs),
        "batch_size_images": int(batch_size),
        "learning_rate": float(learning_rate),
        "fcn_width": int(fcn_width),
        "dataset": dataset_dir or "synthetic (embedded default)",
        "optimizer": "Adam(0.9, 0.999)",
        "lr_schedule": "cosine annealing",
        "loss": "Bhattacharyya (-2 BC)",
    }
    for k, v in dict(patches).items():
        params[f"patch_{k}"] = str(v) if isinstance(v, (list, tuple)) else v
    if model is not None:
        params["size_ratio"] = round(model.size_ratio, 4)
        params["prior_vertebrae"] = model.prior.count if model.prior is not None else 0
    if not dataset_dir and synthetic:
        params.update({f"synthetic_{k}": (str(v) if isinstance(v, (list, tuple)) else v) for k, v in synthetic.items()})
    return params


#: the candidates :func:`choose_prior_pull` tries by default (fractions of the way to the prior mean)
PRIOR_PULL_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def choose_prior_pull(
    predictor: Any,
    cases: Sequence[Mapping[str, Any]],
    grid: Sequence[float] = PRIOR_PULL_GRID,
    detector: Any = None,
    log: Any = None,
) -> tuple[float, dict[str, dict[str, float | int]]]:
    """The ``prior_pull`` of the predictor's post-processing with the least mean corner error on validation films.

    The prior mean is placed at the centre the predictor is given, so the centres must be the ones the
    model will get in use. With ``detector`` (the fully automatic pipeline), each film's vertebrae are
    predicted at the detector's centres and scored where the detector found the level (its centre inside
    the annotated box of that level, :func:`~monai_spine.evaluation.levels.matched_levels`). Without, they
    are predicted at the annotated centres (the means of their four corners, as
    :func:`~monai_spine.evaluation.corners.evaluate_corner_model` clicks them): beware that a prior mean
    placed there carries the reference's own centroid, so it favours a larger pull than clicks by a
    person or a detector would.

    Each film is predicted once with no pull; a pull ``w`` moves a corner found in the map to
    ``p + w * (prior_mean - p)`` (what :func:`~monai_spine.codecs.corner_maps.localize_corners` does; a
    corner that fell back to the prior mean stays there), so every candidate is scored on the same network
    outputs. Errors are in pixels (the choice must not depend on whether a film carries its spacing).
    Ties go to the smaller pull.

    Args:
        predictor: a :class:`~monai_spine.inference.heatmap.CornerPredictor` with a corner prior; its
            spec's ``postprocess`` is left as it was.
        cases: validation items of :func:`heatmap_cases`.
        grid: candidate pulls, each in [0, 1].
        detector: a :class:`~monai_spine.inference.detector.VertebraDetector` for the predictor's region, or None.
        log: a ``str -> None`` progress callback, or None.

    Returns:
        ``(best pull, {pull as text: {"mean_px", "median_px", "p95_px" (floats), "corners" (int count)}})``.

    Raises:
        ValueError: the predictor has no prior, a candidate is outside [0, 1], or no corner could be scored.
    """
    from monai_spine.data.readers import read_xray
    from monai_spine.evaluation.levels import matched_levels

    spec = predictor.spec
    if spec.prior is None:
        raise ValueError("choose_prior_pull: the corner model has no prior to pull toward")
    cand = [float(w) for w in grid]
    if not cand or any(not 0.0 <= w <= 1.0 for w in cand):
        raise ValueError(f"choose_prior_pull: every candidate pull must lie in [0, 1], got {list(grid)}")
    idx = list(spec.corner_indices)
    found, means, truth = [], [], []
    saved = spec.postprocess.get("prior_pull")
    spec.postprocess["prior_pull"] = 0.0
    try:
        for case in cases:
            kp = np.asarray(case["keypoints_px"], np.float64)
            rows, centres, _, _ = annotation_frames(kp, case.get("visible"), idx, spec.size_ratio,
                                                    case.get("select"), case.get("levels"))
            if len(rows) < 2:
                continue
            img = read_xray(case["image"])
            if detector is None:
                levels = [case["levels"][r] for r in rows] if "levels" in case else None
                pairs = list(enumerate(rows))
            else:
                det = detector.detect(img.channel_first(), None, "unknown")
                centres, levels = np.asarray(det.centres_px, np.float64), [str(v) for v in det.levels]
                boxes = keypoint_boxes_px(kp[:, idx], np.asarray(case["visible"], bool)[:, idx])  # around the scored corners
                pairs = matched_levels(levels, centres, case["levels"], boxes, rows)
                if len(centres) < 2 or not pairs:
                    continue
            pred = predictor.predict(img.array, centres, None, "unknown", levels=levels)
            at = [d for d, _ in pairs]
            found.append(np.asarray(pred.corners_px, np.float64)[at])
            means.append(np.stack([spec.prior.mean_px(centres[d], pred.orientations_deg[d], pred.sizes_px[d],
                                                      None if levels is None else levels[d]) for d in at]))
            truth.append(kp[[j for _, j in pairs]][:, idx])
            if log is not None and len(found) % 10 == 0:
                log(f"[prior pull] {len(found)} films predicted")
    finally:
        if saved is None:
            spec.postprocess.pop("prior_pull", None)
        else:
            spec.postprocess["prior_pull"] = saved
    if not found:
        raise ValueError("choose_prior_pull: no case with a vertebra to score (two usable vertebrae, or a detected "
                         "level inside its annotated box)")
    p, q, g = (np.concatenate(a) for a in (found, means, truth))
    table: dict[str, dict[str, float | int]] = {}
    best, best_mean = cand[0], np.inf
    for w in cand:
        err = np.hypot(*(p + w * (q - p) - g).transpose(2, 0, 1)).ravel()
        err = err[np.isfinite(err)]
        row = {"mean_px": float(err.mean()), "median_px": float(np.median(err)),
               "p95_px": float(np.percentile(err, 95)), "corners": int(err.size)}
        table[f"{w:g}"] = row
        if log is not None:
            log(f"[prior pull] {w:g}: mean {row['mean_px']:.2f} px, median {row['median_px']:.2f}, p95 {row['p95_px']:.2f}")
        if row["mean_px"] < best_mean - 1e-12 or (abs(row["mean_px"] - best_mean) <= 1e-12 and w < best):
            best, best_mean = w, row["mean_px"]
    return best, table
