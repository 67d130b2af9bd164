"""Training wiring of the spine-strip refiner (:mod:`monai_spine.inference.spine_strip`) on annotated films.

Each training step cuts a fresh strip per film from its annotated level centres, made to look like a
coarse detector's: every centre jittered by ``jitter_frac`` of the film's level spacing (the strip's arc
wanders as the coarse one does), the arc extended by a random 1.2-3.8 level steps at each end (a chain
shifted by a level, or cut short), a left-right flip and a gamma change. The target is the strip's
heatmap of the annotated centres (:func:`~monai_spine.codecs.spine_strip.encode_strip_heatmap`) and the
level index of every row (:func:`~monai_spine.codecs.spine_strip.encode_strip_levels`); C7, S1 and the
discs are in the strip without a peak, so the network learns to stay quiet there. MONAI's
``SupervisedTrainer`` trains it with :class:`~monai_spine.losses.detection.SpineStripLoss`, Adam and a
one-cycle schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_spine.codecs.chain import centres_in_level_order
from monai_spine.codecs.detection import vertebra_centres_px
from monai_spine.codecs.spine_strip import SpineStrip, encode_strip_heatmap, encode_strip_levels
from monai_spine.engines.hardware import reseed_worker, training_device
from monai_spine.inference.spine_strip import STRIP_SPEC_FILE, SpineStripSpec
from monai_spine.transforms.intensity import scale_film_intensities

__all__ = ["load_strip_films", "strip_training_sample", "StripDataset", "train_spine_strip", "choose_strip_decoding"]


def load_strip_films(label_paths: Sequence[str], levels: Sequence[str], percentiles: Sequence[float] = (0.5, 99.5),
                     min_levels: int = 3, log: Callable[[str], None] = print) -> list[tuple[np.ndarray, np.ndarray]]:
    """Scaled films (float16) and their level centres ``(L, 2)`` (NaN: not annotated), in the order of ``levels``.

    Films with fewer than ``min_levels`` annotated levels, or whose annotated centres do not run down the
    film in level order (label noise: 6 of the 481 AASCE films once the reader has put back the 18 lists
    stored with T1 last, 24 before), are left out (said in the log).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.readers import read_xray

    out = []
    for label in label_paths:
        ann = read_annotation(label)
        c_ann = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, boxes_px=ann.boxes_px)
        centres = np.full((len(levels), 2), np.nan)
        for k, lev in enumerate(levels):
            if lev in ann.levels:
                centres[k] = c_ann[list(ann.levels).index(lev)]
        ok = np.all(np.isfinite(centres), 1)
        if int(ok.sum()) < int(min_levels):
            log(f"[strip] {label}: fewer than {min_levels} annotated levels, left out")
            continue
        if not centres_in_level_order(centres):
            log(f"[strip] {label}: annotated centres not in level order down the film (label noise), left out")
            continue
        film = scale_film_intensities(read_xray(ann.image).channel_first(), percentiles)
        out.append((film.astype(np.float16), centres))
    return out


def strip_training_sample(film: np.ndarray, centres_px: np.ndarray, spec: SpineStripSpec, rng: np.random.Generator,
                          jitter_frac: float = 0.12, ext_range: tuple[float, float] = (1.2, 3.8),
                          gamma_range: tuple[float, float] = (0.7, 1.5)) -> tuple[np.ndarray, np.ndarray]:
    """One augmented ``(strip (rows, width), target (3, rows, width))`` pair, both float32.

    The target's channels: the centre heatmap, the level index of each row and its mask
    (:func:`~monai_spine.codecs.spine_strip.encode_strip_levels`, constant along a row).

    Args:
        film: ``(H, W)`` scaled film.
        centres_px: ``(L, 2)`` annotated centres (NaN: not annotated).
        rng: the random source (jitter, arc extension, flip, gamma).
    """
    c = np.asarray(centres_px, dtype=np.float64)
    ok = np.all(np.isfinite(c), 1)
    spacing = float(np.median(np.hypot(*np.diff(c[ok], axis=0).T)))
    for attempt in range(6):  # a jitter that folds the arc (the levels out of order along it) is drawn again
        noisy = c.copy()
        if attempt < 5:
            noisy[ok] += rng.normal(0.0, jitter_frac * spacing, (int(ok.sum()), 2))
        ext = rng.uniform(ext_range[0], ext_range[1], 2) if attempt < 5 else np.array(spec.ext_levels)
        strip = SpineStrip.from_centres(noisy, spec.rows, spec.width, (float(ext[0]), float(ext[1])), spec.smooth_levels)
        rc = strip.to_strip(c)
        r = rc[ok, 0]
        if np.all(np.diff(r) > 0) and r[0] > 0 and r[-1] < spec.rows - 1:
            break
    x = strip.sample(film.astype(np.float32))
    if rng.random() < 0.5:
        x = x[:, ::-1]
        rc[:, 1] = spec.width - 1 - rc[:, 1]
    x = np.clip(x, 0.0, 1.0) ** float(rng.uniform(*gamma_range))
    try:
        level, mask = encode_strip_levels(rc[:, 0], spec.rows)
    except ValueError:  # even the plain arc folds: no level target for this cut
        level, mask = np.zeros(spec.rows, np.float32), np.zeros(spec.rows, np.float32)
    y = np.stack([encode_strip_heatmap(rc, strip.shape, spec.sigma_px),
                  np.repeat(level[:, None], spec.width, 1), np.repeat(mask[:, None], spec.width, 1)])
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.float32)


