"""The Label app's models and their predictions, free of MONAI Label: :class:`ModelStore`.

A :class:`ModelStore` loads the models of the app's folder (:mod:`~monai_spine.apps.label.lib.core`)
lazily, reloads them when a file changes (e.g. after the training task replaced ``model.pt``) and
serialises predictions with one lock: the regressor seeds torch's global random generator for its
MC-dropout masks, so two predictions must not overlap if each is to be reproducible (the
concurrency test relies on it). It also summarises a prediction: :func:`uncertainty_score` (for
active learning) and :func:`view_check` (does the film look like the model's view).

Units: points are ``(x, y)`` pixels of the radiograph (:mod:`monai_spine.data.keypoints`); ``sigma_p``
is given in crop fractions and, when the spacing is known, in mm.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from monai_spine.apps.label.lib.clicks import _one_click_neighbour, check_inside, click_levels, parse_centres
from monai_spine.apps.label.lib.core import LabelAppConfig, LabelAppError, expected_scheme

__all__ = ["ModelStore", "uncertainty_score", "view_check"]


def _stamp(paths: Sequence[Path]) -> tuple:
    out = []
    for p in paths:
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), None, None))
    return tuple(out)


def view_check(detections: Any, levels_expected: Sequence[str], min_detected_frac: float,
               min_score: float = 0.0) -> dict[str, Any]:
    """Does a film look like the detector's view? The detector must find enough of its levels, confidently.

    Args:
        detections: :class:`~monai_spine.inference.detector.Detections` (or anything with ``levels``
            and ``scores``): the vertebrae seen on the film (the app leaves out levels the pipeline
            only inferred and detections whose centre lies off the film).
        levels_expected: the detector's levels (its region).
        min_detected_frac: smallest fraction of ``levels_expected`` that must be detected.
        min_score: smallest mean detection score.

    Returns:
        ``{"in_domain": bool, "detected": n, "expected": N, "detected_frac": n / N,
        "mean_score": float or None, "reason": str or None}``.
    """
    n = len(detections.levels) if detections is not None else 0
    total = max(len(levels_expected), 1)
    scores = np.asarray(getattr(detections, "scores", []) if detections is not None else [], dtype=np.float64)
    mean = float(scores.mean()) if scores.size else None
    frac = n / total
    reasons = []
    if frac < min_detected_frac:
        reasons.append(f"the detector found {n} of its {total} levels ({frac:.0%}, fewer than "
                       f"{min_detected_frac:.0%})")
    if mean is not None and mean < min_score:
        reasons.append(f"mean detection score {mean:.2f} below {min_score:.2f}")
    reason = None
    if reasons:
        reason = ("this film does not look like the model's view: " + "; ".join(reasons)
                  + ". Check the view (AP or lateral) and the region before trusting the points.")
    return {"in_domain": not reasons, "detected": n, "expected": total, "detected_frac": round(frac, 4),
            "mean_score": None if mean is None else round(mean, 4), "reason": reason}


def uncertainty_score(result: Mapping[str, Any]) -> float | None:
    """Mean total ``sigma_p`` (crop fractions) over every predicted point of a pipeline result.

    Crop fractions are used (not mm) so that images with and without a known spacing compare.

    Returns:
        The mean, or None when no point was predicted (nothing detected).
    """
    vals = [p.get("sigma_p_total_frac") for v in result.get("vertebrae", []) for p in (v.get("points") or [])]
    vals = [float(s) for s in vals if s is not None and math.isfinite(float(s))]
    return float(np.mean(vals)) if vals else None


class ModelStore:
    """Lazily loaded, file-change-aware models of one :class:`LabelAppConfig`, with one prediction lock.

    Args:
        config: the app configuration.
    """

    def __init__(self, config: LabelAppConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[tuple, Any]] = {}

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the prediction lock (models are not reloaded and no other prediction runs meanwhile)."""
        with self._lock:
            yield

    def _get(self, key: str, paths: Sequence[Path], build: Any) -> Any:
        with self._lock:
            stamp = _stamp(paths)
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
            obj = build()
            self._cache[key] = (stamp, obj)
            return obj

    def detector(self) -> Any:
        """The :class:`VertebraDetector` of ``<models>/detector``."""
        from monai_spine.inference.detector import VertebraDetector

        d = self.config.detector_dir
        return self._get("detector", [d], lambda: VertebraDetector.from_checkpoint(d))

    def regressor(self) -> Any:
        """The :class:`KeypointPredictor` of ``<models>/model.pt``."""
        from monai_spine.inference.regressor import KeypointPredictor

        cfg = self.config
        det = self.detector()
        region = cfg.region or det.spec.region
        ckpt = cfg.regressor_checkpoint
        paths = [ckpt, ckpt.parent / "thresholds.json", ckpt.parent / "conformal.json"]
        return self._get("regressor", paths, lambda: KeypointPredictor.from_checkpoint(ckpt, **cfg.regressor_kwargs(region)))

    def corner_predictor(self) -> Any:
        """The :class:`CornerPredictor` of ``<models>/heatmap``."""
        from monai_spine.inference.heatmap import CornerPredictor

        d = self.config.heatmap_dir
        return self._get("heatmap", [d], lambda: CornerPredictor.from_ckpt_dir(d))

    def pipeline(self, model: str = "regressor") -> Any:
        """A :class:`SpinePipeline` (no overlays) for ``model`` in ``regressor``, ``heatmap``, ``both``.

        Raises:
            LabelAppError: unknown model name; FileNotFoundError: a model file is missing.
        """
        from monai_spine.inference.pipeline import MODELS, SpinePipeline

        if model not in MODELS:
            raise LabelAppError(f"model must be one of {MODELS}, got {model!r}")
        with self._lock:
            reg = self.regressor() if model in ("regressor", "both") else None
            cp = self.corner_predictor() if model in ("heatmap", "both") else None
            return SpinePipeline(self.detector(), reg, cp, overlays=False)

    # -------------------------------------------------------------------------- tasks
    def predict(self, image_path: str | os.PathLike, model: str = "regressor", name: str | None = None) -> dict[str, Any]:
        """Whole-radiograph prediction, as ``monai-spine predict`` writes it.

        Args:
            image_path: the radiograph (DICOM, PNG, JPEG; spacing from the header or a sidecar).
            model: ``regressor`` (default), ``heatmap`` or ``both``.
            name: image name recorded in the result (default the path).

        Returns:
            ``{"result": <monai-spine-prediction JSON>, "markups": <Slicer markups of the keypoints or
            None>, "corners_markups": <of the heatmap corners or None>, "uncertainty": mean sigma_p}``.
        """
        from monai_spine.outputs import output_stem

        with self._lock:
            pipe = self.pipeline(model)
            with tempfile.TemporaryDirectory(prefix="monai-spine-label-") as tmp:
                res = pipe.predict_file(image_path, tmp, stem=output_stem(image_path))
                out = {"result": res.result, "markups": None, "corners_markups": None}
                for key in ("markups", "corners_markups"):  # the files predict_file wrote, read back
                    if key in res.files:
                        out[key] = json.loads(Path(res.files[key]).read_text(encoding="utf-8"))
            det_levels = list(pipe.detector.levels)
        if name is not None:
            out["result"]["image"] = name
        out["uncertainty"] = uncertainty_score(out["result"])
        verts = _seen_on_film(out["result"].get("vertebrae", []), out["markups"] or out["corners_markups"])
        dets = _DetectedView([v.get("level") for v in verts],
                             [v["detection_score"] for v in verts if v.get("detection_score") is not None])
        cfg = self.config
        out["view"] = view_check(dets, det_levels, cfg.ood_min_detected_frac, cfg.ood_min_score)
        warnings = []
        if not out["view"]["in_domain"]:
            warnings.append(out["view"]["reason"])
        if model in ("regressor", "both") and not (cfg.regressor_checkpoint.parent / "thresholds.json").is_file():
            warnings.append("no thresholds.json beside the regressor: the uncertainty classes use the paper's "
                            "thresholds, not ones fitted to this model (calibrate them before trusting the classes)")
        out["warnings"] = warnings
        return out

    def expected_scheme(self) -> str | None:
        """The keypoint scheme of the regressor (labels must have it), or None without a regressor."""
        return expected_scheme(self.config)

    def corners(self, image_path: str | os.PathLike, centres_px: Any, levels: Sequence[str] | None = None,
                name: str | None = None, first_level: str | None = None) -> dict[str, Any]:
        """Heatmap-FCN corners of the clicked vertebrae (the Al Arif semi-automatic workflow), from one click on.

        Clicks outside the image are refused before any model runs. Levels are given (``levels``,
        ``first_level``) or inferred (:func:`click_levels`: from the detector when the app has one,
        else from the top of the model's region down). One click: the vertebra's size and
        orientation come from the detection at the click (its box, and the line through its
        detected neighbours); without a detection there, the click is refused with the reason.

        Args:
            image_path: the radiograph.
            centres_px: clicked vertebra centres, see :func:`parse_centres` (at least one).
            levels: optional level per centre (``"C3"``...).
            name: image name recorded in the result.
            first_level: optional level of the topmost click (``"auto"``: inferred).

        Returns:
            ``{"result": <monai-spine-corners JSON, with "levels_source">, "markups": <Slicer markups: the
            four corners per vertebra, labelled like C4-AS; the SP point "missing">}``.

        Raises:
            LabelAppError: bad centres or levels; FileNotFoundError: no heatmap model.
        """
        from dataclasses import replace

        from monai_spine.data.annotation import SpineAnnotation
        from monai_spine.data.keypoints import get_region, get_scheme
        from monai_spine.data.readers import read_xray
        from monai_spine.data.slicer import annotation_to_markups

        c = parse_centres(centres_px, min_count=1)
        img = read_xray(image_path)
        check_inside(c, img.size_wh)
        with self._lock:
            cp = self.corner_predictor()
            region = cp.spec.region
            need_det = len(c) == 1 or not levels
            det = None
            if need_det and self.config.has_detector():
                det = self.detector().detect(img.channel_first(), img.spacing_mm, img.spacing_source)
            lv, source = click_levels(c, levels, first_level, det, region)
            centres, lvs = c, lv
            if len(c) == 1:
                extra, extra_level = _one_click_neighbour(c[0], lv[0], det, cp.spec.size_ratio)
                centres, lvs = np.vstack([c, extra[None]]), [lv[0], extra_level]
            pred = cp.predict(img.channel_first(), centres, img.spacing_mm, img.spacing_source, levels=lvs)
            if len(c) == 1:
                pred = replace(pred, corners_px=pred.corners_px[:1], sigma_px=pred.sigma_px[:1],
                               used_prior=pred.used_prior[:1], centres_px=pred.centres_px[:1],
                               orientations_deg=pred.orientations_deg[:1], sizes_px=pred.sizes_px[:1], levels=lv)
            result = cp.to_json(pred, image=name if name is not None else str(image_path))
            result["levels_source"] = source
            scheme = get_scheme(cp.spec.scheme)
        n = len(c)
        full = np.full((n, scheme.num_points, 2), np.nan)
        vis = np.zeros((n, scheme.num_points), bool)
        idx = list(scheme.corner_indices)
        full[:, idx] = pred.corners_px
        vis[:, idx] = np.all(np.isfinite(pred.corners_px), axis=-1)
        full[~vis] = np.nan
        desc = np.full((n, scheme.num_points), None, dtype=object)
        for i in range(n):
            for j, k in enumerate(idx):
                s = pred.sigma_px[i, j]
                desc[i, k] = f"sigma={s:.2f} px" if np.isfinite(s) else None
        try:
            get_region(region or "")
        except KeyError:
            region = "cervical" if scheme.name == "lateral5" else "ap"
        ann = SpineAnnotation(levels=lv, keypoints_px=full, visible=vis, region=region, scheme=scheme.name,
                              image=name or str(image_path), image_size=img.size_wh, spacing_mm=img.spacing_mm,
                              spacing_source=img.spacing_source)
        return {"result": result, "markups": annotation_to_markups(ann, {"description": desc}, name="corners")}


def _seen_on_film(verts: Sequence[Mapping[str, Any]], markups: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The predicted vertebrae the detector saw on the film: not ``inferred`` (placed between seen ones), and
    with the detected centre inside the image (its size from the markups' ``monaiSpine`` block, when given)."""
    seen = [v for v in verts if not v.get("inferred")]
    size = None
    for m in (markups or {}).get("markups") or []:
        size = ((m or {}).get("monaiSpine") or {}).get("image_size") or size
    if not size:
        return seen
    w, h = float(size[0]), float(size[1])

    def inside(v: Mapping[str, Any]) -> bool:
        c = v.get("centre_px")
        return c is None or (-0.5 <= float(c[0]) <= w - 0.5 and -0.5 <= float(c[1]) <= h - 0.5)

    return [v for v in seen if inside(v)]


class _DetectedView:
    """``levels`` and ``scores`` of a prediction's vertebrae, for :func:`view_check`."""

    def __init__(self, levels: Sequence[Any], scores: Sequence[float]) -> None:
        self.levels = list(levels)
        self.scores = list(scores)
