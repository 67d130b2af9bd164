"""Pieces the bundle's ignite engines use to train the vertebra detector
(``bundle/configs/detector_train.json`` over ``train.json``).

* Data: :func:`detector_cases` / :func:`detector_datalists` give **one item per radiograph**, with
  fixed-size per-level arrays (``L`` = the region's levels), so batches collate: ``boxes_px``
  ``(L, 4)``, ``centres_px`` ``(L, 2)`` (NaN for an absent level) and ``present`` ``(L,)``.
  Boxes are the annotation's ``box_px`` or, without one, the box around the vertebra's visible
  keypoints and body outline (:meth:`SpineAnnotation.boxes_from_keypoints`), the boxes the keypoint
  regressor crops from; centres are vertebral-body centres
  (:func:`~monai_spine.codecs.detection.vertebra_centres_px`).
* Training: the targets are made by :class:`monai_spine.transforms.detection.CentreHeatmapTargetd`; the loss is
  :class:`~monai_spine.losses.detection.DetectionLoss` (CenterNet's penalty-reduced focal loss on the level
  heatmaps plus L1 on the box distances at the centres).
* Decoding and the centres: :mod:`monai_spine.codecs.detection` (:func:`~monai_spine.codecs.detection.decode_detections`,
  :func:`~monai_spine.codecs.detection.vertebra_centres_px`, the ``chain`` level assignment), shared with inference.
* The ``chain`` detector: :func:`load_detector_arrays`, :func:`chain_training_sample` and
  :func:`train_chain_detector` (loss :class:`~monai_spine.losses.detection.ChainDetectionLoss`).
* Elsewhere: the detector's metrics are defined in :mod:`monai_spine.metrics.detection`
  (:func:`~monai_spine.metrics.detection.match_detections`,
  :class:`~monai_spine.metrics.detection.DetectionAccumulator`); the evaluator's key metric is
  :class:`monai_spine.handlers.detection.DetectionErrorHandler`; :mod:`monai_spine.evaluation.detector`
  runs a trained detector over annotated cases.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from monai_spine.data.annotation import SpineAnnotation, read_annotation
from monai_spine.data.keypoints import get_region
from monai_spine.codecs.chain import centres_in_level_order, level_height_fractions, spacing_profile
from monai_spine.codecs.detection import encode_chain_target, vertebra_centres_px
from monai_spine.engines.hardware import reseed_worker, training_device
from monai_spine.losses.detection import ChainDetectionLoss, DetectionLoss
from monai_spine.networks.detector import NUM_BOX_CHANNELS
from monai_spine.transforms.detection import boxes_to_net_px
from monai_spine.transforms.intensity import scale_film_intensities

__all__ = [
    "detector_cases",
    "detector_datalists",
    "experiment_params",
    "load_detector_arrays",
    "chain_training_sample",
    "ChainSampleDataset",
    "train_chain_detector",
    "chain_statistics",
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
        if ann.spacing_override_mm is not None:
            item["sidecar_spacing_mm"] = np.asarray(ann.spacing_override_mm, dtype=np.float32)
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

    out = []
    for case in cases:
        sidecar = case.get("sidecar_spacing_mm")
        img = read_xray(case["image"], spacing_mm=None if sidecar is None else [float(v) for v in np.ravel(sidecar)])
        a = scale_film_intensities(img.channel_first(), intensity_percentiles)
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


class ChainSampleDataset(torch.utils.data.Dataset):
    """Augmented :func:`chain_training_sample` pairs of films: ``(input (1, H, W), target (C, H, W))`` tensors.

    ``rng`` (``None``: no augmentation) is drawn from in access order; DataLoader workers replace it with
    their own (:func:`~monai_spine.engines.hardware.reseed_worker`).
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], spatial_size: Sequence[int], sigma_px: float,
                 rng: np.random.Generator | None, level_channel: bool = True) -> None:
        self.items = list(items)
        self.spatial_size = tuple(int(v) for v in spatial_size)
        self.sigma_px = float(sigma_px)
        self.rng = rng
        self.augment = rng is not None
        self.level_channel = bool(level_channel)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, t, _ = chain_training_sample(self.items[j], self.spatial_size, self.sigma_px,
                                        self.rng if self.augment else None, level_channel=self.level_channel)
        return torch.from_numpy(x), torch.from_numpy(t)


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
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> list[float]:
    """Train a single-heatmap (``chain``) detector on :func:`load_detector_arrays` items.

    Adam with cosine annealing, batches of augmented whole films from :func:`chain_training_sample`.
    A network with ``1 + 4`` output channels is trained with :class:`DetectionLoss` (focal heatmap + L1
    box), one with ``2 + 4`` (a level channel) with :class:`ChainDetectionLoss`. Returns the mean loss of
    every epoch.

    ``device`` (see :func:`~monai_spine.engines.hardware.training_device`; default the CPU) is where the
    network trains; it is back on the CPU when this returns. ``num_workers > 0`` cuts the batches in that
    many DataLoader worker processes (each with its own generator, :func:`~monai_spine.engines.hardware.reseed_worker`);
    with 0 the samples come from ``seed``'s one generator in this process, as before.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = training_device(device)
    network.to(dev)
    opt = torch.optim.Adam(network.parameters(), lr=learning_rate)
    steps_per_epoch = max(1, int(np.ceil(len(train_items) / batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    n_lev = int(np.asarray(train_items[0]["centres_px"]).shape[0])
    with torch.no_grad():
        out_ch = int(network(torch.zeros(1, 1, *(int(v) for v in spatial_size), device=dev)).shape[1])
    level_channel = out_ch == 2 + NUM_BOX_CHANNELS
    loss_fn = ChainDetectionLoss(n_lev, size_weight, level_weight) if level_channel else DetectionLoss(size_weight)
    samples = ChainSampleDataset(train_items, spatial_size, sigma_px, rng if augment else None, level_channel)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    network.train()
    for ep in range(int(epochs)):
        perm = rng.permutation(len(train_items))
        batches = [perm[st * batch_size : (st + 1) * batch_size].tolist() for st in range(steps_per_epoch)]
        if num_workers > 0:
            loader: Any = torch.utils.data.DataLoader(samples, batch_sampler=batches, num_workers=int(num_workers),
                                                      worker_init_fn=reseed_worker, generator=gen)
        else:
            loader = (torch.utils.data.default_collate([samples[j] for j in idx]) for idx in batches)
        tot = 0.0
        for xb, tb in loader:
            xb, tb = xb.to(dev, non_blocking=True), tb.to(dev, non_blocking=True)
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
    network.to("cpu")
    network.eval()
    return losses


def chain_statistics(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a ``chain`` detector's spec learns from its training films besides the weights.

    Args:
        items: :func:`load_detector_arrays` items (``centres_px`` ``(L, 2)``, ``image`` ``(1, H, W)``).

    Returns:
        ``spacing_profile`` (:func:`~monai_spine.codecs.chain.spacing_profile`), ``level_y_frac``
        (:func:`~monai_spine.codecs.chain.level_height_fractions`), ``length_frac_range`` (1st and 99th
        percentiles of the first-to-last level span over the film height, films with every level
        annotated; ``None`` without such a film) as tuples, and ``films_out_of_level_order``: the films
        whose annotated centres are not in level order down the film, which none of them uses.
    """
    centres = [np.asarray(it["centres_px"], np.float64) for it in items]
    heights = [float(it["image"].shape[-2]) for it in items]
    spans = [float(np.hypot(*(c[1:] - c[:-1]).T).sum()) / h for c, h in zip(centres, heights)
             if np.all(np.isfinite(c)) and centres_in_level_order(c)]
    return {
        "spacing_profile": tuple(float(v) for v in spacing_profile(centres)),
        "level_y_frac": tuple(float(v) for v in level_height_fractions(centres, heights)),
        "length_frac_range": (float(np.percentile(spans, 1)), float(np.percentile(spans, 99))) if spans else None,
        "films_out_of_level_order": int(sum(not centres_in_level_order(c) for c in centres)),
    }