class StripDataset(torch.utils.data.Dataset):
    """Augmented strips of films, a fresh cut at every access: ``{"image": (1, R, W), "label": (3, R, W)}``."""

    def __init__(self, films: Sequence[tuple[np.ndarray, np.ndarray]], spec: SpineStripSpec, seed: int = 0,
                 **sample_kwargs: Any) -> None:
        self.films = list(films)
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        self.sample_kwargs = sample_kwargs

    def __len__(self) -> int:
        return len(self.films)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        film, centres = self.films[i]
        x, y = strip_training_sample(film, centres, self.spec, self.rng, **self.sample_kwargs)
        return {"image": torch.from_numpy(x)[None], "label": torch.from_numpy(y)}


def train_spine_strip(
    out_dir: str | Path,
    train_labels: Sequence[str],
    spec: SpineStripSpec,
    epochs: int = 20,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    level_weight: float = 0.1,
    seed: int = 0,
    log: Callable[[str], None] = print,
    meta: dict[str, Any] | None = None,
    init_from: str | Path | None = None,
    device: str | None = None,
    num_workers: int = 0,
) -> SpineStripSpec:
    """Train the refiner on annotated films and save it (spec + weights) into ``out_dir`` (a detector folder).

    ``init_from``: a folder holding a refiner of the same spec whose weights training starts from (training
    on from an earlier run; the meta records it). ``device``: where it trains
    (:func:`~monai_spine.engines.hardware.training_device`; default the CPU); ``num_workers``: DataLoader
    worker processes cutting the strips (each with its own generator; 0: this process, as before).

    Returns:
        The saved spec; ``meta`` records the training (films, epochs, loss per epoch, seconds).

    Raises:
        ValueError: no film with three annotated levels.
    """
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler

    from monai_spine.losses.detection import SpineStripLoss

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    films = load_strip_films(train_labels, spec.levels, spec.intensity_percentiles, log=log)
    if not films:
        raise ValueError("train_spine_strip: no training film with three or more annotated levels")
    log(f"[strip] {len(films)} training films read in {time.perf_counter() - t0:.0f} s")
    net = spec.build_network()
    if init_from is not None:
        from monai_spine.inference.spine_strip import SpineStripRefiner

        start = SpineStripRefiner.from_dir(init_from)
        if start.spec.features != spec.features or (start.spec.rows, start.spec.width) != (spec.rows, spec.width):
            raise ValueError(f"train_spine_strip: the refiner in {init_from} has another size "
                             f"({start.spec.rows} x {start.spec.width}, features {list(start.spec.features)})")
        net.load_state_dict(start.network.state_dict())
        spec.meta = {**spec.meta, "initialised_from": {"folder": str(init_from), **{
            k: start.spec.meta.get(k) for k in ("training_command", "epochs", "train_s")}}}
    gen = torch.Generator().manual_seed(seed)
    dev = training_device(device)
    net.to(dev)
    loader = torch.utils.data.DataLoader(StripDataset(films, spec, seed), batch_size=batch_size, shuffle=True,
                                         generator=gen, num_workers=int(num_workers),
                                         worker_init_fn=reseed_worker if num_workers > 0 else None)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=max(1, epochs * len(loader)),
                                                pct_start=0.1)
    trainer = SupervisedTrainer(device=dev, max_epochs=epochs, train_data_loader=loader, network=net,
                                optimizer=opt, loss_function=SpineStripLoss(level_weight),
                                train_handlers=[LrScheduleHandler(sched, print_lr=False, epoch_level=False)],
                                amp=False)
    history: list[float] = []
    running: list[float] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _collect(engine: Any) -> None:
        running.append(float(engine.state.output[0]["loss"]))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _report(engine: Any) -> None:
        history.append(float(np.mean(running)))
        running.clear()
        log(f"[strip] epoch {engine.state.epoch}/{epochs}: loss {history[-1]:.3f} ({time.perf_counter() - t0:.0f} s)")

    trainer.run()
    net.to("cpu")
    torch.save(net.state_dict(), out / spec.checkpoint_file)
    spec.meta = {**spec.meta, **(meta or {}), "training_films": len(films), "epochs": int(epochs),
                 "batch_size": int(batch_size), "learning_rate": float(learning_rate), "level_weight": float(level_weight), "seed": int(seed),
                 "loss_per_epoch": [round(v, 4) for v in history], "train_s": round(time.perf_counter() - t0, 1),
                 "device": str(dev), "num_workers": int(num_workers)}
    spec.save(out)
    return spec


