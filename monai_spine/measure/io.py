"""Read keypoint files and write measurements as JSON and CSV (the files of ``monai-spine measure``).

Measuring is :mod:`monai_spine.measure.measurements`; the batch over files is
:func:`monai_spine.measure.batch.measure_files`.

Inputs (one JSON file per radiograph, the kind is detected from the content):

* **prediction** files of every producer, read by :func:`monai_spine.data.prediction.read_prediction`:
  ``monai-spine predict`` (``--model regressor``, ``heatmap`` or ``both``), ``monai-spine corners``
  and the bundle's inference (``KeypointPredictor.to_json``). A file holding both models' points
  (``--model both``) gives two cases, one per model (``"model"`` in each case, ``source`` in the CSV
  ends in `` [heatmap]`` for the heatmap's); predicted points without coordinates are named in the
  case's notes and on stderr, never measured as 0;
* **annotation** files in the ``monai-spine-keypoints`` format
  (:func:`monai_spine.data.annotation.read_annotation`).

Point uncertainty for the Monte-Carlo propagation (:mod:`monai_spine.measure.uncertainty`) comes
from, in this order: the ``sigma_px`` argument (one number for every point and axis); a prediction
point's ``sigma_p_<kind>_px`` (if a producer writes it); its ``sigma_p_<kind>_mm`` converted with
the image spacing, per axis ``sigma_p / sqrt(2) / s``. A prediction with unknown spacing only has
``sigma_p`` in crop fractions, which cannot be turned into image pixels from the file alone: its
measurements are then reported without uncertainty (a note says so) unless ``sigma_px`` is given.

Outputs (in the folder ``out``, written atomically): ``measurements.json`` (format
``monai-spine-measurements``, version 1) and ``measurements.csv`` (one row per measurement; columns
:data:`CSV_COLUMNS`). Lengths are in mm when the image
spacing is known; otherwise they are in pixels and their names end in ``_px``; angles and shares
never depend on the spacing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_spine.data.annotation import (
    FORMAT_NAME,
    AnnotationError,
    SpineAnnotation,
    atomic_write_text,
    read_annotation,
)
from monai_spine.data.keypoints import get_region
from monai_spine.data.prediction import (
    CORNERS_FORMAT,
    PREDICTION_FORMAT,
    Prediction,
    PredictionError,
    is_prediction,
    prediction_from_dict,
)
from monai_spine.measure.cobb import COBB_ANGLE_NAMES
from monai_spine.measure.uncertainty import sigma_p_to_axis

__all__ = [
    "MEASUREMENTS_FORMAT",
    "MEASUREMENTS_VERSION",
    "CSV_COLUMNS",
    "KeypointRecord",
    "read_keypoint_file",
    "read_keypoint_records",
    "record_from_annotation",
    "results_to_rows",
    "write_measurements",
    "json_safe",
    "NON_KEYPOINT_FILES",
    "SIGMA_KINDS",
]

MEASUREMENTS_FORMAT = "monai-spine-measurements"
MEASUREMENTS_VERSION = 1
#: columns of ``measurements.csv``
CSV_COLUMNS = (
    "source",
    "view",
    "region",
    "group",
    "item",
    "measurement",
    "unit",
    "value",
    "mean",
    "std",
    "ci_low",
    "ci_high",
)
#: prediction uncertainties a measurement can propagate
SIGMA_KINDS = ("total", "aleatoric", "epistemic")


@dataclass
class KeypointRecord:
    """The keypoints of one radiograph as read for measuring.

    Attributes:
        source: the file it came from.
        kind: ``"prediction"`` or ``"annotation"``.
        levels: N level names.
        keypoints_px: (N, K, 2) pixels.
        visible: (N, K) mask.
        scheme: ``lateral5`` or ``ap4``.
        region: ``cervical``, ``lumbar``, ``ap``, or None when it cannot be told.
        spacing_mm: (sx, sy) or None.
        spacing_source: where the spacing came from.
        image: image path or None.
        image_size: (W, H) or None.
        sigma_px: (N, K, 2) per-axis point sigma in pixels, or None.
        sigma_source: what ``sigma_px`` was made from.
        meta: the file's meta (annotations) or run information (predictions; ``read_notes``:
            what the reader left out, e.g. points without coordinates).
        model: the prediction's model (``"regressor"`` / ``"heatmap"``), None for an annotation.
    """

    source: str
    kind: str
    levels: list[str]
    keypoints_px: np.ndarray
    visible: np.ndarray
    scheme: str
    region: str | None
    spacing_mm: tuple[float, float] | None
    spacing_source: str
    image: str | None = None
    image_size: tuple[int, int] | None = None
    sigma_px: np.ndarray | None = None
    sigma_source: str = "none"
    meta: dict[str, Any] = field(default_factory=dict)
    model: str | None = None

    @property
    def view(self) -> str:
        """``"ap"`` for the ap4 scheme, else ``"lateral"``."""
        return "ap" if self.scheme == "ap4" else "lateral"


def _infer_region(scheme: str, levels: Sequence[str]) -> str | None:
    if scheme == "ap4":
        return "ap"
    for name in ("cervical", "lumbar"):
        if levels and all(lev in get_region(name).levels for lev in levels):
            return name
    return None


def record_from_annotation(ann: SpineAnnotation, source: str = "annotation") -> KeypointRecord:
    """A :class:`KeypointRecord` of an annotation (no point sigma)."""
    return KeypointRecord(
        source=str(source),
        kind="annotation",
        levels=list(ann.levels),
        keypoints_px=np.asarray(ann.keypoints_px, dtype=np.float64),
        visible=np.asarray(ann.visible, dtype=bool),
        scheme=ann.scheme,
        region=ann.region,
        spacing_mm=None if ann.spacing_mm is None else (float(ann.spacing_mm[0]), float(ann.spacing_mm[1])),
        spacing_source=ann.spacing_source,
        image=ann.image,
        image_size=None if ann.image_size is None else (int(ann.image_size[0]), int(ann.image_size[1])),
        meta=dict(ann.meta),
    )


def _record_from_prediction(pred: Prediction, model: str | None, sigma_kind: str) -> KeypointRecord:
    """The :class:`KeypointRecord` of one point set of a :class:`~monai_spine.data.prediction.Prediction`.

    Raises:
        PredictionError: the file holds no such points, no level names, or no finite point at all.
    """
    source = pred.source
    ps = pred.point_set(model)
    if any(lev is None for lev in pred.levels):
        raise PredictionError(f"{source}: vertebrae have no level names (give --levels to monai-spine corners)")
    found = ps.found
    if not found.any():
        why = "no vertebra was found" if not pred.levels else "every coordinate is null or NaN"
        raise PredictionError(f"{source}: nothing to measure in the {ps.model} points ({why})")
    notes: list[str] = []
    if pred.inferred is not None and pred.inferred.any():
        names = ", ".join(str(lev) for lev, f in zip(pred.levels, pred.inferred) if f)
        notes.append(f"level(s) {names} inferred, not seen by the detector: measured from their placed points "
                     "(large sigma)")
    missing = pred.missing_points(ps.model)
    if missing:
        notes.append(f"{len(missing)} predicted point(s) without coordinates (null/NaN), left out: {', '.join(missing)}")
    sig_px, sig_mm = ps.sigma_p_px[sigma_kind], ps.sigma_p_mm[sigma_kind]
    spacing = pred.spacing_mm
    sigma, sigma_source = None, "none"
    if np.all(np.isfinite(sig_px[found])):
        sigma = np.repeat(sigma_p_to_axis(sig_px)[..., None], 2, axis=-1)
        sigma_source = f"sigma_p_{sigma_kind}_px / sqrt(2)"
    elif spacing is not None and np.all(np.isfinite(sig_mm[found])):
        sigma = sigma_p_to_axis(sig_mm)[..., None] / np.asarray(spacing)
        sigma_source = f"sigma_p_{sigma_kind}_mm / sqrt(2) / spacing"
    else:
        have = np.isfinite(sig_px) | (np.isfinite(sig_mm) & (spacing is not None))
        lacking = int(np.sum(found & ~have))
        if lacking < int(found.sum()):  # some points have a sigma, others not: say which share
            notes.append(f"sigma_p ({sigma_kind}) missing or NaN for {lacking} of {int(found.sum())} points: "
                         "uncertainty not propagated")
    meta: dict[str, Any] = {"thresholds": pred.thresholds} if pred.thresholds is not None else {}
    if "mc_dropout_samples" in pred.meta:
        meta["mc_dropout_samples"] = pred.meta["mc_dropout_samples"]
    meta["read_notes"] = notes
    return KeypointRecord(
        source=str(source),
        kind="prediction",
        levels=[str(v) for v in pred.levels],
        keypoints_px=np.where(found[..., None], ps.keypoints_px, np.nan),
        visible=found,
        scheme=pred.scheme,
        region=pred.region or _infer_region(pred.scheme, [str(v) for v in pred.levels]),
        spacing_mm=spacing,
        spacing_source=pred.spacing_source,
        image=pred.image,
        image_size=pred.image_size,
        sigma_px=sigma,
        sigma_source=sigma_source,
        meta=meta,
        model=ps.model,
    )


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply") from None


def _not_keypoints(path: str) -> AnnotationError:
    return AnnotationError(
        f"{path}: neither a {FORMAT_NAME!r} annotation nor a prediction file ({PREDICTION_FORMAT!r}, "
        f"{CORNERS_FORMAT!r}, or 'scheme' + 'vertebrae'; see docs/formats.md)"
    )


def read_keypoint_file(path: str | os.PathLike, sigma_kind: str = "total", model: str | None = None) -> KeypointRecord:
    """Read a prediction or annotation JSON file.

    Args:
        path: the file.
        sigma_kind: which prediction uncertainty to propagate: ``total``, ``aleatoric`` or ``epistemic``.
        model: for a prediction holding two point sets (``predict --model both``), which one:
            ``"regressor"`` or ``"heatmap"``; None: the regressor's when present
            (:func:`read_keypoint_records` reads both).

    Raises:
        FileNotFoundError: the file does not exist.
        AnnotationError: the file is not valid JSON, in neither format, or holds nothing to measure
            (the message names it).
    """
    if sigma_kind not in SIGMA_KINDS:
        raise ValueError(f"sigma_kind must be one of {SIGMA_KINDS}, got {sigma_kind!r}")
    path = str(path)
    d = _load_json(path)
    if isinstance(d, dict) and d.get("format") == FORMAT_NAME:
        return record_from_annotation(read_annotation(path), source=path)
    if is_prediction(d):
        return _record_from_prediction(prediction_from_dict(d, path), model, sigma_kind)
    raise _not_keypoints(path)


def read_keypoint_records(path: str | os.PathLike, sigma_kind: str = "total") -> list[KeypointRecord]:
    """Every point set of a file: one record for an annotation, one per model for a prediction.

    Raises:
        as :func:`read_keypoint_file`.
    """
    if sigma_kind not in SIGMA_KINDS:
        raise ValueError(f"sigma_kind must be one of {SIGMA_KINDS}, got {sigma_kind!r}")
    path = str(path)
    d = _load_json(path)
    if isinstance(d, dict) and d.get("format") == FORMAT_NAME:
        return [record_from_annotation(read_annotation(path), source=path)]
    if not is_prediction(d):
        raise _not_keypoints(path)
    pred = prediction_from_dict(d, path)
    if len(pred.models) < 2:
        return [_record_from_prediction(pred, None, sigma_kind)]
    return [_record_from_prediction(pred, m, sigma_kind) for m in pred.models]


# ------------------------------------------------------------------------------------- writing


def _unit_of(name: str) -> str:
    for suffix, unit in (("_deg", "deg"), ("_mm", "mm"), ("_px", "px"), ("_percent", "percent")):
        if name.endswith(suffix):
            return unit
    if "share" in name:
        return "fraction"
    return ""


def _row(source: str, view: str, region: Any, group: str, item: str, name: str, summ: Any) -> dict[str, Any]:
    row = {"source": source, "view": view, "region": region or "", "group": group, "item": item, "measurement": name}
    row["unit"] = _unit_of(name)
    if isinstance(summ, dict):
        for k in ("value", "mean", "std", "ci_low", "ci_high"):
            row[k] = summ.get(k)
    else:
        row.update({"value": summ, "mean": None, "std": None, "ci_low": None, "ci_high": None})
    return row


def results_to_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a :func:`~monai_spine.measure.batch.measure_files` result to CSV rows (columns :data:`CSV_COLUMNS`)."""
    rows: list[dict[str, Any]] = []
    for case in result.get("cases", []):
        src, view, region = case["source"], case["view"], case.get("region")
        if case.get("model") == "heatmap":
            src = f"{src} [heatmap]"
        for seg in case.get("segments", []):
            for k, v in seg.items():
                if isinstance(v, dict):
                    rows.append(_row(src, view, region, "segment", seg["level"], k, v))
        for vert in case.get("vertebrae", []):
            for k, v in vert.items():
                if isinstance(v, dict):
                    rows.append(_row(src, view, region, "vertebra", vert["level"], k, v))
        for lor in case.get("lordosis", []):
            rows.append(_row(src, view, region, "lordosis", lor["span"], "lordosis_angle_deg", lor["angle_deg"]))
        cobb = case.get("cobb")
        if cobb:
            for name in COBB_ANGLE_NAMES:
                levs = cobb[name].get("levels") or cobb[name]["vertebrae"]
                item = f"{name} ({levs[0]}-{levs[1]})"
                rows.append(_row(src, view, region, "cobb", item, f"cobb_{name}_deg", cobb[name]["angle_deg"]))
            if "cobb_reference_deg" in case:
                for name, r, e in zip(COBB_ANGLE_NAMES, case["cobb_reference_deg"], case["cobb_abs_error_deg"]):
                    rows.append(_row(src, view, region, "cobb", name, f"cobb_{name}_reference_deg", r))
                    rows.append(_row(src, view, region, "cobb", name, f"cobb_{name}_abs_error_deg", e))
                rows.append(_row(src, view, region, "cobb", "all", "cobb_smape_percent", case["cobb_smape_percent"]))
    for mot in result.get("motion", []):
        src, region = f"{mot['flexion']} | {mot['extension']}", mot.get("region")

        def add(level: str, name: str, value: Any, unit: str | None = None) -> None:
            rows.append(_row(src, "flexion-extension", region, "motion", level, name, value))
            if unit is not None:
                rows[-1]["unit"] = unit

        for seg in mot["segments"]:
            lev = seg["level"]
            for k, v in seg.items():
                if isinstance(v, dict) and k not in ("flags", "exceed_probability"):
                    add(lev, k, v)
            for k, v in (seg.get("flags") or {}).items():
                add(lev, f"flag_{k}", None if v is None else int(v), "flag")
            if "unstable" in seg:
                add(lev, "flag_any", None if seg["unstable"] is None else int(seg["unstable"]), "flag")
            for k, v in (seg.get("exceed_probability") or {}).items():
                add(lev, f"exceed_probability_{k}", v, "probability")
    summ = result.get("cobb_summary")
    if summ:
        for k in ("smape_percent", "within_1deg_share", "max_abs_error_deg"):
            rows.append(_row("all", "ap", "ap", "cobb_summary", "all", k, summ.get(k)))
            if k == "within_1deg_share":
                rows[-1]["unit"] = "fraction"
    return rows


def json_safe(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    return o


def write_measurements(out_dir: str | os.PathLike, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``measurements.json`` and ``measurements.csv`` into ``out_dir`` (atomically).

    Returns:
        the two paths.
    """
    out = Path(out_dir)
    json_path, csv_path = out / "measurements.json", out / "measurements.csv"
    atomic_write_text(json_path, json.dumps(json_safe(result), indent=1, allow_nan=False))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in results_to_rows(result):
        w.writerow({k: ("" if row.get(k) is None else _csv_value(row.get(k))) for k in CSV_COLUMNS})
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(round(v, 6))
    return v


#: JSON files of the project that hold no keypoints; a folder given to ``measure`` skips them
NON_KEYPOINT_FILES = ("dataset.json", "measurements.json", "thresholds.json", "conformal.json",
                      "calibration_report.json")
