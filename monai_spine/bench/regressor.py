"""Benchmark of the three BayeRegX regressors (Baseline, Baseline + CBAM, BayeCBAM) on synthetic data.

Every variant is trained by the bundle itself (``monai.bundle.run("training", ...)`` with
``bundle/configs/train.json``) on the same synthetic cervical set, with the same budget (epochs,
batch size, crop size, network width: the same number of optimisation steps), and each run writes
into its own folder. Each trained model is then evaluated on the held-out test split by the bundle's
own :class:`~monai_spine.inference.regressor.KeypointPredictor` (instantiated from
``train.json`` + ``inference.json`` with the training overrides, so the network's construction, the
crop size and the crop margin ``margin_mm + rand_pad_mm / 2`` are by construction those of training
and validation), with MC dropout (``T`` passes; the point is the mean of the passes).

Per variant it reports the error summary of :func:`~monai_spine.metrics.keypoint_error.summarize_errors`
(mean / median error, share of scans with a mean error below 2 mm, SDR@2mm, fit failure > 3 mm),
the training wall time and the Spearman rank correlation between the point uncertainty ``sigma_p``
(aleatoric, epistemic, total) and the point error, over the visible points of the test split.

Pieces:

* :class:`BenchSettings`: the shared budget and data; :meth:`BenchSettings.bundle_overrides`.
* :func:`train_variant`: one bundle training run, timed.
* :func:`bundle_predictor`, :func:`split_labels`: the bundle's predictor and test split.
* :func:`~monai_spine.evaluation.predictor.evaluate_predictor` (imported here): per-point errors and
  sigmas of a predictor over annotated images.
* :func:`variant_result`: the statistics of one variant (Spearman's rho by
  :func:`monai_spine.uncertainty.quality.spearman`).
* :func:`format_table`, :func:`format_header`: the markdown report.
* :func:`run_benchmark`: all of it, for ``scripts/bench_regressor.py``.

Why one module: it is one benchmark (scripts/bench_regressor.py): its settings, its training runs,
the statistics of each variant and the tables that print them. The tables format exactly the numbers
computed here, so they change together.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from monai_spine.bench.tables import num, pct
from monai_spine.evaluation.bundle import _bundle_files, bundle_parser
from monai_spine.evaluation.predictor import SIGMA_KINDS, EvalArrays, MeanShapePredictor, evaluate_predictor

__all__ = [
    "MeanShapePredictor",
    "VARIANTS",
    "SIGMA_KINDS",
    "BenchSettings",
    "EvalArrays",
    "SpearmanResult",
    "VariantResult",
    "train_variant",
    "bundle_parser",
    "bundle_predictor",
    "split_labels",
    "evaluate_predictor",
    "variant_result",
    "format_table",
    "format_seed_table",
    "evaluate_model_folder",
    "uncertainty_table",
    "format_header",
    "run_benchmark",
]

#: the regressor variants, in table order
VARIANTS = ("baseline", "cbam", "bayecbam")


@dataclass
class BenchSettings:
    """The budget and data every variant shares.

    Attributes:
        n: synthetic radiographs (all splits together; split 70/15/15 by image, seeded).
        size: image side in pixels (square images).
        epochs: training epochs (the bundle validates after each and keeps the best ``model.pt``).
        batch_size: training (and validation) batch size.
        width: channel multiplier of the AlexNet trunk (``network_width``).
        fc_features: width of the hidden fully-connected layers.
        crop: network input ``(H, W)`` (``spatial_size``).
        hard_case_rate: share of generated images that are hard cases (whole set, so the test split
            holds them too).
        mc_samples: T, MC-dropout passes at evaluation.
        learning_rate: Adam peak learning rate (the bundle's linear warm-up, then cosine per iteration).
        seed: training seed (``set_determinism``) and dropout-mask seed of the predictor.
        data_seed: seed of the synthetic generator.
        region: ``cervical`` (the synthetic generator also has ``lumbar``).
        extra: further bundle overrides applied to every variant (e.g. ``num_workers``, or switching
            the MLflow handlers off on a machine without MLflow).
    """

    n: int = 80
    size: int = 512
    epochs: int = 190
    batch_size: int = 32
    width: float = 0.25
    fc_features: int = 256
    crop: tuple[int, int] = (112, 224)
    hard_case_rate: float = 0.3
    mc_samples: int = 10
    learning_rate: float = 1e-3
    seed: int = 0
    data_seed: int = 0
    region: str = "cervical"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.crop = (int(self.crop[0]), int(self.crop[1]))
        if self.n < 3:
            raise ValueError(f"n must be >= 3 (one image per split at least), got {self.n}")
        if self.epochs < 1 or self.batch_size < 1 or self.mc_samples < 1:
            raise ValueError(
                "epochs, batch_size and mc_samples must be >= 1, "
                f"got {self.epochs}, {self.batch_size}, {self.mc_samples}"
            )
        if not 0.0 <= self.hard_case_rate <= 1.0:
            raise ValueError(f"hard_case_rate must be in [0, 1], got {self.hard_case_rate}")

    def data_overrides(self) -> dict[str, Any]:
        """The ``synthetic#...`` and region overrides (the same for every variant: one shared data set)."""
        return {
            "region": self.region,
            "dataset_dir": "",
            "max_cases": None,
            "synthetic#n": int(self.n),
            "synthetic#seed": int(self.data_seed),
            "synthetic#hard_case_rate": float(self.hard_case_rate),
            "synthetic#size": [int(self.size), int(self.size)],
        }

    def bundle_overrides(
        self, variant: str, run_dir: str | os.PathLike, bundle_root: str | os.PathLike
    ) -> dict[str, Any]:
        """Overrides of ``train.json`` for one variant, writing checkpoints, MLflow and eval under ``run_dir``."""
        if variant not in VARIANTS:
            raise KeyError(f"unknown regressor variant {variant!r}; known: {list(VARIANTS)}")
        run = Path(run_dir).resolve()
        return {
            **self.data_overrides(),
            "variant": variant,
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "network_width": float(self.width),
            "fc_features": int(self.fc_features),
            "spatial_size": list(self.crop),
            "learning_rate": float(self.learning_rate),
            "seed": int(self.seed),
            "show_progress": False,
            "bundle_root": str(Path(bundle_root).resolve()),
            "ckpt_dir": str(run / "models"),
            "mlflow_dir": str(run / "mlruns"),
            "output_dir": str(run / "eval"),
            **self.extra,
        }

    def describe(self) -> str:
        """One-line human summary of the settings."""
        return (
            f"region={self.region}, n={self.n} synthetic images {self.size}x{self.size} px "
            f"(hard_case_rate={self.hard_case_rate:g}, data_seed={self.data_seed}, split 70/15/15 by image), "
            f"epochs={self.epochs}, batch_size={self.batch_size}, crop HxW={self.crop[0]}x{self.crop[1]}, "
            f"width={self.width:g}, fc_features={self.fc_features}, lr={self.learning_rate:g} (Adam, warm-up + cosine), "
            f"seed={self.seed}, MC dropout T={self.mc_samples}"
        )


# ----------------------------------------------------------------------------------------------
# training and the bundle's predictor
# ----------------------------------------------------------------------------------------------
def train_variant(
    settings: BenchSettings,
    variant: str,
    run_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    logging_file: str | bool | None = None,
) -> float:
    """Train one variant with the bundle's ``training`` workflow; return its wall time in seconds.

    The wall time covers the whole ``monai.bundle.run`` call: config parsing, the training epochs,
    the per-epoch validation and checkpointing, MLflow logging. Generate the data set before
    (:func:`split_labels` does) so the first variant does not pay for it.

    Raises:
        KeyError: unknown variant.
        FileNotFoundError: the bundle's configs are missing, or the run left no ``model.pt``.
    """
    from monai.bundle import run

    meta, files = _bundle_files(bundle_root, "train.json")
    overrides = settings.bundle_overrides(variant, run_dir, bundle_root)
    t0 = time.perf_counter()
    run(run_id="training", meta_file=meta, config_file=files[0], logging_file=logging_file, **overrides)
    seconds = time.perf_counter() - t0
    ckpt = Path(overrides["ckpt_dir"]) / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"training of {variant} left no checkpoint at {ckpt}")
    return seconds


