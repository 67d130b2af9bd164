"""The MONAI Label app's work, free of MONAI Label: configuration, models, predictions, labels, training.

Everything the app's tasks do lives here, so it is importable (and testable) without the
``monailabel`` package; :mod:`monai_spine.apps.label.lib.infers`, ``trainers``, ``scoring`` and
``activelearning`` are thin MONAI Label wrappers around it.

Models come from one folder (``--conf models DIR``, default ``<repo>/bundle/models``), laid out as
the bundle writes them:

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
]

#: image files the app serves from its studies folder (DICOM, PNG, JPEG)
IMAGE_EXTENSIONS = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")

#: key of the per-image uncertainty record in the datastore's image info
UNCERTAINTY_KEY = "monai_spine_uncertainty"

#: default upper limit of an uploaded image or label, MiB
DEFAULT_MAX_UPLOAD_MB = 64.0

_FALSE = ("0", "false", "no", "off", "")


class LabelAppError(ValueError):
    """A request the app refuses (bad parameters, bad label, unsafe name); the message says why."""


def default_models_dir() -> Path:
    """``<repo>/bundle/models``: where the bundle's training configs store their models."""
    return Path(__file__).resolve().parents[4] / "bundle" / "models"


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
    """

    models_dir: Path = field(default_factory=default_models_dir)
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
        cfg = cls(
            models_dir=Path(models).expanduser().resolve() if models else default_models_dir(),
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
        )
        if cfg.max_upload_mb <= 0 or cfg.mc_samples < 1 or cfg.train_epochs < 1:
            raise LabelAppError("conf max_upload_mb, mc_samples and epochs must be positive")
        return cfg

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def detector_dir(self) -> Path:
        """``<models>/detector``."""
        return self.models_dir / "detector"

    @property
    def regressor_checkpoint(self) -> Path:
        """``<models>/model.pt``."""
        return self.models_dir / "model.pt"

    @property
    def heatmap_dir(self) -> Path:
        """``<models>/heatmap``."""
        return self.models_dir / "heatmap"

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


def parse_centres(value: Any, name: str = "centres") -> np.ndarray:
    """``(V, 2)`` clicked centres from a request value: ``[[x, y], ...]`` or MONAI Label's
    ``[[x, y, z], ...]`` clicks (z ignored), or the text ``"x,y;x,y"``.

    Raises:
        LabelAppError: fewer than two centres or non-finite numbers (names ``name``).
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
    if len(arr) < 2:
        raise LabelAppError(f"{name}: click at least two vertebra centres, got {len(arr)}")
    if not np.all(np.isfinite(arr)):
        raise LabelAppError(f"{name}: centres must be finite numbers")
    return arr


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
        from monai_spine.inference.pipeline import output_stem

        with self._lock:
            pipe = self.pipeline(model)
            with tempfile.TemporaryDirectory(prefix="monai-spine-label-") as tmp:
                res = pipe.predict_file(image_path, tmp, stem=output_stem(image_path))
                out = {"result": res.result, "markups": None, "corners_markups": None}
                for key in ("markups", "corners_markups"):  # the files predict_file wrote, read back
                    if key in res.files:
                        out[key] = json.loads(Path(res.files[key]).read_text(encoding="utf-8"))
        if name is not None:
            out["result"]["image"] = name
        out["uncertainty"] = uncertainty_score(out["result"])
        return out

    def corners(self, image_path: str | os.PathLike, centres_px: Any, levels: Sequence[str] | None = None,
                name: str | None = None) -> dict[str, Any]:
        """Heatmap-FCN corners of the clicked vertebrae (the Al Arif semi-automatic workflow).

        Args:
            image_path: the radiograph.
            centres_px: clicked vertebra centres, see :func:`parse_centres`.
            levels: optional level per centre (``"C3"``...).
            name: image name recorded in the result.

        Returns:
            ``{"result": <monai-spine-corners JSON>, "markups": <Slicer markups: the four corners per
            vertebra, labelled like C4-AS; the SP point "missing">}``.

        Raises:
            LabelAppError: bad centres or levels; FileNotFoundError: no heatmap model.
        """
        from monai_spine.data.annotation import SpineAnnotation
        from monai_spine.data.keypoints import get_region, get_scheme, level_order
        from monai_spine.data.readers import read_xray
        from monai_spine.data.slicer import annotation_to_markups

        c = parse_centres(centres_px)
        if levels is not None:
            levels = [str(v).strip().upper() for v in levels]
            if len(levels) != len(c):
                raise LabelAppError(f"levels: {len(levels)} names for {len(c)} centres")
            for lev in levels:
                try:
                    level_order(lev)
                except KeyError:
                    raise LabelAppError(f"levels: unknown level {lev!r}") from None
            if len(set(levels)) != len(levels):
                raise LabelAppError(f"levels: repeated names in {levels}")
        img = read_xray(image_path)
        with self._lock:
            cp = self.corner_predictor()
            pred = cp.predict(img.channel_first(), c, img.spacing_mm, img.spacing_source, levels=levels)
            result = cp.to_json(pred, image=name if name is not None else str(image_path))
            scheme = get_scheme(cp.spec.scheme)
            region = cp.spec.region
        n = len(c)
        lv = levels or _default_levels(region, n)
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


