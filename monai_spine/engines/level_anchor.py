"""Training wiring of the level anchor (:mod:`monai_spine.inference.level_anchor`) on annotated films.

Samples per film, from the annotated vertebra centres (``c_0 .. c_{L-1}``, top to bottom):

* every level's centre, jittered by ``centre_jitter_frac`` of the film's level spacing -> its group;
* one and two spacings above the first level and below the last (``c_0 - k (c_1 - c_0)``, ...) ->
  ``above`` / ``below`` (C7 and C6, S1 and the sacrum on an AP T1-L5 film);
* the disc between two consecutive levels and points beside the spine (``lateral_frac`` spacings
  left and right of every fourth level) -> ``not a centre``.

Each sample is cut ``variants`` times with random jitter, scale (log-normal), rotation and a left-right
flip, into a pool of standardised patches held in memory, so a training step costs only the network.
With ``edge_crop_prob``, a variant is cut from the film cropped above the first level and below the
last (:func:`edge_crop_rows`): films are framed tightly or loosely, and without it the classifier can
learn that a patch cut by the film's edge is "above" or "below" (those points lie near the edges on
most films) rather than what the vertebra looks like.
The classifier trains with MONAI's ``SupervisedTrainer`` (cross-entropy, Adam, cosine schedule); the
weights of the epoch with the best validation accuracy are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_spine.codecs.chain import centres_in_level_order
from monai_spine.codecs.detection import vertebra_centres_px
from monai_spine.codecs.level_groups import ABOVE, BELOW, NOT_A_CENTRE, LevelGroups, level_groups_for
from monai_spine.evaluation.levels import right_level_rate
from monai_spine.inference.level_anchor import LevelAnchorSpec, anchor_patches

__all__ = ["anchor_training_points", "label_peaks", "edge_crop_rows", "build_anchor_pool", "train_level_anchor",
           "choose_anchor_weight", "class_recall"]

#: default ranges, in level spacings, of the film's top edge above the first level's centre and of its
#: bottom edge below the last one's, for :func:`edge_crop_rows`
EDGE_CROP_STEPS = ((0.35, 1.5), (0.5, 1.8))


def anchor_training_points(centres_px: Any, lateral_frac: float = 0.8) -> tuple[np.ndarray, np.ndarray, float]:
    """Sample points and their level codes from a film's level centres.

    Args:
        centres_px: ``(L, 2)`` annotated level centres, top to bottom (NaN: not annotated).
        lateral_frac: distance of the "beside the spine" points from the centre, in level spacings.

    Returns:
        ``(points_px (M, 2), codes (M,), spacing_px)``: codes are level indices or
        :data:`~monai_spine.codecs.level_groups.ABOVE` / ``BELOW`` / ``NOT_A_CENTRE``; ``spacing_px`` is
        the median distance between consecutive annotated centres (NaN points and codes: none usable).

    Raises:
        ValueError: ``centres_px`` is not ``(L, 2)``.
    """
    c = np.asarray(centres_px, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"anchor_training_points: centres must be (L, 2), got shape {c.shape}")
    ok = np.all(np.isfinite(c), -1)
    idx = np.flatnonzero(ok)
    if idx.size < 3:
        return np.zeros((0, 2)), np.zeros(0, np.int64), float("nan")
    consecutive = [(a, b) for a, b in zip(idx[:-1], idx[1:]) if b == a + 1]
    d = np.array([np.hypot(*(c[b] - c[a])) for a, b in consecutive])
    if d.size == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), float("nan")
    spacing = float(np.median(d))
    pts, codes = [c[idx]], [idx.astype(np.int64)]
    last = c.shape[0] - 1
    if ok[0] and ok[1]:
        step = c[0] - c[1]
        pts.append(np.stack([c[0] + step, c[0] + 2 * step]))
        codes.append(np.array([ABOVE, ABOVE]))
    if ok[last] and ok[last - 1]:
        step = c[last] - c[last - 1]
        pts.append(np.stack([c[last] + step, c[last] + 2 * step]))
        codes.append(np.array([BELOW, BELOW]))
    if consecutive:
        mids = np.stack([(c[a] + c[b]) / 2 for a, b in consecutive])
        pts.append(mids)
        codes.append(np.full(len(mids), NOT_A_CENTRE))
    side = []
    for k in idx[::4]:
        for sgn in (-1.0, 1.0):
            side.append(c[k] + sgn * np.array([lateral_frac * spacing, 0.0]))
    if side:
        pts.append(np.stack(side))
        codes.append(np.full(len(side), NOT_A_CENTRE))
    return np.concatenate(pts), np.concatenate(codes).astype(np.int64), spacing


def label_peaks(points_px: Any, boxes_px: Any) -> np.ndarray:
    """Level codes of detector peaks from the annotated boxes of the region's levels.

    Args:
        points_px: ``(P, 2)`` peaks ``(x, y)``.
        boxes_px: ``(L, 4)`` ``(x0, y0, x1, y1)`` annotated box of each level, top to bottom (NaN: none).

    Returns:
        ``(P,)``: the first level whose box holds the peak; else
        :data:`~monai_spine.codecs.level_groups.ABOVE` above the first annotated box's top,
        :data:`~monai_spine.codecs.level_groups.BELOW` below the last one's bottom, and
        :data:`~monai_spine.codecs.level_groups.NOT_A_CENTRE` otherwise (a double response, a peak
        beside the spine).
    """
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    ok = np.flatnonzero(np.all(np.isfinite(b), -1))
    out = np.full(pts.shape[0], NOT_A_CENTRE, dtype=np.int64)
    if ok.size == 0:
        return out
    top, bottom = b[ok[0], 1], b[ok[-1], 3]
    for i, (x, y) in enumerate(pts):
        inside = [k for k in ok if b[k, 0] <= x <= b[k, 2] and b[k, 1] <= y <= b[k, 3]]
        out[i] = inside[0] if inside else ABOVE if y < top else BELOW if y > bottom else NOT_A_CENTRE
    return out


def edge_crop_rows(height_px: int, first_y_px: float, last_y_px: float, spacing_px: float,
                   rng: np.random.Generator, steps: tuple[tuple[float, float], tuple[float, float]] = EDGE_CROP_STEPS
                   ) -> tuple[int, int]:
    """Rows ``(top, bottom)`` of a random tighter framing of a film: ``image[top:bottom]``.

    The top edge falls ``U(steps[0])`` level spacings above the first level's centre, the bottom edge
    ``U(steps[1])`` below the last one's, each clipped to the film (a film already framed tighter
    keeps its edge).

    Args:
        height_px: the film's height.
        first_y_px, last_y_px: the first and last level centres' rows.
        spacing_px: the film's level spacing.
        rng: random generator (two uniform draws).
        steps: ``((top_min, top_max), (bottom_min, bottom_max))`` in level spacings.

    Raises:
        ValueError: a spacing that is not positive, or centres that are not finite.
    """
    if not (np.isfinite(spacing_px) and spacing_px > 0 and np.isfinite(first_y_px) and np.isfinite(last_y_px)):
        raise ValueError(f"edge_crop_rows: needs finite centres and a positive spacing, got first {first_y_px}, "
                         f"last {last_y_px}, spacing {spacing_px}")
    (t0, t1), (b0, b1) = steps
    top = int(np.clip(np.floor(first_y_px - rng.uniform(t0, t1) * spacing_px), 0, height_px))
    bottom = int(np.clip(np.ceil(last_y_px + rng.uniform(b0, b1) * spacing_px), top + 1, height_px))
    return top, bottom


def build_anchor_pool(
    label_paths: Sequence[str],
    groups: LevelGroups,
    variants: int = 4,
    side_spacings: float | Sequence[float] = 4.0,
    patch_size: int = 48,
    centre_jitter_frac: float = 0.06,
    scale_sigma: float = 0.12,
    rotation_deg: float = 8.0,
    seed: int = 0,
    log: Callable[[str], None] = print,
    detector: Any = None,
    edge_crop_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Patches and class labels of annotated films: ``(x (N, C, S, S) float16, y (N,) int64)``.

    ``variants=0`` cuts each sample once with no augmentation (validation). With a ``chain``
    ``detector`` (a :class:`~monai_spine.inference.detector.VertebraDetector`), its peaks on each film
    join the sample points, labelled by :func:`label_peaks`: the classifier then also learns the
    detector's real false peaks. ``edge_crop_prob``: the share of augmented variants cut from a
    tighter framing of the film (:func:`edge_crop_rows`; sample points outside it are dropped).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.readers import read_xray

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    t0 = time.perf_counter()
    for n, label in enumerate(label_paths):
        ann = read_annotation(label)
        idx = [list(ann.levels).index(lev) if lev in ann.levels else -1 for lev in groups.levels]
        centres = np.full((len(groups.levels), 2), np.nan)
        c_ann = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, boxes_px=ann.boxes_px)
        for k, j in enumerate(idx):
            if j >= 0:
                centres[k] = c_ann[j]
        if not centres_in_level_order(centres):
            log(f"[anchor] {label}: annotated centres not in level order down the film (label noise), skipped")
            continue
        pts, codes, spacing = anchor_training_points(centres)
        if pts.shape[0] == 0:
            log(f"[anchor] {label}: fewer than three annotated levels, skipped")
            continue
        image = read_xray(ann.image).channel_first()[0]
        if detector is not None:
            peaks = detector.predict_levels(image).get("candidates_px", np.zeros((0, 2)))
            boxes = np.full((len(groups.levels), 4), np.nan)
            b_ann = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
            for k, j in enumerate(idx):
                if j >= 0:
                    boxes[k] = b_ann[j]
            pts = np.concatenate([pts, peaks])
            codes = np.concatenate([codes, label_peaks(peaks, boxes)])
        labels = groups.encode(codes)
        ends = centres[np.all(np.isfinite(centres), 1), 1][[0, -1]]
        for _ in range(max(1, int(variants))):
            if variants:
                jitter = rng.normal(0.0, centre_jitter_frac * spacing, pts.shape)
                scale = float(np.exp(rng.normal(0.0, scale_sigma)))
                angle = rng.uniform(-rotation_deg, rotation_deg, pts.shape[0])
            else:
                jitter, scale, angle = 0.0, 1.0, 0.0
            film, at, keep = image, pts + jitter, np.ones(pts.shape[0], bool)
            if variants and edge_crop_prob > 0 and rng.random() < edge_crop_prob:
                top, bottom = edge_crop_rows(image.shape[0], ends[0], ends[1], spacing, rng)
                film, at = image[top:bottom], at - np.array([0.0, top])
                keep = (pts[:, 1] - top >= 0) & (pts[:, 1] - top < bottom - top)
            x = anchor_patches(film, at[keep], spacing * scale, side_spacings, patch_size, np.asarray(angle)[keep]
                               if np.ndim(angle) else angle)
            if variants:
                flip = rng.random(x.shape[0]) < 0.5
                x[flip] = x[flip][..., ::-1]
            xs.append(x.astype(np.float16))
            ys.append(labels[keep])
        if (n + 1) % 50 == 0:
            log(f"[anchor] {n + 1}/{len(label_paths)} films cut ({time.perf_counter() - t0:.0f} s)")
    if not xs:
        raise ValueError("build_anchor_pool: no film with three or more annotated levels")
    return np.concatenate(xs), np.concatenate(ys)


def _predict_classes(net: torch.nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """``(N,)`` argmax class of a pool of patches, in eval mode, ``batch`` patches at a time."""
    net.eval()
    with torch.inference_mode():
        out = [net(torch.from_numpy(x[i:i + batch].astype(np.float32))).argmax(-1).numpy()
               for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _accuracy(net: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(_predict_classes(net, x) == y)) if len(x) else 0.0


def train_level_anchor(
    out_dir: str | Path,
    train_labels: Sequence[str],
    val_labels: Sequence[str],
    levels: Sequence[str],
    epochs: int = 8,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    variants: int = 4,
    spec: LevelAnchorSpec | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    meta: dict[str, Any] | None = None,
    detector: Any = None,
    edge_crop_prob: float = 0.0,
) -> LevelAnchorSpec:
    """Train a level anchor and save it (spec + weights) into ``out_dir`` (a detector's model folder).

    Returns:
        The saved spec; ``meta`` records the training and the validation accuracy per epoch.
    """
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler

    torch.manual_seed(seed)
    spec = spec or LevelAnchorSpec(groups=level_groups_for(levels))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    x_tr, y_tr = build_anchor_pool(train_labels, spec.groups, variants, spec.side_spacings, spec.patch_size,
                                   seed=seed, log=log, detector=detector, edge_crop_prob=edge_crop_prob)
    x_va, y_va = build_anchor_pool(val_labels, spec.groups, 0, spec.side_spacings, spec.patch_size, log=log)
    t_pool = time.perf_counter() - t0
    log(f"[anchor] pools: {len(x_tr)} training, {len(x_va)} validation patches in {t_pool:.0f} s")
    net = spec.build_network()
    counts = np.bincount(y_tr, minlength=spec.groups.num_classes).astype(np.float64)
    weights = torch.tensor((counts.sum() / np.maximum(counts, 1.0)) ** 0.5, dtype=torch.float32)
    weights = weights / weights.mean()

    class _Pool(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x_tr)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"image": torch.from_numpy(x_tr[i].astype(np.float32)), "label": torch.tensor(y_tr[i])}

    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(_Pool(), batch_size=batch_size, shuffle=True, generator=gen, num_workers=0)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=max(1, epochs * len(loader)),
                                                pct_start=0.1)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                                optimizer=opt, loss_function=torch.nn.CrossEntropyLoss(weight=weights),
                                train_handlers=[LrScheduleHandler(sched, print_lr=False, epoch_level=False)],
                                amp=False)
    history: list[float] = []
    best = {"acc": -1.0, "state": None}

    from ignite.engine import Events

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine: Any) -> None:
        acc = _accuracy(net, x_va, y_va)
        history.append(acc)
        if acc > best["acc"]:
            best["acc"], best["state"] = acc, {k: v.detach().clone() for k, v in net.state_dict().items()}
        log(f"[anchor] epoch {engine.state.epoch}/{epochs}: loss {engine.state.output[0]['loss']:.3f}, "
            f"validation accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)")
        net.train()

    trainer.run()
    net.load_state_dict(best["state"])
    torch.save(net.state_dict(), out / spec.checkpoint_file)
    spec.meta = {**(meta or {}), "training_films": len(train_labels), "validation_films": len(val_labels),
                 "training_patches": int(len(x_tr)), "epochs": int(epochs), "batch_size": int(batch_size),
                 "learning_rate": float(learning_rate), "variants": int(variants), "seed": int(seed),
                 "detector_peaks": detector is not None, "edge_crop_prob": float(edge_crop_prob),
                 "validation_accuracy_per_epoch": [round(a, 4) for a in history],
                 "validation_accuracy": round(float(best["acc"]), 4), "train_s": round(time.perf_counter() - t0, 1),
                 "class_names": spec.groups.class_names}
    spec.save(out)
    return spec


def choose_anchor_weight(detector_dir: str | Path, val_labels: Sequence[str], weights: Sequence[float],
                         log: Callable[[str], None] = print) -> tuple[float, dict[str, float]]:
    """The anchor weight (0: no anchor) with the best :func:`~monai_spine.evaluation.levels.right_level_rate` on validation films.

    Ties go to the smaller weight. Returns ``(weight, {weight: rate})``.
    """
    from monai_spine.inference.detector import VertebraDetector

    det = VertebraDetector.from_checkpoint(detector_dir)
    if det.anchor is None:
        raise FileNotFoundError(f"{detector_dir}: no level anchor (level_anchor_model.json) to weigh")
    anchor, rates = det.anchor, {}
    for w in sorted({0.0, *map(float, weights)}):
        det.anchor = anchor if w > 0 else None
        anchor.spec.weight = w
        rates[f"{w:g}"] = right_level_rate(det, val_labels)
        log(f"[anchor] weight {w:g}: right level {100 * rates[f'{w:g}']:.1f} % of {len(val_labels)} validation films")
    best = max(rates, key=lambda k: (rates[k], -float(k)))
    return float(best), rates


def class_recall(anchor: Any, label_paths: Sequence[str]) -> dict[str, float]:
    """Per-class recall of a trained anchor on the un-augmented sample points of annotated films."""
    x, y = build_anchor_pool(label_paths, anchor.spec.groups, 0, anchor.spec.side_spacings, anchor.spec.patch_size,
                             log=lambda m: None)
    pred = _predict_classes(anchor.network, x)
    names = anchor.spec.groups.class_names
    return {name: float(np.mean(pred[y == g] == g)) for g, name in enumerate(names) if np.any(y == g)}
