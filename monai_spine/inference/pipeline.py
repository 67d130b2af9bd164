"""Whole-radiograph prediction: detector, then keypoint regressor (and/or heatmap corners) per vertebra.

:class:`SpinePipeline` chains :class:`~monai_spine.inference.detector.VertebraDetector` (level-labelled
boxes and centres) with :class:`~monai_spine.inference.regressor.KeypointPredictor` (BayeRegX
keypoints with aleatoric / epistemic / total sigma_p, cropped from the detected boxes) and, optionally,
:class:`~monai_spine.inference.heatmap.CornerPredictor` (Al Arif corners from the detected centres).
For each radiograph ``<stem>`` it writes into the output folder (each file atomically: temporary
name, then rename; a radiograph whose outputs cannot all be written leaves none of them):

* ``<stem>.keypoints.json``: per vertebra its level, detection score, centre and box (px), and per
  point ``x_px, y_px, x_mm, y_mm`` (mm ``null`` when the spacing is unknown), ``sigma_p_<kind>_frac``
  and ``sigma_p_<kind>_mm`` for kinds aleatoric / epistemic / total, and the uncertainty class; the
  spacing and its source at the top. With the heatmap model each vertebra also (``both``) or only
  (``heatmap``) carries ``corners``. The file is read by ``monai-spine measure``.
* ``<stem>.mrk.json``: 3D Slicer markups of the regressor's points (``<stem>.corners.mrk.json`` for
  the heatmap corners).
* ``<stem>.overlay.png``: the radiograph with the points coloured by uncertainty class (heatmap
  corners in cyan beside the regressor's), their conformal radii, level names (``C4?`` inferred),
  a legend and a scale bar in mm when the spacing is known (:func:`overlay_layers`).

:func:`monai_spine.cli.predict.predict_cli` is the ``monai-spine predict PATH... --out DIR`` command. A film in which nothing
can be found (constant image, or no vertebra seen by the detector) gets no outputs there: it is listed
as ``nothing found in <file>: <why>`` on stderr and the command exits 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_spine.outputs import IMAGE_EXTENSIONS, output_stem  # re-exported: the names of predict's outputs

__all__ = [
    "SpinePipeline",
    "PipelineResult",
    "MODELS",
    "IMAGE_EXTENSIONS",
    "RESULT_FORMAT",
    "CORNER_COLOUR_RGB",
    "INFERRED_COLOUR_RGB",
    "inferred_sigma_px",
    "overlay_layers",
    "expand_inputs",
    "output_stem",
    "build_pipeline",
]

#: ``--model`` choices.
MODELS = ("regressor", "heatmap", "both")

#: Name of the per-radiograph JSON format.
RESULT_FORMAT = "monai-spine-prediction"


#: Colour of heatmap corners in the overlay (cyan).
CORNER_COLOUR_RGB = (0, 255, 255)

#: Colour of the corners of inferred vertebrae (not seen by the detector) in the overlay (red).
INFERRED_COLOUR_RGB = (255, 0, 0)

_KINDS = ("aleatoric", "epistemic", "total")


@dataclass
class PipelineResult:
    """Outputs of one radiograph.

    Attributes:
        image: the input path.
        result: the JSON record written to ``<stem>.keypoints.json``.
        files: paths written (``keypoints``, ``markups``, ``corners_markups``, ``overlay``).
    """

    image: str
    result: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


def expand_inputs(paths: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """Files named in ``paths``, folders replaced by their image files (recursively, sorted).

    Inside folders only names ending in :data:`IMAGE_EXTENSIONS` are taken; hidden files and anything
    under ``exclude`` (the output folder) are skipped. Explicit files are kept as given (also missing
    ones, so that they are reported as failures). Duplicates are dropped, first occurrence kept.
    """
    ex = Path(exclude).resolve() if exclude is not None else None
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = []
            for f in p.rglob("*"):
                if not f.is_file() or f.name.startswith(".") or not f.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if ex is not None and ex in f.resolve().parents:
                    continue
                found.append(f)
            cands = sorted(found)
        else:
            cands = [p]
        for f in cands:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


class SpinePipeline:
    """Detector + regressor (+ heatmap corners) on whole radiographs.

    Args:
        detector: an object with ``detect(image (1, H, W), spacing_mm, spacing_source) -> Detections``
            (:class:`~monai_spine.inference.detector.VertebraDetector`).
        regressor: a :class:`~monai_spine.inference.regressor.KeypointPredictor`, or None for the
            heatmap model alone.
        corner_predictor: a :class:`~monai_spine.inference.heatmap.CornerPredictor`, or None.
        overlays: write the overlay PNG.

    Raises:
        ValueError: neither a regressor nor a corner predictor.
    """

    def __init__(self, detector: Any, regressor: Any | None = None, corner_predictor: Any | None = None,
                 overlays: bool = True) -> None:
        if regressor is None and corner_predictor is None:
            raise ValueError("SpinePipeline needs a regressor, a corner predictor or both")
        self.detector = detector
        self.regressor = regressor
        self.corner_predictor = corner_predictor
        self.overlays = bool(overlays)

    # ------------------------------------------------------------------ prediction
    def predict_image(self, image: np.ndarray, spacing_mm: Sequence[float] | None, spacing_source: str = "unknown",
                      name: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Predict one radiograph held in memory.

        Args:
            image: ``(1, H, W)`` or ``(H, W)`` raw radiograph.
            spacing_mm: ``(sx, sy)`` mm per pixel, or None when unknown.
            spacing_source: where the spacing came from.
            name: image path recorded in the result.

        Returns:
            ``(result, parts)``: the JSON record, and the raw predictions (``detections``,
            ``keypoints`` (:class:`KeypointPrediction` or None), ``corners`` (:class:`CornerPrediction`
            or None)).
        """
        img = np.asarray(image, dtype=np.float32)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3 or img.shape[0] != 1:
            raise ValueError(f"{name or 'image'}: expected a (1, H, W) or (H, W) radiograph, got shape {img.shape}")
        sp = None if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
        source = spacing_source if sp is not None else "unknown"
        det = self.detector.detect(img, sp, source)
        levels = [str(v) for v in det.levels]
        centres = np.asarray(det.centres_px, dtype=np.float64).reshape(-1, 2)
        boxes = np.asarray(det.boxes_px, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
        kp = None
        if self.regressor is not None:
            reg_boxes, angles = self.regressor.vertebra_boxes(boxes, centres, levels)  # its training framing
            kp = self.regressor.predict(img, reg_boxes, sp, source, angles_rad=angles)
            result = self.regressor.to_json(kp, levels, image=name)
        else:
            result = {
                "image": name, "scheme": self.corner_predictor.spec.scheme,
                "spacing_mm": None if sp is None else list(sp), "spacing_source": source,
                "units_note": "mm values are null when the spacing is unknown; pixel values are always given",
                "vertebrae": [{"level": lev} for lev in levels],
            }
        corners = None
        if self.corner_predictor is not None and len(levels) >= 2:
            corners = self.corner_predictor.predict(img, centres, sp, source, levels=levels)
            cj = self.corner_predictor.to_json(corners, image=name)
            for v, cv in zip(result["vertebrae"], cj["vertebrae"]):
                v["corners"] = cv["corners"]
            for key in ("thresholds", "conformal"):  # the FCN's own calibration (mm, on sqrt(2) x sigma)
                if key in cj:
                    result[f"corner_{key}"] = cj[key]
        elif self.corner_predictor is not None:
            for v in result["vertebrae"]:
                v["corners"] = None
        inferred = np.asarray(getattr(det, "inferred", None) if getattr(det, "inferred", None) is not None
                              else np.zeros(len(levels), bool), dtype=bool).reshape(-1)
        for i, v in enumerate(result["vertebrae"]):
            v["detection_score"] = float(scores[i])
            v["centre_px"] = [float(t) for t in centres[i]]
            v["box_px"] = [float(t) for t in boxes[i]]
            v["inferred"] = bool(inferred[i])
            if inferred[i]:
                _mark_inferred(v, boxes[i], sp)
        models = ([] if self.regressor is None else ["regressor"]) + ([] if self.corner_predictor is None else ["heatmap"])
        result = {"format": RESULT_FORMAT, "version": 1, **result, "models": models}
        if getattr(det, "warnings", None):
            result["warnings"] = list(det.warnings)
        if inferred.any():
            result["inferred_note"] = (
                f"{int(inferred.sum())} of {len(levels)} levels were not seen by the detector but placed along the "
                "spine between or beyond the seen ones (vertebra 'inferred': true); their points carry a sigma of "
                "half the vertebra's box diagonal and the class highly_uncertain")
        if self.corner_predictor is not None and len(levels) < 2:
            result["corners_note"] = "heatmap corners need at least two detected vertebrae"
        return result, {"detections": det, "keypoints": kp, "corners": corners, "levels": levels}

    def predict_file(self, path: str | os.PathLike, out_dir: str | os.PathLike, stem: str | None = None,
                     spacing_mm: Sequence[float] | None = None, require_found: bool = False) -> PipelineResult:
        """Read a radiograph, predict it and write its outputs into ``out_dir``.

        Every output is written atomically; if one of them fails, those already written for this
        radiograph are removed, so a failure leaves no partial set.

        Args:
            path: DICOM, PNG/JPEG/TIFF, NIfTI or NRRD (spacing from the header or ``<path>.spacing.json``).
            out_dir: output folder (created).
            stem: output name (default :func:`output_stem`).
            spacing_mm: ``(sx, sy)`` overriding the file's spacing (recorded as ``"sidecar"``).
            require_found: refuse a film that gives no result, before anything is written: a constant
                image (not even given to the detector) or one where the detector saw no vertebra
                (none, or only levels it inferred). ``monai-spine predict`` sets it; the apps and
                benchmarks keep the empty result (False).

        Raises:
            monai_spine.outputs.NothingFoundError: ``require_found`` and nothing was found (the
                message starts ``nothing found in <path>``); no output written, ``out_dir`` not created.
        """
        from monai_spine.data.readers import read_xray

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        if require_found:
            import warnings

            from monai_spine.data.readers import XrayWarning
            from monai_spine.outputs import check_film_has_contrast

            with warnings.catch_warnings():  # the reader's "constant image" warning: said once, below
                warnings.filterwarnings("ignore", message=r".*constant image", category=XrayWarning)
                img = read_xray(path, spacing_mm=spacing_mm)
            check_film_has_contrast(img.array, path)
        else:
            img = read_xray(path, spacing_mm=spacing_mm)
        result, parts = self.predict_image(img.channel_first(), img.spacing_mm, img.spacing_source, name=str(path))
        if require_found:
            _check_found(result, path)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or output_stem(path)
        files: dict[str, str] = {}
        try:
            self._write_outputs(out, stem, img, result, parts, files)
        except BaseException:
            for f in files.values():
                Path(f).unlink(missing_ok=True)
            raise
        return PipelineResult(str(path), result, files)

    # ------------------------------------------------------------------ outputs
    def _annotation(self, img: Any, levels: list[str], keypoints_px: np.ndarray, visible: np.ndarray, scheme: str) -> Any:
        from monai_spine.data.annotation import SpineAnnotation
        from monai_spine.data.keypoints import get_scheme

        region = getattr(getattr(self.detector, "spec", None), "region", None) or _region_of(levels, scheme)
        return SpineAnnotation(
            levels=list(levels), keypoints_px=keypoints_px, visible=visible, region=region,
            scheme=get_scheme(scheme).name, image=img.path, image_size=img.size_wh,
            spacing_mm=img.spacing_mm, spacing_source=img.spacing_source,
        )

    def _write_outputs(self, out: Path, stem: str, img: Any, result: dict[str, Any], parts: dict[str, Any],
                       files: dict[str, str]) -> None:
        from monai_spine.data.annotation import atomic_write_text
        from monai_spine.data.slicer import write_slicer_markups
        from monai_spine.inference.overlay import write_overlay
        from monai_spine.inference.regressor import KeypointPredictor

        levels = parts["levels"]
        json_path = out / f"{stem}.keypoints.json"
        atomic_write_text(json_path, KeypointPredictor.dumps(result))
        files["keypoints"] = str(json_path)
        kp = parts["keypoints"]
        if kp is not None:
            n, k = kp.keypoints_px.shape[:2]
            desc = np.empty((n, k), dtype=object)
            for i in range(n):
                for j in range(k):
                    s = kp.sigma_mm["total"][i, j]
                    s_txt = f"{s:.2f} mm" if np.isfinite(s) else f"{kp.sigma_frac['total'][i, j]:.4f} (crop fraction)"
                    desc[i, j] = f"sigma_p={s_txt}; {result['vertebrae'][i]['points'][j]['uncertainty_class']}"
                    if result["vertebrae"][i].get("inferred"):
                        desc[i, j] += "; inferred (not seen by the detector)"
            ann = self._annotation(img, levels, kp.keypoints_px, np.ones((n, k), bool), self.regressor.scheme.name)
            mrk = out / f"{stem}.mrk.json"
            write_slicer_markups(ann, mrk, point_fields={"description": desc})
            files["markups"] = str(mrk)
        cp = parts["corners"]
        if cp is not None:
            from monai_spine.data.keypoints import get_scheme

            scheme = get_scheme(self.corner_predictor.spec.scheme)
            n = len(cp.corners_px)
            full = np.full((n, scheme.num_points, 2), np.nan)
            vis = np.zeros((n, scheme.num_points), bool)
            idx = list(scheme.corner_indices)
            full[:, idx] = cp.corners_px
            vis[:, idx] = np.all(np.isfinite(cp.corners_px), axis=-1)
            full[~vis] = np.nan  # the SP point (and failed corners): "missing" in the markups
            ann = self._annotation(img, levels, full, vis, scheme.name)
            cmrk = out / f"{stem}.corners.mrk.json"
            inferred = np.array([bool(v.get("inferred")) for v in result["vertebrae"]], dtype=bool)
            cdesc = np.empty((n, scheme.num_points), dtype=object)
            cdesc[:] = "seen"
            cdesc[inferred] = "inferred (not seen by the detector); highly_uncertain"
            write_slicer_markups(ann, cmrk, name="corners", point_fields={"description": cdesc})
            files["corners_markups"] = str(cmrk)
        if self.overlays:
            png = out / f"{stem}.overlay.png"
            layers, legend = overlay_layers(result)
            write_overlay(png, img.array, layers, spacing_mm=result.get("spacing_mm"), legend=legend)
            files["overlay"] = str(png)


def _radii_px(items: Sequence[dict[str, Any]], spacing_mm: Sequence[float] | None) -> np.ndarray:
    """``conformal_radius_px`` of each point, or ``conformal_radius_mm`` / mean spacing; NaN where none."""
    sp = None if spacing_mm is None else float(np.mean([float(t) for t in spacing_mm]))
    out = np.full(len(items), np.nan)
    for i, q in enumerate(items):
        if q.get("conformal_radius_px") is not None:
            out[i] = float(q["conformal_radius_px"])
        elif q.get("conformal_radius_mm") is not None and sp is not None and sp > 0:
            out[i] = float(q["conformal_radius_mm"]) / sp
    return out


def _xy_px(items: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[np.nan if q.get("x_px") is None else float(q["x_px"]),
                      np.nan if q.get("y_px") is None else float(q["y_px"])] for q in items], dtype=np.float64)


