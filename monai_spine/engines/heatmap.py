"""Pieces the bundle's ignite engines use to train and evaluate the probabilistic spatial regressor
(Al Arif et al., BMVC 2017; ``bundle/configs/heatmap_train.json`` over ``train.json``).

* Data: :func:`heatmap_cases` / :func:`heatmap_datalists` give **one item per radiograph** (all its
  annotated vertebrae); :mod:`monai_spine.transforms.patches` turns an item into patches and target maps
  (randomly jittered and subsampled for training, the regular test-time grid for validation).
* Model files: :func:`fit_heatmap_model` fits, on the training annotations, the
  :class:`~monai_spine.inference.corners.CornerPrior` and the ratio of vertebra size to centre
  spacing, and returns the :class:`~monai_spine.inference.heatmap.HeatmapModelSpec` that the bundle's
  ``initialize`` step saves next to the checkpoint (``corner_prior.json``, ``heatmap_model.json``).
* Validation: :class:`CornerErrorHandler`, the evaluator's key metric, collects the network's patch
  maps, runs the paper's post-processing on every validation image with the ground-truth centres
  (exactly what :class:`~monai_spine.inference.heatmap.CornerPredictor` does with clicked centres) and
  reports

  - ``p2p_*``: point-to-point corner error (mean, median, std, max, SDR, fit failure = share of
    corners with P2P > 3 mm, share of scans below 2 mm), via
    :func:`monai_spine.metrics.keypoint_error.summarize_errors`;
  - ``p2c_*``: point-to-curve error, the distance from each predicted corner to the annotated
    vertebral-body outline (``outline_px``; NaN, not counted, where an annotation has none);
  - ``bc_mean`` / ``bc_median``: patch-level Bhattacharyya coefficient (paper: 0.9794);
  - ``prior_fallback``: share of corners taken from the prior; ``spacing_known``: 1 when in mm.

  The key metric value is the **mean corner P2P error** (lower is better), so the checkpoint kept is
  the one that localises corners best, in the unit of the metrics (mm, or px when a validation image
  lacks a spacing, as ``spacing_known`` and the key suffixes say).
* :func:`evaluate_corner_model`: the same metrics for a :class:`CornerPredictor` on annotated images
  (benchmark, notebooks).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from monai_spine.codecs.corner_maps import corner_maps
from monai_spine.data.annotation import SpineAnnotation, read_annotation
from monai_spine.data.frames import annotation_frames
from monai_spine.data.keypoints import get_region, get_scheme, px_to_mm, validate_keypoints
from monai_spine.data.patches import vertebra_geometry
from monai_spine.handlers.batch_metric import BatchSummaryMetric, batch_field
from monai_spine.inference.corners import CornerPrior, point_to_curve_distance
from monai_spine.inference.heatmap import DEFAULT_POSTPROCESS, CornerPredictor, HeatmapModelSpec, localize
from monai_spine.losses.bhattacharyya import bhattacharyya_coefficient
from monai_spine.metrics.keypoint_error import DEFAULT_THRESHOLDS_MM, summarize_errors

__all__ = [
    "heatmap_cases",
    "heatmap_datalists",
    "fit_size_ratio",
    "fit_corner_prior",
    "fit_heatmap_model",
    "corner_errors",
    "CornerErrorAccumulator",
    "CornerErrorHandler",
    "evaluate_corner_model",
    "experiment_params",
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
        if ann.spacing_mm is not None and not str(ann.image).lower().endswith((".dcm", ".dicom")):
            item["sidecar_spacing_mm"] = np.asarray(ann.spacing_mm, dtype=np.float32)
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


# ---------------------------------------------------------------------------------------------- errors
def corner_errors(
    pred_px: np.ndarray,
    gt_px: np.ndarray,
    visible: np.ndarray | None = None,
    outlines_px: Sequence[np.ndarray] | None = None,
    spacing_mm: Sequence[float] | None = None,
) -> dict[str, np.ndarray | None]:
    """P2P and P2C errors of the corners of ``V`` vertebrae of one image.

    Args:
        pred_px: ``(V, 4, 2)`` predicted corners (NaN = not found).
        gt_px: ``(V, 4, 2)`` annotated corners.
        visible: ``(V, 4)`` mask of annotated corners (None: finite ones).
        outlines_px: ``V`` outlines ``(M, 2)`` (closed polylines; empty = none).
        spacing_mm: ``(sx, sy)`` or None.

    Returns:
        ``p2p_px``, ``p2c_px`` ``(V, 4)`` and ``p2p_mm``, ``p2c_mm`` (None when the spacing is unknown):
        NaN where not counted (corner invisible; no outline for P2C), +inf where a visible corner
        was not predicted.
    """
    p = np.asarray(pred_px, dtype=np.float64)
    g = np.asarray(gt_px, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 3 or p.shape[1:] != (4, 2):
        raise ValueError(f"pred_px and gt_px must both be (V, 4, 2), got {p.shape}, {g.shape}")
    vis = np.all(np.isfinite(g), axis=-1) if visible is None else np.asarray(visible, bool) & np.all(np.isfinite(g), -1)
    found = np.all(np.isfinite(p), axis=-1)
    out: dict[str, np.ndarray | None] = {}
    for unit, sp in (("px", None), ("mm", spacing_mm)):
        if unit == "mm" and sp is None:
            out["p2p_mm"] = out["p2c_mm"] = None
            continue
        ps = p if sp is None else px_to_mm(p, sp)
        gs = g if sp is None else px_to_mm(g, sp)
        p2p = np.linalg.norm(ps - gs, axis=-1)
        p2c = np.full(p.shape[:2], np.nan)
        for v in range(len(p)):
            o = None if outlines_px is None else np.asarray(outlines_px[v], dtype=np.float64).reshape(-1, 2)
            if o is None or len(o) == 0 or not vis[v].any():
                continue
            os_ = o if sp is None else px_to_mm(o, sp)
            d = np.full(4, np.inf)
            if found[v].any():
                d[found[v]] = point_to_curve_distance(ps[v][found[v]], os_, closed=True)
            p2c[v] = d
        p2p = np.where(found, p2p, np.inf)
        p2p[~vis] = np.nan
        p2c[~vis] = np.nan
        out[f"p2p_{unit}"], out[f"p2c_{unit}"] = p2p, p2c
    return out


class CornerErrorAccumulator:
    """Collects per-image corner errors (and patch BCs) and summarises them in one unit.

    The unit is mm when every image added had a spacing, else px (never a mix).

    Args:
        thresholds_mm: SDR thresholds; fit_failure_mm: fit failure threshold (paper: 3 mm);
        scan_threshold_mm: threshold on a scan's mean error (all in the unit of the errors).
    """

    def __init__(self, thresholds_mm: Sequence[float] = DEFAULT_THRESHOLDS_MM, fit_failure_mm: float = 3.0,
                 scan_threshold_mm: float = 2.0) -> None:
        self.thresholds_mm = tuple(thresholds_mm)
        self.fit_failure_mm = float(fit_failure_mm)
        self.scan_threshold_mm = float(scan_threshold_mm)
        self.reset()

    def reset(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._bc: list[np.ndarray] = []

    def add(self, image_id: int, errors: Mapping[str, np.ndarray | None], used_prior: np.ndarray | None = None,
            sigma_px: np.ndarray | None = None, spacing_mm: Sequence[float] | None = None) -> None:
        """Add one image's :func:`corner_errors` output, its ``(V, 4)`` prior-fallback mask and corner sigmas (px)."""
        n = np.asarray(errors["p2p_px"]).shape[0]
        sig = np.full((n, 4), np.nan) if sigma_px is None else np.asarray(sigma_px, dtype=np.float64).reshape(n, 4)
        sig_mm = None
        if spacing_mm is not None:
            sig_mm = sig * float(np.sqrt(np.mean(np.square(np.asarray(spacing_mm, dtype=np.float64)))))
        self._rows.append({"image_id": int(image_id), **errors, "sigma_px": sig, "sigma_mm": sig_mm,
                           "used_prior": np.zeros((n, 4), bool) if used_prior is None else np.asarray(used_prior, bool)})

    def add_bc(self, bc: np.ndarray) -> None:
        """Add patch-level Bhattacharyya coefficients ``(P,)``."""
        self._bc.append(np.asarray(bc, dtype=np.float64).reshape(-1))

    @property
    def unit(self) -> str:
        """``"mm"`` when every image had a spacing (or nothing was added), else ``"px"``."""
        return "mm" if all(r["p2p_mm"] is not None for r in self._rows) else "px"

    def errors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """``(p2p (N, 4), p2c (N, 4), image_ids (N,), unit)`` over every vertebra added."""
        u = self.unit
        if not self._rows:
            return np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0), u
        p2p = np.concatenate([r[f"p2p_{u}"] for r in self._rows])
        p2c = np.concatenate([r[f"p2c_{u}"] for r in self._rows])
        ids = np.concatenate([np.full(len(r[f"p2p_{u}"]), r["image_id"]) for r in self._rows])
        return p2p, p2c, ids, u

    def sigmas(self) -> np.ndarray:
        """``(N, 4)`` corner sigmas in the unit of :meth:`errors` (NaN where not given)."""
        u = self.unit
        if not self._rows:
            return np.zeros((0, 4))
        return np.concatenate([r[f"sigma_{u}"] if r[f"sigma_{u}"] is not None else r["sigma_px"] for r in self._rows])

    def summary(self) -> dict[str, float]:
        """Flat dict: ``p2p_*`` (:func:`summarize_errors` keys), ``p2c_count/mean/median/std_{u}``,
        ``bc_mean``, ``bc_median``, ``bc_count``, ``prior_fallback``, ``spacing_known``."""
        p2p, p2c, ids, u = self.errors()
        out = {f"p2p_{k}": v for k, v in summarize_errors(
            p2p, ids, unit=u, thresholds_mm=self.thresholds_mm, scan_threshold_mm=self.scan_threshold_mm,
            fit_failure_mm=self.fit_failure_mm).items()}
        c = p2c[~np.isnan(p2c)]
        with np.errstate(invalid="ignore"):
            out["p2c_count"] = float(c.size)
            out[f"p2c_mean_{u}"] = float(np.mean(c)) if c.size else float("nan")
            out[f"p2c_median_{u}"] = float(np.median(c)) if c.size else float("nan")
            out[f"p2c_std_{u}"] = float(np.std(c)) if c.size else float("nan")
        bc = np.concatenate(self._bc) if self._bc else np.zeros(0)
        out["bc_count"] = float(bc.size)
        out["bc_mean"] = float(np.mean(bc)) if bc.size else float("nan")
        out["bc_median"] = float(np.median(bc)) if bc.size else float("nan")
        counted = ~np.isnan(p2p)
        used = np.concatenate([r["used_prior"] for r in self._rows]) if self._rows else np.zeros((0, 4), bool)
        out["prior_fallback"] = float(np.mean(used[counted])) if counted.any() else float("nan")
        out["spacing_known"] = 1.0 if u == "mm" else 0.0
        return out


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
    better); every entry of :meth:`CornerErrorAccumulator.summary` goes to ``engine.state.metrics``
    as ``prefix + key`` (``val_p2p_mean_mm``, ``val_p2p_fit_failure_3.0mm``, ``val_p2c_mean_mm``,
    ``val_bc_mean``, ...), so StatsHandler and MLFlowHandler log them.

    Args:
        cases: the validation items of :func:`heatmap_cases` (ground truth, levels, outlines).
        model: the :class:`HeatmapModelSpec` (prior, post-processing, scheme).
        prefix: prepended to the summary keys.
        pred_key, label_key: output key of the maps, batch key of the targets.
        thresholds_mm, fit_failure_mm, scan_threshold_mm: see :class:`CornerErrorAccumulator`.
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


# ---------------------------------------------------------------------------------------------- evaluation
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
        predictor: a loaded :class:`CornerPredictor`.
        cases: items of :func:`heatmap_cases`.
        thresholds_mm, fit_failure_mm: summary settings.
        with_bc: also compute the patch-level Bhattacharyya coefficient against the target maps.

    Returns:
        ``(summary, accumulator)``: :meth:`CornerErrorAccumulator.summary` plus ``images`` and
        ``vertebrae`` counts; the accumulator holds the per-corner errors.
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

