"""The MONAI Label app's configuration, free of MONAI Label: its settings, where its models are, its errors.

The app's work is split by job, each module importable (and testable) without the ``monailabel``
package: this one (configuration, shared constants, :class:`LabelAppError`),
:mod:`~monai_spine.apps.label.lib.models` (the models and their predictions),
:mod:`~monai_spine.apps.label.lib.clicks` (clicked centres and their levels),
:mod:`~monai_spine.apps.label.lib.labels` (submitted labels) and
:mod:`~monai_spine.apps.label.lib.training` (fine-tuning, the only one that imports training code);
:mod:`monai_spine.apps.label.lib.infers`, ``trainers``, ``scoring`` and ``activelearning`` are thin
MONAI Label wrappers around them.

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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "IMAGE_EXTENSIONS",
    "UNCERTAINTY_KEY",
    "DEFAULT_MAX_UPLOAD_MB",
    "LabelAppError",
    "LabelAppConfig",
    "default_models_dir",
    "expected_scheme",
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