def _class_rgb(items: Sequence[dict[str, Any]], default_rgb: Sequence[int] | None = None) -> np.ndarray:
    """Colour of each point's ``uncertainty_class`` (grey when unknown); ``default_rgb`` for points without
    a class (red for an inferred one)."""
    from monai_spine.uncertainty.classes import CLASS_COLOURS_RGB, UNKNOWN_COLOUR_RGB

    rgb = []
    for q in items:
        name = q.get("uncertainty_class")
        if name is None and default_rgb is not None:
            rgb.append(INFERRED_COLOUR_RGB if q.get("inferred") else default_rgb)
        else:
            rgb.append(CLASS_COLOURS_RGB.get(str(name), UNKNOWN_COLOUR_RGB))
    return np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)


def overlay_layers(result: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """What the overlay of a prediction draws, read from its record (so the picture shows what the file says).

    * the regressor's points, coloured by their uncertainty class (an inferred vertebra's are highly
      uncertain, red), each with its conformal radius as a ring (``conformal_radius_px``, or ``_mm`` /
      mean spacing; none where the spacing is unknown and the radius is in mm);
    * the heatmap corners: coloured by their own class when the FCN is calibrated and drawn alone,
      cyan beside the regressor's points (``--model both``: the colour tells the models apart; their
      classes are in the file and the markups), red where inferred, with their conformal radius;
    * level names beside the vertebrae, ``C4?`` for a level inferred, not seen by the detector;
    * the legend: colours used, the ring with its nominal coverage, the inferred-level note, and
      ``no scale: pixel spacing unknown`` when there is no spacing (else the scale bar in mm says it).

    Args:
        result: a ``monai-spine-prediction`` record (:meth:`SpinePipeline.predict_image`).

    Returns:
        ``(layers, legend)``: :func:`~monai_spine.inference.overlay.draw_keypoints` keyword dicts, and
        the ``(text, marker)`` legend entries for :func:`~monai_spine.inference.overlay.write_overlay`.
    """
    from monai_spine.inference.overlay import legend_entries

    sp = result.get("spacing_mm")
    verts = result.get("vertebrae") or []
    labels = [f"{v.get('level')}?" if v.get("inferred") else str(v.get("level")) for v in verts]
    layers: list[dict[str, Any]] = []
    pts = [v.get("points") or [] for v in verts]
    has_points = bool(verts) and all(pts) and len({len(p) for p in pts}) == 1
    if has_points:
        k = len(pts[0])
        flat = [q for p in pts for q in p]
        layers.append(dict(keypoints_px=_xy_px(flat).reshape(len(verts), k, 2),
                           colors_rgb=_class_rgb(flat).reshape(len(verts), k, 3), labels=labels,
                           radii_px=_radii_px(flat, sp).reshape(len(verts), k)))
    cs = [v.get("corners") or [] for v in verts]
    if verts and all(cs) and len({len(c) for c in cs}) == 1:
        k = len(cs[0])
        flat = [dict(q, inferred=q.get("inferred") or v.get("inferred")) for v, c in zip(verts, cs) for q in c]
        if has_points:  # beside the regressor: cyan, red where inferred
            rgb = np.asarray([INFERRED_COLOUR_RGB if q["inferred"] else CORNER_COLOUR_RGB for q in flat], np.uint8)
        else:
            rgb = _class_rgb(flat, default_rgb=CORNER_COLOUR_RGB)
        layers.append(dict(keypoints_px=_xy_px(flat).reshape(len(verts), k, 2), colors_rgb=rgb.reshape(len(verts), k, 3),
                           labels=None if has_points else labels, radii_px=_radii_px(flat, sp).reshape(len(verts), k)))
    covs = sorted({float(c["nominal_coverage"]) for c in (result.get("conformal"), result.get("corner_conformal"))
                   if isinstance(c, dict) and c.get("nominal_coverage") is not None}, reverse=True)
    ring = "ring: conformal radius" + (f" ({' / '.join(f'{100 * c:.0f} %' for c in covs)} coverage)" if covs else "")
    legend = legend_entries(layers, ring_text=ring)
    if sp is None:
        legend.append(("no scale: pixel spacing unknown", None))
    return layers, legend


def _check_found(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`~monai_spine.outputs.NothingFoundError` when no vertebra of ``result`` was seen
    by the detector (none at all, or only inferred ones: a chain inferred from nothing is no result)."""
    from monai_spine.outputs import NothingFoundError

    verts = result.get("vertebrae") or []
    if any(not v.get("inferred") for v in verts):
        return
    why = "the detector saw no vertebra"
    if verts:
        why += f" ({len(verts)} levels would only be inferred, none seen)"
    notes = [str(w) for w in result.get("warnings") or []]
    raise NothingFoundError(f"nothing found in {os.fspath(path)}: {why}" + (f"; {'; '.join(notes)}" if notes else ""))


def inferred_sigma_px(box_px: Sequence[float]) -> float:
    """Sigma given to every point of an inferred vertebra: half the diagonal of its box, pixels."""
    b = np.asarray(box_px, dtype=np.float64).reshape(4)
    d = float(np.hypot(b[2] - b[0], b[3] - b[1])) / 2.0
    return d if np.isfinite(d) and d > 0 else float("nan")


def _mark_inferred(v: dict[str, Any], box_px: Sequence[float], spacing_mm: Sequence[float] | None) -> None:
    """Flag the points of one inferred vertebra: large sigma (:func:`inferred_sigma_px`), class highly_uncertain,
    and a conformal radius of at least that sigma (a radius fitted on seen vertebrae does not hold here)."""
    from monai_spine.uncertainty.classes import CLASS_NAMES, HIGHLY_UNCERTAIN

    s_px = inferred_sigma_px(box_px)
    s_mm = None if spacing_mm is None or not np.isfinite(s_px) else s_px * float(np.mean(spacing_mm))
    by_unit = {"px": s_px, "mm": s_mm}

    def at_least(d: dict[str, Any], key: str, unit: str) -> None:
        s = by_unit[unit]
        if key in d and s is not None and np.isfinite(s):
            d[key] = max(float(d[key] or 0.0), s)

    corners, points = v.get("corners") or [], v.get("points") or []
    for pt in [*corners, *points]:
        pt["inferred"] = True
        pt["uncertainty_class"] = CLASS_NAMES[HIGHLY_UNCERTAIN]
        for unit in by_unit:
            at_least(pt, f"conformal_radius_{unit}", unit)
    for c in corners:
        for unit in by_unit:
            at_least(c, f"sigma_{unit}", unit)
    for p in points:
        for kind in _KINDS:
            at_least(p, f"sigma_p_{kind}_mm", "mm")


def _region_of(levels: Sequence[str], scheme: str) -> str:
    """A region whose levels hold ``levels`` (for the markups record), ``cervical`` by default."""
    from monai_spine.data.keypoints import get_region

    for name in ("cervical", "lumbar", "ap"):
        try:
            reg = get_region(name)
        except KeyError:
            continue
        if reg.scheme.name == scheme and set(levels) <= set(reg.levels):
            return name
    return "cervical"


def _load_thresholds(path: str | os.PathLike | None, checkpoint: Path) -> Any:
    """Thresholds from ``path`` (must exist), else ``thresholds.json`` beside the checkpoint, else the paper's."""
    from monai_spine.inference.model_zoo import load_thresholds

    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"thresholds file {path} does not exist")
    return load_thresholds(checkpoint.parent / "thresholds.json" if path is None else path)


def _load_conformal(path: str | os.PathLike | None, checkpoint: Path) -> Any:
    """Conformal calibration from ``path`` (must exist), else ``conformal.json`` beside the checkpoint, else None."""
    from monai_spine.inference.regressor import load_conformal

    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"conformal file {path} does not exist")
        return load_conformal(path)
    return load_conformal(checkpoint.parent / "conformal.json")


