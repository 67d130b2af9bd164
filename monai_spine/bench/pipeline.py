"""End-to-end benchmark of the whole-radiograph pipeline (detector -> regressor / heatmap corners).

On ONE shared synthetic cervical set (the same ``synthetic#...`` overrides for every model, so the
seeded 70/15/15 split is identical) the bundle trains, in this process, the vertebra detector
(``train.json`` + ``detector_train.json``), the BayeCBAM regressor (``train.json``) and the heatmap FCN
(``train.json`` + ``heatmap_train.json``). Then:

* **calibration** on the validation split: the whole pipeline (detector first, as on test) predicts the
  validation radiographs in memory; on the found vertebrae, split-conformal radii
  (:class:`~monai_spine.uncertainty.conformal.ConformalCalibrator`, normalised score, alpha 0.1,
  per point type) and uncertainty-class thresholds (``monai-spine calibrate``'s rule) are fitted on the
  regressor's total ``sigma_p`` in mm and on the heatmap corners' ``sigma`` in mm. The same is fitted
  on predictions from ground-truth boxes / centres (an oracle detector) for comparison;
  ``PipelineBenchSettings.calibrate_on`` picks which one the main tables use;
* **evaluation** end to end on the test split with
  :class:`~monai_spine.inference.pipeline.SpinePipeline.predict_file` (read the image, detect,
  crop, MC dropout, map back, write the JSON / markups / overlay), timed per radiograph. Each
  detected vertebra is matched to the annotation by level; it is *found* when its detected centre
  lies inside the annotated box of that level. Detection recall = found / annotated vertebrae;
  point errors are computed over the found vertebrae only (a missed vertebra is not in the error
  statistics, it shows in the recall).

Per model (``regressor``, ``regressor + flip TTA``, ``heatmap (corners)``) the table shows mean /
median point error, share of scans with mean error < 2 mm, SDR@2mm, fit failure > 3 mm, Spearman
(sigma, error), AUSE, conformal coverage and mean radius on the test split, detection recall and
seconds per radiograph; a second table the error per uncertainty class and after referral; a third
the test classes and coverage under each calibration source.

Pieces: :class:`PipelineBenchSettings`, :func:`predict_split` / :func:`collect_points` /
:func:`evaluate_pipeline` (predict and match by level), :func:`fit_calibration`, :func:`model_metrics`
and :func:`calibration_row` (pure: numbers -> row), :func:`format_table`,
:func:`format_uncertainty_table`, :func:`format_calibration_table`, :func:`format_header`,
:func:`run_pipeline_benchmark`.

Why one module: it is one benchmark (scripts/bench_pipeline.py): its settings, the predictions on
one split, their matching by level, the calibration fitted on validation and the three tables that
print them; the tables and the numbers change together.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from monai_spine.bench.tables import num as _num_cell, pct

__all__ = [
    "PipelineBenchSettings",
    "ModelEval",
    "model_metrics",
    "format_table",
    "format_uncertainty_table",
    "format_header",
    "calibrate_conformal",
    "json_safe",
    "CALIBRATION_SOURCES",
    "fit_calibration",
    "predict_split",
    "collect_points",
    "evaluate_pipeline",
    "calibration_row",
    "format_calibration_table",
    "run_pipeline_benchmark",
]


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    """A table cell; +inf shows as ``∞`` (a conformal radius with too few calibration points for alpha)."""
    return _num_cell(v, fmt, show_inf=True)


#: where the validation predictions used for calibration come from
CALIBRATION_SOURCES = ("detected", "annotation")
#: how the tables describe each calibration source
SOURCE_TEXT = {
    "detected": "detected boxes / centres, as on the test split",
    "annotation": "ground-truth boxes / centres",
}


@dataclass
class PipelineBenchSettings:
    """Sizes of the end-to-end benchmark.

    Attributes:
        n, size, hard_case_rate, data_seed, region: the shared synthetic set (square ``size`` px images).
        epochs_detector, epochs_regressor, epochs_heatmap: training epochs of each model.
        detector_spatial: detector network input side (px); detector_features: BasicUNet features.
        regressor_batch, regressor_width, regressor_fc: regressor budget (BenchSettings).
        heatmap_width, heatmap_patches: FCN base width; training patches per image.
        mc_samples: MC-dropout passes T of the regressor.
        alpha: conformal miscoverage.
        flip_tta: also evaluate the regressor with flip test-time augmentation.
        seed: training seed.
        calibrate_on: validation predictions behind the main table's conformal radii and uncertainty
            classes: ``"detected"`` (detector boxes / centres, as on the test split) or ``"annotation"``
            (ground-truth boxes / centres, an oracle detector). Both are fitted and compared in the
            calibration table either way.
    """

    n: int = 60
    size: int = 512
    hard_case_rate: float = 0.3
    data_seed: int = 0
    region: str = "cervical"
    epochs_detector: int = 100
    epochs_regressor: int = 12
    epochs_heatmap: int = 8
    detector_spatial: int = 64
    detector_features: tuple[int, ...] = (8, 8, 16, 32, 64, 8)
    regressor_batch: int = 16
    regressor_width: float = 0.25
    regressor_fc: int = 256
    heatmap_width: int = 8
    heatmap_patches: int = 24
    mc_samples: int = 10
    alpha: float = 0.1
    flip_tta: bool = True
    seed: int = 0
    calibrate_on: str = "detected"

    def __post_init__(self) -> None:
        if self.n < 3:
            raise ValueError(f"n must be >= 3, got {self.n}")
        for k in ("epochs_detector", "epochs_regressor", "epochs_heatmap", "mc_samples"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.calibrate_on not in CALIBRATION_SOURCES:
            raise ValueError(f"calibrate_on must be one of {CALIBRATION_SOURCES}, got {self.calibrate_on!r}")
        self.detector_features = tuple(int(f) for f in self.detector_features)

    def data_overrides(self) -> dict[str, Any]:
        """``synthetic#...`` overrides shared by all three trainings (identical seeded split)."""
        return {
            "region": self.region, "dataset_dir": "", "max_cases": None,
            "synthetic#n": int(self.n), "synthetic#seed": int(self.data_seed),
            "synthetic#hard_case_rate": float(self.hard_case_rate), "synthetic#size": [int(self.size), int(self.size)],
        }

    def regressor_settings(self) -> Any:
        """The :class:`~monai_spine.bench.regressor.BenchSettings` of the BayeCBAM regressor."""
        from monai_spine.bench.regressor import BenchSettings

        return BenchSettings(n=self.n, size=self.size, epochs=self.epochs_regressor, batch_size=self.regressor_batch,
                             width=self.regressor_width, fc_features=self.regressor_fc,
                             hard_case_rate=self.hard_case_rate, mc_samples=self.mc_samples, seed=self.seed,
                             data_seed=self.data_seed, region=self.region)

    def describe(self) -> str:
        """One-line summary."""
        return (
            f"region={self.region}, n={self.n} synthetic images {self.size}x{self.size} px "
            f"(hard_case_rate={self.hard_case_rate:g}, data_seed={self.data_seed}, split 70/15/15); "
            f"detector {self.epochs_detector} epochs, input {self.detector_spatial} px, features "
            f"{'-'.join(map(str, self.detector_features))}; regressor bayecbam {self.epochs_regressor} epochs, "
            f"batch {self.regressor_batch}, width {self.regressor_width:g}, fc {self.regressor_fc}, "
            f"MC dropout T={self.mc_samples}; heatmap FCN {self.epochs_heatmap} epochs, width {self.heatmap_width}, "
            f"{self.heatmap_patches} patches/image; conformal alpha={self.alpha:g} and uncertainty classes fitted on "
            f"the validation split ({SOURCE_TEXT[self.calibrate_on]}); seed={self.seed}"
        )


