"""Measure a batch of keypoint files into one folder (:func:`measure_files`, the body of ``monai-spine measure``).

A batch goes on past a file that cannot be read or measured: the file is listed under
``"failures"`` (``{"file", "error"}``) in ``measurements.json`` and in the return value, the other
files are measured, and ``monai-spine measure`` exits non-zero. A missing path or a bad argument
stops the batch before anything is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_spine.measure.cobb import COBB_ANGLE_NAMES, smape
from monai_spine.measure.motion import InstabilityThresholds
from monai_spine.outputs import check_output_dir
from monai_spine.measure.uncertainty import DEFAULT_CI, DEFAULT_NUM_SAMPLES
from monai_spine.measure.io import (
    MEASUREMENTS_FORMAT,
    MEASUREMENTS_VERSION,
    NON_KEYPOINT_FILES,
    SIGMA_KINDS,
    KeypointRecord,
    json_safe,
    read_keypoint_records,
    write_measurements,
)
from monai_spine.measure.measurements import measure_motion, measure_record

__all__ = ["measure_files"]


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


def measure_files(
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
    if sigma_kind not in SIGMA_KINDS:
        raise ValueError(f"sigma_kind must be one of {SIGMA_KINDS}, got {sigma_kind!r}")
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
    return json_safe(result)