def _default_levels(region: str | None, n: int) -> list[str]:
    """``n`` level names for clicks sent without levels: from the region's top level down the spine.

    Raises:
        LabelAppError: more clicks than levels below the region's top level.
    """
    from monai_spine.data.keypoints import _ALL_LEVELS, get_region, level_order

    try:
        top = get_region(region or "cervical").levels[0]
    except KeyError:
        top = get_region("cervical").levels[0]
    start = level_order(top)
    names = list(_ALL_LEVELS[start : start + n])
    if len(names) < n:
        raise LabelAppError(f"{n} centres but only {len(names)} levels from {top} down: send 'levels'")
    return names


# ------------------------------------------------------------------------------------ labels
def label_from_upload(path: str | os.PathLike, image_path: str | os.PathLike, image_id: str) -> Any:
    """Parse an uploaded label: a ``monai-spine-keypoints`` JSON or a 3D Slicer markups JSON.

    Markups without the ``monaiSpine`` block take the image's spacing (positions in mm) or, when it is
    unknown, pixel units. The image, its size and its spacing are always those of the datastore's
    image (the label's own ``image`` field is ignored: a label cannot point outside the studies).

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
def _crop_samples(items: Sequence[tuple[str, Any]], spatial_size: Sequence[int], margin_mm: float) -> tuple[Any, Any]:
    """Per-vertebra crops ``(B, 1, H, W)`` and targets ``(B, K, 3)`` (fractions + visibility) of labelled images."""
    import torch
    from monai.transforms import Compose, ScaleIntensityRangePercentilesd

    from monai_spine.data.readers import read_xray
    from monai_spine.losses.gaussian_nll import pack_targets
    from transforms.keypoints import VertebraCropd

    crop = Compose([
        VertebraCropd(keys="image", spatial_size=tuple(spatial_size), margin_mm=margin_mm),
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
    ])
    xs, ys, vs = [], [], []
    for image_path, ann in items:
        img = read_xray(image_path)
        sp = np.full(2, np.nan, np.float32) if img.spacing_mm is None else np.asarray(img.spacing_mm, np.float32)
        for i in range(len(ann.levels)):
            vis = np.asarray(ann.visible[i], bool)
            if vis.sum() < 2:
                continue
            box = ann.boxes_px[i] if ann.boxes_px is not None else np.full(4, np.nan)
            d = crop({"image": img.channel_first(), "keypoints_px": ann.keypoints_px[i].astype(np.float32),
                      "visible": vis, "box_px": np.asarray(box, np.float32), "spacing_mm": sp})
            xs.append(torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32))
            ys.append(np.nan_to_num(np.asarray(d["keypoints_frac"], dtype=np.float32)))
            vs.append(vis)
    if not xs:
        return None, None
    x = torch.stack(xs)
    y = pack_targets(torch.as_tensor(np.stack(ys)), torch.as_tensor(np.stack(vs)))
    return x, y


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
        Statistics: ``epochs``, ``images``, ``samples`` (vertebra crops), ``loss`` per epoch,
        ``checkpoint``, ``seconds``.

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
    x, y = _crop_samples(items, config.spatial_size, config.margin_mm)
    if x is None:
        raise LabelAppError("training: no labelled vertebra with at least two visible points")
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
    return {"epochs": epochs, "images": len(items), "samples": int(len(x)), "loss": losses,
            "checkpoint": str(ckpt), "seconds": round(time.time() - t0, 3), "lr": lr, "batch_size": bs}
