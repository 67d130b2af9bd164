"""Read keypoint files, measure them, and write the measurements as JSON and CSV (``monai-spine measure``).

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
:data:`CSV_COLUMNS`). A batch goes on past a file that cannot be read or measured: the file is
listed under ``"failures"`` (``{"file", "error"}``) in ``measurements.json`` and in the return
value, the other files are measured, and ``monai-spine measure`` exits non-zero. A missing path or
a bad argument stops the command before anything is written. Lengths are in mm when the image
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
from monai_spine.measure.cobb import COBB_ANGLE_NAMES, cobb_angles, cobb_angles_deg, smape, spine_height_proxy
from monai_spine.measure.lateral import DEFAULT_LORDOSIS_LEVELS, lateral_layout, lateral_measurements, motion_segments
from monai_spine.measure.motion import (
    InstabilityThresholds,
    common_levels,
    get_thresholds,
    instability_flags,
    motion_values,
    relative_to_adjacent,
)
from monai_spine.outputs import check_output_dir
from monai_spine.measure.uncertainty import DEFAULT_CI, DEFAULT_NUM_SAMPLES, Summary, propagate, sigma_p_to_axis

__all__ = [
    "MEASUREMENTS_FORMAT",
    "MEASUREMENTS_VERSION",
    "CSV_COLUMNS",
    "KeypointRecord",
    "read_keypoint_file",
    "read_keypoint_records",
    "record_from_annotation",
    "measure_record",
    "measure_motion",
    "results_to_rows",
    "write_measurements",
    "measure_cli",
    "NON_KEYPOINT_FILES",
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
_SIGMA_KINDS = ("total", "aleatoric", "epistemic")


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
    if sigma_kind not in _SIGMA_KINDS:
        raise ValueError(f"sigma_kind must be one of {_SIGMA_KINDS}, got {sigma_kind!r}")
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
    if sigma_kind not in _SIGMA_KINDS:
        raise ValueError(f"sigma_kind must be one of {_SIGMA_KINDS}, got {sigma_kind!r}")
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


# ----------------------------------------------------------------------------------- measuring


def _sigma_for(rec: KeypointRecord, sigma_px: float | None) -> tuple[np.ndarray | None, str]:
    if sigma_px is not None:
        s = float(sigma_px)
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"sigma_px must be a finite number >= 0, got {sigma_px!r}")
        return np.full(rec.keypoints_px.shape, s), f"constant {s:g} px per axis (argument)"
    return rec.sigma_px, rec.sigma_source


def _summary_dict(s: Summary, index: Any = ()) -> dict[str, Any]:
    d = s.item(index)
    d.pop("num_valid", None)
    return d


def _uncertainty_info(sigma: np.ndarray | None, source: str, num_samples: int, seed: int | None, ci: float) -> Any:
    if sigma is None or num_samples <= 0:
        return None
    return {"num_samples": int(num_samples), "seed": seed, "ci": float(ci), "sigma_source": source}


def _image_height(rec: KeypointRecord) -> tuple[float, str]:
    if rec.image_size is not None:
        return float(rec.image_size[1]), "image_size"
    if rec.image is not None and os.path.isfile(rec.image):
        try:
            from monai_spine.data.aasce import read_image_size

            return float(read_image_size(rec.image)[1]), "image header"
        except (OSError, ValueError):
            pass
    return spine_height_proxy(rec.keypoints_px[rec.visible]), "spine extent (min y + max y; image height unknown)"


def measure_record(
    rec: KeypointRecord,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int | None = 0,
    ci: float = DEFAULT_CI,
    sigma_px: float | None = None,
    lordosis_levels: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """All measurements of one radiograph, with sampled uncertainty when a point sigma is known.

    Args:
        rec: the keypoints (see :func:`read_keypoint_file`).
        num_samples: Monte-Carlo samples (0: no uncertainty).
        seed: sampling seed.
        ci: central interval mass.
        sigma_px: one sigma (pixels, per axis) for every point, overriding the file's.
        lordosis_levels: (top, bottom) spans for lateral views (default
            :data:`~monai_spine.measure.lateral.DEFAULT_LORDOSIS_LEVELS`).

    Returns:
        JSON-ready dict (see ``docs/measurements.md``).
    """
    sigma, sigma_source = _sigma_for(rec, sigma_px)
    notes: list[str] = list(rec.meta.get("read_notes", []))
    if sigma is None and num_samples > 0:
        if rec.kind == "prediction" and rec.spacing_mm is None:
            notes.append(
                "uncertainty not propagated: the prediction's sigma_p is only known in crop fractions "
                "(spacing unknown); pass sigma_px to sample"
            )
        else:
            notes.append("uncertainty not propagated: no point sigma (pass sigma_px to sample)")
    use_sigma = sigma if num_samples > 0 else None
    base: dict[str, Any] = {
        "source": rec.source,
        "kind": rec.kind,
        "model": rec.model,
        "image": rec.image,
        "view": rec.view,
        "region": rec.region,
        "scheme": rec.scheme,
        "levels": list(rec.levels),
        "spacing_mm": None if rec.spacing_mm is None else list(rec.spacing_mm),
        "spacing_source": rec.spacing_source,
        "uncertainty": _uncertainty_info(use_sigma, sigma_source, num_samples, seed, ci),
    }
    if rec.view == "ap":
        base.update(_measure_ap(rec, use_sigma, num_samples, seed, ci, notes))
    else:
        base.update(_measure_lateral(rec, use_sigma, num_samples, seed, ci, notes, lordosis_levels))
    base["notes"] = notes
    base["warnings"] = list(rec.meta.get("read_notes", []))  # what the reader left out (also in notes)
    return base


def _measure_lateral(
    rec: KeypointRecord,
    sigma: np.ndarray | None,
    num_samples: int,
    seed: int | None,
    ci: float,
    notes: list[str],
    lordosis_levels: Sequence[tuple[str, str]] | None,
) -> dict[str, Any]:
    if lordosis_levels is None and rec.region in DEFAULT_LORDOSIS_LEVELS:
        lordosis_levels = [DEFAULT_LORDOSIS_LEVELS[rec.region]]
    layout = lateral_layout(rec.levels, lordosis_levels)
    unit = "mm" if rec.spacing_mm is not None else "px"
    if unit == "px":
        notes.append("pixel spacing unknown: lengths are in pixels (names end in _px); angles assume square pixels")

    def fn(kp: np.ndarray) -> dict[str, np.ndarray]:
        return lateral_measurements(kp, rec.levels, rec.spacing_mm, rec.visible, lordosis_levels)[0]

    s = propagate(fn, rec.keypoints_px, sigma, num_samples, seed, ci)
    segments = []
    for m, seg in enumerate(layout.segments):
        segments.append(
            {
                "level": seg.name,
                "upper": seg.upper_level,
                "lower": seg.lower_level,
                "angle_deg": _summary_dict(s["segment_angle_deg"], m),
                f"translation_{unit}": _summary_dict(s["translation"], m),
                "translation_share": _summary_dict(s["translation_share"], m),
                f"disc_height_anterior_{unit}": _summary_dict(s["disc_height_anterior"], m),
                f"disc_height_posterior_{unit}": _summary_dict(s["disc_height_posterior"], m),
            }
        )
    if not layout.segments:
        notes.append("no two anatomically adjacent vertebrae: no motion-segment measurements")
    vertebrae = [
        {"level": lev, f"body_depth_{unit}": _summary_dict(s["body_depth"], i)} for i, lev in enumerate(rec.levels)
    ]
    lordosis = [
        {"span": name, "angle_deg": _summary_dict(s["lordosis_deg"], i)}
        for i, (name, _, _) in enumerate(layout.lordosis)
    ]
    wanted = lordosis_levels if lordosis_levels is not None else []
    present = {name for name, _, _ in layout.lordosis}
    for t, b in wanted:
        if f"{t}-{b}" not in present:
            notes.append(f"lordosis {t}-{b} not measured: level {t} or {b} missing")
    return {"length_unit": unit, "segments": segments, "vertebrae": vertebrae, "lordosis": lordosis}


def _measure_ap(
    rec: KeypointRecord, sigma: np.ndarray | None, num_samples: int, seed: int | None, ci: float, notes: list[str]
) -> dict[str, Any]:
    kp = np.where(rec.visible[..., None], rec.keypoints_px, np.nan)
    height, height_source = _image_height(rec)
    if height_source.startswith("spine extent"):
        notes.append("image height unknown: the Cobb rule's upper/lower-half test uses the spine's vertical extent")
    out: dict[str, Any] = {"length_unit": None, "image_height_px": height, "image_height_source": height_source}
    try:
        res = cobb_angles(kp, height)
    except ValueError as e:
        notes.append(f"Cobb angles not measured: {e}")
        out["cobb"] = None
        return out
    vis = rec.visible

    def fn(k: np.ndarray) -> dict[str, np.ndarray]:
        return {"cobb": cobb_angles_deg(np.where(vis[..., None], k, np.nan), height)}

    s = propagate(fn, rec.keypoints_px, sigma, num_samples, seed, ci)["cobb"]
    cobb = res.to_dict(rec.levels)
    for i, name in enumerate(COBB_ANGLE_NAMES):
        cobb[name]["angle_deg"] = _summary_dict(s, i)
    out["cobb"] = cobb
    ref = rec.meta.get("cobb_angles_deg") if isinstance(rec.meta, dict) else None
    if isinstance(ref, (list, tuple)) and len(ref) == 3:
        r = np.asarray(ref, dtype=np.float64)
        out["cobb_reference_deg"] = [float(v) for v in r]
        out["cobb_abs_error_deg"] = [float(v) for v in np.abs(res.angles_deg - r)]
        out["cobb_smape_percent"] = smape(res.angles_deg, r)
    return out


def measure_motion(
    flexion: KeypointRecord,
    extension: KeypointRecord,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int | None = 0,
    ci: float = DEFAULT_CI,
    sigma_px: float | None = None,
    thresholds: InstabilityThresholds | None = None,
) -> dict[str, Any]:
    """Angular and translational motion per level between a flexion and an extension view.

    Args:
        flexion, extension: lateral records of the same patient and region (levels matched by name).
        num_samples, seed, ci, sigma_px: see :func:`measure_record`; each view is sampled independently.
        thresholds: instability thresholds; default :func:`~monai_spine.measure.motion.get_thresholds`
            of the region (no flags when the region has none).

    Returns:
        JSON-ready dict with one entry per motion segment: the angles and translations of both
        views, the motions, the threshold checks (``flags``: true/false/null) and, with sampling,
        ``exceed_probability`` (share of samples above each threshold).

    Raises:
        ValueError: a view is not lateral, or the views share no motion segment.
    """
    for rec, name in ((flexion, "flexion"), (extension, "extension")):
        if rec.view != "lateral":
            raise ValueError(f"{rec.source}: the {name} view must be lateral (lateral5), got scheme {rec.scheme}")
    region = flexion.region or extension.region
    notes: list[str] = []
    if flexion.region and extension.region and flexion.region != extension.region:
        raise ValueError(
            f"{flexion.source} ({flexion.region}) and {extension.source} ({extension.region}): regions differ"
        )
    levels, i_f, i_e = common_levels(flexion.levels, extension.levels)
    kp_f, kp_e = flexion.keypoints_px[i_f], extension.keypoints_px[i_e]
    vis_f, vis_e = flexion.visible[i_f], extension.visible[i_e]
    segs = motion_segments(levels)
    if not segs:
        raise ValueError(f"{flexion.source} and {extension.source}: no motion segment present in both views")
    names = [s.name for s in segs]
    if thresholds is None:
        try:
            thresholds = get_thresholds(region or "")
        except KeyError:
            thresholds = None
            notes.append(f"no instability thresholds for region {region!r}: motions are not flagged")
    sf, src_f = _sigma_for(flexion, sigma_px)
    se, src_e = _sigma_for(extension, sigma_px)
    sample = num_samples > 0 and sf is not None and se is not None
    if num_samples > 0 and not sample:
        notes.append("uncertainty not propagated: a point sigma is missing for one of the views (pass sigma_px)")
    sig = [sf[i_f], se[i_e]] if sample else None  # type: ignore[index]
    unit = "mm" if flexion.spacing_mm is not None and extension.spacing_mm is not None else "px"
    if unit == "px":
        notes.append(
            "pixel spacing unknown for a view: translational motion in pixels (only comparable when both films "
            "share pixel size and magnification); the share of body depth is unaffected"
        )

    def fn(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        vals, u = motion_values(a, b, levels, flexion.spacing_mm, extension.spacing_mm, vis_f, vis_e)
        vals["relative_angular_motion_deg"] = relative_to_adjacent(vals["angular_motion_deg"], names)
        if thresholds is not None:
            for k, v in instability_flags(vals, u, names, thresholds).items():
                vals[f"flag_{k}"] = v
        return vals

    s = propagate(fn, [kp_f, kp_e], sig, num_samples, seed, ci)
    flag_keys = ("translation_mm", "translation_share", "angular_motion", "relative_angular_motion")
    out_segs = []
    for m, name in enumerate(names):
        entry: dict[str, Any] = {"level": name}
        for key, label in (
            ("angle_flexion_deg", "angle_flexion_deg"),
            ("angle_extension_deg", "angle_extension_deg"),
            ("angular_motion_deg", "angular_motion_deg"),
            ("relative_angular_motion_deg", "relative_angular_motion_deg"),
            ("translation_flexion", f"translation_flexion_{unit}"),
            ("translation_extension", f"translation_extension_{unit}"),
            ("translational_motion", f"translational_motion_{unit}"),
            ("share_flexion", "translation_share_flexion"),
            ("share_extension", "translation_share_extension"),
            ("translational_motion_share", "translational_motion_share"),
        ):
            entry[label] = _summary_dict(s[key], m)
        if thresholds is not None:
            flags = {}
            for k in flag_keys:
                v = float(s[f"flag_{k}"].value[m])
                flags[k] = None if not np.isfinite(v) else bool(v > 0.5)
            entry["flags"] = flags
            anyv = float(s["flag_any"].value[m])
            entry["unstable"] = None if not np.isfinite(anyv) else bool(anyv > 0.5)
            if sample:
                entry["exceed_probability"] = {
                    k: (None if not np.isfinite(p) else float(p))
                    for k, p in ((k, float(s[f"flag_{k}"].mean[m])) for k in flag_keys + ("any",))
                }
        out_segs.append(entry)
    return {
        "flexion": flexion.source,
        "extension": extension.source,
        "region": region,
        "levels": levels,
        "length_unit": unit,
        "thresholds": None if thresholds is None else thresholds.to_dict(),
        "uncertainty": (
            _uncertainty_info(sig[0], f"flexion: {src_f}; extension: {src_e}", num_samples, seed, ci) if sig else None
        ),
        "segments": out_segs,
        "notes": notes,
    }


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
    """Flatten a :func:`measure_cli` result to CSV rows (columns :data:`CSV_COLUMNS`)."""
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


def _json_safe(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return _json_safe(o.tolist())
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
    atomic_write_text(json_path, json.dumps(_json_safe(result), indent=1, allow_nan=False))
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


def _check_sigma_px(sigma_px: float) -> None:
    s = float(sigma_px)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"sigma_px must be a finite number >= 0, got {sigma_px!r}")


def _failure_text(e: BaseException, name: str) -> str:
    """One line naming the file: the message of a documented error, else ``Type: message``."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if not isinstance(e, (ValueError, KeyError, OSError)):
        msg = f"{type(e).__name__}: {msg}"
    if name not in msg:
        msg = f"{name}: {msg}"
    return " ".join(msg.split())