@dataclass
class ModelEval:
    """Per-point results of one model on the test split (found vertebrae only).

    Attributes:
        model: row name.
        errors: (M,) point errors (mm; NaN: invisible point).
        sigma: (M,) the model's uncertainty of each point (mm).
        image_ids: (M,) image index of each point.
        point_types: (M,) point type of each point.
        found, annotated: vertebrae found by the detector / annotated (for the recall).
        seconds: (num_images,) end-to-end seconds per radiograph.
    """

    model: str
    errors: np.ndarray
    sigma: np.ndarray
    image_ids: np.ndarray
    point_types: np.ndarray
    found: int = 0
    annotated: int = 0
    seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))


def model_metrics(ev: ModelEval, conformal: Any = None, unit: str = "mm", thresholds: Any = None) -> dict[str, Any]:
    """The table row of one model: error summary, uncertainty quality, conformal coverage, timing.

    Args:
        ev: the model's points.
        conformal: a fitted :class:`~monai_spine.uncertainty.conformal.ConformalCalibrator` or None.
        unit: unit of the errors.
        thresholds: uncertainty-class thresholds fitted on the validation split (sigma in mm), or None;
            with them the row also holds ``classes`` (per-class count and mean error).

    Returns:
        dict with ``model``, ``mean``, ``median``, ``scans_below_2``, ``sdr_2``, ``fit_failure_3``
        (fractions), ``spearman``, ``ause``, ``coverage``, ``nominal``, ``mean_radius``, ``recall``,
        ``found``, ``annotated``, ``s_per_image``, ``count`` and the full ``summary``.
    """
    from monai_spine.metrics.keypoint_error import summarize_errors
    from monai_spine.uncertainty.quality import conformal_coverage, sparsification, spearman

    e = np.asarray(ev.errors, np.float64).reshape(-1)
    s = np.asarray(ev.sigma, np.float64).reshape(-1)
    ids = np.asarray(ev.image_ids).reshape(-1)
    if e.shape != s.shape or e.shape != ids.shape:
        raise ValueError(f"{ev.model}: errors {e.shape}, sigma {s.shape} and image_ids {ids.shape} differ in shape")
    summary = summarize_errors(e, image_ids=ids, unit=unit)
    nan = float("nan")
    row: dict[str, Any] = {
        "model": ev.model,
        "count": int(summary.get("count", 0)),
        "mean": summary.get(f"mean_{unit}", nan),
        "median": summary.get(f"median_{unit}", nan),
        "scans_below_2": summary.get(f"scans_below_2.0{unit}", nan),
        "sdr_2": summary.get(f"sdr_2.0{unit}", nan),
        "fit_failure_3": summary.get(f"fit_failure_3.0{unit}", nan),
        "spearman": spearman(e, s)["rho"],
        "ause": sparsification(e, s)["ause"],
        "coverage": nan, "nominal": nan, "mean_radius": nan,
        "found": int(ev.found), "annotated": int(ev.annotated),
        "recall": ev.found / ev.annotated if ev.annotated else nan,
        "s_per_image": float(np.mean(ev.seconds)) if np.size(ev.seconds) else nan,
        "summary": summary,
    }
    if conformal is not None:
        cov = conformal_coverage(e, s, conformal, np.asarray(ev.point_types).reshape(-1))
        row.update(coverage=cov["coverage"], nominal=cov["nominal"], mean_radius=cov["mean_radius"])
    from monai_spine.uncertainty.quality import errors_per_class, referral_curve

    ref = referral_curve(e, s, fractions=REFERRAL_FRACTIONS)
    row["referral_mean"] = {f"{100 * f:g}": float(m) for f, m in zip(ref["fractions"], ref["mean_error"])}
    if thresholds is not None:
        per = errors_per_class(e, s, thresholds, np.asarray(ev.point_types).reshape(-1))
        row["classes"] = {k: {"count": v["count"], "mean": v["mean"]} for k, v in per.items()}
    return row


