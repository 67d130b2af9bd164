"""Pieces the bundle's ignite engines use to train and evaluate the vertebra detector
(``bundle/configs/detector_train.json`` over ``train.json``).

* Data: :func:`detector_cases` / :func:`detector_datalists` give **one item per radiograph**, with
  fixed-size per-level arrays (``L`` = the region's levels), so batches collate: ``boxes_px``
  ``(L, 4)``, ``centres_px`` ``(L, 2)`` (NaN for an absent level) and ``present`` ``(L,)``.
  Boxes are the annotation's ``box_px`` or, without one, the box around the vertebra's visible
  keypoints and body outline (:meth:`SpineAnnotation.boxes_from_keypoints`), the boxes the keypoint
  regressor crops from; centres are vertebral-body centres
  (:func:`~monai_spine.codecs.detection.vertebra_centres_px`).
* Training: the targets are made by :class:`monai_spine.transforms.detection.CentreHeatmapTargetd`; the loss is
  :class:`DetectionLoss` (CenterNet's penalty-reduced focal loss on the level heatmaps plus L1 on the
  box distances at the centres).
* Decoding and the centres: :mod:`monai_spine.codecs.detection` (:func:`~monai_spine.codecs.detection.decode_detections`,
  :func:`~monai_spine.codecs.detection.vertebra_centres_px`, the ``chain`` level assignment), shared with inference.
* Evaluation: :func:`match_detections` and :class:`DetectionAccumulator` define the detector's own
  metrics, :class:`DetectionErrorHandler` is the evaluator's key metric, :func:`evaluate_detector`
  runs a trained :class:`~monai_spine.inference.detector.VertebraDetector` over annotated cases.

Metric definitions (per radiograph, per level of the region):

* a level is **present** when the annotation has that vertebra (a finite centre and box);
* it is **detected** when the decoding gives it a centre with a score ``>= score_threshold``;
* a present level is **found** when it is detected, the predicted centre of *that level* lies inside
  the level's ground-truth box (edges included) or, with ``match_radius`` given, within that distance
  of the true centre, and the level's true centre is the nearest of the image's true centres to it
  (boxes around keypoints reach over the neighbour below under a spinous process: a neighbour's centre
  in that overlap is not a find). A vertebra found under the wrong level label is therefore a miss
  (and the label it was found under is mislocated or a false positive);
* ``recall`` = found / present; ``precision`` = found / detected; ``false_positives_per_image``:
  detected levels that are not present;
* ``centre_error_*``: distance between the predicted and true centre of the found vertebrae, in mm
  (``_mm``) when every image has a known spacing, else in pixels (``_px``);
* ``penalised_error_{u}``: the mean over present vertebrae of the centre error, where a vertebra that
  is not found counts as its box diagonal (more than any centre inside the box can be off): one
  number, lower is better, that rewards recall first and precision of the centres second; the
  bundle's key metric;
* ``box_iou_mean``: IoU of predicted and true boxes of the found vertebrae;
* ``images_all_found``: share of images whose every present vertebra is found;
  ``images_exact``: ... and that have no false positive;
* ``recall/<level>``: recall per level.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from monai_spine.data.annotation import SpineAnnotation, read_annotation
from monai_spine.data.keypoints import get_region
from monai_spine.handlers.batch_metric import BatchSummaryMetric, batch_field
from monai_spine.codecs.detection import _np, decode_detections, encode_chain_target, vertebra_centres_px
from monai_spine.networks.detector import NUM_BOX_CHANNELS
from monai_spine.transforms.detection import boxes_to_image_px, boxes_to_net_px, points_to_image_px

__all__ = [
    "detector_cases",
    "detector_datalists",
    "DetectionLoss",
    "box_iou",
    "match_detections",
    "DetectionAccumulator",
    "DetectionErrorHandler",
    "evaluate_detector",
    "experiment_params",
    "load_detector_arrays",
    "chain_training_sample",
    "train_chain_detector",
    "ChainDetectionLoss",
    "evaluate_chain_items",
    "NUM_BOX_CHANNELS",
]

logger = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------- data
def _case(ann: SpineAnnotation, levels: Sequence[str]) -> dict[str, np.ndarray]:
    n_lev = len(levels)
    boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
    centres = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, ann.outlines_px, boxes)
    out_b = np.full((n_lev, 4), np.nan, dtype=np.float32)
    out_c = np.full((n_lev, 2), np.nan, dtype=np.float32)
    present = np.zeros(n_lev, dtype=bool)
    for j, lev in enumerate(ann.levels):
        if lev not in levels:
            continue
        k = levels.index(lev)
        seen = ann.visible[j].any() or (ann.outlines_px is not None and len(ann.outlines_px[j]) > 0)
        if seen and np.all(np.isfinite(boxes[j])) and np.all(np.isfinite(centres[j])):
            out_b[k], out_c[k], present[k] = boxes[j], centres[j], True
    return {"boxes_px": out_b, "centres_px": out_c, "present": present}


def detector_cases(label_paths: Sequence[str], region: str, image_id_offset: int = 0) -> list[dict]:
    """One item per annotated radiograph of ``region``, for detector training and evaluation.

    Args:
        label_paths: ``monai-spine-keypoints`` annotation files (each naming its image).
        region: ``cervical``, ``lumbar`` or ``ap``: its levels are the ``L`` rows of the arrays (other
            annotations are skipped, so a batch never mixes regions).
        image_id_offset: id of the first file (ids number the radiographs across splits).

    Returns:
        dicts with ``image`` (path), ``boxes_px`` ``(L, 4)`` float32 and ``centres_px`` ``(L, 2)``
        float32 (NaN for absent levels), ``present`` ``(L,)`` bool, ``image_id``, ``label_path`` and,
        for images whose file cannot carry a spacing (PNG/JPEG), ``sidecar_spacing_mm``. Images with no
        present level are left out (logged).

    Raises:
        AnnotationError: a malformed annotation (message names the file).
        ValueError: an annotation names no image.
    """
    levels = list(get_region(region).levels)
    items: list[dict] = []
    for i, path in enumerate(label_paths):
        ann = read_annotation(path)
        if ann.region != region:
            continue
        case = _case(ann, levels)
        if not case["present"].any():
            logger.info("%s: no annotated %s vertebra, skipped", path, region)
            continue
        if ann.image is None:
            raise ValueError(f"{path}: annotation names no image")
        item = {"image": ann.image, **case, "image_id": image_id_offset + i, "label_path": str(path)}
        if ann.spacing_mm is not None and not str(ann.image).lower().endswith((".dcm", ".dicom")):
            item["sidecar_spacing_mm"] = np.asarray(ann.spacing_mm, dtype=np.float32)
        items.append(item)
    return items


def detector_datalists(splits: Mapping[str, Sequence[str]], region: str) -> dict[str, list[dict]]:
    """Per-image datalists of every split (``training``, ``validation``, ``test``); ids unique across splits.

    Raises:
        ValueError: the training split holds no radiograph with an annotated vertebra of ``region``.
    """
    out: dict[str, list[dict]] = {}
    offset = 0
    for s in ("training", "validation", "test"):
        labels = list(splits.get(s, []))
        out[s] = detector_cases(labels, region, image_id_offset=offset)
        offset += len(labels)
    if not out["training"]:
        raise ValueError(f"no {region} radiograph with an annotated vertebra in the training split")
    return out


# ---------------------------------------------------------------------------------------------- loss
class DetectionLoss(torch.nn.Module):
    """Heatmap loss plus weighted L1 on the box distances where the target's box mask is set.

    ``forward(pred, target)``: ``pred`` ``(B, L + 4, H, W)`` (heatmap logits, box distances),
    ``target`` ``(B, L + 5, H, W)`` from :class:`monai_spine.transforms.detection.CentreHeatmapTarget`.

    * ``heatmap="focal"``: CenterNet's penalty-reduced focal loss, ``-sum[(1-p)^a log p]`` at the
      positives (target == 1) and ``-sum[(1-y)^b p^a log(1-p)]`` elsewhere, divided by the number of
      positives (at least 1);
    * ``heatmap="mse"``: ``sum (p - y)^2`` divided by the number of positives.

    Args:
        size_weight: weight of the box L1 term (box distances are fractions of the input size).
        heatmap: ``"focal"`` or ``"mse"``.
        alpha, beta: focal loss exponents (CenterNet: 2 and 4).
    """

    def __init__(self, size_weight: float = 5.0, heatmap: str = "focal", alpha: float = 2.0, beta: float = 4.0) -> None:
        super().__init__()
        if heatmap not in ("focal", "mse"):
            raise ValueError(f"heatmap must be 'focal' or 'mse', got {heatmap!r}")
        self.size_weight = float(size_weight)
        self.heatmap = heatmap
        self.alpha = float(alpha)
        self.beta = float(beta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bad = pred.ndim != 4 or target.ndim != 4 or pred.shape[1] <= NUM_BOX_CHANNELS
        if bad or target.shape[1] != pred.shape[1] + 1:
            raise ValueError(f"DetectionLoss: expected pred (B, L+4, H, W) and target (B, L+5, H, W), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.shape[-2:] != target.shape[-2:] or pred.shape[0] != target.shape[0]:
            raise ValueError(f"DetectionLoss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in size")
        n_lev = pred.shape[1] - NUM_BOX_CHANNELS
        logits = pred[:, :n_lev].float()
        y = target[:, :n_lev].float()
        pos = (y >= 1.0).float()
        num_pos = pos.sum().clamp(min=1.0)
        p = torch.sigmoid(logits)
        if self.heatmap == "focal":
            pos_loss = -((1 - p) ** self.alpha) * F.logsigmoid(logits) * pos
            neg_loss = -((1 - y) ** self.beta) * (p**self.alpha) * F.logsigmoid(-logits) * (1 - pos)
            hm = (pos_loss.sum() + neg_loss.sum()) / num_pos
        else:
            hm = ((p - y) ** 2).sum() / num_pos
        mask = target[:, n_lev + NUM_BOX_CHANNELS : n_lev + NUM_BOX_CHANNELS + 1].float()
        l1 = (torch.abs(pred[:, n_lev : n_lev + NUM_BOX_CHANNELS].float() - target[:, n_lev : n_lev + NUM_BOX_CHANNELS])
              * mask).sum() / (NUM_BOX_CHANNELS * mask.sum()).clamp(min=1.0)
        return hm + self.size_weight * l1


# ---------------------------------------------------------------------------------------------- metrics
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes ``(..., 4)`` ``(x0, y0, x1, y1)`` (continuous edges); NaN for NaN boxes."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.where(np.isnan(union), np.nan, 0.0))


def _spacing(spacing_mm: Any) -> np.ndarray | None:
    if spacing_mm is None:
        return None
    sp = np.asarray(_np(spacing_mm), dtype=np.float64).reshape(-1)
    if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        return None
    return sp


def match_detections(
    pred_centres_px: Any,
    scores: Any,
    gt_centres_px: Any,
    gt_boxes_px: Any,
    present: Any,
    spacing_mm: Any = None,
    score_threshold: float = 0.2,
    match_radius: float | None = None,
    pred_boxes_px: Any = None,
) -> dict[str, Any]:
    """Compare one radiograph's per-level predictions with its annotation (see the module docstring).

    Args:
        pred_centres_px: ``(L, 2)`` predicted centres, image pixels (NaN: no prediction).
        scores: ``(L,)`` level scores.
        gt_centres_px, gt_boxes_px, present: ``(L, 2)``, ``(L, 4)``, ``(L,)`` ground truth.
        spacing_mm: ``(sx, sy)``, None/NaN when unknown (errors then in pixels only).
        score_threshold: detection threshold on the scores.
        match_radius: also count a detection as found within this distance of the true centre, in mm
            when the spacing is known, else in pixels; None: the box criterion alone.
        pred_boxes_px: ``(L, 4)`` predicted boxes for the IoU (None: IoU NaN).

    Returns:
        dict with ``(L,)`` arrays ``present``, ``detected``, ``found``, ``false_positive``,
        ``mislocated`` (present and detected but not found), ``error_px`` / ``error_mm`` (centre
        distance of detected present levels, NaN elsewhere; ``error_mm`` NaN without spacing),
        ``diag_px`` / ``diag_mm`` (true box diagonals), ``iou``; and ``unit`` (``"mm"`` or ``"px"``).
    """
    pc = np.asarray(_np(pred_centres_px), dtype=np.float64)
    sc = np.asarray(_np(scores), dtype=np.float64).reshape(-1)
    gc = np.asarray(_np(gt_centres_px), dtype=np.float64)
    gb = np.asarray(_np(gt_boxes_px), dtype=np.float64)
    pres = np.asarray(_np(present), dtype=bool).reshape(-1)
    n_lev = pres.shape[0]
    for name, arr, shape in (("pred_centres_px", pc, (n_lev, 2)), ("scores", sc, (n_lev,)),
                             ("gt_centres_px", gc, (n_lev, 2)), ("gt_boxes_px", gb, (n_lev, 4))):
        if arr.shape != shape:
            raise ValueError(f"match_detections: {name} must have shape {shape}, got {arr.shape}")
    pres = pres & np.all(np.isfinite(gc), -1) & np.all(np.isfinite(gb), -1)
    detected = (sc >= score_threshold) & np.all(np.isfinite(pc), -1)
    sp = _spacing(spacing_mm)
    d = pc - gc
    err_px = np.hypot(d[:, 0], d[:, 1])
    wh = gb[:, 2:] - gb[:, :2]
    diag_px = np.hypot(wh[:, 0], wh[:, 1])
    if sp is not None:
        err_mm, diag_mm = np.hypot(d[:, 0] * sp[0], d[:, 1] * sp[1]), np.hypot(wh[:, 0] * sp[0], wh[:, 1] * sp[1])
    else:
        err_mm, diag_mm = np.full(n_lev, np.nan), np.full(n_lev, np.nan)
    with np.errstate(invalid="ignore"):
        inside = (pc[:, 0] >= gb[:, 0]) & (pc[:, 0] <= gb[:, 2]) & (pc[:, 1] >= gb[:, 1]) & (pc[:, 1] <= gb[:, 3])
        if match_radius is not None:
            inside |= (err_mm if sp is not None else err_px) <= float(match_radius)
    # the own true centre must be the nearest one (in mm when known: the same metric as the errors)
    scale = sp if sp is not None else np.ones(2)
    if pres.any():
        dist = np.linalg.norm((pc[:, None, :] - gc[None, pres, :]) * scale, axis=-1)  # (L, n_present)
        nearest = np.full(n_lev, -1)
        finite = np.all(np.isfinite(pc), -1)
        nearest[finite] = np.flatnonzero(pres)[np.argmin(dist[finite], axis=1)]
        inside &= nearest == np.arange(n_lev)
    both = pres & detected
    found = both & inside
    iou = np.full(n_lev, np.nan)
    if pred_boxes_px is not None:
        pb = np.asarray(_np(pred_boxes_px), dtype=np.float64)
        if pb.shape != (n_lev, 4):
            raise ValueError(f"match_detections: pred_boxes_px must have shape ({n_lev}, 4), got {pb.shape}")
        iou = np.where(both, box_iou(pb, gb), np.nan)
    return {
        "present": pres, "detected": detected, "found": found, "false_positive": detected & ~pres,
        "mislocated": both & ~inside,
        "error_px": np.where(both, err_px, np.nan), "error_mm": np.where(both, err_mm, np.nan),
        "diag_px": np.where(pres, diag_px, np.nan), "diag_mm": np.where(pres, diag_mm, np.nan),
        "iou": iou, "unit": "mm" if sp is not None else "px",
    }


class DetectionAccumulator:
    """Collects :func:`match_detections` results of many radiographs and summarises them.

    Args:
        levels: names of the L levels (for ``recall/<level>``); None: no per-level keys.
    """

    _ARRAYS = ("present", "detected", "found", "false_positive", "mislocated", "error_px", "error_mm", "diag_px",
               "diag_mm", "iou")

    def __init__(self, levels: Sequence[str] | None = None) -> None:
        self.levels = list(levels) if levels is not None else None
        self.reset()

    def reset(self) -> None:
        self.image_ids: list[int] = []
        self.units: list[str] = []
        self.rows: dict[str, list[np.ndarray]] = {k: [] for k in self._ARRAYS}

    def add(self, image_id: int, match: Mapping[str, Any]) -> None:
        """Add the result of one radiograph."""
        for k in self._ARRAYS:
            self.rows[k].append(np.asarray(match[k]))
        self.image_ids.append(int(image_id))
        self.units.append(str(match["unit"]))

    @property
    def unit(self) -> str:
        """``"mm"`` when every image so far has a spacing, else ``"px"``."""
        return "mm" if self.units and all(u == "mm" for u in self.units) else "px"

    def arrays(self) -> dict[str, np.ndarray]:
        """``(num_images, L)`` stacks of every per-level array."""
        return {k: np.stack(v) if v else np.zeros((0, 0)) for k, v in self.rows.items()}

    def summary(self) -> dict[str, float]:
        """The metrics of the module docstring (NaN where undefined, e.g. precision with no detection)."""
        u = self.unit
        nan = float("nan")
        if not self.image_ids:
            return {"images": 0.0, "vertebrae": 0.0, "recall": nan, f"penalised_error_{u}": nan, "spacing_known": nan}
        a = self.arrays()
        pres, found, det = a["present"], a["found"], a["detected"]
        err, diag = a[f"error_{u}"], a[f"diag_{u}"]
        n_pres, n_found, n_det = int(pres.sum()), int(found.sum()), int(det.sum())
        fe = err[found]
        pen = np.where(found, err, diag)[pres]
        out = {
            "images": float(len(self.image_ids)),
            "vertebrae": float(n_pres),
            "detections": float(n_det),
            "recall": n_found / n_pres if n_pres else nan,
            "precision": n_found / n_det if n_det else nan,
            "false_positives_per_image": float(a["false_positive"].sum()) / len(self.image_ids),
            "mislocated": float(a["mislocated"].sum()),
            f"centre_error_mean_{u}": float(fe.mean()) if fe.size else nan,
            f"centre_error_median_{u}": float(np.median(fe)) if fe.size else nan,
            f"centre_error_max_{u}": float(fe.max()) if fe.size else nan,
            f"penalised_error_{u}": float(pen.mean()) if pen.size else nan,
            "box_iou_mean": float(np.nanmean(a["iou"][found])) if np.isfinite(a["iou"][found]).any() else nan,
            "images_all_found": float(np.mean([(f | ~p).all() for f, p in zip(found, pres)])),
            "images_exact": float(np.mean([(f | ~p).all() and not fp.any()
                                           for f, p, fp in zip(found, pres, a["false_positive"])])),
            "spacing_known": 1.0 if u == "mm" else 0.0,
        }
        if self.levels is not None and len(self.levels) == pres.shape[1]:
            for j, lev in enumerate(self.levels):
                n = int(pres[:, j].sum())
                out[f"recall/{lev}"] = float(found[:, j].sum()) / n if n else nan
        return out


def _field(container: Any, key: str) -> np.ndarray | None:
    return batch_field(container, key, _np)


class DetectionErrorHandler(BatchSummaryMetric):
    """Evaluator key metric: the detector's recall and centre errors on the validation radiographs.

    Every iteration it reads the network output ``engine.state.output[pred_key]`` ``(B, L + 4, H, W)``
    and, from ``engine.state.batch``, each sample's ``det_to_image`` affine, ground truth
    (``centres_px``, ``boxes_px``, ``present``), ``spacing_mm`` and ``image_id``; decodes
    (:func:`~monai_spine.codecs.detection.decode_detections`), maps to image pixels and matches (:func:`match_detections`). Batches
    may be a dict of batched values (``decollate=False``) or per-sample dicts.

    At the end of the epoch the value is ``penalised_error_{u}`` (lower is better) and every entry of
    :meth:`DetectionAccumulator.summary` goes to ``engine.state.metrics`` as ``prefix + key``
    (``val_recall``, ``val_centre_error_mean_mm``, ``val_recall/C3``, ...), so StatsHandler and
    MLFlowHandler log them.

    Args:
        levels: the region's level names (L).
        score_threshold, match_radius: see :func:`match_detections`.
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


