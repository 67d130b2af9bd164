"""One reader for the per-radiograph prediction files of every model (``docs/formats.md``).

Three producers write a prediction JSON file per radiograph; :func:`read_prediction` reads each of
them into one :class:`Prediction`, validates it (the message of every error names the file, the
vertebra and the point) and checks the format version:

===================================  ===========================  ======================================
producer                             ``format`` / ``version``     points per vertebra
===================================  ===========================  ======================================
``monai-spine predict`` (pipeline)   ``monai-spine-prediction``   ``points`` (``--model regressor``),
                                     1                            ``corners`` (``heatmap``) or both
``monai-spine corners`` (heatmap)    ``monai-spine-corners`` 1    ``corners``
the bundle's inference / the demo    none (``scheme`` +           ``points``
(``KeypointPredictor.to_json``)      ``vertebrae``), read as 1
===================================  ===========================  ======================================

A file may hold two *point sets*, one per model: ``"regressor"`` (``points``: the K points of the
scheme with ``sigma_p_<kind>_frac`` / ``_mm`` for kinds aleatoric, epistemic, total) and
``"heatmap"`` (``corners``: the four body corners with a per-axis ``sigma_px`` / ``sigma_mm`` and, when
the FCN's folder holds its calibration, ``uncertainty_class`` and ``conformal_radius_mm``; the file's
``corner_thresholds`` / ``corner_conformal`` blocks, or ``thresholds`` / ``conformal`` of a corners file).
Both are held as (N, K, 2) pixel arrays over the scheme's K points (a point a model does not
predict, e.g. the spinous process of the heatmap model, is NaN and not ``predicted``). The heatmap's
per-axis spread is turned into the regressor's radial ``sigma_p`` convention as
``sigma_p = sqrt(2) * sigma_axis`` (the two axes' RMS spreads combined), under kind ``total`` only.

Missing or not-a-number coordinates (``null``, or ``NaN`` which Python's JSON reader accepts) are
kept as NaN and listed in :attr:`PointSet.missing`, so that a consumer can name them; they are never
silently read as 0.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from monai_spine.data.annotation import AnnotationError
from monai_spine.data.keypoints import get_scheme

__all__ = [
    "PREDICTION_FORMAT",
    "CORNERS_FORMAT",
    "LEGACY_FORMAT",
    "SUPPORTED_VERSIONS",
    "MODEL_NAMES",
    "SIGMA_KINDS",
    "CORNER_SIGMA_P_FACTOR",
    "PredictionError",
    "PointSet",
    "Prediction",
    "is_prediction",
    "read_prediction",
    "prediction_from_dict",
]

#: ``format`` of ``monai-spine predict``'s ``<stem>.keypoints.json``
PREDICTION_FORMAT = "monai-spine-prediction"
#: ``format`` of ``monai-spine corners``'s ``<image>.corners.json``
CORNERS_FORMAT = "monai-spine-corners"
#: the name this reader gives to files without ``format`` (``KeypointPredictor.to_json``: the demo and the bundle)
LEGACY_FORMAT = "keypoint-predictor"
#: versions this reader understands, per format
SUPPORTED_VERSIONS: dict[str, tuple[int, ...]] = {PREDICTION_FORMAT: (1,), CORNERS_FORMAT: (1,), LEGACY_FORMAT: (1,)}
#: point sets a file can hold, in the order a consumer prefers them by default
MODEL_NAMES = ("regressor", "heatmap")
#: ``sigma_p`` kinds of the regressor
SIGMA_KINDS = ("aleatoric", "epistemic", "total")
#: a heatmap corner's radial ``sigma_p`` over its per-axis spread (both axes' RMS spreads combined)
CORNER_SIGMA_P_FACTOR = math.sqrt(2.0)


class PredictionError(AnnotationError):
    """A prediction file is malformed or of an unknown format/version; the message names the file."""


@dataclass
class PointSet:
    """One model's points in a prediction file.

    Attributes:
        model: ``"regressor"`` or ``"heatmap"``.
        keypoints_px: (N, K, 2) (x, y) pixels over the scheme's K points; NaN where not predicted.
        predicted: (N, K) the model outputs this point (the heatmap: the four corners only).
        sigma_p_frac: kind -> (N, K) ``sigma_p`` in crop fractions (NaN where unknown).
        sigma_p_mm: kind -> (N, K) ``sigma_p`` in mm (NaN where unknown).
        sigma_p_px: kind -> (N, K) ``sigma_p`` in pixels (NaN where unknown).
        classes: (N, K) uncertainty class names, or None.
        conformal_radius: (N, K) conformal radius in :attr:`conformal_unit`, or None.
        conformal_unit: ``"mm"`` / ``"px"`` or None.
        from_prior: (N, K) the heatmap corner came from the shape prior (heatmap only), or None.
    """

    model: str
    keypoints_px: np.ndarray
    predicted: np.ndarray
    sigma_p_frac: dict[str, np.ndarray]
    sigma_p_mm: dict[str, np.ndarray]
    sigma_p_px: dict[str, np.ndarray]
    classes: np.ndarray | None = None
    conformal_radius: np.ndarray | None = None
    conformal_unit: str | None = None
    from_prior: np.ndarray | None = None

    @property
    def found(self) -> np.ndarray:
        """(N, K) predicted points with finite coordinates."""
        return self.predicted & np.all(np.isfinite(self.keypoints_px), axis=-1)

    @property
    def missing(self) -> np.ndarray:
        """(N, K) points the model should have given but whose coordinates are null / NaN."""
        return self.predicted & ~np.all(np.isfinite(self.keypoints_px), axis=-1)


@dataclass
class Prediction:
    """A prediction file as read by :func:`read_prediction`.

    Attributes:
        source: the file.
        format: :data:`PREDICTION_FORMAT`, :data:`CORNERS_FORMAT` or :data:`LEGACY_FORMAT`.
        version: the format version.
        scheme: ``lateral5`` or ``ap4``.
        levels: N level names (None where the producer was given none: ``corners`` without ``--levels``).
        points: model name -> :class:`PointSet` (one or both of :data:`MODEL_NAMES`).
        image: the radiograph the prediction was made on, as recorded (may be relative to the
            folder ``predict`` ran in), or None.
        image_size: (W, H) when recorded, else None.
        spacing_mm: (sx, sy) the predictor used, or None.
        spacing_source: where that spacing came from.
        region: recorded region, or None.
        detection_scores: (N,) detector scores (``predict``), or None.
        centres_px: (N, 2) vertebra centres (detected or clicked), or None.
        inferred: (N,) the vertebra was not seen by the detector but placed along the spine
            (``predict`` with a chain detector); all False when the file does not say.
        thresholds: the thresholds the regressor classed its points by, or None.
        corner_thresholds: the thresholds the heatmap FCN classed its corners by (its own calibration,
            on ``sigma_p = sqrt(2) * sigma``), or None.
        notes: the producer's notes (e.g. why the heatmap corners are absent).
        meta: other top-level fields (MC samples, flip TTA, conformal block, method).
    """

    source: str
    format: str
    version: int
    scheme: str
    levels: list[str | None]
    points: dict[str, PointSet]
    image: str | None = None
    image_size: tuple[int, int] | None = None
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str = "unknown"
    region: str | None = None
    detection_scores: np.ndarray | None = None
    centres_px: np.ndarray | None = None
    inferred: np.ndarray | None = None
    thresholds: dict[str, Any] | None = None
    corner_thresholds: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """The point sets held, in :data:`MODEL_NAMES` order."""
        return [m for m in MODEL_NAMES if m in self.points]

    def point_set(self, model: str | None = None) -> PointSet:
        """The point set of ``model`` (None: the regressor's when present, else the heatmap's).

        Raises:
            PredictionError: the file holds no points of ``model`` (the message names the file and
                what it holds).
        """
        if model is None:
            if not self.points:
                raise PredictionError(f"{self.source}: holds no points ({self.notes[0] if self.notes else 'empty'})")
            return self.points[self.models[0]]
        if model not in MODEL_NAMES:
            raise ValueError(f"model must be one of {MODEL_NAMES}, got {model!r}")
        if model not in self.points:
            held = ", ".join(self.models) or "none"
            raise PredictionError(f"{self.source}: holds no {model} points (models in the file: {held})")
        return self.points[model]

    def missing_points(self, model: str | None = None) -> list[str]:
        """``"<level> <point>"`` of every point of ``model`` whose coordinates are null / NaN."""
        ps = self.point_set(model)
        names = get_scheme(self.scheme).point_names
        return [f"{self.levels[i] or f'#{i + 1}'} {names[j]}" for i, j in zip(*np.nonzero(ps.missing))]


def is_prediction(d: Any) -> bool:
    """Whether a parsed JSON document looks like a prediction file of one of the known producers."""
    if not isinstance(d, dict):
        return False
    if d.get("format") in (PREDICTION_FORMAT, CORNERS_FORMAT):
        return True
    return "format" not in d and "scheme" in d and isinstance(d.get("vertebrae"), list)


def _num(v: Any, where: str) -> float:
    """A JSON number (None -> NaN); ``PredictionError`` naming ``where`` otherwise."""
    if v is None:
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PredictionError(f"{where}: expected a number or null, got {v!r}")
    return float(v)


def _empty(n: int, k: int) -> np.ndarray:
    return np.full((n, k), np.nan)


def _spacing(d: Mapping[str, Any], source: str) -> tuple[float, float] | None:
    sp = d.get("spacing_mm")
    if sp is None:
        return None
    try:
        if len(sp) != 2:
            raise ValueError
        spacing = (float(sp[0]), float(sp[1]))
    except (TypeError, ValueError, KeyError):
        raise PredictionError(f"{source}: 'spacing_mm' must be [sx, sy] or null, got {sp!r}") from None
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise PredictionError(f"{source}: 'spacing_mm' must be positive, got {sp!r}")
    return spacing


def _regressor_points(verts: list, source: str, sch: Any) -> PointSet | None:
    """The ``points`` of every vertebra (None when no vertebra has a ``points`` key)."""
    if not any(isinstance(v, dict) and "points" in v for v in verts):
        return None
    n, k = len(verts), sch.num_points
    kp = np.full((n, k, 2), np.nan)
    predicted = np.zeros((n, k), bool)
    frac = {kd: _empty(n, k) for kd in SIGMA_KINDS}
    mm = {kd: _empty(n, k) for kd in SIGMA_KINDS}
    px = {kd: _empty(n, k) for kd in SIGMA_KINDS}
    classes = np.full((n, k), "", dtype=object)
    radius = _empty(n, k)
    r_unit = None
    for i, v in enumerate(verts):
        where = f"{source}: vertebrae[{i}] ({v.get('level')})"
        pts = v.get("points")
        if not isinstance(pts, list):
            raise PredictionError(f"{where}: 'points' must be a list of {k} points, got {type(pts).__name__}")
        if len(pts) != k:
            raise PredictionError(f"{where}: expected {k} points for scheme {sch.name}, got {len(pts)}")
        for j, p in enumerate(pts):
            pw = f"{where} point {j}"
            if not isinstance(p, dict) or "x_px" not in p or "y_px" not in p:
                raise PredictionError(f"{pw}: needs 'x_px' and 'y_px' (a number or null)")
            if "name" in p and p["name"] != sch.point_names[j]:
                raise PredictionError(f"{pw}: is {p['name']!r}, expected {sch.point_names[j]!r} (scheme {sch.name})")
            pw = f"{where} point {sch.point_names[j]}"
            kp[i, j] = (_num(p["x_px"], f"{pw} x_px"), _num(p["y_px"], f"{pw} y_px"))
            predicted[i, j] = True
            for kd in SIGMA_KINDS:
                frac[kd][i, j] = _num(p.get(f"sigma_p_{kd}_frac"), f"{pw} sigma_p_{kd}_frac")
                mm[kd][i, j] = _num(p.get(f"sigma_p_{kd}_mm"), f"{pw} sigma_p_{kd}_mm")
                px[kd][i, j] = _num(p.get(f"sigma_p_{kd}_px"), f"{pw} sigma_p_{kd}_px")
            classes[i, j] = str(p.get("uncertainty_class") or "")
            for unit in ("mm", "px"):
                if f"conformal_radius_{unit}" in p:
                    radius[i, j] = _num(p[f"conformal_radius_{unit}"], f"{pw} conformal_radius_{unit}")
                    r_unit = unit
    return PointSet(
        model="regressor", keypoints_px=kp, predicted=predicted, sigma_p_frac=frac, sigma_p_mm=mm, sigma_p_px=px,
        classes=classes if np.any(classes != "") else None,
        conformal_radius=radius if r_unit else None, conformal_unit=r_unit,
    )


def _heatmap_points(verts: list, source: str, sch: Any) -> PointSet | None:
    """The ``corners`` of every vertebra (None when no vertebra has a ``corners`` key)."""
    if not any(isinstance(v, dict) and "corners" in v for v in verts):
        return None
    n, k = len(verts), sch.num_points
    corner_names = {sch.point_names[c]: c for c in sch.corner_indices}
    kp = np.full((n, k, 2), np.nan)
    predicted = np.zeros((n, k), bool)
    s_px, s_mm = _empty(n, k), _empty(n, k)
    prior = np.zeros((n, k), bool)
    classes = np.full((n, k), "", dtype=object)
    radius, r_unit = _empty(n, k), None
    for i, v in enumerate(verts):
        where = f"{source}: vertebrae[{i}] ({v.get('level')})"
        cs = v.get("corners")
        if cs is None:  # the producer could not run the heatmap model on this film: all four missing
            predicted[i, list(corner_names.values())] = True
            continue
        if not isinstance(cs, list) or len(cs) != 4:
            raise PredictionError(f"{where}: 'corners' must be a list of 4 corners or null, got {cs!r:.60}")
        for c in cs:
            if not isinstance(c, dict) or c.get("name") not in corner_names:
                raise PredictionError(f"{where}: a corner needs a 'name' in {sorted(corner_names)}, got {c!r:.60}")
            j = corner_names[c["name"]]
            pw = f"{where} corner {c['name']}"
            if predicted[i, j]:
                raise PredictionError(f"{pw}: given twice")
            if "x_px" not in c or "y_px" not in c:
                raise PredictionError(f"{pw}: needs 'x_px' and 'y_px' (a number or null)")
            kp[i, j] = (_num(c["x_px"], f"{pw} x_px"), _num(c["y_px"], f"{pw} y_px"))
            predicted[i, j] = True
            s_px[i, j] = _num(c.get("sigma_px"), f"{pw} sigma_px")
            s_mm[i, j] = _num(c.get("sigma_mm"), f"{pw} sigma_mm")
            prior[i, j] = bool(c.get("from_prior", False))
            classes[i, j] = str(c.get("uncertainty_class") or "")
            for unit in ("mm", "px"):
                if f"conformal_radius_{unit}" in c:
                    radius[i, j] = _num(c[f"conformal_radius_{unit}"], f"{pw} conformal_radius_{unit}")
                    r_unit = unit
    nan = {kd: _empty(n, k) for kd in SIGMA_KINDS}
    return PointSet(
        model="heatmap", keypoints_px=kp, predicted=predicted,
        sigma_p_frac=nan,
        sigma_p_mm={**{kd: _empty(n, k) for kd in SIGMA_KINDS}, "total": CORNER_SIGMA_P_FACTOR * s_mm},
        sigma_p_px={**{kd: _empty(n, k) for kd in SIGMA_KINDS}, "total": CORNER_SIGMA_P_FACTOR * s_px},
        classes=classes if np.any(classes != "") else None,
        conformal_radius=radius if r_unit else None, conformal_unit=r_unit,
        from_prior=prior,
    )


def prediction_from_dict(d: Any, source: str = "prediction") -> Prediction:
    """Validate a parsed prediction document (see the module docstring) into a :class:`Prediction`.

    Raises:
        PredictionError: not a prediction of a known producer, an unsupported version, or a
            malformed field (the message names ``source``, the vertebra and the field).
    """
    if not isinstance(d, dict):
        raise PredictionError(f"{source}: a prediction file holds a JSON object, got {type(d).__name__}")
    fmt = d.get("format", LEGACY_FORMAT)
    if fmt not in SUPPORTED_VERSIONS:
        raise PredictionError(
            f"{source}: format {fmt!r} is not a prediction (known: {PREDICTION_FORMAT!r}, {CORNERS_FORMAT!r}, "
            "or 'scheme' + 'vertebrae' without a format)"
        )
    version = d.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS[fmt]:
        raise PredictionError(
            f"{source}: {fmt} version {version!r} is not supported by this monai-spine (reads "
            f"{list(SUPPORTED_VERSIONS[fmt])}); update monai-spine or re-run the prediction"
        )
    try:
        sch = get_scheme(str(d.get("scheme", "")))
    except KeyError as e:
        raise PredictionError(f"{source}: {e.args[0]}") from None
    verts = d.get("vertebrae")
    if not isinstance(verts, list):
        raise PredictionError(f"{source}: 'vertebrae' must be a list")
    levels: list[str | None] = []
    for i, v in enumerate(verts):
        if not isinstance(v, dict):
            raise PredictionError(f"{source}: vertebrae[{i}] must be an object, got {type(v).__name__}")
        lev = v.get("level")
        if lev is not None and not isinstance(lev, str):
            raise PredictionError(f"{source}: vertebrae[{i}] 'level' must be a name or null, got {lev!r}")
        if lev is None and fmt != CORNERS_FORMAT:
            raise PredictionError(f"{source}: vertebrae[{i}] needs a 'level'")
        levels.append(lev)
    if verts and not any("points" in v or "corners" in v for v in verts):
        raise PredictionError(f"{source}: no vertebra has 'points' (regressor) or 'corners' (heatmap)")
    points = {}
    for ps in (_regressor_points(verts, source, sch), _heatmap_points(verts, source, sch)):
        if ps is not None:
            points[ps.model] = ps
    scores = centres = None
    if verts and all("detection_score" in v for v in verts):
        scores = np.asarray([_num(v["detection_score"], f"{source}: vertebrae[{i}] detection_score")
                             for i, v in enumerate(verts)])
    if verts and all(isinstance(v.get("centre_px"), list) and len(v["centre_px"]) == 2 for v in verts):
        centres = np.asarray([[_num(t, f"{source}: vertebrae[{i}] centre_px") for t in v["centre_px"]]
                              for i, v in enumerate(verts)])
    inferred = np.zeros(len(verts), bool)
    for i, v in enumerate(verts):
        flag = v.get("inferred", False)
        if not isinstance(flag, bool):
            raise PredictionError(f"{source}: vertebrae[{i}] 'inferred' must be true or false, got {flag!r}")
        inferred[i] = flag
    size = d.get("image_size")
    image_size = None
    if size is not None:
        try:
            image_size = (int(size[0]), int(size[1]))
        except (TypeError, ValueError, IndexError, KeyError):
            raise PredictionError(f"{source}: 'image_size' must be [W, H] or null, got {size!r}") from None
    spacing = _spacing(d, source)
    image = d.get("image")
    thr = d.get("thresholds")
    cthr = d.get("corner_thresholds") if fmt == PREDICTION_FORMAT else None
    if fmt == CORNERS_FORMAT:  # the corners file holds the FCN alone: its thresholds are the corners'
        thr, cthr = None, thr
    notes = [str(d[k]) for k in ("corners_note", "inferred_note") if d.get(k)]
    meta_keys = ("mc_dropout_samples", "flip_tta", "conformal", "corner_conformal", "method", "models", "units_note")
    return Prediction(
        source=str(source), format=fmt, version=int(version), scheme=sch.name, levels=levels, points=points,
        image=None if image is None else str(image), image_size=image_size, spacing_mm=spacing,
        spacing_source=str(d.get("spacing_source") or ("unknown" if spacing is None else "sidecar")),
        region=d.get("region") if isinstance(d.get("region"), str) else None,
        detection_scores=scores, centres_px=centres, inferred=inferred,
        thresholds=thr if isinstance(thr, dict) else None,
        corner_thresholds=cthr if isinstance(cthr, dict) else None, notes=notes,
        meta={k: d[k] for k in meta_keys if k in d},
    )


def read_prediction(path: str | os.PathLike) -> Prediction:
    """Read and validate one prediction file (any producer, see the module docstring).

    Raises:
        FileNotFoundError: the file does not exist.
        PredictionError: not valid JSON, not a prediction, an unsupported version or a malformed
            field (the message names the file).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PredictionError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise PredictionError(f"{path}: JSON nested too deeply") from None
    return prediction_from_dict(d, source=path)
