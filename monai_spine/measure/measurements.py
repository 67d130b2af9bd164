"""Measurements of one radiograph (:func:`measure_record`) and of a flexion/extension pair (:func:`measure_motion`).

Lateral views get angles, translations and disc heights (:mod:`monai_spine.measure.lateral`,
:mod:`monai_spine.measure.motion`), AP views Cobb angles (:mod:`monai_spine.measure.cobb`); each
value carries a Monte-Carlo interval when a point sigma is known
(:mod:`monai_spine.measure.uncertainty`). Records come from :mod:`monai_spine.measure.io`; results are
JSON-ready dicts (``docs/measurements.md``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

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
from monai_spine.measure.uncertainty import DEFAULT_CI, DEFAULT_NUM_SAMPLES, Summary, propagate
from monai_spine.measure.io import KeypointRecord

__all__ = ["measure_record", "measure_motion"]



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
        rec: the keypoints (see :func:`monai_spine.measure.io.read_keypoint_file`).
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