# ---------------------------------------------------------------------------------------------- evaluation
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
        cases: items of :func:`detector_cases`.
        score_threshold: override of the detector's threshold (decoding and matching).
        match_radius: see :func:`match_detections`.

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


def experiment_params(
    region: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    spatial_size: Sequence[int],
    features: Sequence[int],
    sigma_px: float,
    score_threshold: float,
    dataset_dir: str | None,
    synthetic: Mapping[str, Any] | None = None,
    decode_method: str = "sequence",
) -> dict[str, Any]:
    """The parameters an MLflow run of the detector records (strings and numbers only)."""
    params: dict[str, Any] = {
        "method": "centre-heatmap-detector (CenterNet-style, one heatmap per level)",
        "network": "monai BasicUNet 2D",
        "region": region,
        "levels": ",".join(get_region(region).levels),
        "epochs": int(epochs),
        "batch_size_images": int(batch_size),
        "learning_rate": float(learning_rate),
        "spatial_size_hw": "x".join(str(int(s)) for s in spatial_size),
        "features": ",".join(str(int(f)) for f in features),
        "sigma_px": float(sigma_px),
        "score_threshold": float(score_threshold),
        "decode_method": str(decode_method),
        "dataset": dataset_dir or "synthetic (embedded default)",
        "optimizer": "Adam(0.9, 0.999)",
        "lr_schedule": "cosine annealing",
        "loss": "focal heatmap + L1 box",
    }
    if not dataset_dir and synthetic:
        params.update({f"synthetic_{k}": (str(v) if isinstance(v, (list, tuple)) else v) for k, v in synthetic.items()})
    return params