def choose_strip_decoding(detector_dir: str | Path, val_labels: Sequence[str], grid: Sequence[Mapping[str, float]],
                          log: Callable[[str], None] = print) -> tuple[dict[str, float], dict[str, float]]:
    """The decoding options of the detector folder's refiner with the best right-level rate on validation films.

    Each film is detected and its strip read once; every candidate of ``grid`` (options of
    :func:`~monai_spine.codecs.spine_strip.decode_strip_levels`, over the spec's ``decode_kwargs``) then
    decodes the same readings. A level is right when its centre lies inside that level's annotated box
    (:func:`~monai_spine.evaluation.levels.matched_levels`). Ties go to the earlier candidate.

    Returns:
        ``(best options, {candidate as text: right-level rate})``; the rate without the refiner is
        under ``"without the refiner"``.

    Raises:
        FileNotFoundError: the folder holds no refiner.
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.readers import read_xray
    from monai_spine.evaluation.levels import matched_levels
    from monai_spine.inference.detector import VertebraDetector

    det = VertebraDetector.from_checkpoint(detector_dir)
    if det.strip is None:
        raise FileNotFoundError(f"{detector_dir}: no spine-strip refiner ({STRIP_SPEC_FILE}) to tune")
    ref, det.strip = det.strip, None
    prof = np.asarray(det.spec.spacing_profile, dtype=np.float64)
    films = []
    for label in val_labels:
        ann = read_annotation(label)
        image = read_xray(ann.image).channel_first()
        coarse = det.detect(image, None, "unknown")
        boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
        rows = [j for j, lev in enumerate(ann.levels) if lev in det.levels and ann.visible[j].any()]
        if len(coarse.levels) != len(det.levels):
            films.append((None, coarse, ann, boxes, rows))
            continue
        film = scale_film_intensities(image, ref.spec.intensity_percentiles)
        strip = ref.spec.strip(coarse.centres_px)
        heat, level = ref.read(film, strip)
        films.append(((film.shape[0], strip, heat, level, ref.spacing_px(coarse.centres_px, prof)), coarse, ann, boxes, rows))
    total = sum(len(r) for *_, r in films)
    rates = {"without the refiner": sum(len(matched_levels(c.levels, c.centres_px, a.levels, b, r))
                                         for _, c, a, b, r in films) / max(total, 1)}
    log(f"[strip] right level without the refiner: {100 * rates['without the refiner']:.1f} %")
    best, best_rate = None, -1.0
    for cand in grid:
        right = 0
        for read, coarse, ann, boxes, rows in films:
            if read is None:
                centres = coarse.centres_px
            else:
                height, strip, heat, level, spacing = read
                centres, _ = ref.decode(heat, level, strip, prof, spacing, det.spec.level_y_frac, height, **cand)
            right += len(matched_levels(det.levels if read is not None else coarse.levels, centres, ann.levels,
                                        boxes, rows))
        key = ", ".join(f"{k} {v:g}" for k, v in cand.items()) or "the spec's options"
        rates[key] = right / max(total, 1)
        log(f"[strip] right level with {key}: {100 * rates[key]:.1f} %")
        if rates[key] > best_rate:
            best, best_rate = dict(cand), rates[key]
    return best or {}, rates
