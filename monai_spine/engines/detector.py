"""Pieces the bundle's ignite engines use to train and evaluate the vertebra detector
(``bundle/configs/detector_train.json`` over ``train.json``).

* Data: :func:`detector_cases` / :func:`detector_datalists` give **one item per radiograph**, with
  fixed-size per-level arrays (``L`` = the region's levels), so batches collate: ``boxes_px``
  ``(L, 4)``, ``centres_px`` ``(L, 2)`` (NaN for an absent level) and ``present`` ``(L,)``.
  Boxes are the annotation's ``box_px`` or, without one, the box around the vertebra's visible
  keypoints and body outline (:meth:`SpineAnnotation.boxes_from_keypoints`), the boxes the keypoint
  regressor crops from; centres are vertebral-body centres (:func:`vertebra_centres_px`).
* Training: the targets are made by :class:`transforms.detection.CentreHeatmapTargetd`; the loss is
  :class:`DetectionLoss` (CenterNet's penalty-reduced focal loss on the level heatmaps plus L1 on the
  box distances at the centres).
* Decoding: :func:`decode_detections`. The default ``sequence`` decoding takes the vertebrae as the
  peaks of the maximum over the level channels and labels them by the order-preserving assignment
  of levels to vertebrae (top to bottom) that best fits the level heatmaps, so that two levels never
  share a vertebra and neighbouring levels the network still confuses land in order; ``argmax``
  takes each level at the argmax of its own channel (plain CenterNet). Peaks are refined to sub-pixel
  by a parabola fit on the log-heatmap, the box is read at the centre pixel, and net pixels go back
  to image pixels through the sample's ``det_to_image`` affine.
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
from monai_spine.data.keypoints import get_region, get_scheme
from monai_spine.handlers.batch_metric import BatchSummaryMetric, batch_field
from monai_spine.networks.detector import NUM_BOX_CHANNELS
from transforms.detection import boxes_to_image_px, boxes_to_net_px, points_to_image_px

__all__ = [
    "vertebra_centres_px",
    "detector_cases",
    "detector_datalists",
    "DetectionLoss",
    "decode_detections",
    "spacing_profile",
    "assign_levels_chain",
    "level_height_fractions",
    "complete_chain",
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
def vertebra_centres_px(
    keypoints_px: np.ndarray,
    visible: np.ndarray,
    scheme: str,
    outlines_px: Sequence[np.ndarray] | None = None,
    boxes_px: np.ndarray | None = None,
) -> np.ndarray:
    """Vertebral-body centre of each vertebra, ``(N, 2)`` image pixels (NaN when nothing is known).

    The first that applies: the mean of the four body corners when all four are visible; the centre
    of the bounding box of the body outline; the mean of the visible corners when at least two are
    visible; the centre of ``boxes_px``.

    Args:
        keypoints_px: ``(N, K, 2)``; visible: ``(N, K)``; scheme: keypoint scheme name (its corner
            indices); outlines_px: N body outlines ``(M_i, 2)`` (empty or None: none); boxes_px: ``(N, 4)``.
    """
    kp = np.asarray(keypoints_px, dtype=np.float64)
    vis = np.asarray(visible, dtype=bool) & np.all(np.isfinite(kp), axis=-1)
    idx = list(get_scheme(scheme).corner_indices)
    out = np.full((kp.shape[0], 2), np.nan)
    for i in range(kp.shape[0]):
        cv = vis[i, idx]
        corners = kp[i, idx]
        if cv.all():
            out[i] = corners.mean(0)
            continue
        if outlines_px is not None and i < len(outlines_px) and len(outlines_px[i]):
            o = np.asarray(outlines_px[i], dtype=np.float64)
            o = o[np.all(np.isfinite(o), axis=-1)]
            if len(o):
                out[i] = 0.5 * (o.min(0) + o.max(0))
                continue
        if cv.sum() >= 2:
            out[i] = corners[cv].mean(0)
            continue
        if boxes_px is not None and np.all(np.isfinite(boxes_px[i])):
            b = np.asarray(boxes_px[i], dtype=np.float64)
            out[i] = [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]
    return out


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
    ``target`` ``(B, L + 5, H, W)`` from :class:`transforms.detection.CentreHeatmapTarget`.

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


# ---------------------------------------------------------------------------------------------- decoding
def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _parabola_offset(lm: float, l0: float, lp: float) -> float:
    """Vertex of the parabola through (-1, lm), (0, l0), (1, lp), clipped to [-0.5, 0.5] (0 if not a maximum)."""
    den = lm - 2.0 * l0 + lp
    if not (np.isfinite(den) and den < 0):
        return 0.0
    return float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5))


def _refine(heat: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Sub-pixel peak of ``heat`` (H, W) near pixel (x, y): parabola on the log values along x and y."""
    h, w = heat.shape
    fx, fy = float(x), float(y)
    if 0 < x < w - 1:
        fx += _parabola_offset(*np.log(np.maximum(heat[y, x - 1 : x + 2], 1e-12)))
    if 0 < y < h - 1:
        fy += _parabola_offset(*np.log(np.maximum(heat[y - 1 : y + 2, x], 1e-12)))
    return fx, fy


