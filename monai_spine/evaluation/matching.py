"""Prediction files matched to their annotations: every visible point's error and ``sigma_p``.

:func:`collect_errors` reads prediction files of every producer (``predict`` with either model or
both, ``corners``, the bundle's inference), matches each to its annotation (by file stem, else by
image path; the same film is checked), and returns the flat :class:`MatchedPoints` (errors in mm, or
px when a spacing is unknown) with the vertebra detection over the matched cases.
:func:`prediction_models` says which models' points the files hold.

Used by the calibration run (:mod:`monai_spine.evaluation.calibration`) and the report
(:mod:`monai_spine.evaluation.report`). Errors are computed with numpy, without torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_spine.uncertainty.classes import THRESHOLD_UNITS

__all__ = ["MatchedPoints", "PREDICTION_SUFFIXES", "prediction_models", "collect_errors"]


@dataclass
class MatchedPoints:
    """Predicted points matched to their ground truth (flat, one entry per visible point).

    Attributes:
        errors: (n,) error in :attr:`error_unit` (+inf for a failed prediction).
        sigma_frac: (n,) ``sigma_p`` in crop fractions (NaN for the heatmap model, which has none).
        sigma_mm: (n,) ``sigma_p`` in mm (NaN when the spacing is unknown).
        point_types: (n,) ``"corner"`` / ``"spinous_process"``.
        point_names: (n,) point names (``AS``...).
        levels: (n,) vertebra levels.
        cases: (n,) prediction file of each point.
        error_unit: ``"mm"`` or ``"px"``.
        detection: vertebra detection over the matched cases: ``num_cases``, ``annotated`` (levels
            with a visible annotated point), ``found`` (of those, seen by the detector and predicted
            with a finite point), ``recall`` (found / annotated), ``missed``, ``extra`` and
            ``inferred`` (``[case, level]`` pairs: annotated but not found; predicted but not
            annotated; placed along the spine without being seen -- they count as missed, their points
            are still scored).
        model: the point set matched (``"regressor"`` / ``"heatmap"``; None: each file's first).
    """

    errors: np.ndarray
    sigma_frac: np.ndarray
    sigma_mm: np.ndarray
    point_types: np.ndarray
    point_names: np.ndarray
    levels: np.ndarray
    cases: np.ndarray
    error_unit: str
    detection: dict[str, Any] = field(default_factory=dict)
    model: str | None = None

    def sigma(self, units: str) -> np.ndarray:
        """``sigma_p`` in ``"frac"`` or ``"mm"``."""
        if units not in THRESHOLD_UNITS:
            raise ValueError(f"sigma units must be one of {THRESHOLD_UNITS}, got {units!r}")
        return self.sigma_frac if units == "frac" else self.sigma_mm


#: file name endings of prediction files taken from a folder (``predict`` / the bundle; ``corners``)
PREDICTION_SUFFIXES = (".keypoints.json", ".corners.json")


def _pred_stem(path: Path) -> str:
    """The case name of a prediction or annotation file: ``a.keypoints.json``, ``a.dcm.corners.json``,
    ``a.json`` -> ``a``."""
    from monai_spine.outputs import output_stem

    name = path.name
    if name.endswith(".corners.json"):
        return output_stem(name[: -len(".corners.json")])
    for suffix in (".keypoints.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike], kind: str) -> list[Path]:
    """Files of ``paths``; a folder gives its prediction files (:data:`PREDICTION_SUFFIXES`) or annotations."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if kind == "predictions":
                found = sorted(q for q in p.iterdir() if q.name.endswith(PREDICTION_SUFFIXES) and q.is_file())
                if not found:
                    raise FileNotFoundError(f"no prediction file (*.keypoints.json, *.corners.json) in {p}")
                out.extend(found)
            else:
                from monai_spine.data.datasets import SPLITS, list_cases

                idx = list_cases(p)
                labels = idx.get("cases") or [c for s in SPLITS for c in idx.get(s, [])]
                out.extend(Path(c) for c in labels)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{kind}: {p} does not exist")
    return out


def _same_image(pred_image: str, pred_file: Path, ann_image: str) -> bool:
    """Whether the prediction's recorded image is the annotation's image file.

    A relative recorded path is tried against the current folder and the prediction's folder; when
    it resolves to no existing file (the prediction was made elsewhere), equal file names suffice.
    """
    ann = os.path.abspath(ann_image)
    cands = [pred_image] if os.path.isabs(pred_image) else [os.path.abspath(pred_image),
                                                            os.path.abspath(pred_file.parent / pred_image)]
    for c in cands:
        if os.path.normpath(c) == os.path.normpath(ann):
            return True
        if os.path.exists(c) and os.path.exists(ann) and os.path.samefile(c, ann):
            return True
    if not os.path.isabs(pred_image) and not any(os.path.exists(c) for c in cands):
        return os.path.basename(pred_image) == os.path.basename(ann)
    return False


def _check_same_film(pred: Any, pp: Path, ann: Any, ann_path: Path) -> None:
    """``ValueError`` naming both files when the prediction was not made on the annotation's film."""
    hint = "predict the annotation's own images (or pass the annotations the predictions were made for)"
    if pred.image and ann.image and not _same_image(pred.image, pp, ann.image):
        raise ValueError(f"{pp}: predicted on {pred.image}, but its annotation {ann_path} is of {ann.image}; {hint}")
    if pred.image_size is not None and ann.image_size is not None and tuple(pred.image_size) != tuple(ann.image_size):
        raise ValueError(f"{pp}: image size {list(pred.image_size)} differs from the annotation's "
                         f"{list(ann.image_size)} ({ann_path}); {hint}")
    if pred.spacing_mm is not None and ann.spacing_mm is not None and not np.allclose(
            pred.spacing_mm, ann.spacing_mm, rtol=1e-3, atol=0):
        raise ValueError(f"{pp}: pixel spacing {list(pred.spacing_mm)} mm differs from the annotation's "
                         f"{list(ann.spacing_mm)} mm ({ann_path}); {hint}")


def _errors_np(pred: np.ndarray, gt: np.ndarray, vis: np.ndarray, spacing: np.ndarray | None) -> np.ndarray:
    """(N, K) Euclidean errors as :func:`monai_spine.metrics.keypoint_error.keypoint_errors` (NaN invisible,
    +inf for a visible point without a finite prediction; mm with ``spacing``, else px) without torch."""
    d = pred - gt
    if spacing is not None:
        d = d * np.asarray(spacing, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        e = np.sqrt(np.sum(d * d, axis=-1))
    e = np.where(np.all(np.isfinite(pred), axis=-1), e, np.inf)
    return np.where(vis & np.all(np.isfinite(gt), axis=-1), e, np.nan)


def prediction_models(pred_json_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The models (``"regressor"``, ``"heatmap"``) whose points the prediction files hold, in that order.

    Raises:
        FileNotFoundError: a path does not exist; PredictionError: a malformed file.
    """
    from monai_spine.data.prediction import MODEL_NAMES, read_prediction

    held: set[str] = set()
    for pp in _expand(pred_json_paths, "predictions"):
        held.update(read_prediction(pp).models)
    return [m for m in MODEL_NAMES if m in held]


def collect_errors(
    pred_json_paths: str | os.PathLike | Sequence[str | os.PathLike],
    annotation_paths: str | os.PathLike | Sequence[str | os.PathLike],
    sigma_kind: str = "total",
    on_mixed_spacing: str = "px",
    model: str | None = None,
) -> MatchedPoints:
    """Match prediction files to annotations and compute every visible point's error.

    Prediction files of every producer are read with :func:`monai_spine.data.prediction.read_prediction`
    (``predict`` with either model or both, ``corners``, the bundle's inference). Matching: a prediction
    ``<stem>.keypoints.json`` (or ``<stem>.<ext>.corners.json``) goes with the annotation ``<stem>.json``;
    when no single annotation has that stem, with the annotation whose ``image`` path equals the
    prediction's ``image``. Annotations without a prediction are ignored (pass a whole dataset
    folder); a prediction without an annotation is an error. A prediction made on another film than
    its annotation's (image path, image size or pixel spacing differ) is an error too. Vertebrae are
    matched by level and points by name; levels absent from the annotation and invisible points are
    skipped (and counted in :attr:`MatchedPoints.detection`); points the model does not predict
    (the heatmap's spinous process) are left out.

    Spacing: the prediction's ``spacing_mm`` (what the predictor used; it must equal the
    annotation's), else the annotation's. Errors are in mm when every case has a spacing; otherwise
    in px for all (``on_mixed_spacing="px"``, with a warning) or ``ValueError`` (``"raise"``), as in
    :func:`monai_spine.metrics.keypoint_error.keypoint_errors`.

    Args:
        pred_json_paths: prediction files or folders (:data:`PREDICTION_SUFFIXES`).
        annotation_paths: annotation files or dataset folders.
        sigma_kind: ``"total"``, ``"aleatoric"`` or ``"epistemic"`` (``sigma_p_<kind>_frac``/``_mm``).
        on_mixed_spacing: ``"px"`` or ``"raise"``.
        model: the point set to match in files holding two (``predict --model both``):
            ``"regressor"`` or ``"heatmap"``; None: each file's first (the regressor's when present).
            A file without points of ``model`` is an error.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError / KeyError: unmatched, mismatched or malformed prediction file (the message names it).
    """
    from monai_spine.data.annotation import read_annotation
    from monai_spine.data.keypoints import get_scheme
    from monai_spine.data.prediction import read_prediction

    if sigma_kind not in ("total", "aleatoric", "epistemic"):
        raise ValueError(f"sigma_kind must be total, aleatoric or epistemic, got {sigma_kind!r}")
    if on_mixed_spacing not in ("px", "raise"):
        raise ValueError(f"on_mixed_spacing must be 'px' or 'raise', got {on_mixed_spacing!r}")
    preds = _expand(pred_json_paths, "predictions")
    anns = {p.resolve(): read_annotation(p) for p in _expand(annotation_paths, "annotations")}
    by_stem: dict[str, list[Path]] = {}
    by_image: dict[str, list[Path]] = {}
    for p, a in anns.items():
        by_stem.setdefault(_pred_stem(p), []).append(p)
        if a.image is not None:
            by_image.setdefault(os.path.normpath(os.path.abspath(a.image)), []).append(p)

    rows: list[dict[str, Any]] = []
    det = {"num_cases": 0, "annotated": 0, "found": 0, "missed": [], "extra": [], "inferred": []}
    for pp in preds:
        pred = read_prediction(pp)
        cands = by_stem.get(_pred_stem(pp), [])
        if len(cands) != 1 and pred.image:
            cands = by_image.get(os.path.normpath(os.path.abspath(str(pred.image))), [])
        if len(cands) != 1:
            why = "no" if not cands else f"{len(cands)}"
            raise ValueError(f"{pp}: {why} matching annotation (by file stem or image path)")
        ann = anns[cands[0]]
        if pred.scheme != ann.scheme:
            raise ValueError(f"{pp}: scheme {pred.scheme!r} differs from the annotation's {ann.scheme!r} ({cands[0]})")
        _check_same_film(pred, pp, ann, cands[0])
        if any(lev is None for lev in pred.levels):
            raise ValueError(f"{pp}: vertebrae have no level names, so they cannot be matched to the annotation "
                             "(give --levels to monai-spine corners)")
        sch = get_scheme(ann.scheme)
        level_index = {lev: i for i, lev in enumerate(ann.levels)}
        annotated = {lev for i, lev in enumerate(ann.levels) if np.any(ann.visible[i])}
        if not pred.points and not pred.levels:  # nothing detected on this film
            found_levels: set[str] = set()
            ps = None
        else:
            ps = pred.point_set(model)
            seen = ~pred.inferred if pred.inferred is not None else np.ones(len(pred.levels), bool)
            found_levels = {str(lev) for i, lev in enumerate(pred.levels) if ps.found[i].any() and seen[i]}
            det["inferred"] += [[str(pp), str(lev)] for i, lev in enumerate(pred.levels) if not seen[i]]
        det["num_cases"] += 1
        det["annotated"] += len(annotated)
        det["found"] += len(annotated & found_levels)
        det["missed"] += [[str(pp), lev] for lev in ann.levels if lev in annotated - found_levels]
        det["extra"] += [[str(pp), lev] for lev in sorted(found_levels - set(ann.levels))]
        if ps is None:
            continue
        pred_px, gt_px, vis, sf, sm, lev_rows = [], [], [], [], [], []
        for vi, lev in enumerate(pred.levels):
            if lev not in level_index:
                continue
            i = level_index[lev]
            pred_px.append(ps.keypoints_px[vi])
            gt_px.append(ann.keypoints_px[i])
            vis.append(ann.visible[i] & ps.predicted[vi])
            sf.append(ps.sigma_p_frac[sigma_kind][vi])
            sm.append(ps.sigma_p_mm[sigma_kind][vi])
            lev_rows.append(lev)
        if not pred_px:
            continue
        spacing = pred.spacing_mm or ann.spacing_mm
        rows.append(
            dict(
                case=str(pp),
                pred=np.stack(pred_px),
                gt=np.stack(gt_px),
                vis=np.stack(vis),
                sf=np.stack(sf),
                sm=np.stack(sm),
                levels=lev_rows,
                types=np.asarray(sch.point_types),
                names=np.asarray(sch.point_names),
                spacing=None if spacing is None else np.asarray(spacing, dtype=np.float64),
            )
        )
    if not rows:
        raise ValueError("no prediction could be matched to an annotated vertebra")
    det["recall"] = det["found"] / det["annotated"] if det["annotated"] else float("nan")

    known = [r["spacing"] is not None for r in rows]
    unit = "mm" if all(known) else "px"
    if unit == "px" and any(known):
        msg = (
            f"pixel spacing is unknown for {known.count(False)} of {len(rows)} cases: "
            "calibration errors are in pixels (unit 'px')"
        )
        if on_mixed_spacing == "raise":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("e", "sf", "sm", "t", "n", "l", "c")}
    for r in rows:
        err = _errors_np(r["pred"], r["gt"], r["vis"], r["spacing"] if unit == "mm" else None)
        m = ~np.isnan(err)
        nv, kk = err.shape
        out["e"].append(err[m])
        out["sf"].append(r["sf"][m])
        out["sm"].append(r["sm"][m])
        out["t"].append(np.broadcast_to(r["types"], (nv, kk))[m])
        out["n"].append(np.broadcast_to(r["names"], (nv, kk))[m])
        out["l"].append(np.broadcast_to(np.asarray(r["levels"])[:, None], (nv, kk))[m])
        out["c"].append(np.full(int(m.sum()), r["case"], dtype=object))
    cat = {k: np.concatenate(v) for k, v in out.items()}
    return MatchedPoints(
        errors=cat["e"].astype(np.float64),
        sigma_frac=cat["sf"].astype(np.float64),
        sigma_mm=cat["sm"].astype(np.float64),
        point_types=cat["t"].astype(str),
        point_names=cat["n"].astype(str),
        levels=cat["l"].astype(str),
        cases=cat["c"].astype(str),
        error_unit=unit,
        detection=det,
        model=model,
    )