# ---------------------------------------------------------------------------------------------- chain training
def load_detector_arrays(
    cases: Sequence[Mapping[str, Any]], max_height_px: int = 768, intensity_percentiles: Sequence[float] = (0.5, 99.5)
) -> list[dict[str, Any]]:
    """Read, intensity-scale and shrink radiographs once, for fast whole-film detector training.

    Each image is scaled to [0, 1] by its ``intensity_percentiles`` (as the detector's inference does)
    and shrunk (area interpolation) so that its height is at most ``max_height_px``; centres and
    boxes are scaled with it. Augmentation then resamples these small images instead of the full films.

    Args:
        cases: items of :func:`detector_cases`.
        max_height_px: height of the kept images (about twice the network input height is plenty).
        intensity_percentiles: ``(lower, upper)`` percentiles mapped to 0 and 1 (clipped).

    Returns:
        dicts with ``image`` ``(1, h, w)`` float32, ``centres_px`` ``(L, 2)``, ``boxes_px`` ``(L, 4)``,
        ``present`` ``(L,)``, ``shrink`` (image pixels per kept pixel), ``image_path``.
    """
    import cv2

    from monai_spine.data.readers import read_xray

    lo, hi = (float(v) for v in intensity_percentiles)
    out = []
    for case in cases:
        sidecar = case.get("sidecar_spacing_mm")
        img = read_xray(case["image"], spacing_mm=None if sidecar is None else [float(v) for v in np.ravel(sidecar)])
        a = np.asarray(img.channel_first(), dtype=np.float32)[0]
        p0, p1 = np.percentile(a, [lo, hi])
        a = np.clip((a - p0) / max(float(p1 - p0), 1e-6), 0.0, 1.0).astype(np.float32)
        f = max(1.0, a.shape[0] / float(max_height_px))
        if f > 1.0:
            a = cv2.resize(a, (max(1, round(a.shape[1] / f)), max(1, round(a.shape[0] / f))), interpolation=cv2.INTER_AREA)
        sx, sy = img.array.shape[1] / a.shape[1], img.array.shape[0] / a.shape[0]
        c = np.asarray(case["centres_px"], dtype=np.float64) / [sx, sy]
        b = np.asarray(case["boxes_px"], dtype=np.float64) / [sx, sy, sx, sy]
        out.append({"image": a[None], "centres_px": c, "boxes_px": b, "present": np.asarray(case["present"], bool),
                    "shrink": (sx, sy), "image_path": str(case["image"])})
    return out


