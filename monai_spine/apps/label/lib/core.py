"""The MONAI Label app's work, free of MONAI Label: configuration, models, predictions, labels, training.

Everything the app's tasks do lives here, so it is importable (and testable) without the
``monailabel`` package; :mod:`monai_spine.apps.label.lib.infers`, ``trainers``, ``scoring`` and
``activelearning`` are thin MONAI Label wrappers around it.

Models come from one folder. Without ``--conf models DIR`` (and without ``$MONAI_SPINE_LABEL_MODELS``)
it is the model zoo (:mod:`monai_spine.inference.model_zoo`: ``$MONAI_SPINE_MODELS`` or
``<repo>/bundle/models``), laid out ``<region>/<kind>/`` (``detector/``, ``regressor/`` with
``regressor_model.json``, ``heatmap/``); the region is ``--conf region`` or the first zoo region
with a detector and a regressor (else a heatmap model, else a detector). A folder given with
``--conf models`` is read in the zoo layout when it holds ``<region>/<kind>/`` folders, else in the
flat layout the bundle's training configs write:

* ``detector/`` (``model.pt`` + ``detector_model.json``): :class:`~monai_spine.inference.detector.VertebraDetector`;
* ``model.pt``: the BayeRegX regressor (:class:`~monai_spine.inference.regressor.KeypointPredictor`;
  its network shape is not stored with the weights: ``--conf regressor_variant/regressor_width/
  regressor_fc_features/regressor_spatial_size`` as it was trained, defaults those of ``train.json``);
  ``thresholds.json`` / ``conformal.json`` beside it are used when present;
* ``heatmap/`` (``model.pt`` + ``heatmap_model.json`` + ``corner_prior.json``):
  :class:`~monai_spine.inference.heatmap.CornerPredictor` for the interactive corner task.

A :class:`ModelStore` loads them lazily, reloads them when a file changes (e.g. after the
training task replaced ``model.pt``) and serialises predictions with one lock: the regressor seeds
torch's global random generator for its MC-dropout masks, so two predictions must not overlap if
each is to be reproducible (the concurrency test relies on it).

Units: points are ``(x, y)`` pixels of the radiograph (:mod:`monai_spine.data.keypoints`); ``sigma_p``
is given in crop fractions and, when the spacing is known, in mm.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNCERTAINTY_KEY",
    "DEFAULT_MAX_UPLOAD_MB",
    "LEVEL_AUTO",
    "LabelAppError",
    "LabelAppConfig",
    "ModelStore",
    "default_models_dir",
    "parse_centres",
    "uncertainty_score",
    "label_from_upload",
    "write_label",
    "finetune_regressor",
    "safe_image_id",
    "check_inside",
    "click_levels",
    "view_check",
    "expected_scheme",
]

#: image files the app serves from its studies folder (DICOM, PNG, JPEG)
IMAGE_EXTENSIONS = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")

#: key of the per-image uncertainty record in the datastore's image info
UNCERTAINTY_KEY = "monai_spine_uncertainty"

#: default upper limit of an uploaded image or label, MiB
DEFAULT_MAX_UPLOAD_MB = 64.0

_FALSE = ("0", "false", "no", "off", "")

#: ``first_level`` value meaning "infer the levels of the clicks" (the first entry of the corners task's config)
LEVEL_AUTO = "auto"


class LabelAppError(ValueError):
    """A request the app refuses (bad parameters, bad label, unsafe name); the message says why."""


def default_models_dir() -> Path:
    """The model zoo's root (:func:`monai_spine.inference.model_zoo.models_root`: ``$MONAI_SPINE_MODELS``
    or ``<repo>/bundle/models``)."""
    from monai_spine.inference.model_zoo import models_root

    return models_root()


def _is_zoo(folder: Path) -> bool:
    """True when ``folder`` holds ``<region>/<kind>/`` model folders (the model-zoo layout)."""
    from monai_spine.inference.model_zoo import KINDS, REGIONS

    return any((folder / r / k).is_dir() for r in REGIONS for k in KINDS)


def _zoo_region(root: Path) -> str:
    """The zoo region served when none is configured: the first with a detector and a regressor, else
    with a heatmap model, else with a detector, else ``ap``."""
    from monai_spine.inference.model_zoo import CHECKPOINT_FILE, REGIONS, find_model

    def has(r: str, kind: str) -> bool:
        if kind == "regressor":
            return (root / r / "regressor" / CHECKPOINT_FILE).is_file()
        return find_model(r, kind, root) is not None

    for test in (lambda r: has(r, "detector") and has(r, "regressor"), lambda r: has(r, "heatmap"),
                 lambda r: has(r, "detector")):
        for r in REGIONS:
            if test(r):
                return r
    return REGIONS[0]


def _pair(text: Any, name: str, cast: type = int) -> tuple[Any, Any]:
    if isinstance(text, str):
        parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    else:
        parts = list(text)
    if len(parts) != 2:
        raise LabelAppError(f"conf {name}: expected two numbers 'H,W', got {text!r}")
    try:
        return cast(parts[0]), cast(parts[1])
    except (TypeError, ValueError):
        raise LabelAppError(f"conf {name}: expected two numbers 'H,W', got {text!r}") from None


@dataclass
class LabelAppConfig:
    """Settings of the app, from MONAI Label's ``--conf KEY VALUE`` pairs.

    Attributes:
        models_dir: model folder (conf ``models``; relative paths resolve against the working directory).
        layout: ``zoo`` (``<models>/<region>/<kind>/``) or ``flat`` (``detector/``, ``model.pt``, ``heatmap/``).
        zoo_region: the region folder served in the zoo layout.
        variant, width, fc_features, spatial_size: the regressor's network as trained (conf
            ``regressor_variant``, ``regressor_width``, ``regressor_fc_features``,
            ``regressor_spatial_size`` as ``H,W``).
        margin_mm: crop margin of the regressor (conf ``margin_mm``).
        mc_samples: MC-dropout passes T (conf ``mc_samples``).
        region: regressor region (conf ``region``; default the detector's).
        flip_tta: regressor flip test-time augmentation (conf ``flip_tta``).
        max_upload_mb: largest accepted upload, MiB (conf ``max_upload_mb``).
        train_epochs, train_lr, train_batch_size: fine-tuning defaults (conf ``epochs``, ``lr``,
            ``batch_size``; a train request may override them).
        ood_min_detected_frac: a film where the detector finds fewer than this fraction of its
            region's levels is reported as not looking like the model's view (conf ``ood_min_detected_frac``).
        ood_min_score: ... or whose mean detection score is below this (conf ``ood_min_score``).
    """

    models_dir: Path = field(default_factory=default_models_dir)
    layout: str = "zoo"
    zoo_region: str = "ap"
    variant: str = "bayecbam"
    width: float = 1.0
    fc_features: int = 1024
    spatial_size: tuple[int, int] = (224, 448)
    margin_mm: float = 4.0
    mc_samples: int = 10
    region: str | None = None
    flip_tta: bool = False
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    train_epochs: int = 1
    train_lr: float = 1e-4
    train_batch_size: int = 8
    ood_min_detected_frac: float = 0.5
    ood_min_score: float = 0.0

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None) -> "LabelAppConfig":
        """Build from MONAI Label's ``conf`` dictionary (string values).

        Raises:
            LabelAppError: a value that does not parse (the message names the key).
        """
        c = dict(conf or {})

        def num(key: str, default: Any, cast: type) -> Any:
            if key not in c or c[key] in (None, ""):
                return default
            try:
                return cast(c[key])
            except (TypeError, ValueError):
                raise LabelAppError(f"conf {key}: expected a number, got {c[key]!r}") from None

        models = c.get("models") or os.environ.get("MONAI_SPINE_LABEL_MODELS")
        models_dir = Path(models).expanduser().resolve() if models else default_models_dir()
        layout = "zoo" if not models or _is_zoo(models_dir) else "flat"
        zoo_region = (c.get("region") or _zoo_region(models_dir)) if layout == "zoo" else "ap"
        if layout == "zoo":
            from monai_spine.inference.model_zoo import REGIONS

            if zoo_region not in REGIONS:
                raise LabelAppError(f"conf region: {zoo_region!r} has no model-zoo folder; known: {list(REGIONS)}")
            c = _with_regressor_spec(c, models_dir / zoo_region / "regressor")
        else:  # the bundle's trainer may write the spec beside the flat layout's model.pt too
            c = _with_regressor_spec(c, models_dir)
        cfg = cls(
            models_dir=models_dir, layout=layout, zoo_region=zoo_region,
            variant=str(c.get("regressor_variant", "bayecbam")),
            width=num("regressor_width", 1.0, float),
            fc_features=num("regressor_fc_features", 1024, int),
            spatial_size=_pair(c["regressor_spatial_size"], "regressor_spatial_size")
            if c.get("regressor_spatial_size") else (224, 448),
            margin_mm=num("margin_mm", 4.0, float),
            mc_samples=num("mc_samples", 10, int),
            region=c.get("region") or None,
            flip_tta=str(c.get("flip_tta", "false")).lower() not in _FALSE,
            max_upload_mb=num("max_upload_mb", DEFAULT_MAX_UPLOAD_MB, float),
            train_epochs=num("epochs", 1, int),
            train_lr=num("lr", 1e-4, float),
            train_batch_size=num("batch_size", 8, int),
            ood_min_detected_frac=num("ood_min_detected_frac", 0.5, float),
            ood_min_score=num("ood_min_score", 0.0, float),
        )
        if cfg.max_upload_mb <= 0 or cfg.mc_samples < 1 or cfg.train_epochs < 1:
            raise LabelAppError("conf max_upload_mb, mc_samples and epochs must be positive")
        return cfg

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    def _kind_dir(self, kind: str) -> Path:
        return self.models_dir / self.zoo_region / kind if self.layout == "zoo" else self.models_dir / kind

    @property
    def detector_dir(self) -> Path:
        """``<models>/<region>/detector`` (zoo) or ``<models>/detector`` (flat)."""
        return self._kind_dir("detector")

    @property
    def regressor_checkpoint(self) -> Path:
        """``<models>/<region>/regressor/model.pt`` (zoo) or ``<models>/model.pt`` (flat)."""
        return self._kind_dir("regressor") / "model.pt" if self.layout == "zoo" else self.models_dir / "model.pt"

    @property
    def heatmap_dir(self) -> Path:
        """``<models>/<region>/heatmap`` (zoo) or ``<models>/heatmap`` (flat)."""
        return self._kind_dir("heatmap")

    def has_detector(self) -> bool:
        """The detector folder holds its weights."""
        return (self.detector_dir / "model.pt").is_file()

    def has_regressor(self) -> bool:
        """The detector and the regressor checkpoint exist."""
        return (self.detector_dir / "model.pt").is_file() and self.regressor_checkpoint.is_file()

    def has_heatmap(self) -> bool:
        """The heatmap model folder holds its weights and spec."""
        return (self.heatmap_dir / "model.pt").is_file() and (self.heatmap_dir / "heatmap_model.json").is_file()

    def regressor_kwargs(self, region: str) -> dict[str, Any]:
        """Keyword arguments of :meth:`KeypointPredictor.from_checkpoint` (thresholds, conformal beside the weights)."""
        from monai_spine.inference.pipeline import _load_conformal, _load_thresholds

        ckpt = self.regressor_checkpoint
        return dict(
            variant=self.variant, region=region,
            network_kwargs={"width": float(self.width), "fc_features": int(self.fc_features)},
            spatial_size=tuple(self.spatial_size), margin_mm=float(self.margin_mm), num_samples=int(self.mc_samples),
            thresholds=_load_thresholds(None, ckpt), flip_tta=self.flip_tta, conformal=_load_conformal(None, ckpt),
        )


#: ``regressor_model.json`` keys read into the app's conf when the conf does not set them
_SPEC_CONF = {"variant": "regressor_variant", "width": "regressor_width", "fc_features": "regressor_fc_features",
              "spatial_size": "regressor_spatial_size", "margin_mm": "margin_mm", "region": "region"}


def _with_regressor_spec(conf: dict, folder: Path) -> dict:
    """``conf`` completed from a zoo regressor's ``regressor_model.json`` (top level or ``network`` block)."""
    from monai_spine.inference.model_zoo import SPEC_FILES, read_spec

    if not (folder / SPEC_FILES["regressor"]).is_file():
        return conf
    try:
        spec = read_spec(folder, "regressor")
    except (OSError, ValueError) as e:
        raise LabelAppError(str(e)) from None
    net = spec.get("network") if isinstance(spec.get("network"), dict) else {}
    out = dict(conf)
    for key, conf_key in _SPEC_CONF.items():
        v = spec.get(key, net.get(key))
        if v is None or out.get(conf_key) not in (None, ""):
            continue
        out[conf_key] = ",".join(str(int(x)) for x in v) if key == "spatial_size" and isinstance(v, (list, tuple)) else str(v)
    return out


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


def parse_centres(value: Any, name: str = "centres", min_count: int = 1) -> np.ndarray:
    """``(V, 2)`` clicked centres from a request value: ``[[x, y], ...]`` or MONAI Label's
    ``[[x, y, z], ...]`` clicks (z ignored; the 3D Slicer module sends image indices ``[i, j, k]``,
    i = column), or the text ``"x,y;x,y"``.

    Raises:
        LabelAppError: fewer than ``min_count`` centres or non-finite numbers (names ``name``).
    """
    if isinstance(value, str):
        try:
            value = [[float(t) for t in p.split(",")] for p in value.split(";") if p.strip()]
        except ValueError:
            raise LabelAppError(f"{name}: expected 'x,y;x,y;...', got {value!r}") from None
    try:
        pts = [list(p)[:2] for p in (value or [])]
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise LabelAppError(f"{name}: expected a list of [x, y] pixel points, got {value!r}") from None
    if len(arr) < min_count:
        raise LabelAppError(f"{name}: click at least {min_count} vertebra centre{'s' if min_count > 1 else ''}, "
                            f"got {len(arr)}")
    if not np.all(np.isfinite(arr)):
        raise LabelAppError(f"{name}: centres must be finite numbers")
    return arr


def check_inside(points_px: np.ndarray, size_wh: Sequence[int], name: str = "centres") -> None:
    """Refuse points outside the image (pixel centres span ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``).

    Raises:
        LabelAppError: naming the first point outside and the image size.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    p = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    bad = (p[:, 0] < -0.5) | (p[:, 0] > w - 0.5) | (p[:, 1] < -0.5) | (p[:, 1] > h - 0.5)
    if np.any(bad):
        i = int(np.nonzero(bad)[0][0])
        raise LabelAppError(f"{name}: click {i + 1} at ({p[i, 0]:g}, {p[i, 1]:g}) px lies outside the {w} x {h} image")


def _check_levels(levels: Sequence[Any], n: int, name: str = "levels") -> list[str]:
    from monai_spine.data.keypoints import level_order

    out = [str(v).strip().upper() for v in levels]
    if len(out) != n:
        raise LabelAppError(f"{name}: {len(out)} names for {n} centres")
    for lev in out:
        try:
            level_order(lev)
        except KeyError:
            raise LabelAppError(f"{name}: unknown level {lev!r}") from None
    if len(set(out)) != len(out):
        raise LabelAppError(f"{name}: repeated names in {out}")
    return out


def _consecutive(c: np.ndarray, anchor_rank: int, anchor_level: str, name: str) -> list[str]:
    """Levels of the clicks in top-to-bottom (y) order, consecutive, the ``anchor_rank``-th being ``anchor_level``."""
    from monai_spine.data.keypoints import _ALL_LEVELS, level_order

    rank = np.empty(len(c), dtype=int)
    rank[np.argsort(c[:, 1], kind="stable")] = np.arange(len(c))
    start = level_order(anchor_level) - anchor_rank
    idx = start + rank
    if idx.min() < 0 or idx.max() >= len(_ALL_LEVELS):
        raise LabelAppError(f"{name}: {len(c)} clicks do not fit consecutive levels around {anchor_level}: send 'levels'")
    return [_ALL_LEVELS[i] for i in idx]


def click_levels(centres_px: np.ndarray, levels: Sequence[Any] | None = None, first_level: str | None = None,
                 detections: Any = None, region: str | None = None) -> tuple[list[str], str]:
    """The level of each clicked centre, given or inferred.

    In this order: ``levels`` given (one per click); ``first_level`` (not ``"auto"``): the topmost
    click (smallest y) is that level and the others follow down the spine in y order; detections:
    a click within ``max(box width, box height)`` of a detected centre takes its level (all clicks
    matched to distinct levels), or the topmost matched click anchors consecutive levels in y order;
    otherwise the region's top level down, in y order.

    Args:
        centres_px: ``(V, 2)`` clicks (x, y) px.
        levels: level names, one per click.
        first_level: level of the topmost click, or ``"auto"`` / None.
        detections: :class:`~monai_spine.inference.detector.Detections` of the image, or None.
        region: region whose top level starts the default naming.

    Returns:
        ``(levels, source)``; source is ``given``, ``first_level``, ``detector`` or ``top_down``.

    Raises:
        LabelAppError: bad ``levels`` / ``first_level``, or clicks that do not fit the spine's levels.
    """
    from monai_spine.data.keypoints import get_region

    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if levels is not None and len(levels) > 0:
        return _check_levels(levels, len(c)), "given"
    if first_level is not None and str(first_level).strip().lower() not in ("", LEVEL_AUTO):
        (first,) = _check_levels([first_level], 1, "first_level")
        return _consecutive(c, 0, first, "first_level"), "first_level"
    if detections is not None and len(detections) > 0:
        cen = np.asarray(detections.centres_px, dtype=np.float64).reshape(-1, 2)
        box = np.asarray(detections.boxes_px, dtype=np.float64).reshape(-1, 4)
        radius = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
        d = np.linalg.norm(c[:, None, :] - cen[None, :, :], axis=-1)
        near = np.argmin(d, axis=1)
        matched = d[np.arange(len(c)), near] <= radius[near]
        names = [detections.levels[j] for j in near]
        if np.all(matched) and len(set(names)) == len(names):
            return [str(n) for n in names], "detector"
        if np.any(matched):
            order = np.argsort(c[:, 1], kind="stable")
            rank_of = {int(i): r for r, i in enumerate(order)}
            k = next(int(i) for i in order if matched[i])
            try:
                return _consecutive(c, rank_of[k], names[k], "levels"), "detector"
            except LabelAppError:
                pass
    try:
        top = get_region(region or "cervical").levels[0]
    except KeyError:
        top = get_region("cervical").levels[0]
    return _consecutive(c, 0, top, "levels"), "top_down"


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


def safe_image_id(image_id: str) -> str:
    """Check that an image id (or file name) names a file directly inside the studies folder.

    Refused: empty names, absolute paths, path separators (``/`` or ``\\``), ``.`` and ``..``,
    names starting with a dot, and control characters.

    Raises:
        LabelAppError: the name and the reason.
    """
    s = str(image_id)
    if not s or s.strip() != s:
        raise LabelAppError(f"refused name {image_id!r}: empty or surrounded by spaces")
    if os.path.isabs(s) or "/" in s or "\\" in s or s in (".", "..") or s.startswith(".") or ".." in s.split("."):
        raise LabelAppError(f"refused name {image_id!r}: it must be a plain file name inside the studies folder")
    if any(ord(ch) < 32 for ch in s) or ":" in s:
        raise LabelAppError(f"refused name {image_id!r}: control characters or ':'")
    return s


# ------------------------------------------------------------------------------------ models
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


def _one_click_neighbour(click: np.ndarray, level: str, det: Any, size_ratio: float) -> tuple[np.ndarray, str]:
    """A neighbouring centre for a single click, so the corner model gets the vertebra's frame.

    The clicked vertebra's size is that of the detection containing the click (mean of the box's
    width and height) and the spine's direction the line through its detected neighbours (vertical
    without one). The neighbour lies one vertebra (``size / size_ratio``) below, named the next
    level (above, the previous level, for the last level).

    Raises:
        LabelAppError: no detector, or no detection within a box size of the click.
    """
    from monai_spine.data.keypoints import _ALL_LEVELS, level_order

    if det is None or len(det) == 0:
        raise LabelAppError("one click: the app has no vertebra detector (or it found nothing) to size a single "
                            "vertebra; click the centre of a second vertebra")
    cen = np.asarray(det.centres_px, dtype=np.float64).reshape(-1, 2)
    box = np.asarray(det.boxes_px, dtype=np.float64).reshape(-1, 4)
    d = np.linalg.norm(cen - click[None], axis=1)
    j = int(np.argmin(d))
    wh = box[j, 2:] - box[j, :2]
    if not d[j] <= max(wh.max(), 1.0):
        raise LabelAppError(f"one click: no vertebra detected at ({click[0]:g}, {click[1]:g}) px; click the centre of "
                            "a vertebral body, or click a second vertebra")
    size = float(np.mean(wh))
    direction = np.array([0.0, 1.0])
    nb = [k for k in (j - 1, j + 1) if 0 <= k < len(cen)]
    if nb:
        a, b = cen[min(nb + [j])], cen[max(nb + [j])]
        v = b - a
        if np.linalg.norm(v) > 0:
            direction = v / np.linalg.norm(v)
            if direction[1] < 0:
                direction = -direction
    step = size / float(size_ratio)
    o = level_order(level)
    if o + 1 < len(_ALL_LEVELS):
        return click + step * direction, _ALL_LEVELS[o + 1]
    return click - step * direction, _ALL_LEVELS[o - 1]


def expected_scheme(config: LabelAppConfig) -> str | None:
    """The keypoint scheme labels must have: that of the regressor's region (conf ``region``, else the
    detector's), or None when the app has no regressor."""
    from monai_spine.data.keypoints import get_region

    if not config.has_regressor():
        return None
    region = config.region
    if region is None:
        from monai_spine.inference.detector import DetectorSpec

        try:
            region = DetectorSpec.load(config.detector_dir).region
        except (OSError, ValueError, KeyError):
            return None
    try:
        return get_region(region).scheme.name
    except KeyError:
        return None