def bundle_predictor(settings: BenchSettings, variant: str, run_dir: str | os.PathLike, bundle_root: str | os.PathLike):
    """The bundle's ``predictor`` (``inference.json``) for a trained variant, weights loaded.

    Built from the same overrides as the training, so network width, hidden features, crop size and
    crop margin (``margin_mm + rand_pad_mm / 2``, the validation crop) cannot drift from training.
    Uses ``settings.mc_samples`` passes and ``settings.seed`` for the dropout masks.
    """
    from monai_spine.inference.model_zoo import load_weights

    overrides = settings.bundle_overrides(variant, run_dir, bundle_root)
    overrides["mc_samples"] = int(settings.mc_samples)
    parser = bundle_parser(overrides, bundle_root)
    predictor = parser.get_parsed_content("predictor")
    predictor.seed = int(settings.seed)
    load_weights(predictor.network, Path(overrides["ckpt_dir"]) / "model.pt")
    predictor.network.eval()
    return predictor


def split_labels(settings: BenchSettings, bundle_root: str | os.PathLike, split: str = "test") -> list[str]:
    """Annotation paths of one split, from the bundle's own ``splits`` (generates the set on first use)."""
    overrides = {**settings.data_overrides(), "bundle_root": str(Path(bundle_root).resolve())}
    splits = bundle_parser(overrides, bundle_root, inference=False).get_parsed_content("splits")
    if not splits.get(split):
        raise ValueError(f"the {split} split of {settings.n} synthetic images is empty")
    return list(splits[split])


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def uncertainty_table(arrays: EvalArrays, bins: int = 10) -> str:
    """Held-out uncertainty quality of one model, as markdown: per class (count, mean and 90th
    percentile error) and Spearman / ENCE of the total ``sigma_p`` / conformal coverage.

    ``arrays`` must come from a predictor with thresholds (classes) and, for the coverage, a
    conformal calibrator; errors and sigmas in ``arrays.unit``.
    """
    from monai_spine.uncertainty.quality import ence

    u = arrays.unit
    e = arrays.errors
    vis = ~np.isnan(e)
    lines = [f"| uncertainty class | points | mean {u} | 90th percentile {u} |", "|---|---:|---:|---:|"]
    names = {0: "certain", 1: "moderately uncertain", 2: "highly uncertain", -1: "unknown"}
    cls = arrays.classes if arrays.classes is not None else np.full(e.shape, -1)
    for c in (0, 1, 2, -1):
        m = vis & (cls == c)
        if c == -1 and not m.any():
            continue
        ev = e[m]
        lines.append(f"| {names[c]} | {int(m.sum())} | {num(float(ev.mean()) if ev.size else float('nan'))} | "
                     f"{num(float(np.percentile(ev, 90)) if ev.size else float('nan'))} |")
    sig = arrays.sigma.get("total")
    rho = _spearman_result(e, sig) if sig is not None else SpearmanResult(float("nan"), float("nan"), 0)
    en = ence(e[vis], sig[vis], bins)["ence"] if sig is not None else float("nan")
    cov = "—"
    if arrays.conformal_radius is not None and arrays.conformal_unit == u:
        r = arrays.conformal_radius
        m = vis & np.isfinite(r)
        if m.any():
            cov = f"{100.0 * float(np.mean(e[m] <= r[m])):.1f} % of {int(m.sum())} points (mean radius {num(float(r[m].mean()))} {u})"
    lines += ["", f"Spearman(σp total, error) = {num(rho.rho, '{:+.3f}')} over {rho.n} points; "
              f"ENCE of σp total ({bins} equal-count bins) = {num(en, '{:.3f}')}; conformal coverage: {cov}"]
    return "\n".join(lines)