def chain_training_sample(
    item: Mapping[str, Any],
    spatial_size: Sequence[int],
    sigma_px: float,
    rng: np.random.Generator | None = None,
    zoom_range: Sequence[float] = (0.85, 1.15),
    shift_frac: float = 0.08,
    flip_prob: float = 0.5,
    gamma_range: Sequence[float] = (0.7, 1.5),
    box_radius_px: int = 1,
    level_channel: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (augmented) input and its single-channel target for the ``chain`` detector.

    Args:
        item: an item of :func:`load_detector_arrays`.
        spatial_size: ``(H, W)`` network input.
        sigma_px: Gaussian sigma of the centre peaks, net pixels.
        rng: random generator; None: no augmentation (the plain letterbox, as at inference).
        zoom_range, shift_frac, flip_prob, gamma_range: augmentation (zoom about the centre, shift as a
            fraction of the net size, left-right flip, intensity gamma).
        box_radius_px: see :func:`~monai_spine.codecs.detection.encode_centre_heatmaps`.
        level_channel: add the level target (see below).

    Returns:
        ``(image (1, H, W), target, det_to_item (3, 3))`` float32 / float64. The target's channel 0 is the
        maximum of the level heatmaps ("any vertebra"); with ``level_channel`` channel 1 holds
        ``level / (L - 1)`` in the ``(2r + 1)^2`` window around each centre and the last channel marks
        those windows (none on a film whose annotated centres do not run top to bottom in level order:
        a mislabelled film teaches no level); then the four box channels and the box mask. Without the
        level channel: ``(1 + 5, H, W)``, with it ``(2 + 5 + 1, H, W)``.
    """
    from monai_spine.transforms.detection import augment_affine, letterbox_affine, resample_to_net

    hn, wn = (int(v) for v in spatial_size)
    img = item["image"]
    a = letterbox_affine((img.shape[2], img.shape[1]), (hn, wn))
    if rng is not None:
        zoom = float(rng.uniform(*zoom_range))
        shift = rng.uniform(-shift_frac, shift_frac, 2) * (wn, hn)
        aug = augment_affine((hn, wn), zoom, shift, bool(rng.random() < flip_prob))
        a = a @ aug
    x = resample_to_net(img, a, (hn, wn))
    if rng is not None:
        x = np.power(np.clip(x, 0.0, 1.0), float(rng.uniform(*gamma_range))).astype(np.float32)
    inv = np.linalg.inv(a)
    c = np.asarray(item["centres_px"], dtype=np.float64) @ inv[:2, :2].T + inv[:2, 2]
    b = boxes_to_net_px(np.asarray(item["boxes_px"], dtype=np.float64), a)
    # level order judged on the film's own pixels (the net frame may be flipped left-right, never upside down)
    pres = np.asarray(item["present"], bool) & np.all(np.isfinite(c), -1)
    ys_img = np.asarray(item["centres_px"], dtype=np.float64)[pres, 1]
    in_order = bool(pres.sum() >= 1 and np.all(np.diff(ys_img) > 0))
    target = encode_chain_target(c, b, item["present"], (hn, wn), sigma_px, box_radius_px, level_channel, in_order)
    return x.astype(np.float32), target, a


class ChainDetectionLoss(torch.nn.Module):
    """Loss of the ``chain`` detector with a level channel.

    ``forward(pred, target)``: ``pred`` ``(B, 2 + 4, H, W)`` (heatmap logit, level logit, box distances),
    ``target`` ``(B, 2 + 5 + 1, H, W)`` from :func:`chain_training_sample`. The heatmap and box terms are
    :class:`DetectionLoss`'s; the level term is the mean absolute error, in levels, of
    ``sigmoid(level logit) * (L - 1)`` inside the level mask, times ``level_weight``.

    Args:
        num_levels: L.
        size_weight: weight of the box L1 term.
        level_weight: weight of the level term (per level of error).
    """

    def __init__(self, num_levels: int, size_weight: float = 5.0, level_weight: float = 0.1) -> None:
        super().__init__()
        if int(num_levels) < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        self.num_levels = int(num_levels)
        self.level_weight = float(level_weight)
        self.base = DetectionLoss(size_weight=size_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.ndim != 4 or pred.shape[1] != 2 + NUM_BOX_CHANNELS or target.shape[1] != 3 + NUM_BOX_CHANNELS + 1:
            raise ValueError(f"ChainDetectionLoss: expected pred (B, 6, H, W) and target (B, 8, H, W), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        base = self.base(torch.cat([pred[:, :1], pred[:, 2:]], 1), torch.cat([target[:, :1], target[:, 2:-1]], 1))
        mask = target[:, -1:].float()
        err = torch.abs(torch.sigmoid(pred[:, 1:2].float()) - target[:, 1:2]) * (self.num_levels - 1)
        return base + self.level_weight * (err * mask).sum() / mask.sum().clamp(min=1.0)


def train_chain_detector(
    train_items: Sequence[Mapping[str, Any]],
    network: torch.nn.Module,
    spatial_size: Sequence[int],
    epochs: int,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    sigma_px: float = 2.0,
    size_weight: float = 5.0,
    seed: int = 0,
    augment: bool = True,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    level_weight: float = 0.1,
) -> list[float]:
    """Train a single-heatmap (``chain``) detector on :func:`load_detector_arrays` items.

    Adam with cosine annealing, batches of augmented whole films from :func:`chain_training_sample`.
    A network with ``1 + 4`` output channels is trained with :class:`DetectionLoss` (focal heatmap + L1
    box), one with ``2 + 4`` (a level channel) with :class:`ChainDetectionLoss`. Returns the mean loss of
    every epoch.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(network.parameters(), lr=learning_rate)
    steps_per_epoch = max(1, int(np.ceil(len(train_items) / batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    n_lev = int(np.asarray(train_items[0]["centres_px"]).shape[0])
    out_ch = int(network(torch.zeros(1, 1, *(int(v) for v in spatial_size))).shape[1])
    level_channel = out_ch == 2 + NUM_BOX_CHANNELS
    loss_fn = ChainDetectionLoss(n_lev, size_weight, level_weight) if level_channel else DetectionLoss(size_weight)
    losses: list[float] = []
    network.train()
    for ep in range(int(epochs)):
        perm = rng.permutation(len(train_items))
        tot = 0.0
        for st in range(steps_per_epoch):
            idx = perm[st * batch_size : (st + 1) * batch_size]
            xs, ts = [], []
            for j in idx:
                x, t, _ = chain_training_sample(train_items[j], spatial_size, sigma_px, rng if augment else None,
                                                level_channel=level_channel)
                xs.append(x)
                ts.append(t)
            xb, tb = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ts))
            opt.zero_grad()
            loss = loss_fn(network(xb), tb)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        losses.append(tot / steps_per_epoch)
        if log is not None:
            log(f"epoch {ep + 1}/{epochs} loss {losses[-1]:.4f}")
        if on_epoch is not None:
            on_epoch(ep, losses[-1])
    network.eval()
    return losses


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
    """Recall at the right level and films with every level found, on :func:`load_detector_arrays` items.

    A quick check during development and training (the kept images' pixels, no augmentation); the
    benchmark's figures come from :func:`evaluate_detector` on the full films.
    """
    acc = DetectionAccumulator()
    network.eval()
    with torch.inference_mode():
        for i, it in enumerate(items):
            x, _, a = chain_training_sample(it, spatial_size, 1.0, None)
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
