"""Calibration runs: thresholds and conformal radii fitted on validation predictions, written to files.

:func:`calibrate_from_predictions` (the body of ``monai-spine calibrate``) matches prediction files to
their annotations (:func:`monai_spine.evaluation.matching.collect_errors`), fits the BayeRegX
thresholds (:func:`monai_spine.uncertainty.thresholds.fit_thresholds`) and the split-conformal radii
(:class:`monai_spine.uncertainty.conformal.ConformalCalibrator`), and writes them beside the model.

Files: :data:`THRESHOLDS_FILE` (``thresholds.json``, read by
:func:`monai_spine.inference.model_zoo.load_thresholds`) and :data:`CONFORMAL_FILE`
(``conformal.json``) are written beside the model in the bundle's ``models`` folder, with
:data:`REPORT_FILE` (``calibration_report.json``: the selections and in-sample quality measures).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_spine.data.annotation import atomic_write_text
from monai_spine.evaluation.matching import collect_errors
from monai_spine.uncertainty.classes import THRESHOLD_UNITS
from monai_spine.uncertainty.conformal import ConformalCalibrator
from monai_spine.uncertainty.thresholds import (
    DEFAULT_BOUNDS,
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_COUNT,
    DEFAULT_QUANTILE,
    NO_CLASS_MESSAGE,
    calibration_failed,
    fit_thresholds,
)

__all__ = ["THRESHOLDS_FILE", "CONFORMAL_FILE", "REPORT_FILE", "calibrate_from_predictions"]

#: file name of the thresholds in a bundle's models folder
THRESHOLDS_FILE = "thresholds.json"
#: file name of the conformal calibration in a bundle's models folder
CONFORMAL_FILE = "conformal.json"
#: file name of the calibration report (selections, quality measures)
REPORT_FILE = "calibration_report.json"


def _json_safe(x: Any) -> Any:
    """NaN/inf floats to None, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def calibrate_from_predictions(
    pred_json_paths: str | os.PathLike | Sequence[str | os.PathLike],
    annotation_paths: str | os.PathLike | Sequence[str | os.PathLike],
    models_dir: str | os.PathLike,
    *,
    sigma_units: str | None = "frac",
    sigma_kind: str = "total",
    bounds: Sequence[float] = DEFAULT_BOUNDS,
    quantile: float = DEFAULT_QUANTILE,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float | None = DEFAULT_CONFIDENCE,
    per_point_type: bool = True,
    alpha: float = 0.1,
    score: str = "normalized",
    conformal_sigma_units: str | None = None,
    on_mixed_spacing: str = "px",
    write_report: bool = True,
    model: str | None = None,
) -> dict[str, Any]:
    """Fit thresholds and conformal radii on validation predictions and write them to ``models_dir``.

    Steps: :func:`collect_errors` (match files, errors in mm or px), :func:`fit_thresholds`
    (BayeRegX rule with quantile ``quantile``, per point type), :meth:`ConformalCalibrator.fit`, then
    ``models_dir/thresholds.json`` (:class:`~monai_spine.uncertainty.classes.Thresholds` JSON, read
    by :func:`monai_spine.inference.model_zoo.load_thresholds` at inference), ``models_dir/conformal.json``
    and, with ``write_report``, ``models_dir/calibration_report.json`` (selections per point type and
    :func:`monai_spine.uncertainty.quality.quality_report` on the same points -- in-sample, so
    coverage there is optimistic; evaluate on held-out data).

    Args:
        pred_json_paths: prediction files/folders of the validation set.
        annotation_paths: their annotations (files or dataset folders).
        models_dir: the bundle's ``models`` folder (beside ``model.pt``); created if needed.
        sigma_units: ``sigma_p`` units of the thresholds: ``"frac"`` (paper) or ``"mm"``; None: ``"frac"``
            when the points have a crop-fraction sigma (the regressor), else ``"mm"`` (the heatmap FCN).
        sigma_kind: which ``sigma_p`` (``total`` as in the paper, ``aleatoric``, ``epistemic``).
        bounds, quantile, min_count, per_point_type: the threshold rule (:func:`~monai_spine.uncertainty.thresholds.select_thresholds`).
        alpha, score: the conformal calibration.
        conformal_sigma_units: ``sigma_p`` units of the conformal score (default ``sigma_units``).
        on_mixed_spacing: see :func:`collect_errors`.
        write_report: also write the report file.
        model: the point set of files holding two (``predict --model both``): ``"regressor"`` or
            ``"heatmap"`` (None: each file's first, the regressor's); see :func:`collect_errors`.

    Returns:
        summary dict: ``thresholds``, ``conformal`` (dicts), ``selections``, ``error_unit``,
        ``num_points``, ``num_cases``, ``quality`` and the written ``files``.

    Raises:
        ValueError: no usable point (e.g. ``sigma_units="mm"`` with unknown spacing everywhere).
    """
    from monai_spine.uncertainty.quality import quality_report

    for name, u in (("sigma_units", sigma_units), ("conformal_sigma_units", conformal_sigma_units)):
        if u is not None and u not in THRESHOLD_UNITS:
            raise ValueError(f"{name} must be one of {THRESHOLD_UNITS}, got {u!r}")
    pts = collect_errors(pred_json_paths, annotation_paths, sigma_kind=sigma_kind, on_mixed_spacing=on_mixed_spacing,
                         model=model)
    if sigma_units is None:  # the paper's crop fractions when the model gives them (the heatmap FCN does not)
        sigma_units = "frac" if np.isfinite(pts.sigma_frac).any() else "mm"
    c_units = conformal_sigma_units or sigma_units
    for u in dict.fromkeys((sigma_units, c_units)):
        if not np.isfinite(pts.sigma(u)).any():
            raise ValueError(
                f"no finite sigma_p in {u} among {pts.errors.size} matched points "
                "(mm needs a known spacing: use sigma units 'frac')"
            )
    if pts.error_unit == "px":
        warnings.warn("errors are in pixels (spacing unknown): the threshold bounds are taken as pixels", stacklevel=2)
    thr, selections = fit_thresholds(
        pts.errors,
        pts.sigma(sigma_units),
        pts.point_types,
        units=sigma_units,
        error_unit=pts.error_unit,
        bounds=bounds,
        quantile=quantile,
        min_count=min_count,
        per_point_type=per_point_type,
        return_selections=True,
        confidence=confidence,
    )
    failed = calibration_failed(thr)
    if failed:  # still written (a later run may read it), but it says so wherever its source is shown
        thr = dataclasses.replace(thr, source=f"{NO_CLASS_MESSAGE} (every point is classed highly uncertain): "
                                              f"{thr.source}")
    conf = ConformalCalibrator.fit(
        pts.errors,
        pts.sigma(c_units),
        pts.point_types,
        alpha=alpha,
        score=score,
        sigma_units=c_units,
        error_unit=pts.error_unit,
        per_point_type=per_point_type,
    )
    out = Path(models_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"thresholds": str(out / THRESHOLDS_FILE), "conformal": str(out / CONFORMAL_FILE)}
    thr.save(files["thresholds"])
    conf.save(files["conformal"])
    quality = quality_report(
        pts.errors,
        {"frac": pts.sigma_frac, "mm": pts.sigma_mm},
        pts.point_types,
        thresholds=thr,
        conformal=conf,
        primary_units=c_units,
        error_unit=pts.error_unit,
    )
    summary = {
        "thresholds": thr.to_dict(),
        "conformal": conf.to_dict(),
        "selections": {k: v.to_dict() for k, v in selections.items()},
        "error_unit": pts.error_unit,
        "sigma_kind": sigma_kind,
        "num_points": int(pts.errors.size),
        "num_cases": int(np.unique(pts.cases).size),
        "quality_in_sample": quality,
        "failed": failed,
        "message": (f"{NO_CLASS_MESSAGE}: no sigma_p threshold keeps {100 * quantile:g} % of a class within "
                    f"{bounds[0]:g} / {bounds[1]:g} {pts.error_unit} on {int(pts.errors.size)} points")
        if failed else "",
        "files": files,
    }
    if write_report:
        files["report"] = str(out / REPORT_FILE)
        atomic_write_text(files["report"], json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")
    return summary