# ------------------------------------------------------------------------------------ labels
def label_from_upload(path: str | os.PathLike, image_path: str | os.PathLike, image_id: str,
                      expected_scheme: str | None = None) -> Any:
    """Parse an uploaded label: a ``monai-spine-keypoints`` JSON or a 3D Slicer markups JSON.

    Markups without the ``monaiSpine`` block take the image's spacing (positions in mm) or, when it is
    unknown, pixel units. The image, its size and its spacing are always those of the datastore's
    image (the label's own ``image`` field is ignored: a label cannot point outside the studies).
    With ``expected_scheme`` (the app's regressor's), a label of another scheme is refused: the
    training stacks every label's points, so one 5-point lateral label among 4-point AP ones would
    stop every training.

    Returns:
        The :class:`~monai_spine.data.annotation.SpineAnnotation`.

    Raises:
        LabelAppError: not JSON, or not a valid label (the message names the image id and the problem).
    """
    from monai_spine.data.annotation import AnnotationError, SpineAnnotation
    from monai_spine.data.readers import read_xray
    from monai_spine.data.slicer import MONAI_SPINE_KEY, markups_to_annotation

    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise LabelAppError(f"label of {image_id}: not a JSON file ({e})") from None
    if not isinstance(d, dict):
        raise LabelAppError(f"label of {image_id}: expected a JSON object")
    img = read_xray(image_path)
    if "markups" in d:
        kinds = [m.get("type") for m in (d.get("markups") or []) if isinstance(m, dict)]
        if not any(k in (None, "Fiducial") for k in kinds):
            raise LabelAppError(
                f"label of {image_id}: the markups file holds no point list (markups: {kinds or 'none'}); 3D Slicer's "
                "'Submit Label' sends ROI boxes for a detection task: submit the keypoint point list instead "
                "(docs/label.md, 'Submitting the points')")
    try:
        if "markups" in d:
            has_block = any(isinstance(m, dict) and MONAI_SPINE_KEY in m for m in d.get("markups") or [])
            if has_block:
                ann = markups_to_annotation(d, source=f"label of {image_id}")
            else:
                ann = markups_to_annotation(d, spacing_mm=img.spacing_mm, source=f"label of {image_id}")
        else:
            d = dict(d)
            d["image"] = None
            ann = SpineAnnotation.from_dict(d, source=f"label of {image_id}")
    except AnnotationError as e:
        raise LabelAppError(str(e)) from None
    if expected_scheme is not None and ann.scheme != expected_scheme:
        from monai_spine.data.keypoints import get_scheme

        raise LabelAppError(
            f"label of {image_id}: keypoint scheme {ann.scheme!r} ({ann.keypoints_px.shape[1]} points per vertebra) "
            f"does not match the app's model ({expected_scheme!r}, {get_scheme(expected_scheme).num_points} points "
            "per vertebra); label this film with the model's scheme or serve it with a model of its view")
    ann.image = str(image_path)
    ann.image_size = img.size_wh
    if img.spacing_mm is not None or ann.spacing_mm is None:
        ann.spacing_mm, ann.spacing_source = img.spacing_mm, img.spacing_source
    w, h = img.size_wh
    kp = ann.keypoints_px[ann.visible]
    if kp.size and (kp.min() < -0.5 or np.any(kp[:, 0] > w - 0.5) or np.any(kp[:, 1] > h - 0.5)):
        raise LabelAppError(f"label of {image_id}: visible points lie outside the {w} x {h} image")
    return ann