#: JSON files of the project that hold no keypoints; a folder given to ``measure`` skips them
NON_KEYPOINT_FILES = ("dataset.json", "measurements.json", "thresholds.json", "conformal.json",
                      "calibration_report.json")


def _expand_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    files: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.json")
                           if not q.name.endswith((".mrk.json", ".mkp.json")) and q.name not in NON_KEYPOINT_FILES)
            if not found:
                raise FileNotFoundError(f"{p}: no keypoint JSON files")
            files.extend(str(q) for q in found)
        elif p.is_file():
            files.append(str(p))
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return files


def measure_cli(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    flexion: Sequence[str | os.PathLike] = (),
    extension: Sequence[str | os.PathLike] = (),
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int | None = 0,
    ci: float = DEFAULT_CI,
    sigma_px: float | None = None,
    sigma_kind: str = "total",
    thresholds: InstabilityThresholds | None = None,
) -> dict[str, Any]:
    """``monai-spine measure``: measure keypoint files and write JSON + CSV into ``out``.

    Args:
        paths: prediction or annotation JSON files, or folders of them (``*.json`` except Slicer
            ``.mrk.json`` / ``.mkp.json``). May be empty when only flexion/extension pairs are given.
        out: output folder (``measurements.json``, ``measurements.csv``).
        flexion, extension: equally long lists of lateral files; pair ``i`` is one patient's
            flexion and extension radiograph (they are also measured as single images).
        num_samples: Monte-Carlo samples for the uncertainty (0: none).
        seed: sampling seed (each image's samples are reproducible).
        ci: central interval mass (0.95: the 2.5th-97.5th percentiles).
        sigma_px: one point sigma in pixels (per axis) for every point, overriding the files'.
        sigma_kind: prediction uncertainty to propagate (``total``, ``aleatoric``, ``epistemic``).
        thresholds: instability thresholds for all pairs (default: per region).

    Returns:
        the result written to ``measurements.json``: ``{"format", "version", "cases": [...],
        "motion": [...], "cobb_summary": {...} | None, "failures": [{"file", "error"}, ...],
        "outputs": {"json", "csv"}}``. ``failures`` lists every file (or flexion/extension pair)
        that could not be read or measured; the others are measured and written.

    Raises:
        FileNotFoundError: a path does not exist (nothing is written).
        ValueError: no input at all, or ``out`` is a file (nothing is written).
        PermissionError: ``out`` is not writable (checked before any file is read).
        ValueError: unequal flexion/extension lists or bad arguments (nothing is written).
    """
    if len(flexion) != len(extension):
        raise ValueError(f"got {len(flexion)} flexion files but {len(extension)} extension files; pass them in pairs")
    if int(num_samples) < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if sigma_kind not in _SIGMA_KINDS:
        raise ValueError(f"sigma_kind must be one of {_SIGMA_KINDS}, got {sigma_kind!r}")
    if sigma_px is not None:
        _check_sigma_px(sigma_px)
    if not paths and not flexion:
        raise ValueError("no input: give prediction or annotation JSON files or folders (or --flexion/--extension pairs)")
    check_output_dir(out)
    files = _expand_paths(paths)
    pair_files = [(str(f), str(e)) for f, e in zip(_expand_paths(flexion), _expand_paths(extension))] if flexion else []
    records: dict[str, KeypointRecord] = {}
    per_file: dict[str, list[KeypointRecord]] = {}
    failed: dict[str, str] = {}
    for f in files + [p for pair in pair_files for p in pair]:
        if f in per_file or f in failed:
            continue
        try:
            recs = read_keypoint_records(f, sigma_kind=sigma_kind)
            per_file[f] = recs
            records[f] = recs[0]  # a flexion/extension pair uses the first (the regressor's) point set
        except Exception as e:  # a batch goes on; every failure is listed
            failed[f] = _failure_text(e, f)
    cases = []
    for f, recs in per_file.items():
        for rec in recs:
            try:
                cases.append(measure_record(rec, int(num_samples), seed, ci, sigma_px))
            except Exception as e:
                key = f if len(recs) == 1 else f"{f} [{rec.model}]"
                failed[key] = _failure_text(e, key)
    motion = []
    for f, e in pair_files:
        if f in failed or e in failed:
            bad = f if f in failed else e
            failed[f"{f} + {e}"] = f"{f} + {e}: flexion/extension pair not measured ({bad} failed)"
            continue
        try:
            motion.append(measure_motion(records[f], records[e], int(num_samples), seed, ci, sigma_px, thresholds))
        except Exception as ex:
            failed[f"{f} + {e}"] = _failure_text(ex, f"{f} + {e}")
    with_ref = [c for c in cases if c.get("cobb") and "cobb_reference_deg" in c]
    cobb_summary = None
    if with_ref:
        pred = np.asarray([[c["cobb"][n]["angle_deg"]["value"] for n in COBB_ANGLE_NAMES] for c in with_ref], float)
        ref = np.asarray([c["cobb_reference_deg"] for c in with_ref], float)
        err = np.abs(pred - ref)
        cobb_summary = {
            "num_images": len(with_ref),
            "smape_percent": smape(pred, ref),
            "within_1deg_share": float(np.mean(np.all(err <= 1.0, axis=1))),
            "max_abs_error_deg": float(err.max()),
        }
    out_dir = Path(out)
    result: dict[str, Any] = {
        "format": MEASUREMENTS_FORMAT,
        "version": MEASUREMENTS_VERSION,
        "cases": cases,
        "motion": motion,
        "cobb_summary": cobb_summary,
        "failures": [{"file": f, "error": msg} for f, msg in failed.items()],
        "outputs": {"json": str(out_dir / "measurements.json"), "csv": str(out_dir / "measurements.csv")},
    }
    write_measurements(out_dir, result)
    return _json_safe(result)