def _local_maxima(heat: np.ndarray, radius: int, threshold: float, max_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``heat`` (H, W) that are the maximum of their ``(2r+1)^2`` window and ``>= threshold``,
    strongest first, at most ``max_count``; returns ``(xs, ys)``."""
    from scipy.ndimage import maximum_filter

    peak = (heat == maximum_filter(heat, size=2 * radius + 1, mode="constant", cval=-np.inf)) & (heat >= threshold)
    ys, xs = np.nonzero(peak)
    order = np.argsort(-heat[ys, xs], kind="stable")[:max_count]
    return xs[order], ys[order]


def _monotone_assignment(weights: np.ndarray, gap_penalty: float = 0.5) -> list[tuple[int, int]]:
    """Pairs ``(level, candidate)`` strictly increasing in both that maximise the summed ``weights`` minus
    ``gap_penalty`` for every level or candidate skipped *between* two pairs.

    Skips before the first and after the last pair are free (the image may show unannotated
    neighbours above and below, and need not show every level), but inside the sequence, vertebrae
    are contiguous: leaving out a candidate (a double peak, a false blob) or a level (a vertebra the
    network missed) costs ``gap_penalty``. ``0`` allows any order-preserving pairing; a large value
    forces consecutive levels on consecutive candidates. Dynamic programming in ``O(L n)``.

    Args:
        weights: ``(L, n)`` score of level ``l`` at candidate ``i`` (candidates ordered top to bottom).
        gap_penalty: cost of one interior skip (in the unit of the weights).
    """
    n_lev, n = weights.shape
    if n_lev == 0 or n == 0:
        return []
    lam = float(gap_penalty)
    score = np.full((n_lev, n), -np.inf)
    back = np.full((n_lev, n, 2), -1, dtype=np.int64)  # previous pair of the best chain ending at (l, i)
    best = np.full((n_lev, n), -np.inf)  # max over l' <= l, i' <= i of score[l', i'] + lam * (l' + i')
    best_at = np.zeros((n_lev, n, 2), dtype=np.int64)
    for lev in range(n_lev):
        for i in range(n):
            gain, prev = 0.0, (-1, -1)
            if lev > 0 and i > 0:
                chained = best[lev - 1, i - 1] - lam * (lev + i - 2)
                if chained > gain:
                    gain, prev = chained, tuple(best_at[lev - 1, i - 1])
            score[lev, i] = weights[lev, i] + gain
            back[lev, i] = prev
            cands = [(score[lev, i] + lam * (lev + i), (lev, i))]
            if lev > 0:
                cands.append((best[lev - 1, i], tuple(best_at[lev - 1, i])))
            if i > 0:
                cands.append((best[lev, i - 1], tuple(best_at[lev, i - 1])))
            val, at = max(cands, key=lambda c: c[0])
            best[lev, i], best_at[lev, i] = val, at
    lev, i = np.unravel_index(int(np.argmax(score)), score.shape)
    if score[lev, i] <= 0:
        return []
    pairs: list[tuple[int, int]] = []
    while lev >= 0 and i >= 0:
        pairs.append((int(lev), int(i)))
        lev, i = back[lev, i]
    return pairs[::-1]


def spacing_profile(centres_px: Sequence[np.ndarray]) -> np.ndarray:
    """Mean relative distance between consecutive levels, ``(L - 1,)``, normalised to mean 1.

    Args:
        centres_px: per radiograph an ``(L, 2)`` array of level centres (NaN: absent). Each film with
            a pair of consecutive present levels contributes the pair's distance divided by the film's
            median consecutive distance, so the profile is free of the film's scale.

    Raises:
        ValueError: fewer than two levels, or no film with two consecutive present levels.
    """
    rows = [np.asarray(c, dtype=np.float64) for c in centres_px]
    if not rows or rows[0].ndim != 2 or rows[0].shape[0] < 2 or rows[0].shape[1] != 2:
        raise ValueError(f"spacing_profile: expected (L, 2) centre arrays with L >= 2, got {len(rows)} arrays")
    n_lev = rows[0].shape[0]
    acc = np.zeros(n_lev - 1)
    cnt = np.zeros(n_lev - 1)
    for c in rows:
        if c.shape != (n_lev, 2):
            raise ValueError(f"spacing_profile: every array must be ({n_lev}, 2), got {c.shape}")
        d = np.hypot(*(c[1:] - c[:-1]).T)
        ok = np.isfinite(d) & (d > 0)
        if not ok.any():
            continue
        acc[ok] += d[ok] / np.median(d[ok])
        cnt[ok] += 1
    if not cnt.any():
        raise ValueError("spacing_profile: no film with two consecutive present levels")
    prof = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    prof = np.where(np.isfinite(prof), prof, np.nanmean(prof))
    return prof / prof.mean()


def level_height_fractions(centres_px: Sequence[np.ndarray], heights_px: Sequence[float]) -> np.ndarray:
    """Mean height of each level's centre as a fraction of its film's height, ``(L,)``.

    Only films whose present centres run top to bottom in level order count (a mislabelled film would
    blur the table). Used by the ``chain`` decoding to guess a peak's level from its height on the film,
    which holds for films cropped alike (the AASCE films: about 0.45 level of spread); NaN rows are
    filled by linear interpolation.

    Raises:
        ValueError: no usable film, or mismatched lengths.
    """
    if len(centres_px) != len(heights_px):
        raise ValueError(f"level_height_fractions: {len(centres_px)} centre arrays but {len(heights_px)} heights")
    rows = []
    for c, h in zip(centres_px, heights_px):
        y = np.asarray(c, dtype=np.float64)[:, 1] / float(h)
        fin = np.isfinite(y)
        if fin.sum() >= 2 and np.all(np.diff(y[fin]) > 0):
            rows.append(y)
    if not rows:
        raise ValueError("level_height_fractions: no film with its levels in top-to-bottom order")
    m = np.nanmean(np.stack(rows), 0)
    k = np.arange(m.size)
    fin = np.isfinite(m)
    return np.interp(k, k[fin], m[fin])


def assign_levels_chain(
    points_px: Any,
    scores: Any,
    profile: Any,
    gap_penalty: float = 2.0,
    end_gap_penalty: float | None = None,
    drop_penalty: float = 3.0,
    spacing_sigma: float = 0.2,
    max_skip: int = 3,
    num_scales: int = 41,
    scale_range: tuple[float, float] = (0.4, 2.5),
    level_estimates: Any = None,
    level_weight: Any = 1.0,
    level_cap: float = 3.0,
) -> tuple[np.ndarray, float, float]:
    """Levels for a chain of "any vertebra" peaks: which peak is which level, by spacing along the spine.

    The peaks, ordered top to bottom, get levels by the order-preserving assignment of least cost:

    * ``drop_penalty * score`` for every peak left out (an extra peak: a double response, a rib, the
      sacrum), so confident peaks are kept;
    * ``gap_penalty`` for every level skipped between two assigned ones (a vertebra the network
      missed) and ``end_gap_penalty`` for every level left out above the first or below the last
      (a film cut at the top or bottom; default ``gap_penalty``);
    * between consecutive assigned peaks ``i < j`` with levels ``a < b``,
      ``0.5 * (log(d_ij / (s * sum(profile[a:b]))) / spacing_sigma) ** 2``: the distance between the
      peaks against the expected distance of the two levels at the film's scale ``s`` (pixels per
      profile unit). The scale is not known: every scale of a geometric grid over ``scale_range`` times
      the median distance between neighbouring peaks is tried and the cheapest kept. The profile's
      shape (vertebrae grow from T1 to L5) is what places a chain cut at one end;
    * with ``level_estimates`` (``(P,)`` or ``(P, M)``: M guesses of each peak's level, in level units, NaN:
      none; e.g. the network's level channel, the peak's height on the film), the sum over the guesses
      of ``level_weight[m] * min(|estimate - level|, level_cap)`` per assigned peak: the anchor that keeps
      a chain with a C7 or S1 peak at one end from shifting by a level.

    Dynamic programming over (peak, level) with at most ``max_skip`` levels and peaks skipped per step.

    Args:
        points_px: ``(P, 2)`` ``(x, y)`` peak positions (any pixel unit; order does not matter).
        scores: ``(P,)`` peak scores in [0, 1].
        profile: ``(L - 1,)`` expected distance between consecutive levels (see :func:`spacing_profile`).

    Returns:
        ``(levels, scale, cost)``: ``(P,)`` int level index of each peak in the input order (-1: left out),
        the chosen scale (pixels per profile unit; NaN with fewer than two peaks) and the total cost.

    Raises:
        ValueError: shapes do not match, or the profile is not positive.
    """
    pts = np.asarray(_np(points_px), dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(_np(scores), dtype=np.float64).reshape(-1)
    prof = np.asarray(_np(profile), dtype=np.float64).reshape(-1)
    if sc.shape[0] != pts.shape[0]:
        raise ValueError(f"assign_levels_chain: {pts.shape[0]} points but {sc.shape[0]} scores")
    if prof.size < 1 or not np.all(np.isfinite(prof)) or np.any(prof <= 0):
        raise ValueError(f"assign_levels_chain: profile must be positive and finite, got {prof}")
    n_lev, n_pts = prof.size + 1, pts.shape[0]
    out = np.full(n_pts, -1, dtype=np.int64)
    end_gap = float(gap_penalty if end_gap_penalty is None else end_gap_penalty)
    if n_pts == 0:
        return out, float("nan"), end_gap * n_lev
    order = np.argsort(pts[:, 1], kind="stable")
    p, s = pts[order], sc[order]
    node = np.zeros((n_pts, n_lev))
    if level_estimates is not None:
        est = np.asarray(_np(level_estimates), dtype=np.float64)
        est = est.reshape(est.shape[0] if est.ndim else 0, -1)
        if est.shape[0] != n_pts:
            raise ValueError(f"assign_levels_chain: {n_pts} points but {est.shape[0]} level estimates")
        wts = np.broadcast_to(np.asarray(level_weight, dtype=np.float64).reshape(-1), (est.shape[1],))
        diff = np.minimum(np.abs(est[order][:, None, :] - np.arange(n_lev)[None, :, None]), float(level_cap))
        node = (np.where(np.isfinite(diff), diff, 0.0) * wts[None, None, :]).sum(-1)
    drop = float(drop_penalty) * np.clip(s, 0.0, None)
    drop_cum = np.concatenate([[0.0], np.cumsum(drop)])  # drop of peaks [i, j) = drop_cum[j] - drop_cum[i]
    if n_pts == 1:
        # one peak: every level costs the same end gaps; the level estimate decides (else the first level)
        k = int(np.argmin(node[0]))
        out[order[0]] = k
        return out, float("nan"), end_gap * (n_lev - 1) + float(node[0, k])
    cum = np.concatenate([[0.0], np.cumsum(prof)])
    dist = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])  # (P, P)
    base = float(np.median(np.diag(dist, 1))) / float(np.median(prof))
    if not base > 0:
        base = 1.0
    w = 0.5 / float(spacing_sigma) ** 2
    ms = max(1, int(max_skip))
    scales = base * np.geomspace(scale_range[0], scale_range[1], int(num_scales))  # (S,)
    n_s = scales.size
    levels = np.arange(n_lev)
    # cost[:, i, k]: cheapest chain (per scale) whose last assigned pair is (peak i, level k)
    cost = np.empty((n_s, n_pts, n_lev))
    back_i = np.full((n_s, n_pts, n_lev), -1, dtype=np.int64)
    back_k = np.full((n_s, n_pts, n_lev), -1, dtype=np.int64)
    for i in range(n_pts):
        best = np.broadcast_to(drop_cum[i] + end_gap * levels, (n_s, n_lev)).copy()  # start the chain here
        bi = np.full((n_s, n_lev), -1, dtype=np.int64)
        bk = np.full((n_s, n_lev), -1, dtype=np.int64)
        for ip in range(max(0, i - ms - 1), i):
            skipped = drop_cum[i] - drop_cum[ip + 1]
            for dk in range(1, min(ms + 1, n_lev - 1) + 1):
                ks = levels[dk:]
                expected = scales[:, None] * (cum[ks] - cum[ks - dk])[None, :]  # (S, L - dk)
                c = (cost[:, ip, ks - dk] + skipped + gap_penalty * (dk - 1)
                     + w * np.log(max(dist[ip, i], 1e-9) / expected) ** 2)
                better = c < best[:, ks]
                best[:, ks] = np.where(better, c, best[:, ks])
                bi[:, ks] = np.where(better, ip, bi[:, ks])
                bk[:, ks] = np.where(better, ks - dk, bk[:, ks])
        cost[:, i], back_i[:, i], back_k[:, i] = best + node[i][None, :], bi, bk
    tail = (drop_cum[-1] - drop_cum[1:])[:, None] + end_gap * (n_lev - 1 - levels)[None, :]  # (P, L)
    total = cost + tail[None]
    si, i, k = np.unravel_index(int(np.argmin(total)), total.shape)
    best_total, best_scale = float(total[si, i, k]), float(scales[si])
    best_path = []
    while i >= 0:
        best_path.append((int(i), int(k)))
        i, k = back_i[si, i, k], back_k[si, i, k]
    for i, k in best_path or []:
        out[order[i]] = k
    return out, best_scale, best_total


def complete_chain(centres_px: Any, profile: Any, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill the levels without a centre along the spine: ``(centres (L, 2), inferred (L,))``.

    A missing level between two found ones is placed between them at the profile's share of their
    distance; levels above the first or below the last found one are extrapolated along the direction
    of the two nearest found levels (straight down with one found level), at ``scale`` pixels per profile
    unit (default: the scale of the found levels). With no found level nothing can be placed (all NaN).

    Args:
        centres_px: ``(L, 2)`` level centres, NaN where missing.
        profile: ``(L - 1,)`` expected distance between consecutive levels.
        scale: pixels per profile unit (used with a single found level; None: estimated).

    Raises:
        ValueError: shapes do not match.
    """
    c = np.asarray(_np(centres_px), dtype=np.float64).copy()
    prof = np.asarray(_np(profile), dtype=np.float64).reshape(-1)
    if c.ndim != 2 or c.shape != (prof.size + 1, 2):
        raise ValueError(f"complete_chain: centres must be ({prof.size + 1}, 2) for a profile of {prof.size}, "
                         f"got {c.shape}")
    known = np.all(np.isfinite(c), -1)
    inferred = ~known
    idx = np.flatnonzero(known)
    if idx.size == 0:
        return c, inferred
    cum = np.concatenate([[0.0], np.cumsum(prof)])
    if idx.size >= 2:
        d = np.hypot(*(c[idx[1:]] - c[idx[:-1]]).T)
        est = float(np.median(d / (cum[idx[1:]] - cum[idx[:-1]])))
    else:
        est = float("nan")
    s = est if scale is None or not np.isfinite(scale) else float(scale)
    if not np.isfinite(s):
        s = est
    for a, b in zip(idx[:-1], idx[1:]):
        for k in range(a + 1, b):
            t = (cum[k] - cum[a]) / (cum[b] - cum[a])
            c[k] = c[a] + t * (c[b] - c[a])

    def _direction(i0: int, i1: int) -> np.ndarray:
        v = c[i1] - c[i0]
        n = np.hypot(*v)
        return v / n if n > 0 else np.array([0.0, 1.0])

    if not np.isfinite(s):
        return c, inferred
    first, last = idx[0], idx[-1]
    up = _direction(idx[0], idx[1]) if idx.size >= 2 else np.array([0.0, 1.0])
    down = _direction(idx[-2], idx[-1]) if idx.size >= 2 else np.array([0.0, 1.0])
    for k in range(first - 1, -1, -1):
        c[k] = c[first] - up * s * (cum[first] - cum[k])
    for k in range(last + 1, c.shape[0]):
        c[k] = c[last] + down * s * (cum[k] - cum[last])
    return c, inferred