@dataclass
class SpearmanResult:
    """Spearman rank correlation of uncertainty and error over ``n`` points (NaN when undefined)."""

    rho: float
    pvalue: float
    n: int


def _spearman_result(errors: Any, sigma: Any) -> SpearmanResult:
    """:func:`monai_spine.uncertainty.quality.spearman` of ``errors`` and ``sigma`` as a :class:`SpearmanResult`.

    Over the points where both are finite; rho and p are NaN with fewer than 3 points or a constant
    input. Raises ValueError when the shapes differ.
    """
    from monai_spine.uncertainty.quality import spearman

    res = spearman(errors, sigma)
    return SpearmanResult(res["rho"], res["p_value"], int(res["n"]))


@dataclass
class VariantResult:
    """Everything the table shows about one variant (plus details for the JSON record).

    Attributes:
        variant: ``baseline``, ``cbam`` or ``bayecbam``.
        unit: unit of the errors (``mm``; ``px`` only when a spacing is unknown).
        summary: :func:`~monai_spine.metrics.keypoint_error.summarize_errors` of the test split.
        spearman: kind -> :class:`SpearmanResult` for the kinds the variant has.
        train_seconds: wall time of the bundle training run.
        eval_seconds: wall time of the test-split prediction.
        num_images, num_hard_images: test images, of which generator hard cases.
        hard_summary: summary over hard-case images only (empty when there is none).
        num_annotated, num_found: annotated test vertebrae, and those evaluated (all of them with
            annotation boxes; with a detector, those it found at their level).
    """

    variant: str
    unit: str
    summary: dict[str, float]
    spearman: dict[str, SpearmanResult]
    train_seconds: float = float("nan")
    eval_seconds: float = float("nan")
    num_images: int = 0
    num_hard_images: int = 0
    hard_summary: dict[str, float] = field(default_factory=dict)
    num_annotated: int = 0
    num_found: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return clean(asdict(self))