def write_label(ann: Any, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
    """Write an annotation as ``monai-spine-keypoints`` JSON atomically (image path relative to the label)."""
    from monai_spine.data.annotation import write_annotation

    if meta:
        ann.meta = {**(ann.meta or {}), **dict(meta)}
    write_annotation(ann, path)


# ------------------------------------------------------------------------------------ training
def _crop_samples(items: Sequence[tuple[str, Any]], spatial_size: Sequence[int], margin_mm: float,
                  num_points: int | None = None) -> tuple[Any, Any, list[str]]:
    """Per-vertebra crops ``(B, 1, H, W)`` and targets ``(B, K, 3)`` (fractions + visibility) of labelled images.

    A label with another number of points per vertebra than ``num_points`` (another keypoint scheme),
    or whose image or crops fail, is skipped, not fatal.

    Returns:
        ``(x, y, skipped)``; ``x``/``y`` None when nothing is usable; ``skipped``: ``"<image>: <reason>"``.
    """
    import torch
    from monai.transforms import Compose, ScaleIntensityRangePercentilesd

    from monai_spine.data.readers import read_xray
    from monai_spine.losses.gaussian_nll import pack_targets
    from monai_spine.transforms.crop import VertebraCropd

    crop = Compose([
        VertebraCropd(keys="image", spatial_size=tuple(spatial_size), margin_mm=margin_mm),
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
    ])
    xs, ys, vs, skipped = [], [], [], []
    for image_path, ann in items:
        label = os.path.basename(str(image_path))
        k = int(np.asarray(ann.keypoints_px).shape[1])
        if num_points is not None and k != num_points:
            skipped.append(f"{label}: scheme {getattr(ann, 'scheme', '?')!r} has {k} points per vertebra, "
                           f"the model {num_points}")
            continue
        try:
            img = read_xray(image_path)
            sp = np.full(2, np.nan, np.float32) if img.spacing_mm is None else np.asarray(img.spacing_mm, np.float32)
            mine = []
            for i in range(len(ann.levels)):
                vis = np.asarray(ann.visible[i], bool)
                if vis.sum() < 2:
                    continue
                box = ann.boxes_px[i] if ann.boxes_px is not None else np.full(4, np.nan)
                d = crop({"image": img.channel_first(), "keypoints_px": ann.keypoints_px[i].astype(np.float32),
                          "visible": vis, "box_px": np.asarray(box, np.float32), "spacing_mm": sp})
                mine.append((torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32),
                             np.nan_to_num(np.asarray(d["keypoints_frac"], dtype=np.float32)), vis))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            skipped.append(f"{label}: {type(e).__name__}: {e}")
            continue
        for x_i, y_i, v_i in mine:
            xs.append(x_i)
            ys.append(y_i)
            vs.append(v_i)
    if not xs:
        return None, None, skipped
    x = torch.stack(xs)
    y = pack_targets(torch.as_tensor(np.stack(ys)), torch.as_tensor(np.stack(vs)))
    return x, y, skipped