def build_pipeline(model: str, detector_dir: Any, regressor_checkpoint: Any, variant: str, region: str | None,
                    width: float, fc_features: int, spatial_size: Sequence[int], margin_mm: float, mc_samples: int,
                    thresholds: Any, heatmap_dir: Any, overlays: bool, device: str, flip_tta: bool = False,
                    conformal: Any = None, regressor_dir: Any = None) -> SpinePipeline:
    """The pipeline ``monai-spine predict`` runs: the detector plus the chosen models, loaded from their folders.

    Args are those of :func:`monai_spine.cli.predict.predict_cli`; a ``regressor_dir`` with a spec
    overrides ``variant``, ``width``, ``fc_features``, ``spatial_size`` and ``margin_mm``.
    """
    from monai_spine.inference.detector import VertebraDetector
    from monai_spine.inference.model_zoo import default_detector_dir, default_regressor_checkpoint

    detector = VertebraDetector.from_checkpoint(detector_dir or default_detector_dir(), device=device)
    regressor = corners = None
    if model in ("regressor", "both"):
        from monai_spine.inference.regressor import KeypointPredictor

        if regressor_checkpoint is None and regressor_dir is not None:
            from monai_spine.inference.model_zoo import CHECKPOINT_FILE, read_spec

            rs = read_spec(regressor_dir, "regressor")
            regressor_checkpoint = Path(regressor_dir) / CHECKPOINT_FILE
            variant = str(rs.get("variant", variant))
            width = float(rs.get("width", rs.get("network_width", width)))
            fc_features = int(rs.get("fc_features", fc_features))
            spatial_size = tuple(rs.get("spatial_size", spatial_size))
            margin_mm = float(rs.get("margin_mm", margin_mm))
        ckpt = Path(regressor_checkpoint or default_regressor_checkpoint())
        size = tuple(int(s) for s in spatial_size)
        regressor = KeypointPredictor.from_checkpoint(
            ckpt, variant=variant, region=region or detector.spec.region,
            network_kwargs={"width": float(width), "fc_features": int(fc_features)},
            spatial_size=size, margin_mm=float(margin_mm), num_samples=int(mc_samples),
            thresholds=_load_thresholds(thresholds, ckpt), device=device,
            flip_tta=bool(flip_tta), conformal=_load_conformal(conformal, ckpt),
        )
    if model in ("heatmap", "both"):
        from monai_spine.inference.heatmap import CornerPredictor, default_ckpt_dir

        corners = CornerPredictor.from_ckpt_dir(heatmap_dir or default_ckpt_dir(), device=device)
    return SpinePipeline(detector, regressor, corners, overlays=overlays)