def variant_result(
    arrays: EvalArrays, variant: str, kinds: Sequence[str] = SIGMA_KINDS, train_seconds: float = float("nan")
) -> VariantResult:
    """Error summary and uncertainty-error Spearman correlations of one variant.

    Args:
        arrays: the variant's :func:`evaluate_predictor` output.
        variant: its name.
        kinds: uncertainty kinds to correlate (Baseline/CBAM: ``("epistemic",)``, they predict no
            aleatoric variance, so their total is the epistemic one).
        train_seconds: training wall time.
    """
    from monai_spine.metrics.keypoint_error import summarize_errors

    summary = summarize_errors(
        arrays.errors, image_ids=arrays.image_ids, point_types=arrays.point_types, unit=arrays.unit
    )
    hard_summary: dict[str, float] = {}
    if arrays.hard.any():
        hard_summary = summarize_errors(
            arrays.errors[arrays.hard], image_ids=arrays.image_ids[arrays.hard], unit=arrays.unit
        )
    rho = {k: _spearman_result(arrays.errors, arrays.sigma[k]) for k in kinds if k in arrays.sigma}
    return VariantResult(
        variant=variant,
        unit=arrays.unit,
        summary=summary,
        spearman=rho,
        train_seconds=float(train_seconds),
        num_images=arrays.num_images,
        num_hard_images=arrays.num_hard_images,
        hard_summary=hard_summary,
        num_annotated=arrays.num_annotated,
        num_found=arrays.num_found,
    )


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def format_table(results: Sequence[VariantResult]) -> str:
    """The benchmark's markdown table, one row per variant.

    Columns: mean and median point error, share of scans whose mean error is < 2 (mm), SDR@2, fit
    failure (> 3), training seconds, and Spearman rho between ``sigma_p`` and the error for the total,
    aleatoric and epistemic uncertainty ("—" where a variant has no such uncertainty or it is undefined).
    Thresholds are in the errors' unit, which the header names.
    """
    if not results:
        raise ValueError("no result to tabulate")
    units = {r.unit for r in results}
    if len(units) != 1:
        raise ValueError(f"results mix units {sorted(units)}: they cannot share one table")
    u = units.pop()
    header = [
        "variant",
        f"mean {u}",
        f"median {u}",
        f"scans mean < 2 {u}",
        f"SDR@2{u}",
        f"fit failure > 3 {u}",
        "train s",
        "Spearman σp total",
        "Spearman σp aleatoric",
        "Spearman σp epistemic",
    ]
    detected = any(r.num_found != r.num_annotated for r in results)
    if detected:
        header.insert(1, "vertebrae found")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in results:
        s = r.summary
        rho = [num(r.spearman[k].rho if k in r.spearman else float("nan"), "{:+.3f}") for k in SIGMA_KINDS]
        cells = [
            r.variant,
            num(s.get(f"mean_{u}", float("nan"))),
            num(s.get(f"median_{u}", float("nan"))),
            pct(s.get(f"scans_below_2.0{u}", float("nan"))),
            pct(s.get(f"sdr_2.0{u}", float("nan"))),
            pct(s.get(f"fit_failure_3.0{u}", float("nan"))),
            num(r.train_seconds, "{:.0f}"),
            *rho,
        ]
        if detected:
            cells.insert(1, f"{r.num_found}/{r.num_annotated}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_header(
    settings: BenchSettings,
    command: Sequence[str],
    torch_threads: int,
    cores: int,
    num_images: int | None = None,
    num_hard_images: int | None = None,
    num_points: int | None = None,
) -> str:
    """The lines printed above the table: command, threads, cores, settings, test split."""
    lines = [
        f"command: `{shlex.join([str(c) for c in command])}`",
        f"torch threads: {int(torch_threads)}, CPU cores: {int(cores)}",
        f"settings: {settings.describe()}",
    ]
    if num_images is not None:
        extra = f", {num_points} visible points" if num_points is not None else ""
        lines.append(f"test split: {num_images} images ({num_hard_images} generator hard cases){extra}")
    return "\n".join(lines)