#: shares of the most uncertain points referred to a human in the referral columns
REFERRAL_FRACTIONS = (0.0, 0.1, 0.2)


def format_uncertainty_table(rows: Sequence[dict[str, Any]], unit: str = "mm") -> str:
    """Markdown table of error per uncertainty class and mean error after referral, one row per model."""
    from monai_spine.uncertainty.classes import CLASS_NAMES

    header = ["model"] + [f"{c} n / mean {unit}" for c in CLASS_NAMES]
    header += [f"mean {unit}, {100 * f:g} % referred" for f in REFERRAL_FRACTIONS[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        cells = [str(r["model"])]
        for c in CLASS_NAMES:
            v = r.get("classes", {}).get(c)
            cells.append("—" if v is None else f"{int(v['count'])} / {_num(v['mean'])}")
        cells += [_num(r.get("referral_mean", {}).get(f"{100 * f:g}", float("nan"))) for f in REFERRAL_FRACTIONS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


UNCERTAINTY_NOTES = (
    "Uncertainty classes: tau1/tau2 fitted on the validation split ({source}; sigma in mm, the calibrate rule: "
    "90 % of a class within 1.5 / 2.0 mm, with 95 % one-sided confidence), then applied to the test split; "
    "n / mean: points of the class and their mean error. Referral: mean error of the points kept after "
    "the given share of the most uncertain points is referred to a human."
)


def calibration_row(ev: ModelEval, kind: str, source: str, cal: dict[str, Any]) -> dict[str, Any]:
    """One row of the calibration comparison: a model's test points under one validation calibration.

    Args:
        ev: the model's test points.
        kind: ``"regressor"`` or ``"heatmap"``.
        source: calibration source (one of :data:`CALIBRATION_SOURCES`).
        cal: :func:`fit_calibration` output of that source.

    Returns:
        dict with ``model``, ``kind``, ``source``, ``val_n``, ``val_mean`` (mm), ``thresholds`` (dict or
        None), ``classes`` (per class ``count`` / ``mean`` on test), ``coverage``, ``nominal``, ``mean_radius``.
    """
    if source not in CALIBRATION_SOURCES:
        raise ValueError(f"source must be one of {CALIBRATION_SOURCES}, got {source!r}")
    row = model_metrics(ev, cal["conformal"], thresholds=cal["thresholds"])
    thr = cal["thresholds"]
    return {"model": ev.model, "kind": kind, "source": source, "val_n": int(cal["n"]), "val_mean": cal["mean"],
            "thresholds": None if thr is None else thr.to_dict(), "classes": row.get("classes", {}),
            "coverage": row["coverage"], "nominal": row["nominal"], "mean_radius": row["mean_radius"]}


def _taus(thr: dict[str, Any] | None) -> str:
    """``tau1 / tau2`` (mm) of a thresholds dict; per point type where a type's pair differs."""
    if thr is None:
        return "—"

    def pair(a: float, b: float) -> str:
        if b - a <= 1e-9 * max(1.0, abs(a)):  # the rule left no moderate class (tau2 is the next float)
            return f"{_num(a)} / = tau1"
        return f"{_num(a)} / {_num(b)}"

    default = (float(thr["tau1"]), float(thr["tau2"]))
    per = {k: tuple(float(x) for x in v) for k, v in (thr.get("per_point_type") or {}).items()}
    if all(np.allclose(v, default) for v in per.values()):
        return pair(*default)
    return "; ".join(f"{k}: {pair(*v)}" for k, v in per.items())


def format_calibration_table(rows: Sequence[dict[str, Any]], unit: str = "mm") -> str:
    """Markdown table comparing calibration sources (rows from :func:`calibration_row`)."""
    from monai_spine.uncertainty.classes import CLASS_NAMES

    header = ["model", "calibrated on (validation)", f"validation points (mean {unit})", f"tau1 / tau2 {unit}"]
    header += [f"test {c} n / mean {unit}" for c in CLASS_NAMES] + ["test conformal coverage", f"mean radius {unit}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for r in rows:
        cov = pct(r.get("coverage"))
        if cov != "—" and r.get("nominal") is not None and math.isfinite(float(r["nominal"])):
            cov += f" (nominal {100 * float(r['nominal']):.0f} %)"
        cells = [str(r["model"]), SOURCE_TEXT.get(r["source"], str(r["source"])).split(",")[0],
                 f"{int(r['val_n'])} ({_num(r.get('val_mean'))})", _taus(r.get("thresholds"))]
        for c in CLASS_NAMES:
            v = (r.get("classes") or {}).get(c)
            cells.append("—" if v is None else f"{int(v['count'])} / {_num(v['mean'])}")
        cells += [cov, _num(r.get("mean_radius"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CALIBRATION_NOTES = (
    "Calibration source: the same test points under thresholds and conformal radii fitted on validation "
    "predictions made from detected boxes / centres (the detector the test split uses) or from ground-truth "
    "ones (an oracle detector). A calibration transfers when the test classes and coverage keep the promise made "
    "on validation."
)


def format_table(rows: Sequence[dict[str, Any]], unit: str = "mm") -> str:
    """Markdown table, one row per model (rows from :func:`model_metrics`)."""
    if not rows:
        raise ValueError("no row to tabulate")
    u = unit
    header = ["model", "detection recall", f"mean {u}", f"median {u}", f"scans < 2 {u}", f"SDR@2{u}",
              f"fit failure > 3 {u}", "Spearman σ", f"AUSE {u}", "conformal coverage", f"mean radius {u}",
              "s / radiograph"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        cov = pct(r.get("coverage"))
        if cov != "—" and r.get("nominal") is not None and math.isfinite(float(r["nominal"])):
            cov += f" (nominal {100 * float(r['nominal']):.0f} %)"
        cells = [
            str(r["model"]), f"{pct(r.get('recall'))} ({r.get('found', 0)}/{r.get('annotated', 0)})",
            _num(r.get("mean")), _num(r.get("median")), pct(r.get("scans_below_2")), pct(r.get("sdr_2")),
            pct(r.get("fit_failure_3")), _num(r.get("spearman"), "{:+.3f}"), _num(r.get("ause"), "{:.3f}"),
            cov, _num(r.get("mean_radius")), _num(r.get("s_per_image"), "{:.2f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_header(settings: PipelineBenchSettings, command: Sequence[str], torch_threads: int, cores: int,
                  num_test: int | None = None, num_val: int | None = None) -> str:
    """Lines above the table: command, threads, cores, settings, splits."""
    lines = [
        f"command: `{shlex.join([str(c) for c in command])}`",
        f"torch threads: {int(torch_threads)}, CPU cores: {int(cores)}",
        f"settings: {settings.describe()}",
    ]
    if num_test is not None:
        lines.append(f"test split: {num_test} radiographs; calibration (validation split): {num_val} radiographs")
    return "\n".join(lines)


NOTES = (
    "End to end on the held-out test split: each radiograph is read from disk, the detector finds the levels, the "
    "regressor predicts from the detected boxes (MC dropout) and the heatmap model its corners from the detected "
    "centres; the JSON, Slicer markups and overlay are written; s / radiograph is that wall time. A detected "
    "vertebra is found when its centre lies inside the annotated box of its level; detection recall = found / "
    "annotated; point errors are over the found vertebrae only (the regressor: all visible points; heatmap: the four "
    "body corners). Scans < 2: images whose mean point error is < 2 mm; SDR@2: points within 2 mm; fit failure: "
    "points > 3 mm. Spearman and AUSE (sparsification, Ilg et al. 2018): the model's sigma (regressor: total "
    "sigma_p in mm; heatmap: corner sigma in mm) against the point error. Conformal: split-conformal radii "
    "(normalised score, per point type) fitted on the validation split ({source}), coverage and mean radius on the "
    "test split."
)


# ----------------------------------------------------------------------------------------------
# calibration and evaluation helpers
# ----------------------------------------------------------------------------------------------
def calibrate_conformal(errors: Any, sigma: Any, point_types: Any, alpha: float, unit: str = "mm") -> Any:
    """Split-conformal calibrator (normalised score, per point type) or None when no point is usable.

    ``unit`` is that of both errors and sigma (``"mm"``, or ``"px"`` for images of unknown spacing).
    """
    from monai_spine.uncertainty.conformal import ConformalCalibrator

    try:
        return ConformalCalibrator.fit(np.asarray(errors, np.float64), np.asarray(sigma, np.float64),
                                       np.asarray(point_types), alpha=alpha, score="normalized",
                                       sigma_units=unit, error_unit=unit)
    except ValueError:
        return None


def json_safe(v: Any) -> Any:
    """``v`` with numpy scalars made Python numbers and non-finite floats made None (for strict JSON)."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _read(label: str) -> tuple[Any, Any, Any]:
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.readers import read_xray

    ann = read_annotation(label)
    override = ann.spacing_override_mm
    return ann, override, read_xray(ann.image, spacing_mm=override)


def _gt(ann: Any, levels: Sequence[str]) -> dict[str, int]:
    return {lev: j for j, lev in enumerate(ann.levels) if lev in levels and ann.visible[j].any()}


def _dist_mm(pred: np.ndarray, gt: np.ndarray, sp: Sequence[float]) -> np.ndarray:
    d = np.asarray(pred, np.float64) - np.asarray(gt, np.float64)
    return np.hypot(d[..., 0] * sp[0], d[..., 1] * sp[1])


def _heatmap_val(corner_predictor: Any, labels: Sequence[str], region: str) -> tuple[np.ndarray, np.ndarray]:
    """Corner errors and sigma (mm) on annotated images from **ground-truth** centres.

    The ``"annotation"`` calibration source (an oracle detector); the benchmark's default calibrates on
    detected centres instead (:func:`predict_split` + :func:`collect_points`), as on the test split.
    """
    from monai_spine.data.keypoints import get_region, get_scheme
    from monai_spine.codecs.detection import vertebra_centres_px

    levels = get_region(region).levels
    idx = list(get_scheme(corner_predictor.spec.scheme).corner_indices)
    errs, sigs = [], []
    for label in labels:
        ann, _, img = _read(label)
        keep = list(_gt(ann, levels).values())
        if len(keep) < 2 or img.spacing_mm is None:
            continue
        centres = vertebra_centres_px(ann.keypoints_px, ann.visible, ann.scheme, boxes_px=ann.boxes_px)[keep]
        pred = corner_predictor.predict(img.channel_first(), centres, img.spacing_mm, img.spacing_source,
                                        levels=[ann.levels[j] for j in keep])
        js = corner_predictor.to_json(pred)
        for v, j in zip(js["vertebrae"], keep):
            for c, cor in enumerate(v["corners"]):
                k = idx[c]
                if not ann.visible[j, k]:
                    continue
                if cor["x_px"] is None:
                    errs.append(float("inf")), sigs.append(float("nan"))
                    continue
                errs.append(float(_dist_mm(np.array([cor["x_px"], cor["y_px"]]), ann.keypoints_px[j, k],
                                           img.spacing_mm)))
                sigs.append(float("nan") if cor["sigma_mm"] is None else float(cor["sigma_mm"]))
    return np.asarray(errs), np.asarray(sigs)


def predict_split(pipeline: Any, labels: Sequence[str], out_dir: str | os.PathLike | None = None
                  ) -> tuple[list[tuple[Any, dict[str, Any]]], np.ndarray]:
    """Run the whole pipeline (detector first) on every radiograph of ``labels``, timed.

    Args:
        pipeline: a :class:`~monai_spine.inference.pipeline.SpinePipeline`.
        labels: annotation files (each names its image).
        out_dir: where ``pipeline.predict_file`` writes the JSON / markups / overlay of each radiograph;
            None predicts in memory (``predict_image``, nothing written; used for the calibration split).

    Returns:
        ``(records, seconds)``: one ``(annotation, result JSON)`` per radiograph, and ``(num_images,)``
        wall seconds of each prediction (reading the image included when ``out_dir`` is given).
    """
    records, seconds = [], []
    for label in labels:
        ann, override, img = _read(label)
        t0 = time.perf_counter()
        if out_dir is None:
            res = pipeline.predict_image(img.channel_first(), img.spacing_mm, img.spacing_source,
                                         name=str(ann.image))[0]
        else:
            res = pipeline.predict_file(ann.image, out_dir, spacing_mm=override).result
        seconds.append(time.perf_counter() - t0)
        records.append((ann, res))
    return records, np.asarray(seconds, np.float64)


def collect_points(records: Sequence[tuple[Any, dict[str, Any]]], model: str, region: str, name: str,
                   seconds: Any = ()) -> ModelEval:
    """Match each radiograph's detected vertebrae to its annotation by level and collect the point errors.

    A detected vertebra is *found* when its detected centre lies inside the annotated box of its level;
    only found vertebrae contribute points.

    Args:
        records: ``(annotation, result JSON)`` per radiograph (from :func:`predict_split`); the position is
            the image index.
        model: ``"regressor"`` (points and total sigma_p in mm) or ``"heatmap"`` (the four corners and
            their sigma in mm).
        region: evaluated region.
        name: row name.
        seconds: per-radiograph wall seconds, kept in the result.

    Raises:
        ValueError: unknown ``model``, or a radiograph without spacing (errors are in mm only).
    """
    from monai_spine.data.keypoints import get_region, get_scheme

    if model not in ("regressor", "heatmap"):
        raise ValueError(f"model must be 'regressor' or 'heatmap', got {model!r}")
    levels = get_region(region).levels
    errs, sigs, ids, types = [], [], [], []
    found = annotated = 0
    for i, (ann, res) in enumerate(records):
        scheme = get_scheme(ann.scheme)
        sp = res.get("spacing_mm")
        if sp is None:
            raise ValueError(f"{ann.image}: spacing unknown; the benchmark reports errors in mm only")
        gt = _gt(ann, levels)
        annotated += len(gt)
        boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
        for v in res["vertebrae"]:
            j = gt.get(str(v["level"]))
            if j is None:
                continue
            cx, cy = v["centre_px"]
            b = boxes[j]
            if not (b[0] <= cx <= b[2] and b[1] <= cy <= b[3]):
                continue
            found += 1
            if model == "regressor":
                pts = [(k, p["x_px"], p["y_px"], p.get("sigma_p_total_mm")) for k, p in enumerate(v["points"])]
            else:
                corners = v.get("corners") or []
                pts = [(scheme.corner_indices[c], q["x_px"], q["y_px"], q.get("sigma_mm"))
                       for c, q in enumerate(corners)]
            for k, x, y, s in pts:
                if not ann.visible[j, k]:
                    continue
                e = float("inf") if x is None else float(_dist_mm(np.array([x, y]), ann.keypoints_px[j, k], sp))
                errs.append(e)
                sigs.append(float("nan") if s is None else float(s))
                ids.append(i)
                types.append(scheme.point_types[k])
    return ModelEval(name, np.asarray(errs, np.float64), np.asarray(sigs, np.float64), np.asarray(ids, np.int64),
                     np.asarray(types, dtype=object), found, annotated, np.asarray(seconds, np.float64))


def evaluate_pipeline(pipeline: Any, labels: Sequence[str], out_dir: str | os.PathLike | None, model: str,
                      region: str, name: str) -> ModelEval:
    """:func:`predict_split` then :func:`collect_points`: one model's found points on ``labels``.

    Args:
        pipeline: a :class:`~monai_spine.inference.pipeline.SpinePipeline`.
        labels: annotation files.
        out_dir: where the pipeline writes its outputs (None: in memory, nothing written).
        model: ``"regressor"`` or ``"heatmap"``.
        region: evaluated region.
        name: row name.
    """
    records, seconds = predict_split(pipeline, labels, out_dir)
    return collect_points(records, model, region, name, seconds)


def fit_calibration(errors: Any, sigma: Any, point_types: Any, alpha: float) -> dict[str, Any]:
    """Conformal radii and uncertainty-class thresholds (sigma in mm) fitted on one set of validation points.

    Args:
        errors, sigma: flat validation errors and sigma (mm).
        point_types: flat point types (per-type conformal quantiles and tau pairs).
        alpha: conformal miscoverage.

    Returns:
        ``{"conformal": ConformalCalibrator | None, "thresholds": Thresholds | None (None: no point with a
        finite sigma), "n": points, "mean": mean finite error (mm)}``.
    """
    from monai_spine.uncertainty.thresholds import DEFAULT_CONFIDENCE, fit_thresholds

    e = np.asarray(errors, np.float64).reshape(-1)
    s = np.asarray(sigma, np.float64).reshape(-1)
    t = np.broadcast_to(np.asarray(point_types, dtype=object), e.shape)
    if s.shape != e.shape:
        raise ValueError(f"fit_calibration: errors {e.shape} and sigma {s.shape} differ in shape")
    fin = e[np.isfinite(e)]
    try:
        thr = fit_thresholds(e, s, t, units="mm", confidence=DEFAULT_CONFIDENCE)
    except ValueError:  # no validation point with a finite sigma
        thr = None
    return {"conformal": calibrate_conformal(e, s, t, alpha), "thresholds": thr,
            "n": int(e.size), "mean": float(fin.mean()) if fin.size else float("nan")}


def _val_interval(epochs: int, wanted: int) -> int:
    return next(d for d in range(max(min(wanted, epochs), 1), 0, -1) if epochs % d == 0)


# ----------------------------------------------------------------------------------------------
# the whole benchmark
# ----------------------------------------------------------------------------------------------
def run_pipeline_benchmark(
    settings: PipelineBenchSettings,
    out_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    command: Sequence[str] = (),
    logging_file: str | bool | None = None,
    log: Callable[[str], None] = print,
) -> tuple[str, list[dict[str, Any]]]:
    """Train the three models, calibrate on validation, evaluate end to end on test; write ``table.md`` and
    ``results.json`` into ``out_dir``. Returns ``(report, rows)``."""
    import torch
    from monai.bundle import run

    from monai_spine.bench.regressor import bundle_predictor, evaluate_predictor, split_labels, train_variant
    from monai_spine.inference.detector import VertebraDetector
    from monai_spine.inference.heatmap import CornerPredictor
    from monai_spine.inference.pipeline import SpinePipeline

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle_root).resolve()
    cfg = bundle / "configs"
    meta = str(cfg / "metadata.json")
    reg = settings.regressor_settings()
    t0 = time.perf_counter()
    test = split_labels(reg, bundle, "test")
    val = split_labels(reg, bundle, "validation")
    log(f"[bench] data ready in {time.perf_counter() - t0:.0f} s: {len(val)} validation, {len(test)} test images")
    times: dict[str, float] = {}

    # detector
    det_dir = out / "detector"
    ov = {**settings.data_overrides(), "bundle_root": str(bundle), "ckpt_dir": str(det_dir / "models"),
          "mlflow_dir": str(det_dir / "mlruns"), "output_dir": str(det_dir / "eval"),
          "epochs": settings.epochs_detector, "batch_size": 4, "val_batch_size": 4, "learning_rate": 2e-3,
          "val_interval": _val_interval(settings.epochs_detector, 50), "seed": settings.seed,
          "detector#spatial_size": [settings.detector_spatial] * 2,
          "detector#features": list(settings.detector_features), "detector#sigma_px": 1.5}
    log(f"[bench] training the detector ({settings.epochs_detector} epochs)")
    t0 = time.perf_counter()
    run(run_id="training", meta_file=meta, config_file=[str(cfg / "train.json"), str(cfg / "detector_train.json")],
        logging_file=logging_file, **ov)
    times["detector_train_s"] = time.perf_counter() - t0
    detector = VertebraDetector.from_checkpoint(det_dir / "models")

    # regressor
    log(f"[bench] training the bayecbam regressor ({settings.epochs_regressor} epochs)")
    times["regressor_train_s"] = train_variant(reg, "bayecbam", out / "regressor", bundle, logging_file)
    regressor = bundle_predictor(reg, "bayecbam", out / "regressor", bundle)

    # heatmap FCN
    hm_dir = out / "heatmap"
    ov = {**settings.data_overrides(), "bundle_root": str(bundle), "ckpt_dir": str(hm_dir / "models"),
          "mlflow_dir": str(hm_dir / "mlruns"), "output_dir": str(hm_dir / "eval"),
          "epochs": settings.epochs_heatmap, "batch_size": 4, "fcn_width": settings.heatmap_width,
          "learning_rate": 1e-3, "val_interval": _val_interval(settings.epochs_heatmap, 10), "seed": settings.seed,
          "patches#per_image": settings.heatmap_patches}
    log(f"[bench] training the heatmap FCN ({settings.epochs_heatmap} epochs)")
    t0 = time.perf_counter()
    run(run_id="training", meta_file=meta, config_file=[str(cfg / "train.json"), str(cfg / "heatmap_train.json")],
        logging_file=logging_file, **ov)
    times["heatmap_train_s"] = time.perf_counter() - t0
    corners = CornerPredictor.from_ckpt_dir(hm_dir / "models")

    # calibration on the validation split: detected boxes / centres (as on test) and, for comparison,
    # ground-truth ones (an oracle detector)
    log("[bench] calibrating on the validation split (detected and annotated vertebrae)")
    records, _ = predict_split(SpinePipeline(detector, regressor, corners, overlays=False), val, None)
    val_points: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"detected": {}, "annotation": {}}
    for kind in ("regressor", "heatmap"):
        ev = collect_points(records, kind, settings.region, kind)
        val_points["detected"][kind] = (ev.errors, ev.sigma, ev.point_types)
    va = evaluate_predictor(regressor, val, settings.region)
    if va.unit != "mm" or "total" not in va.sigma:
        raise ValueError("validation split: spacing unknown or no total sigma_p; cannot calibrate in mm")
    ptypes = np.broadcast_to(np.asarray(va.point_types, dtype=object), va.errors.shape)
    keep = ~np.isnan(va.errors)
    val_points["annotation"]["regressor"] = (va.errors[keep], va.sigma["total"][keep], ptypes[keep])
    he, hs = _heatmap_val(corners, val, settings.region)
    val_points["annotation"]["heatmap"] = (he, hs, np.full(he.shape, "corner", dtype=object))
    cals = {src: {kind: fit_calibration(*pts, settings.alpha) for kind, pts in by_kind.items()}
            for src, by_kind in val_points.items()}
    main = cals[settings.calibrate_on]
    regressor.conformal = main["regressor"]["conformal"]
    if main["regressor"]["thresholds"] is not None:
        regressor.thresholds = main["regressor"]["thresholds"]  # the written JSON carries the fitted classes

    # end to end on the test split
    rows: list[dict[str, Any]] = []
    configs = [("regressor (bayecbam)", "regressor", SpinePipeline(detector, regressor))]
    if settings.flip_tta:
        flipped = copy.copy(regressor)
        flipped.flip_tta = True
        configs.append(("regressor + flip TTA", "regressor", SpinePipeline(detector, flipped)))
    configs.append(("heatmap (corners only)", "heatmap", SpinePipeline(detector, None, corners)))
    evals = {}
    for i, (name, kind, pipe) in enumerate(configs):
        log(f"[bench] end to end on {len(test)} test radiographs: {name}")
        ev = evaluate_pipeline(pipe, test, out / "predictions" / f"model{i}", kind, settings.region, name)
        evals[name] = (kind, ev)
        # flip TTA: the same (non-TTA) calibration, so its coverage shows the shift
        rows.append(model_metrics(ev, main[kind]["conformal"], thresholds=main[kind]["thresholds"]))
    comparison = [
        calibration_row(ev, kind, src, cals[src][kind])
        for name, (kind, ev) in evals.items() if "flip" not in name for src in CALIBRATION_SOURCES
    ]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    header = format_header(settings, command, torch.get_num_threads(), cores, len(test), len(val))
    timing = ", ".join(f"{k} {v:.0f}" for k, v in times.items())
    report = "\n\n".join([header, f"training wall seconds: {timing}", format_table(rows),
                            NOTES.format(source=SOURCE_TEXT[settings.calibrate_on]), format_uncertainty_table(rows),
                            UNCERTAINTY_NOTES.format(source=SOURCE_TEXT[settings.calibrate_on]),
                            format_calibration_table(comparison), CALIBRATION_NOTES]) + "\n"
    (out / "table.md").write_text(report, encoding="utf-8")

    record = {
        "command": list(map(str, command)), "torch_threads": torch.get_num_threads(), "cpu_cores": cores,
        "settings": asdict(settings), "train_seconds": times, "num_test": len(test), "num_validation": len(val),
        "calibrate_on": settings.calibrate_on,
        "calibration": {src: {kind: {"n": c["n"], "mean_mm": c["mean"],
                                     "conformal": None if c["conformal"] is None else c["conformal"].to_dict(),
                                     "thresholds": None if c["thresholds"] is None else c["thresholds"].to_dict()}
                              for kind, c in by_kind.items()} for src, by_kind in cals.items()},
        "rows": rows, "calibration_comparison": comparison,
    }
    (out / "results.json").write_text(json.dumps(json_safe(record), indent=1, allow_nan=False), encoding="utf-8")
    return report, rows