def _level_from_y_frac(y_frac: np.ndarray, level_y_frac: np.ndarray) -> np.ndarray:
    """Level (fractional) at each film height fraction: interpolated in ``level_y_frac``, linear beyond the ends."""
    ly = np.asarray(level_y_frac, dtype=np.float64).reshape(-1)
    k = np.arange(ly.size, dtype=np.float64)
    y = np.asarray(y_frac, dtype=np.float64)
    out = np.interp(y, ly, k)
    lo, hi = y < ly[0], y > ly[-1]
    out[lo] = (y[lo] - ly[0]) / (ly[1] - ly[0])
    out[hi] = k[-1] + (y[hi] - ly[-1]) / (ly[-1] - ly[-2])
    return out


def _decode_chain(p: np.ndarray, score_threshold: float, apply_sigmoid: bool, refine: bool, nms_radius_px: int,
                  candidate_fraction: float, profile: Any, chain_kwargs: Mapping[str, Any] | None,
                  level_y_frac: Any = None, y_frac_map: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The ``chain`` method of :func:`decode_detections` (``p``: ``(1 + 4, H, W)`` float64)."""
    if profile is None:
        raise ValueError("decode_detections: method 'chain' needs the spacing profile (L - 1,)")
    if p.shape[0] not in (1 + NUM_BOX_CHANNELS, 2 + NUM_BOX_CHANNELS):
        raise ValueError(f"decode_detections: method 'chain' expects (1 + 4, H, W) or (2 + 4, H, W), got shape {p.shape}")
    prof = np.asarray(_np(profile), dtype=np.float64).reshape(-1)
    n_lev = prof.size + 1
    h, w = p.shape[1:]
    heat = p[0]
    if apply_sigmoid:
        heat = 1.0 / (1.0 + np.exp(-np.clip(heat, -60, 60)))
    level_map = None
    if p.shape[0] == 2 + NUM_BOX_CHANNELS:  # channel 1: the level position, logit of level / (L - 1)
        level_map = (n_lev - 1) / (1.0 + np.exp(-np.clip(p[1], -60, 60)))
        p = np.concatenate([p[:1], p[2:]], 0)
    xs, ys = _local_maxima(heat, int(nms_radius_px), float(candidate_fraction) * float(score_threshold),
                           max_count=2 * n_lev + 4)
    pts = np.array([_refine(heat, x, y) if refine else (x, y) for x, y in zip(xs, ys)], dtype=np.float64)
    sc = heat[ys, xs] if xs.size else np.zeros(0)
    kw = dict(chain_kwargs or {})
    guesses, weights = [], []
    w_ch, w_pos = float(kw.pop("channel_weight", 1.0)), float(kw.pop("position_weight", 1.0))
    if level_map is not None and xs.size and w_ch > 0:
        guesses.append(level_map[ys, xs])
        weights.append(w_ch)
    if level_y_frac is not None and y_frac_map is not None and xs.size and w_pos > 0:
        a, b = (float(v) for v in y_frac_map)
        guesses.append(_level_from_y_frac(a * pts.reshape(-1, 2)[:, 1] + b, level_y_frac))
        weights.append(w_pos)
    est = np.stack(guesses, -1) if guesses else None
    lev, scale, _ = assign_levels_chain(pts.reshape(-1, 2), sc, prof, level_estimates=est,
                                        level_weight=weights if guesses else 1.0, **kw)
    scores = np.zeros(n_lev)
    centres = np.full((n_lev, 2), np.nan)
    boxes = np.full((n_lev, 4), np.nan)
    for i in np.flatnonzero(lev >= 0):
        if sc[i] < score_threshold:
            continue
        k = lev[i]
        scores[k], centres[k] = sc[i], pts[i]
        ltrb = np.maximum(p[1:, ys[i], xs[i]], 0.0) * np.array([w, h, w, h], dtype=np.float64)
        boxes[k] = np.concatenate([pts[i] - ltrb[:2], pts[i] + ltrb[2:]])
    detected = np.all(np.isfinite(centres), -1)
    return {"scores": scores, "centres_net_px": centres, "boxes_net_px": boxes, "detected": detected,
            "scale": np.asarray(scale)}


def decode_detections(
    pred: Any,
    score_threshold: float = 0.2,
    apply_sigmoid: bool = True,
    refine: bool = True,
    method: str = "sequence",
    nms_radius_px: int = 2,
    gap_penalty: float = 0.5,
    candidate_fraction: float = 0.5,
    profile: Any = None,
    chain_kwargs: Mapping[str, Any] | None = None,
    level_y_frac: Any = None,
    y_frac_map: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Level centres, boxes and scores from one network output.

    A third method, ``"chain"``, decodes a network with a single "any vertebra" heatmap channel
    (``pred`` ``(1 + 4, H, W)``, or ``(2 + 4, H, W)`` with a level channel: the logit of
    ``level / (L - 1)`` read at each peak, :class:`ChainDetectionLoss`): the peaks of that channel
    (local maxima as for ``sequence``, scores ``>= candidate_fraction * score_threshold``) get levels by
    :func:`assign_levels_chain` from their spacing along the spine against ``profile`` (``(L - 1,)``,
    required; ``chain_kwargs`` go to :func:`assign_levels_chain`) and the level channel's estimates;
    the result has ``L = len(profile) + 1`` rows and a ``scale`` entry (net pixels per profile unit).
    With ``level_y_frac`` (``(L,)``: the mean height of each level's centre as a fraction of the film's
    height on the training films) and ``y_frac_map`` (``(a, b)``: a net row ``v`` is at ``a * v + b`` of
    the film's height) each peak also gets the level its height on the film suggests (interpolated,
    extrapolated linearly beyond the ends). ``chain_kwargs`` may weigh the two guesses with
    ``channel_weight`` and ``position_weight`` (defaults 1 and 1); the rest goes to
    :func:`assign_levels_chain`.

    Two methods:

    * ``"argmax"``: each level independently at the argmax of its own channel (score: its peak
      probability; detected when ``>= score_threshold``). Every level gets a centre, detected or not.
    * ``"sequence"`` (default): the candidate vertebrae are the local maxima (``(2r+1)^2`` window,
      ``r = nms_radius_px``) of the maximum over the level channels with a value ``>=
      candidate_fraction * score_threshold`` (the value is the score: how sure the network is that a
      vertebra is there; weak candidates take part in the assignment, so that one faint vertebra
      does not shift the levels of the others, but a level is detected only where its score reaches
      ``score_threshold``); ordered top to bottom (``y``,
      as levels run in every radiograph of the project), they get levels by the order-preserving
      assignment that maximises the summed probability of the assigned level at each vertebra, less
      ``gap_penalty`` per level or vertebra skipped inside the sequence (:func:`_monotone_assignment`).
      So two levels never share a vertebra, contiguous vertebrae get contiguous levels, and a level
      the network confuses with its neighbour still lands in the right place in the sequence; a
      vertebra of an unannotated neighbour (C2, T1, T12, S1) that the network also marks is left out
      at either end when the probabilities say it does not fit. Levels without a vertebra are not
      detected (NaN centre and box, score 0).

    Args:
        pred: ``(L + 4, H, W)`` network output (heatmap logits or, with ``apply_sigmoid=False``,
            probabilities; then box distances in fractions of W, H, W, H), numpy or torch.
        score_threshold: least peak probability of a detection.
        apply_sigmoid: turn the heatmap channels from logits into probabilities first.
        refine: sub-pixel refinement of each peak by a three-point parabola on the log-heatmap along x
            and y (exact for a Gaussian peak; offsets clipped to half a pixel; none at the border);
            the level's own channel for ``argmax``, the channel maximum for ``sequence``.
        method: ``"sequence"`` or ``"argmax"``.
        nms_radius_px: window half-size of the local maxima (``sequence``).
        gap_penalty: cost of a level or vertebra skipped inside the sequence (``sequence``).
        candidate_fraction: candidates need ``candidate_fraction * score_threshold`` (``sequence``).

    Returns:
        dict of numpy arrays in **net pixels**: ``scores`` ``(L,)``, ``centres_net_px`` ``(L, 2)``
        ``(x, y)``, ``boxes_net_px`` ``(L, 4)`` ``(x0, y0, x1, y1)`` (distances clamped at 0),
        ``detected`` ``(L,)`` bool.
    """
    if method not in ("sequence", "argmax", "chain"):
        raise ValueError(f"decode method must be 'sequence', 'argmax' or 'chain', got {method!r}")
    p = _np(pred).astype(np.float64)
    if p.ndim != 3 or p.shape[0] <= NUM_BOX_CHANNELS:
        raise ValueError(f"decode_detections: expected (L + 4, H, W), got shape {p.shape}")
    if method == "chain":
        return _decode_chain(p, score_threshold, apply_sigmoid, refine, nms_radius_px, candidate_fraction, profile,
                             chain_kwargs, level_y_frac, y_frac_map)
    n_lev = p.shape[0] - NUM_BOX_CHANNELS
    h, w = p.shape[1:]
    hm = p[:n_lev]
    if apply_sigmoid:
        hm = 1.0 / (1.0 + np.exp(-np.clip(hm, -60, 60)))
    scores = np.zeros(n_lev)
    centres = np.full((n_lev, 2), np.nan)
    pix = np.full((n_lev, 2), -1, dtype=np.int64)  # (x, y) pixel of each level's peak, -1: none
    if method == "argmax":
        flat = hm.reshape(n_lev, -1)
        arg = flat.argmax(1)
        ys, xs = np.divmod(arg, w)
        scores = flat[np.arange(n_lev), arg]
        pix = np.stack([xs, ys], -1)
        for lev in range(n_lev):
            centres[lev] = _refine(hm[lev], xs[lev], ys[lev]) if refine else (xs[lev], ys[lev])
        detected = scores >= score_threshold
    else:
        heat = hm.max(0)
        xs, ys = _local_maxima(heat, int(nms_radius_px), float(candidate_fraction) * float(score_threshold),
                               max_count=2 * n_lev + 4)
        order = np.argsort(ys, kind="stable")  # top to bottom
        xs, ys = xs[order], ys[order]
        for lev, i in _monotone_assignment(hm[:, ys, xs], gap_penalty):
            if heat[ys[i], xs[i]] < score_threshold:
                continue
            scores[lev] = heat[ys[i], xs[i]]
            pix[lev] = (xs[i], ys[i])
            centres[lev] = _refine(heat, xs[i], ys[i]) if refine else (xs[i], ys[i])
        detected = pix[:, 0] >= 0
    boxes = np.full((n_lev, 4), np.nan)
    ok = pix[:, 0] >= 0
    if ok.any():
        ltrb = np.maximum(p[n_lev:, pix[ok, 1], pix[ok, 0]].T, 0.0) * np.array([w, h, w, h], dtype=np.float64)
        c = centres[ok]
        boxes[ok] = np.concatenate([c - ltrb[:, :2], c + ltrb[:, 2:]], -1)
    return {"scores": scores, "centres_net_px": centres, "boxes_net_px": boxes, "detected": detected}


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
    (:func:`decode_detections`), maps to image pixels and matches (:func:`match_detections`). Batches
    may be a dict of batched values (``decollate=False``) or per-sample dicts.

    At the end of the epoch the value is ``penalised_error_{u}`` (lower is better) and every entry of
    :meth:`DetectionAccumulator.summary` goes to ``engine.state.metrics`` as ``prefix + key``
    (``val_recall``, ``val_centre_error_mean_mm``, ``val_recall/C3``, ...), so StatsHandler and
    MLFlowHandler log them.

    Args:
        levels: the region's level names (L).
        score_threshold, match_radius: see :func:`match_detections`.
        decode_method, nms_radius_px, gap_penalty: see :func:`decode_detections`.
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
        box_radius_px: see :class:`transforms.detection.CentreHeatmapTarget`.
        level_channel: add the level target (see below).

    Returns:
        ``(image (1, H, W), target, det_to_item (3, 3))`` float32 / float64. The target's channel 0 is the
        maximum of the level heatmaps ("any vertebra"); with ``level_channel`` channel 1 holds
        ``level / (L - 1)`` in the ``(2r + 1)^2`` window around each centre and the last channel marks
        those windows (none on a film whose annotated centres do not run top to bottom in level order:
        a mislabelled film teaches no level); then the four box channels and the box mask. Without the
        level channel: ``(1 + 5, H, W)``, with it ``(2 + 5 + 1, H, W)``.
    """
    from transforms.detection import CentreHeatmapTarget, augment_affine, letterbox_affine, resample_to_net

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
    t = CentreHeatmapTarget((hn, wn), sigma_px, box_radius_px)(c, b, item["present"])
    n_lev = c.shape[0]
    heat = t[:n_lev].max(0, keepdims=True)
    if not level_channel:
        return x.astype(np.float32), np.concatenate([heat, t[n_lev:]], 0).astype(np.float32), a
    lvl = np.zeros((2, hn, wn), dtype=np.float32)  # level / (L - 1), its mask
    pres = np.asarray(item["present"], bool) & np.all(np.isfinite(c), -1)
    ys_img = np.asarray(item["centres_px"], dtype=np.float64)[pres, 1]
    if pres.sum() >= 1 and np.all(np.diff(ys_img) > 0):
        r = int(box_radius_px)
        for k in np.flatnonzero(pres):
            cx, cy = c[k]
            if not (-0.5 <= cx <= wn - 0.5 and -0.5 <= cy <= hn - 0.5):
                continue
            px, py = int(np.clip(np.floor(cx + 0.5), 0, wn - 1)), int(np.clip(np.floor(cy + 0.5), 0, hn - 1))
            sl = (slice(max(py - r, 0), py + r + 1), slice(max(px - r, 0), px + r + 1))
            lvl[0][sl] = k / max(n_lev - 1, 1)
            lvl[1][sl] = 1.0
    target = np.concatenate([heat, lvl[:1], t[n_lev:], lvl[1:]], 0).astype(np.float32)
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
