"""Real radiographs: train and evaluate the detector, the heatmap FCN and the regressor on the AASCE set.

The 481 AP radiographs of ``aasce-train`` (read in place) are split by patient with a seed
(:func:`monai_spine.data.aasce.split_aasce`, 70/15/15 by default) into a dataset folder of the
project's format under the cache (:func:`~monai_spine.data.aasce.ensure_aasce_dataset`). The bundle then
trains, in this process and on the CPU, with ``--dataset_dir <that folder> --region ap``:

* the vertebra detector (``train.json`` + ``detector_train.json``, 17 levels T1-L5),
* the heatmap FCN (``train.json`` + ``heatmap_train.json``; corners from vertebra centres),
* the BayeCBAM corner regressor (``train.json``, ``ap4`` scheme: 4 corners, no spinous process),
  optionally warm-started from another checkpoint (``init_checkpoint``).

Evaluation on the test split (the images carry no pixel spacing, so errors are in **pixels** and as
a **percentage of the vertebra's height**): detection recall (a detected level is found when its centre
lies inside the annotated box of that level); per model the mean / median corner error, the success
detection rate (SDR) at 1 %, 2 % and 5 % of the image height; the uncertainty quality (Spearman of
sigma with error, AUSE, split-conformal coverage and mean radius, calibrated on the validation split
with the same detected centres / boxes as the test) and the AASCE 2019 challenge metric, the SMAPE of
the three Cobb angles computed with the dataset's rule (:mod:`monai_spine.measure.cobb`) against
``angles.csv``. Models: ``heatmap (clicked centres)`` (the Al Arif semi-automatic workflow, the
ground-truth centres standing in for the clicks), ``heatmap (detected centres)`` and ``regressor
(detected boxes)`` (fully automatic).

Cobb angles need the whole spine: for an image where the detector missed levels, the angles come from
the vertebrae it found (in level order), which is what a fully automatic tool would report.

The set was labelled in batches (the date in each file name, :func:`~monai_spine.data.aasce.aasce_batch`)
that draw the vertebral body at different sizes; the report gives each batch's annotated proportions
(:func:`annotation_proportions`) and each model's corner error and drawn size per batch
(:func:`batch_metrics`, :func:`format_batch_table`), so that a corner error can be read against the
reference's own convention.

Pieces: :class:`AasceBenchSettings`, :func:`vertebra_heights_px`, :func:`sdr`, :func:`points_metrics`,
:func:`format_aasce_table`, :func:`run_aasce_benchmark`.

Why one module: it is one benchmark (scripts/bench_aasce.py) on the real AASCE films: its settings,
the models it trains, the per-point and Cobb metrics, the mean-shape reference and the table; the
table formats exactly the numbers computed here, so they change together.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from monai_spine.bench.tables import num, pct
from monai_spine.data.frames import FrameBoxes
from monai_spine.data.reboxing import frame_box_dataset, reboxed_dataset

__all__ = [
    "AasceBenchSettings",
    "PointSet",
    "vertebra_heights_px",
    "vertebra_widths_px",
    "endplate_tilts_deg",
    "batch_metrics",
    "annotation_proportions",
    "format_batch_table",
    "label_report",
    "sdr",
    "points_metrics",
    "format_aasce_table",
    "run_aasce_benchmark",
    "SDR_LEVELS",
    "MeanShapeReference",
    "train_chain_folder",
    "restate_chain_statistics",
    "label_order_counts",
    "CHAIN_DECODING",
    "REGRESSOR_BOXES",
]

#: Where the AP regressor's crops come from (:attr:`AasceBenchSettings.regressor_boxes`).
REGRESSOR_BOXES = ("annotation", "detector", "spacing", "frame")

#: Options of the chain decoding, chosen on the 73 validation films of the seed-0 split (grid over spacing
#: sigma, gap and drop penalties, the weights of the height guess and of the level channel).
CHAIN_DECODING = {"spacing_sigma": 0.15, "gap_penalty": 2.0, "drop_penalty": 8.0, "position_weight": 1.0,
                  "channel_weight": 0.0}

#: success detection rate thresholds, as fractions of the image height
SDR_LEVELS = (0.01, 0.02, 0.05)


@dataclass
class AasceBenchSettings:
    """Budget of the AASCE benchmark (all on the CPU).

    Attributes:
        split_seed: seed of the patient split; fractions: training / validation / test shares.
        max_train: use at most this many training images (None: all) for the three trainings.
        max_val, max_test: evaluate at most this many validation (calibration) / test images.
        epochs_detector, detector_spatial (H, W), detector_features: the detector's budget and size.
        detector_method: ``"chain"`` (one "any vertebra" heatmap, levels from the spacing along the spine,
            every level output with the unseen ones inferred; trained by
            :func:`~monai_spine.engines.detector.train_chain_detector`) or ``"levels"`` (one heatmap per
            level, the bundle's ``detector_train.json``).
        detector_batch: films per step of the ``chain`` training.
        detector_dir, heatmap_dir: evaluate these trained model folders (e.g. the shipped
            ``bundle/models/ap/...``) instead of training ("" : train).
        epochs_heatmap, heatmap_width, heatmap_patches: the FCN's budget, width and patches per image.
        heatmap_grid: ``(n, step)`` grid of patch centres per vertebra at prediction (the bundle's default
            ``(3, 0.15)`` gives 81 patches per vertebra with its 3 scales and 3 rotations, about 1,400 FCN
            passes for an AASCE image; ``(1, 0)`` gives 9). Training keeps the bundle's grid.
        heatmap_val_images: validation images of the FCN's own in-training validation (bundle grid).
        epochs_regressor, regressor_batch, regressor_width, regressor_fc, crop (H, W): the regressor's.
        init_regressor: warm-start checkpoint of the regressor ("" for none).
        regressor_boxes: crops of the regressor's training and validation films cut from the
            ``"annotation"`` boxes (the corners' bounding box) or from the ``"detector"``'s boxes of
            those films (:func:`detector_box_dataset`), the framing the regressor meets at prediction,
            or from ``"spacing"`` boxes: the vertebra centre and the local distance between centres
            (:class:`SpacingBoxes`: annotated centres in training, detected ones at prediction), or
            from ``"frame"`` boxes: the same turned into the spine's frame (orientation from the
            neighbouring centres, :class:`~monai_spine.data.frames.FrameBoxes`), so the crop shows
            the vertebra upright, as the mean-shape reference and the corner FCN's patches place it.
        mc_samples: MC-dropout passes; alpha: conformal miscoverage; seed: training seed.
        models: which models to train and evaluate (subset of ``detector``, ``heatmap``, ``regressor``).
        reuse: skip the training of a model whose ``model.pt`` is already in the output folder (e.g. to
            finish a run that stopped after the detector, or to re-evaluate); its training time is then
            taken from the folder's previous ``results.json`` (0 when there is none).
    """

    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None
    epochs_detector: int = 28
    detector_spatial: tuple[int, int] = (384, 128)
    detector_features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)
    detector_method: str = "chain"
    detector_batch: int = 8
    detector_dir: str = ""
    heatmap_dir: str = ""
    epochs_heatmap: int = 4
    heatmap_width: int = 8
    heatmap_patches: int = 16
    heatmap_grid: tuple[int, float] = (1, 0.0)
    heatmap_val_images: int = 6
    epochs_regressor: int = 2
    regressor_batch: int = 16
    regressor_width: float = 0.25
    regressor_fc: int = 256
    crop: tuple[int, int] = (112, 224)
    init_regressor: str = ""
    regressor_boxes: str = "annotation"
    mc_samples: int = 10
    alpha: float = 0.1
    seed: int = 0
    models: tuple[str, ...] = ("detector", "heatmap", "regressor")
    reuse: bool = False

    def __post_init__(self) -> None:
        for k in ("epochs_detector", "epochs_heatmap", "epochs_regressor", "mc_samples"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.regressor_boxes not in REGRESSOR_BOXES:
            raise ValueError(f"regressor_boxes must be one of {REGRESSOR_BOXES}, got {self.regressor_boxes!r}")
        if self.detector_method not in ("chain", "levels"):
            raise ValueError(f"detector_method must be 'chain' or 'levels', got {self.detector_method!r}")
        unknown = set(self.models) - {"detector", "heatmap", "regressor"}
        if unknown or "detector" not in self.models:
            raise ValueError(f"models must include 'detector' and be among detector/heatmap/regressor, got {self.models}")
        self.detector_spatial = tuple(int(v) for v in self.detector_spatial)  # type: ignore[assignment]
        self.detector_features = tuple(int(v) for v in self.detector_features)
        self.crop = tuple(int(v) for v in self.crop)  # type: ignore[assignment]
        self.models = tuple(self.models)

    def describe(self) -> str:
        """One-line summary."""
        parts = [f"AASCE split seed {self.split_seed} by patient {'/'.join(f'{f:g}' for f in self.fractions)}",
                 f"training images {'all' if self.max_train is None else self.max_train}",
                 (f"detector {self.detector_dir}" if self.detector_dir else
                  f"detector ({self.detector_method}) {self.epochs_detector} epochs, input "
                  f"{self.detector_spatial[0]}x{self.detector_spatial[1]}, "
                  f"features {'-'.join(map(str, self.detector_features))}")]
        if "heatmap" in self.models:
            parts.append(f"heatmap FCN {self.epochs_heatmap} epochs, width {self.heatmap_width}, "
                         f"{self.heatmap_patches} patches/image, prediction grid {self.heatmap_grid[0]}x"
                         f"{self.heatmap_grid[0]} step {self.heatmap_grid[1]:g}")
        if "regressor" in self.models:
            parts.append(f"regressor bayecbam {self.epochs_regressor} epochs, batch {self.regressor_batch}, width "
                         f"{self.regressor_width:g}, fc {self.regressor_fc}, crop {self.crop[0]}x{self.crop[1]}, "
                         f"MC T={self.mc_samples}, init {self.init_regressor or 'none'}, "
                         f"trained in {self.regressor_boxes} boxes")
        parts.append(f"conformal alpha={self.alpha:g}; seed {self.seed}")
        return "; ".join(parts)


@dataclass
class PointSet:
    """Per-corner results of one model over a split (found vertebrae only).

    Attributes:
        name: row name.
        errors_px: (M,) corner errors in pixels.
        sigma_px: (M,) the model's uncertainty of each corner in pixels (NaN: none).
        height_px: (M,) annotated height of the corner's vertebra, pixels.
        image_height_px: (M,) height of the corner's radiograph, pixels.
        image_ids: (M,) index of the radiograph.
        cobb_pred_deg, cobb_ref_deg: (I, 3) predicted and reference Cobb angles per radiograph.
        cobb_ref_rotated: (I,) whether the dataset computed that reference from a vertebra list stored
            rotated by one (the annotation's ``meta["label_fix"]``: its angles follow the stored order).
        found, annotated: vertebrae found / annotated.
        seconds: per-radiograph wall seconds of the model (after reading the image).
        point_batches: (M,) the annotation batch of each corner's radiograph
            (:func:`~monai_spine.data.aasce.aasce_batch`; ``""`` when not given).
        vertebra_batches, width_ratio, height_ratio: per scored vertebra, its batch and the predicted
            width and height over the annotated ones (the corners' spread, not their error).
        tilt_error_deg: per scored vertebra, ``[top, bottom]`` absolute end-plate tilt errors in degrees
            (:func:`endplate_tilts_deg`): what the Cobb angles are made of, and free of where along its end
            plate a corner is drawn.
    """

    name: str
    errors_px: list[float] = field(default_factory=list)
    sigma_px: list[float] = field(default_factory=list)
    height_px: list[float] = field(default_factory=list)
    image_height_px: list[float] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    cobb_pred_deg: list[list[float]] = field(default_factory=list)
    cobb_ref_deg: list[list[float]] = field(default_factory=list)
    cobb_ref_rotated: list[bool] = field(default_factory=list)
    found: int = 0
    annotated: int = 0
    seconds: list[float] = field(default_factory=list)
    seen_found: int = 0
    images: int = 0
    images_all_found: int = 0
    point_batches: list[str] = field(default_factory=list)
    vertebra_batches: list[str] = field(default_factory=list)
    width_ratio: list[float] = field(default_factory=list)
    height_ratio: list[float] = field(default_factory=list)
    tilt_error_deg: list[list[float]] = field(default_factory=list)

    def add_image(self, image_id: int, pred_px: np.ndarray, sigma_px: np.ndarray, gt_px: np.ndarray,
                  visible: np.ndarray, image_height_px: float, batch: str = "") -> None:
        """Add the corners of the found vertebrae of one radiograph.

        Args:
            image_id: radiograph index.
            pred_px, gt_px: (V, 4, 2) predicted and annotated corners (x, y) px of the same vertebrae.
            sigma_px: (V, 4) the model's sigma per corner, px.
            visible: (V, 4) annotated corners to score.
            image_height_px: the radiograph's height.
            batch: the radiograph's annotation batch (see :func:`batch_metrics`).
        """
        pred_px, gt_px = np.asarray(pred_px, np.float64), np.asarray(gt_px, np.float64)
        if pred_px.shape != gt_px.shape or pred_px.shape[-2:] != (4, 2):
            raise ValueError(f"{self.name}: predicted {pred_px.shape} and annotated {gt_px.shape} corners differ")
        err = np.linalg.norm(pred_px - gt_px, axis=-1)
        err = np.where(np.isfinite(err), err, np.inf)
        h = np.repeat(vertebra_heights_px(gt_px)[:, None], 4, axis=1)
        sig = np.broadcast_to(np.asarray(sigma_px, np.float64), err.shape)
        m = np.asarray(visible, bool)
        self.errors_px += err[m].tolist()
        self.sigma_px += sig[m].tolist()
        self.height_px += h[m].tolist()
        self.image_height_px += [float(image_height_px)] * int(m.sum())
        self.image_ids += [int(image_id)] * int(m.sum())
        self.point_batches += [str(batch)] * int(m.sum())
        whole = m.all(axis=1)  # a vertebra's size needs its four corners
        with np.errstate(divide="ignore", invalid="ignore"):
            wr = vertebra_widths_px(pred_px[whole]) / vertebra_widths_px(gt_px[whole])
            hr = vertebra_heights_px(pred_px[whole]) / vertebra_heights_px(gt_px[whole])
        self.width_ratio += wr.tolist()
        self.height_ratio += hr.tolist()
        dt = endplate_tilts_deg(pred_px[whole]) - endplate_tilts_deg(gt_px[whole])
        self.tilt_error_deg += np.abs((dt + 180.0) % 360.0 - 180.0).tolist()
        self.vertebra_batches += [str(batch)] * int(whole.sum())


def _ap4_corners(corners_px: Any) -> np.ndarray:
    """``(V, 4, 2)`` float64 ``ap4`` corners (TL, TR, BL, BR), or a ValueError naming the shape."""
    c = np.asarray(corners_px, np.float64)
    if c.ndim != 3 or c.shape[1:] != (4, 2):
        raise ValueError(f"corners must have shape (V, 4, 2), got {c.shape}")
    return c


def _mean_edge_px(corners_px: Any, edges: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """``(V,)`` mean length of two edges (corner index pairs) of ``(V, 4, 2)`` ``ap4`` corners."""
    c = _ap4_corners(corners_px)
    return sum(np.linalg.norm(c[:, a] - c[:, b], axis=-1) for a, b in edges) / 2.0


def vertebra_heights_px(corners_px: Any) -> np.ndarray:
    """Height of each vertebra: mean of its left (TL-BL) and right (TR-BR) edge lengths.

    Args:
        corners_px: (V, 4, 2) corners in the ``ap4`` order TL, TR, BL, BR, (x, y) px.

    Returns:
        (V,) heights in px.
    """
    return _mean_edge_px(corners_px, ((0, 2), (1, 3)))


def vertebra_widths_px(corners_px: Any) -> np.ndarray:
    """Width of each vertebra: mean of its top (TL-TR) and bottom (BL-BR) edge lengths.

    Args:
        corners_px: (V, 4, 2) corners in the ``ap4`` order TL, TR, BL, BR, (x, y) px.

    Returns:
        (V,) widths in px.
    """
    return _mean_edge_px(corners_px, ((0, 1), (2, 3)))


def endplate_tilts_deg(corners_px: Any) -> np.ndarray:
    """Tilt of each vertebra's upper (TL -> TR) and lower (BL -> BR) end plate: ``(V, 2)`` degrees.

    ``atan2(dy, dx)`` of the end plate in image axes (y down), so a plate falling to the right is
    positive; the Cobb angles are differences of such tilts.

    Args:
        corners_px: (V, 4, 2) corners in the ``ap4`` order TL, TR, BL, BR, (x, y) px.
    """
    c = _ap4_corners(corners_px)
    d = c[:, [1, 3]] - c[:, [0, 2]]
    return np.degrees(np.arctan2(d[..., 1], d[..., 0]))


def sdr(errors_px: Any, image_height_px: Any, fraction: float) -> float:
    """Success detection rate: share of points whose error is below ``fraction`` of their image's height."""
    e = np.asarray(errors_px, np.float64)
    h = np.asarray(image_height_px, np.float64)
    if e.shape != h.shape:
        raise ValueError(f"errors {e.shape} and image heights {h.shape} differ in shape")
    return float(np.mean(e < fraction * h)) if e.size else float("nan")


def _smape_without_rotated_refs(ps: PointSet) -> dict[str, float | int]:
    """Cobb SMAPE over the radiographs whose reference angles were not computed from a rotated vertebra list."""
    from monai_spine.measure.cobb import smape

    keep = [i for i, r in enumerate(ps.cobb_ref_rotated) if not r]
    if len(ps.cobb_ref_rotated) != len(ps.cobb_pred_deg) or not keep:
        return {"smape_unrotated_refs": float("nan"), "cobb_images_unrotated_refs": len(keep)}
    return {"smape_unrotated_refs": smape([ps.cobb_pred_deg[i] for i in keep], [ps.cobb_ref_deg[i] for i in keep]),
            "cobb_images_unrotated_refs": len(keep)}


def _tilt_stats(tilt_error_deg: Any) -> dict[str, float]:
    """Mean, median and 95th percentile of end-plate tilt errors (degrees; NaN when there are none)."""
    t = np.asarray(tilt_error_deg, np.float64).reshape(-1)
    t = t[np.isfinite(t)]
    if not t.size:
        return {"tilt_mean_deg": float("nan"), "tilt_median_deg": float("nan"), "tilt_p95_deg": float("nan")}
    return {"tilt_mean_deg": float(t.mean()), "tilt_median_deg": float(np.median(t)),
            "tilt_p95_deg": float(np.percentile(t, 95))}


def points_metrics(ps: PointSet, conformal: Any = None) -> dict[str, Any]:
    """The table row of one model (see :func:`format_aasce_table`)."""
    from monai_spine.measure.cobb import smape
    from monai_spine.uncertainty.quality import conformal_coverage, sparsification, spearman

    e = np.asarray(ps.errors_px, np.float64)
    s = np.asarray(ps.sigma_px, np.float64)
    rel = 100.0 * e / np.asarray(ps.height_px, np.float64)
    nan = float("nan")
    finite = np.isfinite(e)
    row: dict[str, Any] = {
        "model": ps.name, "count": int(e.size),
        "found": int(ps.found), "annotated": int(ps.annotated),
        "recall": ps.found / ps.annotated if ps.annotated else nan,
        "mean_px": float(np.mean(e[finite])) if finite.any() else nan,
        "median_px": float(np.median(e)) if e.size else nan,
        "p95_px": float(np.percentile(e, 95)) if e.size else nan,
        "max_px": float(np.max(e)) if e.size else nan,
        "seen_recall": ps.seen_found / ps.annotated if ps.annotated else nan,
        "images": int(ps.images), "images_all_found": int(ps.images_all_found),
        "mean_pct_height": float(np.mean(rel[finite])) if finite.any() else nan,
        "median_pct_height": float(np.median(rel)) if e.size else nan,
        **{f"sdr_{100 * f:g}pct": sdr(e, ps.image_height_px, f) for f in SDR_LEVELS},
        "spearman": nan, "ause": nan, "coverage": nan, "nominal": nan, "mean_radius_px": nan,
        **_tilt_stats(ps.tilt_error_deg),
        "smape": smape(ps.cobb_pred_deg, ps.cobb_ref_deg) if ps.cobb_pred_deg else nan,
        "cobb_images": len(ps.cobb_pred_deg),
        **_smape_without_rotated_refs(ps),
        "s_per_image": float(np.mean(ps.seconds)) if ps.seconds else nan,
    }
    if np.isfinite(s).any():
        row["spearman"] = spearman(e, s)["rho"]
        row["ause"] = sparsification(e, s)["ause"]
        if conformal is not None:
            cov = conformal_coverage(e, s, conformal, np.full(e.shape, "corner", dtype=object))
            row.update(coverage=cov["coverage"], nominal=cov["nominal"], mean_radius_px=cov["mean_radius"])
    return row


def batch_metrics(ps: PointSet) -> dict[str, dict[str, float | int]]:
    """Corner errors and the corners' spread of one model, per annotation batch.

    Returns:
        ``{batch: {"corners", "mean_px", "median_px", "p95_px", "vertebrae", "width_ratio", "height_ratio",
        "tilt_median_deg"}}`` (the ratios: median predicted over annotated vertebra width and height; above
        1, the model draws the vertebra larger than the reference; the tilt: median end-plate tilt error),
        batches sorted.
    """
    e = np.asarray(ps.errors_px, np.float64)
    pb = np.asarray(ps.point_batches, dtype=object)
    vb = np.asarray(ps.vertebra_batches, dtype=object)
    wr, hr = np.asarray(ps.width_ratio, np.float64), np.asarray(ps.height_ratio, np.float64)
    tilt = np.asarray(ps.tilt_error_deg, np.float64).reshape(-1, 2)
    if pb.shape != e.shape or vb.shape != wr.shape or wr.shape != hr.shape or len(tilt) != len(vb):
        raise ValueError(f"{ps.name}: {e.size} errors with {pb.size} batches, {vb.size} vertebra batches with "
                         f"{wr.size} width and {hr.size} height ratios")
    out: dict[str, dict[str, float | int]] = {}
    for b in sorted(set(pb.tolist()) | set(vb.tolist())):
        eb = e[(pb == b) & np.isfinite(e)]
        w, h = wr[(vb == b) & np.isfinite(wr)], hr[(vb == b) & np.isfinite(hr)]
        nan = float("nan")
        out[b] = {"corners": int(eb.size), "mean_px": float(eb.mean()) if eb.size else nan,
                  "median_px": float(np.median(eb)) if eb.size else nan,
                  "p95_px": float(np.percentile(eb, 95)) if eb.size else nan, "vertebrae": int(w.size),
                  "width_ratio": float(np.median(w)) if w.size else nan,
                  "height_ratio": float(np.median(h)) if h.size else nan,
                  "tilt_median_deg": _tilt_stats(tilt[vb == b])["tilt_median_deg"]}
    return out


def annotation_proportions(labels: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """How large each annotation batch draws the vertebral bodies, against the spine's own scale.

    For each film in level order (:func:`~monai_spine.codecs.chain.centres_in_level_order`), the median
    over its vertebrae of the annotated width and height (:func:`vertebra_widths_px`,
    :func:`vertebra_heights_px`) divided by the film's median distance between consecutive vertebra
    centres; then the mean and standard deviation over the batch's films
    (:func:`~monai_spine.data.aasce.aasce_batch` of the label's name). Both ratios are free of the film's
    scale, so batches of one population should agree.

    Returns:
        ``{batch: {"films", "out_of_order", "width_per_step", "width_per_step_sd", "height_per_step",
        "height_per_step_sd"}}``, batches sorted.
    """
    from monai_spine.codecs.chain import centres_in_level_order
    from monai_spine.codecs.detection import vertebra_centres_px
    from monai_spine.data.aasce import aasce_batch
    from monai_spine.data.annotation import read_annotation

    per: dict[str, list[tuple[float, float]]] = {}
    skipped: dict[str, int] = {}
    for label in labels:
        ann = read_annotation(label)
        batch = aasce_batch(Path(label).name)
        per.setdefault(batch, [])
        c = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, boxes_px=ann.boxes_px)
        whole = np.asarray(ann.visible, bool).all(axis=1)
        if not centres_in_level_order(c) or whole.sum() < 2:
            skipped[batch] = skipped.get(batch, 0) + 1
            continue
        step = float(np.median(np.linalg.norm(np.diff(c[whole], axis=0), axis=1)))
        k = np.asarray(ann.keypoints_px, np.float64)[whole]
        per[batch].append((float(np.median(vertebra_widths_px(k))) / step, float(np.median(vertebra_heights_px(k))) / step))
    out: dict[str, dict[str, float | int]] = {}
    for b in sorted(per):
        a = np.asarray(per[b], np.float64).reshape(-1, 2)
        nan = float("nan")
        out[b] = {"films": int(len(a)), "out_of_order": int(skipped.get(b, 0)),
                  "width_per_step": float(a[:, 0].mean()) if len(a) else nan,
                  "width_per_step_sd": float(a[:, 0].std()) if len(a) else nan,
                  "height_per_step": float(a[:, 1].mean()) if len(a) else nan,
                  "height_per_step_sd": float(a[:, 1].std()) if len(a) else nan}
    return out


def format_batch_table(proportions: Mapping[str, Mapping[str, Any]],
                       by_model: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown table, one row per annotation batch: the batch's annotated proportions
    (:func:`annotation_proportions`) and each model's corner median and drawn size (:func:`batch_metrics`)."""
    batches = sorted(set(proportions) | {b for m in by_model.values() for b in m})
    if not batches:
        raise ValueError("no annotation batch to tabulate")
    header = ["annotation batch", "films in level order", "annotated width / centre step", "annotated height / centre step"]
    for name in by_model:
        header += [f"{name}: median px (corners)", f"{name}: predicted / annotated width, height",
                   f"{name}: median end-plate tilt error °"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for b in batches:
        pr = proportions.get(b, {})
        cells = [b, str(pr.get("films", ""))]
        for key in ("width_per_step", "height_per_step"):
            cells.append(f"{num(pr[key], '{:.3f}')} ± {num(pr[key + '_sd'], '{:.3f}')}" if pr else "")
        for m in by_model.values():
            r = m.get(b)
            cells += ([f"{num(r['median_px'], '{:.1f}')} ({r['corners']})",
                       f"{num(r['width_ratio'], '{:.3f}')}, {num(r['height_ratio'], '{:.3f}')}",
                       num(r["tilt_median_deg"], "{:.1f}")] if r else ["", "", ""])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label_report(splits: Mapping[str, Sequence[str]]) -> str:
    """The labels alone, per split: how many files were put back in level order or stay out of it
    (:func:`label_order_counts`) and each annotation batch's proportions (:func:`annotation_proportions`).

    Args:
        splits: ``{split name: label paths}`` (e.g. the dataset folder's index).
    """
    parts = []
    for name, labels in splits.items():
        order = label_order_counts(labels)
        parts.append(f"{name}: {order['films']} films, {order['put back in level order']} put back in level order, "
                     f"{order['out of level order']} still out of level order\n\n"
                     + format_batch_table(annotation_proportions(labels), {}))
    return "\n\n".join(parts)


def format_aasce_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one row per model (rows from :func:`points_metrics`)."""
    if not rows:
        raise ValueError("no row to tabulate")
    header = ["model", "right level (seen + inferred)", "right level, seen", "films all 17", "mean px", "median px",
              "p95 px", "max px", "mean % height", "median % height",
              "SDR@1%", "SDR@2%", "SDR@5%", "Spearman σ", "AUSE px", "conformal coverage", "mean radius px",
              "end-plate tilt error mean / median / p95 °", "Cobb SMAPE", "s / radiograph"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        cov = pct(r.get("coverage"))
        if cov != "—":
            cov += f" (nominal {100 * float(r['nominal']):.0f} %)"
        cells = [str(r["model"]), f"{pct(r.get('recall'))} ({r.get('found', 0)}/{r.get('annotated', 0)})",
                 pct(r.get("seen_recall")),
                 f"{pct(r['images_all_found'] / r['images'] if r.get('images') else float('nan'))} "
                 f"({r.get('images_all_found', 0)}/{r.get('images', 0)})",
                 num(r["mean_px"], "{:.1f}"), num(r["median_px"], "{:.1f}"), num(r.get("p95_px"), "{:.1f}"),
                 num(r.get("max_px"), "{:.1f}"), num(r["mean_pct_height"], "{:.1f}"),
                 num(r["median_pct_height"], "{:.1f}"),
                 *[pct(r[f"sdr_{100 * f:g}pct"]) for f in SDR_LEVELS],
                 num(r["spearman"], "{:+.3f}"), num(r["ause"], "{:.2f}"), cov, num(r["mean_radius_px"], "{:.1f}"),
                 " / ".join(num(r.get(f"tilt_{k}_deg"), "{:.1f}") for k in ("mean", "median", "p95")),
                 f"{num(r['smape'], '{:.1f}')} % ({r['cobb_images']} images)" if math.isfinite(r["smape"]) else "—",
                 num(r["s_per_image"], "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = (
    "Errors in pixels of the original JPEGs (the AASCE images carry no pixel spacing) and as a percentage of the "
    "annotated vertebra height (mean of its left and right edges). SDR@p%: share of corners within p % of the image "
    "height. Only vertebrae the detector found (its centre inside the annotated box of the same level) are scored; "
    "the clicked-centres row uses the annotated centres (recall 100 % by construction). Spearman / AUSE: the model's "
    "sigma in px (heatmap: the spread of the accumulated corner map; regressor: total sigma_p of MC dropout, crop "
    "fractions times the crop's size in px) against the error. Conformal: split-conformal radii (normalised score) "
    "fitted on the validation split with the same kind of centres / boxes, coverage on test. Cobb SMAPE: the AASCE "
    "2019 challenge metric over the three angles, computed with the dataset's rule from the predicted corners of the "
    "found vertebrae, against angles.csv. End-plate tilt error: per found vertebra, the absolute difference "
    "between the predicted and annotated tilt of its upper and of its lower end plate (TL-TR, BL-BR), the pieces a "
    "Cobb angle is made of; unlike the corner distance it does not depend on where along the end plate the "
    "reference draws a corner."
)


# ----------------------------------------------------------------------------------------------
# evaluation of one split
# ----------------------------------------------------------------------------------------------
def _inferred_sigma(det: Any, order: np.ndarray) -> np.ndarray:
    """``(V, 1)`` sigma of inferred vertebrae (half the box diagonal, as ``predict`` writes it)."""
    b = np.asarray(det.boxes_px, np.float64)[order]
    return (0.5 * np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))[:, None]


def _regressor_sigma_px(pred: Any, spatial_size: Sequence[int]) -> np.ndarray:
    """Total sigma_p of a :class:`KeypointPrediction` in radiograph px (crop fractions times crop extent)."""
    s = np.asarray(pred.sigma_frac["total"], np.float64)
    aff = np.asarray(pred.crop_to_image, np.float64)
    h, w = int(spatial_size[0]), int(spatial_size[1])
    ext_x = np.hypot(aff[:, 0, 0], aff[:, 1, 0]) * w
    ext_y = np.hypot(aff[:, 0, 1], aff[:, 1, 1]) * h
    return s * np.sqrt((ext_x ** 2 + ext_y ** 2) / 2.0)[:, None]


def _spine_frames(centres_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per level the unit direction along the spine ``t`` (V, 2), across it ``n`` (V, 2) and the local spacing (V,)."""
    c = np.asarray(centres_px, np.float64)
    v = c.shape[0]
    if v < 2:
        raise ValueError(f"a spine frame needs two centres or more, got {v}")
    nxt = np.vstack([c[1:], 2 * c[-1] - c[-2]])
    prv = np.vstack([2 * c[0] - c[1], c[:-1]])
    t = nxt - prv
    t /= np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-9)
    n = np.stack([t[:, 1], -t[:, 0]], -1)
    spacing = 0.5 * (np.linalg.norm(nxt - c, axis=-1) + np.linalg.norm(c - prv, axis=-1))
    return t, n, spacing


class MeanShapeReference:
    """The no-network reference: the training set's mean corner layout placed at given centres.

    For each level the four corners are stored as offsets from the vertebra centre in the local spine
    frame (along the spine through the neighbouring centres, across it) divided by the local spacing of
    the centres; :meth:`predict` puts these mean offsets back at new centres (same frame, same scale).

    Args:
        offsets: ``(L, 4, 2)`` mean offsets (across, along) in units of the local spacing.
        levels: the L level names.
    """

    def __init__(self, offsets: np.ndarray, levels: Sequence[str]) -> None:
        self.offsets = np.asarray(offsets, np.float64)
        self.levels = list(levels)
        if self.offsets.shape != (len(self.levels), 4, 2):
            raise ValueError(f"offsets must be ({len(self.levels)}, 4, 2), got {self.offsets.shape}")

    @classmethod
    def fit(cls, labels: Sequence[str], region: str = "ap") -> "MeanShapeReference":
        """Mean offsets over the annotated films of ``labels`` with every level of ``region``."""
        from monai_spine.data.annotation import read_annotation
        from monai_spine.data.keypoints import get_region, get_scheme

        levels = list(get_region(region).levels)
        acc = np.zeros((len(levels), 4, 2))
        n = 0
        for label in labels:
            ann = read_annotation(label)
            if [str(v) for v in ann.levels] != levels or not np.all(ann.visible):
                continue
            idx = list(get_scheme(ann.scheme).corner_indices)
            corners = np.asarray(ann.keypoints_px, np.float64)[:, idx]
            c = corners.mean(1)
            t, nn, sp = _spine_frames(c)
            d = corners - c[:, None]
            acc += np.stack([(d * nn[:, None]).sum(-1), (d * t[:, None]).sum(-1)], -1) / sp[:, None, None]
            n += 1
        if n == 0:
            raise ValueError(f"no annotated film with every {region} level among {len(labels)} labels")
        return cls(acc / n, levels)

    def predict(self, centres_px: Any, levels: Sequence[str]) -> np.ndarray:
        """``(V, 4, 2)`` corners at the ``(V, 2)`` centres of ``levels`` (top to bottom)."""
        c = np.asarray(centres_px, np.float64)
        t, nn, sp = _spine_frames(c)
        off = self.offsets[[self.levels.index(str(v)) for v in levels]] * sp[:, None, None]
        return c[:, None] + off[..., :1] * nn[:, None] + off[..., 1:] * t[:, None]


def label_order_counts(labels: Sequence[str]) -> dict[str, int]:
    """How many of the films' label files the reader put back in level order, and how many stay out of it.

    Returns:
        ``{"films": N, "put back in level order": n_fixed, "out of level order": n_noisy}``: the first
        from ``meta["label_fix"]`` (:func:`~monai_spine.data.aasce.fix_rotated_levels`), the second by
        :func:`~monai_spine.codecs.chain.centres_in_level_order` on the annotated centres (such a film
        cannot be wholly right).
    """
    from monai_spine.codecs.chain import centres_in_level_order
    from monai_spine.codecs.detection import vertebra_centres_px
    from monai_spine.data.annotation import read_annotation

    fixed = noisy = 0
    for label in labels:
        ann = read_annotation(label)
        fixed += bool(ann.meta.get("label_fix"))
        c = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, boxes_px=ann.boxes_px)
        noisy += not centres_in_level_order(c)
    return {"films": len(labels), "put back in level order": int(fixed), "out of level order": int(noisy)}


def evaluate_split(labels: Sequence[str], detector: Any, corners: Any = None, regressor: Any = None,
                   log: Callable[[str], None] = print, reference: MeanShapeReference | None = None,
                   box_rule: "SpacingBoxes | FrameBoxes | None" = None,
                   level_counts: dict[str, int] | None = None) -> dict[str, PointSet]:
    """Run the models on every radiograph of ``labels``; returns the :class:`PointSet` of each model row.

    ``box_rule``: the regressor's boxes come from the detected centres by this rule instead of the
    detector's boxes (the regressor was trained in the same rule's boxes). ``level_counts``: a dict
    the split's detector misses are added to, by kind (:func:`~monai_spine.evaluation.levels.level_misses`,
    plus ``levels inferred`` and ``of them right``): one detector run per film, shared by every row.
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.keypoints import get_region
    from monai_spine.data.readers import read_xray
    from monai_spine.codecs.detection import vertebra_centres_px
    from monai_spine.data.aasce import aasce_batch
    from monai_spine.evaluation.levels import level_misses, matched_levels
    from monai_spine.measure.cobb import cobb_angles_deg

    levels = list(get_region("ap").levels)
    sets: dict[str, PointSet] = {}
    if corners is not None:
        sets["clicked"] = PointSet("heatmap (clicked centres)")
        sets["heatmap"] = PointSet("heatmap (detected centres)")
    if regressor is not None:
        sets["regressor"] = PointSet("regressor bayecbam (detected boxes)")
    if reference is not None:
        sets["reference"] = PointSet("mean shape at detected centres (no network)")
    for i, label in enumerate(labels):
        ann = read_annotation(label)
        batch = aasce_batch(Path(label).name)
        img = read_xray(ann.image)
        image = img.channel_first()
        H = float(image.shape[-2])
        ref = np.asarray(ann.meta.get("cobb_angles_deg", [np.nan] * 3), np.float64)
        gt_idx = {lev: j for j, lev in enumerate(ann.levels) if lev in levels and ann.visible[j].any()}
        boxes_gt = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
        t0 = time.perf_counter()
        det = detector.detect(image, None, "unknown")
        t_det = time.perf_counter() - t0
        inferred = np.asarray(getattr(det, "inferred", None) if getattr(det, "inferred", None) is not None
                              else np.zeros(len(det.levels), bool), bool)
        pairs = matched_levels(det.levels, det.centres_px, ann.levels, boxes_gt, gt_idx.values())
        found_det, found_gt = [d for d, _ in pairs], [j for _, j in pairs]
        misses = level_misses(det.levels, det.centres_px, ann.levels, boxes_gt, levels, gt_idx.values())
        misses["levels inferred"] = int(inferred.sum())
        misses["of them right"] = int(sum(1 for d in found_det if inferred[d]))
        if level_counts is not None:
            for kind, n in misses.items():
                level_counts[kind] = level_counts.get(kind, 0) + n

        seen_found = int(sum(1 for d in found_det if not inferred[d]))

        def _record(ps: PointSet, pred_all: np.ndarray, sig_all: np.ndarray, seconds: float,
                    pred_idx: Sequence[int], gt_rows: Sequence[int], gt_found: int, seen: int | None = None) -> None:
            ps.annotated += len(gt_idx)
            ps.found += gt_found
            ps.seen_found += gt_found if seen is None else seen
            ps.images += 1
            ps.images_all_found += int(gt_found == len(gt_idx))
            ps.seconds.append(seconds)
            if len(pred_idx):
                ps.add_image(i, pred_all[list(pred_idx)], sig_all[list(pred_idx)], ann.keypoints_px[list(gt_rows)],
                             ann.visible[list(gt_rows)], H, batch)
            if len(pred_all) >= 2:
                ps.cobb_pred_deg.append(cobb_angles_deg(pred_all, H).tolist())
                ps.cobb_ref_deg.append(ref.tolist())
                ps.cobb_ref_rotated.append(bool(ann.meta.get("label_fix")))

        det_order = np.argsort([levels.index(str(lev)) for lev in det.levels]) if len(det.levels) else np.zeros(0, int)
        pos = {int(d): p for p, d in enumerate(det_order)}
        if corners is not None and len(det.levels) >= 2:  # the FCN's frames need two centres or more
            t0 = time.perf_counter()
            cp = corners.predict(image, det.centres_px[det_order], None, "unknown",
                                 levels=[str(det.levels[d]) for d in det_order])
            sig = np.where(inferred[det_order][:, None], np.maximum(cp.sigma_px, _inferred_sigma(det, det_order)),
                           cp.sigma_px)
            _record(sets["heatmap"], cp.corners_px, sig, t_det + time.perf_counter() - t0,
                    [pos[d] for d in found_det], found_gt, len(found_det), seen_found)
        elif corners is not None:
            sets["heatmap"].annotated += len(gt_idx)
            sets["heatmap"].images += 1
        if reference is not None and len(det.levels) >= 2:
            t0 = time.perf_counter()
            ref_c = reference.predict(det.centres_px[det_order], [str(det.levels[d]) for d in det_order])
            _record(sets["reference"], ref_c, np.full(ref_c.shape[:2], np.nan), t_det + time.perf_counter() - t0,
                    [pos[d] for d in found_det], found_gt, len(found_det), seen_found)
        elif reference is not None:
            sets["reference"].annotated += len(gt_idx)
            sets["reference"].images += 1
        if corners is not None:
            rows = sorted(gt_idx.values(), key=lambda j: levels.index(ann.levels[j]))
            centres = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, boxes_px=ann.boxes_px)[rows]
            t0 = time.perf_counter()
            cc = corners.predict(image, centres, None, "unknown", levels=[ann.levels[j] for j in rows])
            _record(sets["clicked"], cc.corners_px, cc.sigma_px, time.perf_counter() - t0,
                    list(range(len(rows))), rows, len(rows))
        if regressor is not None and len(det.levels):
            t0 = time.perf_counter()
            boxes = np.array(det.boxes_px[det_order], np.float64)
            angles = None
            if isinstance(box_rule, FrameBoxes) and len(det.levels) >= 2:  # a lone vertebra has no frame
                boxes, angles = box_rule.boxes(det.centres_px[det_order], [str(det.levels[d]) for d in det_order])
            elif box_rule is not None and not isinstance(box_rule, FrameBoxes):
                rule_boxes = box_rule.boxes(det.centres_px[det_order])  # a lone vertebra keeps the detector's box
                ok = np.all(np.isfinite(rule_boxes), axis=1)
                boxes[ok] = rule_boxes[ok]
            rp = regressor.predict(image, boxes, None, "unknown", angles_rad=angles)
            sig = _regressor_sigma_px(rp, regressor.spatial_size)
            _record(sets["regressor"], np.asarray(rp.keypoints_px, np.float64), sig, t_det + time.perf_counter() - t0,
                    [pos[d] for d in found_det], found_gt, len(found_det), seen_found)
        elif regressor is not None:
            sets["regressor"].annotated += len(gt_idx)
        if (i + 1) % 10 == 0:
            log(f"[aasce]   {i + 1}/{len(labels)} radiographs")
    return sets


def train_chain_folder(
    ckpt_dir: str | os.PathLike,
    train_labels: Sequence[str],
    spatial_size: Sequence[int] = (384, 128),
    features: Sequence[int] = (8, 8, 16, 32, 64, 8),
    epochs: int = 40,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    sigma_px: float = 2.0,
    seed: int = 0,
    region: str = "ap",
    log: Callable[[str], None] = print,
    meta: dict[str, Any] | None = None,
    device: str | None = None,
    num_workers: int = 0,
) -> Path:
    """Train a ``chain`` detector on annotated films and save ``model.pt`` + ``detector_model.json``.

    The spacing profile of the spec is measured on the same training films; the spec asks for the
    complete spine (every level, the unseen ones inferred). ``device`` and ``num_workers``: see
    :func:`~monai_spine.engines.detector.train_chain_detector` (default the CPU, no workers). Returns the folder.
    """
    import torch

    from monai_spine.codecs.chain import centres_in_level_order
    from monai_spine.engines.detector import chain_statistics, detector_cases, load_detector_arrays, train_chain_detector
    from monai_spine.inference.detector import DetectorSpec

    out = Path(ckpt_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = detector_cases(list(train_labels), region)
    t0 = time.perf_counter()
    items = load_detector_arrays(cases, max_height_px=2 * int(spatial_size[0]))
    log(f"[aasce] {len(items)} training films read and shrunk in {time.perf_counter() - t0:.0f} s")
    stats = chain_statistics(items)
    if stats["films_out_of_level_order"]:
        items = [it for it in items if centres_in_level_order(it["centres_px"])]
        log(f"[aasce] {stats['films_out_of_level_order']} training films with centres out of level order "
            f"(label noise) left out: {len(items)} films")
    spec = DetectorSpec(region=region, spatial_size=tuple(spatial_size), features=tuple(features), sigma_px=sigma_px,
                        score_threshold=0.2, decode_method="chain", nms_radius_px=2,
                        spacing_profile=stats["spacing_profile"], complete=True, keep_mm_aspect=True,
                        length_frac_range=stats["length_frac_range"], level_y_frac=stats["level_y_frac"],
                        chain_kwargs=dict(CHAIN_DECODING),
                        meta={**(meta or {}), "training_images": len(items),
                              "films_out_of_level_order_left_out": stats["films_out_of_level_order"], "epochs": int(epochs),
                              "batch_size": int(batch_size), "learning_rate": float(learning_rate), "seed": int(seed)})
    net = spec.build_network()
    t1 = time.perf_counter()
    losses = train_chain_detector(items, net, spec.spatial_size, epochs, batch_size, learning_rate, sigma_px, seed=seed,
                                  log=lambda m: log(f"[aasce] detector {m} ({time.perf_counter() - t1:.0f} s)"),
                                  device=device, num_workers=num_workers)
    spec.meta["train_s"] = round(time.perf_counter() - t1, 1)
    spec.meta["device"] = str(device or "cpu")
    spec.meta["final_loss"] = float(losses[-1]) if losses else None
    torch.save(net.state_dict(), out / "model.pt")
    spec.save(out)
    return out


def restate_chain_statistics(model_dir: str | os.PathLike, train_labels: Sequence[str], command: str = "",
                             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Recompute a trained ``chain`` detector's film statistics (no training) and save them into its spec.

    The spacing profile, the level heights and the span range (:func:`~monai_spine.engines.detector.chain_statistics`)
    are measured again on ``train_labels``, the films the detector was trained on; the weights are not
    touched. Used when the rule that measures them changed (the profile once counted films with centres out
    of level order). ``meta["statistics"]`` records the previous values and ``command``.

    Returns:
        The new statistics.
    """
    from monai_spine.engines.detector import chain_statistics, detector_cases, load_detector_arrays
    from monai_spine.inference.detector import DetectorSpec

    spec = DetectorSpec.load(model_dir)
    items = load_detector_arrays(detector_cases(list(train_labels), spec.region),
                                 max_height_px=2 * int(spec.spatial_size[0]))
    stats = chain_statistics(items)
    previous = {"spacing_profile": list(spec.spacing_profile or ()), "level_y_frac": list(spec.level_y_frac or ()),
                "length_frac_range": list(spec.length_frac_range) if spec.length_frac_range else None}
    spec.spacing_profile = stats["spacing_profile"]
    spec.level_y_frac = stats["level_y_frac"]
    spec.length_frac_range = stats["length_frac_range"]
    spec.meta["statistics"] = {"films": len(items), "films_out_of_level_order": stats["films_out_of_level_order"],
                               "command": command, "previous": previous}
    spec.save(model_dir)
    log(f"[aasce] statistics of {model_dir} measured again on {len(items)} films "
        f"({stats['films_out_of_level_order']} out of level order left out)")
    return stats


# ----------------------------------------------------------------------------------------------
# the whole benchmark
# ----------------------------------------------------------------------------------------------

@dataclass
class SpacingBoxes:
    """Vertebra boxes from centres alone: the centre, and a width and height proportional to the local
    distance between consecutive centres (the frame of :class:`MeanShapeReference`).

    Attributes:
        width_frac, height_frac: box width and height over the local centre distance (the median ratio
            of the annotated corners' bounding box on the training films, :meth:`fit`).
    """

    width_frac: float
    height_frac: float

    @staticmethod
    def local_distance_px(centres_px: np.ndarray) -> np.ndarray:
        """``(N,)`` mean distance of each centre to its neighbours in the given (top-to-bottom) order."""
        c = np.asarray(centres_px, np.float64).reshape(-1, 2)
        if len(c) < 2:
            return np.full(len(c), np.nan)
        gaps = np.linalg.norm(np.diff(c, axis=0), axis=1)
        left = np.concatenate([[gaps[0]], gaps])
        right = np.concatenate([gaps, [gaps[-1]]])
        return (left + right) / 2.0

    def boxes(self, centres_px: np.ndarray) -> np.ndarray:
        """``(N, 4)`` boxes ``x0, y0, x1, y1`` around centres given top to bottom."""
        c = np.asarray(centres_px, np.float64).reshape(-1, 2)
        d = self.local_distance_px(c)
        half = np.stack([d * self.width_frac, d * self.height_frac], -1) / 2.0
        return np.concatenate([c - half, c + half], axis=1)

    @classmethod
    def fit(cls, labels: Sequence[str]) -> "SpacingBoxes":
        """Median bounding-box width and height over the local centre distance on annotated films.

        Raises:
            ValueError: no film has two vertebrae.
        """
        from monai_spine.codecs.detection import vertebra_centres_px
        from monai_spine.data.annotation import read_annotation

        w, h = [], []
        for lab in labels:
            ann = read_annotation(lab)
            c = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme)
            b = ann.boxes_from_keypoints()
            d = cls.local_distance_px(c)
            ok = np.isfinite(d) & (d > 0) & np.all(np.isfinite(b), axis=1)
            w.extend(((b[:, 2] - b[:, 0]) / d)[ok])
            h.extend(((b[:, 3] - b[:, 1]) / d)[ok])
        if not w:
            raise ValueError("SpacingBoxes.fit: no annotated film with two vertebrae")
        return cls(float(np.median(w)), float(np.median(h)))


def spacing_box_dataset(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, rule: SpacingBoxes) -> Path:
    """A copy of a dataset folder whose training and validation labels carry :class:`SpacingBoxes` boxes
    around their annotated centres (test labels unchanged).

    Returns:
        ``out_dir``.
    """
    from monai_spine.codecs.detection import vertebra_centres_px

    def rebox(ann: Any) -> Any:
        if len(ann.levels) >= 2:
            boxes = rule.boxes(vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme))
            bad = ~np.all(np.isfinite(boxes), axis=1)  # a vertebra without a centre keeps its own box
            boxes[bad] = ann.boxes_from_keypoints()[bad]
            ann.boxes_px = boxes
        return ann

    return reboxed_dataset(dataset_dir, out_dir, rebox)


def detector_box_dataset(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, detector: Any,
                         log: Callable[[str], None] = print) -> Path:
    """A copy of a dataset folder whose training and validation labels carry the detector's boxes.

    Each annotated vertebra whose level the detector outputs with its centre inside the vertebra's
    annotated box gets that detected box (``box_px``, which the crop-based training uses instead of the
    corners' bounding box); a vertebra the detector missed or put elsewhere is left out, so no crop
    teaches a framing the detector does not produce. Test labels are copied unchanged.

    Args:
        dataset_dir: a dataset folder (``dataset.json`` with ``training`` / ``validation`` / ``test``).
        out_dir: the new folder (its ``labels/`` and ``dataset.json``; images stay where they are).
        detector: a :class:`~monai_spine.inference.detector.VertebraDetector`.
        log: progress lines.

    Returns:
        ``out_dir``.
    """
    from monai_spine.data.readers import read_xray
    from monai_spine.evaluation.levels import matched_levels

    count = {"films": 0, "kept": 0, "total": 0}

    def rebox(ann: Any) -> Any:
        img = read_xray(ann.image)
        det = detector.detect(img.channel_first().astype(np.float32), img.spacing_mm, img.spacing_source)
        boxes = ann.boxes_from_keypoints()
        keep = []
        for d, i in sorted(matched_levels(det.levels, det.centres_px, ann.levels, boxes), key=lambda p: p[1]):
            boxes[i] = det.boxes_px[d]
            keep.append(i)
        count["total"] += len(ann.levels)
        count["kept"] += len(keep)
        count["films"] += 1
        ann.levels = [ann.levels[i] for i in keep]
        ann.keypoints_px, ann.visible = ann.keypoints_px[keep], ann.visible[keep]
        if ann.outlines_px is not None:
            ann.outlines_px = [ann.outlines_px[i] for i in keep]
        ann.boxes_px = boxes[keep]
        if count["films"] % 50 == 0:
            log(f"[aasce] detector boxes: {count['films']} training and validation films")
        return ann

    out = reboxed_dataset(dataset_dir, out_dir, rebox)
    log(f"[aasce] detector boxes for {count['kept']} of {count['total']} training and validation vertebrae "
        "(the others left out)")
    return out


def run_aasce_benchmark(
    settings: AasceBenchSettings,
    out_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    command: Sequence[str] = (),
    logging_file: str | bool | None = None,
    log: Callable[[str], None] = print,
) -> tuple[str, list[dict[str, Any]]]:
    """Prepare the split, train the models, calibrate on validation, evaluate on test.

    Writes ``table.md`` and ``results.json`` into ``out_dir`` and the models under ``out_dir/<model>/models``.
    Returns ``(report, rows)``.
    """
    import torch
    from monai.bundle import run

    from monai_spine.data.aasce import ensure_aasce_dataset
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.datasets import default_cache_dir, list_cases
    from monai_spine.inference.model_zoo import load_weights
    from monai_spine.inference.detector import VertebraDetector
    from monai_spine.inference.heatmap import CornerPredictor

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle_root).resolve()
    cfg = bundle / "configs"
    meta = str(cfg / "metadata.json")
    ds = ensure_aasce_dataset(cache_dir or default_cache_dir(), data_root, settings.fractions, settings.split_seed)
    index = list_cases(ds)
    val = index["validation"][: settings.max_val] if settings.max_val else index["validation"]
    test = index["test"][: settings.max_test] if settings.max_test else index["test"]
    log(f"[aasce] dataset {ds}: {len(index['training'])} training, {len(index['validation'])} validation, "
        f"{len(index['test'])} test images (using {len(val)} / {len(test)})")
    common = {"dataset_dir": str(ds), "region": "ap", "max_cases": settings.max_train, "bundle_root": str(bundle),
              "seed": settings.seed, "show_progress": False}
    times: dict[str, float] = {}
    previous: dict[str, float] = {}
    if settings.reuse and (out / "results.json").is_file():  # the wall times of the run that trained them
        previous = json.loads((out / "results.json").read_text(encoding="utf-8")).get("train_seconds") or {}

    def _train(name: str, configs: Sequence[str], epochs: int, **extra: Any) -> Path:
        run_dir = out / name
        if settings.reuse and (run_dir / "models" / "model.pt").is_file():
            log(f"[aasce] reusing the trained {name} in {run_dir / 'models'}")
            times[f"{name}_train_s"] = float(previous.get(f"{name}_train_s") or 0.0)
            return run_dir / "models"
        ov = {**common, "ckpt_dir": str(run_dir / "models"), "mlflow_dir": str(run_dir / "mlruns"),
              "output_dir": str(run_dir / "eval"), "epochs": int(epochs), "val_interval": int(epochs), **extra}
        log(f"[aasce] training the {name} ({epochs} epochs)")
        t0 = time.perf_counter()
        run(run_id="training", meta_file=meta, config_file=[str(cfg / c) for c in configs], logging_file=logging_file,
            **ov)
        times[f"{name}_train_s"] = time.perf_counter() - t0
        log(f"[aasce] {name} trained in {times[f'{name}_train_s']:.0f} s")
        return run_dir / "models"

    if settings.detector_dir:
        det_dir = Path(settings.detector_dir)
    elif settings.detector_method == "chain":
        det_dir = out / "detector" / "models"
        if settings.reuse and (det_dir / "model.pt").is_file():
            log(f"[aasce] reusing the trained detector in {det_dir}")
            times["detector_train_s"] = float(previous.get("detector_train_s") or 0.0)
        else:
            t0 = time.perf_counter()
            train_labels = index["training"][: settings.max_train] if settings.max_train else index["training"]
            train_chain_folder(det_dir, train_labels, settings.detector_spatial, settings.detector_features,
                               settings.epochs_detector, settings.detector_batch, seed=settings.seed, log=log,
                               meta={"dataset": f"AASCE {ds.name} training split ({len(train_labels)} films)"})
            times["detector_train_s"] = time.perf_counter() - t0
            log(f"[aasce] detector trained in {times['detector_train_s']:.0f} s")
    else:
        det_dir = _train("detector", ["train.json", "detector_train.json"], settings.epochs_detector,
                         batch_size=4, val_batch_size=4, learning_rate=2e-3,
                         **{"detector#spatial_size": list(settings.detector_spatial),
                            "detector#features": list(settings.detector_features), "detector#sigma_px": 1.5})
    detector = VertebraDetector.from_checkpoint(det_dir)
    reference = MeanShapeReference.fit(index["training"][: settings.max_train] if settings.max_train
                                       else index["training"])
    corners = regressor = box_rule = None
    if "heatmap" in settings.models and settings.heatmap_dir:
        corners = CornerPredictor.from_ckpt_dir(settings.heatmap_dir)
        corners.spec.grid = (int(settings.heatmap_grid[0]), float(settings.heatmap_grid[1]))
    elif "heatmap" in settings.models:
        hm_dir = _train("heatmap", ["train.json", "heatmap_train.json"], settings.epochs_heatmap, batch_size=4,
                        fcn_width=settings.heatmap_width, learning_rate=1e-3,
                        **{"patches#per_image": settings.heatmap_patches,
                           # the in-training validation (full 81-patch grid) on a few images only: budget
                           "validate#dataset#data": f"$@datalists['validation'][:{settings.heatmap_val_images}]"})
        corners = CornerPredictor.from_ckpt_dir(hm_dir)
        corners.spec.grid = (int(settings.heatmap_grid[0]), float(settings.heatmap_grid[1]))
    if "regressor" in settings.models:
        reg_ov = {"variant": "bayecbam", "batch_size": settings.regressor_batch,
                  "network_width": settings.regressor_width, "fc_features": settings.regressor_fc,
                  "spatial_size": list(settings.crop), "init_checkpoint": settings.init_regressor}
        if settings.regressor_boxes == "detector":
            boxed = detector_box_dataset(ds, out / "regressor-detector-boxes", detector, log=log)
            reg_ov["dataset_dir"] = str(boxed)
        elif settings.regressor_boxes == "spacing":
            box_rule = SpacingBoxes.fit(index["training"][: settings.max_train] if settings.max_train
                                        else index["training"])
            log(f"[aasce] spacing boxes: width {box_rule.width_frac:.3f}, height {box_rule.height_frac:.3f} "
                "x the local centre distance")
            reg_ov["dataset_dir"] = str(spacing_box_dataset(ds, out / "regressor-spacing-boxes", box_rule))
        elif settings.regressor_boxes == "frame":
            train_labels = index["training"][: settings.max_train] if settings.max_train else index["training"]
            box_rule = FrameBoxes.fit([read_annotation(lab) for lab in train_labels])
            log(f"[aasce] frame boxes: width {box_rule.width_ratio:.3f}, height {box_rule.height_ratio:.3f} "
                "x the local centre distance, turned into the spine's frame")
            reg_ov["dataset_dir"] = str(frame_box_dataset(ds, out / "regressor-frame-boxes", box_rule))
        reg_dir = _train("regressor", ["train.json"], settings.epochs_regressor, **reg_ov)
        from monai_spine.bench.regressor import bundle_parser

        parser = bundle_parser({**common, **reg_ov, "ckpt_dir": str(reg_dir), "mc_samples": settings.mc_samples}, bundle)
        regressor = parser.get_parsed_content("predictor")
        regressor.seed = settings.seed
        load_weights(regressor.network, reg_dir / "model.pt")
        regressor.network.eval()

    torch.set_grad_enabled(False)
    log(f"[aasce] calibration predictions on {len(val)} validation radiographs")
    val_sets = evaluate_split(val, detector, corners, regressor, log, reference, box_rule)
    log(f"[aasce] evaluation on {len(test)} test radiographs")
    misses: dict[str, int] = {}
    test_sets = evaluate_split(test, detector, corners, regressor, log, reference, box_rule, level_counts=misses)
    from monai_spine.bench.pipeline import calibrate_conformal, json_safe

    cals = {k: calibrate_conformal(val_sets[k].errors_px, val_sets[k].sigma_px,
                                   np.full(len(val_sets[k].errors_px), "corner", dtype=object), settings.alpha, unit="px")
            for k in test_sets}
    rows = [points_metrics(ps, cals[k]) for k, ps in test_sets.items()]
    for k, cal in cals.items():  # the calibration a shipped model carries (fitted on validation, px)
        if cal is not None and k in ("heatmap", "regressor"):
            cal.save(out / f"{k}_conformal.json")
    if "heatmap" in val_sets:
        from monai_spine.uncertainty.thresholds import DEFAULT_CONFIDENCE, fit_thresholds

        try:
            thr = fit_thresholds(np.asarray(val_sets["heatmap"].errors_px), np.asarray(val_sets["heatmap"].sigma_px),
                                 units="mm", error_unit="px", confidence=DEFAULT_CONFIDENCE)
            thr.save(out / "heatmap_thresholds.json")
        except ValueError as e:
            log(f"[aasce] no uncertainty thresholds for the heatmap: {e}")
    sets = list(test_sets.values())  # the detector's counts: the first fully automatic row, else the last
    det_ps = next((ps for ps in sets if ps.name.startswith(("heatmap (detected", "regressor"))), sets[-1] if sets else None)
    det_row: dict[str, Any] = ({"found": 0, "annotated": 0} if det_ps is None else
                               {"found": det_ps.found, "annotated": det_ps.annotated, "level_misses": dict(misses)})
    miss_line = ("Vertebrae the detector did not put at their level, by kind (`evaluation/levels.level_misses`), "
                 "and the levels it output as inferred (not seen): "
                 + ", ".join(f"{k} {v}" for k, v in misses.items()) + "." if misses else "")

    order = label_order_counts(test)
    order_line = (f"Test labels: the reader put {order['put back in level order']} of the {order['films']} label files "
                  "back in level order (stored rotated by one, `data/aasce.fix_rotated_levels`); still out of level order: "
                  f"{order['out of level order']} (label noise: such a film cannot be wholly right).")
    smape_row = next((r for r in rows if str(r.get("model", "")).startswith("heatmap (detected")), None)
    if smape_row is not None and order["put back in level order"]:
        order_line += (f" Their reference Cobb angles follow the stored order (angles.csv); without those films the "
                       f"detected-centres heatmap row's Cobb SMAPE is {smape_row['smape_unrotated_refs']:.1f} % "
                       f"({smape_row['cobb_images_unrotated_refs']} images).")
    proportions = annotation_proportions(test)
    by_batch = {ps.name: batch_metrics(ps) for ps in test_sets.values()}
    batch_text = ("Corners by annotation batch (the date in the file name, `data/aasce.aasce_batch`): the batches "
                  "draw the vertebral body at different sizes against the spine's own scale (annotated width and "
                  "height over the film's median centre step, mean ± sd over the test films in level order), "
                  "so part of the corner error is the reference's convention (`bench/aasce.annotation_proportions`)."
                  "\n\n" + format_batch_table(proportions, by_batch)) if test_sets else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    header = "\n".join([
        f"command: `{shlex.join([str(c) for c in command])}`",
        f"torch threads: {torch.get_num_threads()}, CPU cores: {cores}",
        f"settings: {settings.describe()}",
        f"test split: {len(test)} radiographs; calibration (validation split): {len(val)} radiographs",
        "training wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
    ])
    report = "\n\n".join([header, format_aasce_table(rows) if rows else "(no keypoint model)",
                          *([miss_line] if miss_line else []), order_line, *([batch_text] if batch_text else []),
                          NOTES]) + "\n"
    (out / "table.md").write_text(report, encoding="utf-8")

    record = {"command": list(map(str, command)), "settings": asdict(settings), "dataset_dir": str(ds),
              "train_seconds": times, "num_test": len(test), "num_validation": len(val), "detection": det_row,
              "test_labels": order, "rows": rows, "annotation_batches": proportions, "rows_by_batch": by_batch}
    (out / "results.json").write_text(json.dumps(json_safe(record), indent=1, allow_nan=False), encoding="utf-8")
    return report, rows