def _notes(unit: str, mc_samples: int) -> str:
    return (
        f"Errors on the held-out test split, in {unit}; each point is the mean of T={mc_samples} MC-dropout passes. "
        "Scans: images whose mean point error is < 2; SDR@2: share of points within 2; fit failure: points > 3. "
        "Spearman: rank correlation of the point uncertainty σp and the point error over the visible test points "
        "(Baseline/CBAM predict no variance: epistemic only). train s: wall seconds of the bundle's training run "
        "(per-epoch validation included)."
    )


# ----------------------------------------------------------------------------------------------
# the whole benchmark
# ----------------------------------------------------------------------------------------------
def run_benchmark(
    settings: BenchSettings,
    out_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    variants: Sequence[str] = VARIANTS,
    command: Sequence[str] = (),
    logging_file: str | bool | None = None,
    log: Callable[[str], None] = print,
    detector_dir: str | os.PathLike | None = None,
) -> tuple[str, list[VariantResult]]:
    """Train and evaluate every variant; write ``table.md`` and ``results.json`` to ``out_dir``.

    Args:
        settings: shared budget and data.
        out_dir: one sub-folder per variant (``models/``, ``mlruns/``), plus the report files.
        bundle_root: the bundle folder (``configs/train.json`` ...).
        variants: which variants, in order.
        command: the command line to print with the table.
        logging_file: the bundle's logging config (None: the bundle's ``configs/logging.conf``; False: none).
        log: progress messages.
        detector_dir: a trained vertebra detector's model folder: test boxes come from it (the
            fully automatic setting), for the networks and the mean-shape reference alike.

    Returns:
        ``(report, results)``: the markdown report (header, table, notes) and the per-variant results.
    """
    import torch

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KeyError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labels = split_labels(settings, bundle_root)  # generates the shared set once, outside the timings
    detector = None
    if detector_dir:
        from monai_spine.inference.detector import VertebraDetector

        detector = VertebraDetector.from_checkpoint(detector_dir)
    log(f"[bench] data set ready in {time.perf_counter() - t0:.0f} s; {len(labels)} test images")
    results: list[VariantResult] = []
    for variant in variants:
        run_dir = out / variant
        log(f"[bench] training {variant} ({settings.epochs} epochs) -> {run_dir}")
        seconds = train_variant(settings, variant, run_dir, bundle_root, logging_file)
        log(f"[bench] {variant}: trained in {seconds:.0f} s; evaluating on the test split")
        predictor = bundle_predictor(settings, variant, run_dir, bundle_root)
        t1 = time.perf_counter()
        arrays = evaluate_predictor(predictor, labels, settings.region, detector)
        eval_s = time.perf_counter() - t1
        kinds = SIGMA_KINDS if getattr(predictor.network, "predicts_logvar", False) else ("epistemic",)
        res = variant_result(arrays, variant, kinds, seconds)
        res.eval_seconds = eval_s
        results.append(res)
    if results:
        # the reference row: the mean training shape in each crop, no network
        ref = MeanShapePredictor(bundle_predictor(settings, variants[0], out / variants[0], bundle_root),
                                 split_labels(settings, bundle_root, split="training"), settings.region)
        res = variant_result(evaluate_predictor(ref, labels, settings.region, detector), "mean shape (no network)", (),
                             float("nan"))
        results.append(res)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    header = format_header(
        settings,
        command,
        torch.get_num_threads(),
        cores,
        results[0].num_images,
        results[0].num_hard_images,
        int(results[0].summary.get("count", 0)),
    )
    boxes = f"boxes from the detector {detector_dir}" if detector_dir else "boxes from the annotations (oracle)"
    report = "\n\n".join([header + f"\ntest boxes: {boxes}", format_table(results),
                           _notes(results[0].unit, settings.mc_samples)]) + "\n"
    (out / "table.md").write_text(report, encoding="utf-8")
    record = {
        "command": list(map(str, command)),
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": cores,
        "settings": asdict(settings),
        "results": [r.to_dict() for r in results],
    }
    (out / "results.json").write_text(json.dumps(record, indent=1, allow_nan=False), encoding="utf-8")
    return report, results