def finetune_regressor(config: LabelAppConfig, items: Sequence[tuple[str, Any]], epochs: int | None = None,
                       lr: float | None = None, batch_size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Fine-tune the bundle's regressor on labelled images and replace ``<models>/model.pt`` atomically.

    The previous weights are kept as ``<models>/model.previous.pt``. Inference picks the new weights
    up on its next request (:class:`ModelStore` watches the file).

    Args:
        config: the app configuration (network shape, crop size and margin, model folder).
        items: ``(image_path, SpineAnnotation)`` pairs (the labels submitted so far).
        epochs, lr, batch_size: training settings (default: the configuration's).
        seed: torch seed (dropout, shuffling).

    Returns:
        Statistics: ``epochs``, ``images`` (given), ``samples`` (vertebra crops), ``loss`` per epoch,
        ``checkpoint``, ``seconds``, ``skipped`` (labels not used and why: another scheme, unreadable).

    Raises:
        LabelAppError: no usable label.
    """
    import torch

    from monai_spine.engines.regressor import build_loss
    from monai_spine.inference.regressor import KeypointPredictor

    t0 = time.time()
    epochs = int(epochs or config.train_epochs)
    lr = float(lr or config.train_lr)
    bs = max(1, int(batch_size or config.train_batch_size))
    det_region = None
    if config.region is None:
        from monai_spine.inference.detector import DetectorSpec

        det_region = DetectorSpec.load(config.detector_dir).region
    ckpt = config.regressor_checkpoint
    pred = KeypointPredictor.from_checkpoint(ckpt, **config.regressor_kwargs(config.region or det_region))
    net = pred.network
    x, y, skipped = _crop_samples(items, config.spatial_size, config.margin_mm, pred.scheme.num_points)
    if x is None:
        raise LabelAppError("training: no labelled vertebra with at least two visible points"
                            + (f" (skipped: {'; '.join(skipped)})" if skipped else ""))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loss_fn = build_loss(config.variant)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            if len(idx) < 2 and len(x) >= 2:  # batch norm needs two samples
                idx = perm[max(0, i - 1) : i + bs]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        losses.append(total / len(x))
    net.eval()
    tmp = ckpt.with_name(f".{ckpt.name}.tmp-{os.getpid()}")
    torch.save(net.state_dict(), tmp)
    if ckpt.is_file():
        import shutil

        prev = ckpt.with_name("model.previous.pt")
        shutil.copy2(ckpt, prev.with_name(f".{prev.name}.tmp-{os.getpid()}"))
        os.replace(prev.with_name(f".{prev.name}.tmp-{os.getpid()}"), prev)
    os.replace(tmp, ckpt)
    return {"epochs": epochs, "images": len(items), "samples": int(len(x)), "loss": losses, "skipped": skipped,
            "checkpoint": str(ckpt), "seconds": round(time.time() - t0, 3), "lr": lr, "batch_size": bs}