def _t95(n: int) -> float:
    """Two-sided 95 % Student t quantile for ``n - 1`` degrees of freedom (n >= 2)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def format_seed_table(per_seed: Sequence[Sequence[VariantResult]]) -> str:
    """Mean and 95 % confidence interval over seeds of each variant's headline numbers.

    Args:
        per_seed: one list of :class:`VariantResult` per seed (same variants, same order).

    Columns: mean error, share of scans with mean error < 2, fit failure > 3, Spearman total, each as
    ``mean ± half-width`` (Student t over the seeds; ``n = 1`` gives the value alone).
    """
    if not per_seed or not per_seed[0]:
        raise ValueError("no result to tabulate")
    u = per_seed[0][0].unit
    n = len(per_seed)

    def agg(values: list[float], pct: bool = False, fmt: str = "{:.3f}") -> str:
        v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
        if v.size == 0:
            return "—"
        k = 100.0 if pct else 1.0
        m = k * v.mean()
        if v.size < 2:
            return (fmt.format(m) + (" %" if pct else ""))
        h = k * _t95(v.size) * v.std(ddof=1) / math.sqrt(v.size)
        return f"{fmt.format(m)} ± {fmt.format(h)}" + (" %" if pct else "")

    header = ["variant", f"mean {u}", f"scans mean < 2 {u}", f"fit failure > 3 {u}", "Spearman σp total", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for j, first in enumerate(per_seed[0]):
        rows = [seed[j] for seed in per_seed]
        rho = [r.spearman["total"].rho if "total" in r.spearman else
               (r.spearman["epistemic"].rho if "epistemic" in r.spearman else float("nan")) for r in rows]
        cells = [
            first.variant,
            agg([r.summary.get(f"mean_{u}", float("nan")) for r in rows]),
            agg([r.summary.get(f"scans_below_2.0{u}", float("nan")) for r in rows], pct=True, fmt="{:.1f}"),
            agg([r.summary.get(f"fit_failure_3.0{u}", float("nan")) for r in rows], pct=True, fmt="{:.2f}"),
            agg(rho, fmt="{:+.3f}"),
            str(n),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_model_folder(
    settings: BenchSettings,
    model_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    detector_dir: str | os.PathLike | None = None,
    command: Sequence[str] = (),
) -> tuple[str, list[VariantResult]]:
    """Evaluate an already trained model folder (e.g. a shipped one) on the settings' test split.

    No training: the model folder's spec builds the predictor; rows for the model and for the mean
    training shape in the same boxes (annotation boxes, or the detector's with ``detector_dir``).
    """
    import torch

    from monai_spine.inference.regressor import KeypointPredictor

    labels = split_labels(settings, bundle_root)
    detector = None
    if detector_dir:
        from monai_spine.inference.detector import VertebraDetector

        detector = VertebraDetector.from_checkpoint(detector_dir)
    # the spec's refine_passes re-cut a detector's boxes into the annotation framing the model learnt;
    # annotation boxes already have it, and re-cutting them around imperfect points only drifts
    extra = {} if detector is not None else {"refine_passes": 0}
    predictor = KeypointPredictor.from_checkpoint(model_dir, num_samples=settings.mc_samples, seed=settings.seed,
                                                  **extra)
    spec = predictor.spec
    arrays = evaluate_predictor(predictor, labels, settings.region, detector)
    kinds = SIGMA_KINDS if getattr(predictor.network, "predicts_logvar", False) else ("epistemic",)
    results = [variant_result(arrays, f"{spec.variant} ({Path(model_dir).name})" if spec else str(model_dir), kinds)]
    unc = uncertainty_table(arrays) if "total" in arrays.sigma else ""
    if predictor.conformal is not None:
        unc += f" (nominal {100 * (1 - predictor.conformal.alpha):.0f} %)"
    ref = MeanShapePredictor(predictor, split_labels(settings, bundle_root, split="training"), settings.region)
    results.append(variant_result(evaluate_predictor(ref, labels, settings.region, detector),
                                  "mean shape (no network)", (), float("nan")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    header = format_header(settings, command, torch.get_num_threads(), cores, results[0].num_images,
                           results[0].num_hard_images, int(results[0].summary.get("count", 0)))
    boxes = (f"boxes from the detector {detector_dir}, crops re-cut {predictor.refine_passes} time(s) around the "
             "predicted points (the spec's refine_passes)" if detector_dir
             else "boxes from the annotations (oracle; no re-cut: refine_passes 0)")
    report = "\n\n".join([header + f"\nmodel: {model_dir} (no training in this run)\ntest boxes: {boxes}",
                           format_table(results), unc, _notes(results[0].unit, settings.mc_samples)]) + "\n"
    return report, results
