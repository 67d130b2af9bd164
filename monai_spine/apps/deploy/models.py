"""The models folder of the deploy application and the :class:`SpinePipeline` built from it (no SDK import).

Layout of a models folder (the bundle's ``bundle/models`` is one, and the default)::

    <models>/detector/detector_model.json   # DetectorSpec (written by detector_train.json)
    <models>/detector/model.pt              # detector weights
    <models>/model.pt                       # BayeRegX regressor weights (written by train.json)
    <models>/thresholds.json                # optional: calibrated uncertainty-class thresholds
    <models>/conformal.json                 # optional: conformal error radii
    <models>/deploy.json                    # optional: regressor build settings (below)

``deploy.json`` holds ``{"regressor": {...}}`` with any of :data:`REGRESSOR_DEFAULTS`' keys; they
must match how the regressor was trained (the bundle's ``network_width``, ``fc_features``,
``spatial_size``; ``margin_mm`` is the bundle's ``margin_mm + rand_pad_mm / 2``).

The folder comes from, strongest first: the ``-m/--model`` argument, ``MONAI_SPINE_DEPLOY_MODELS``,
the SDK's ``HOLOSCAN_MODEL_PATH`` (set inside a MONAI Application Package), else the bundle's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "MODELS_ENV",
    "DEPLOY_CONFIG_FILE",
    "REGRESSOR_DEFAULTS",
    "default_models_dir",
    "resolve_models_dir",
    "read_deploy_config",
    "build_pipeline",
]

#: Environment variable naming the models folder (below ``--model``, above ``HOLOSCAN_MODEL_PATH``).
MODELS_ENV = "MONAI_SPINE_DEPLOY_MODELS"
#: Optional settings file in the models folder.
DEPLOY_CONFIG_FILE = "deploy.json"
#: Regressor build settings and their defaults (those of ``monai-spine predict``).
REGRESSOR_DEFAULTS: dict[str, Any] = {
    "variant": "bayecbam",
    "width": 1.0,
    "fc_features": 1024,
    "spatial_size": [224, 448],
    "margin_mm": 4.0,
    "mc_samples": 10,
    "region": None,
    "flip_tta": False,
}


def default_models_dir() -> Path:
    """``<repo>/bundle/models``: where the bundle's training configs write the weights."""
    from monai_spine.inference.pipeline import default_regressor_checkpoint

    return default_regressor_checkpoint().parent


def resolve_models_dir(arg: str | os.PathLike | None = None) -> Path:
    """The models folder: ``arg``, else ``$MONAI_SPINE_DEPLOY_MODELS``, else ``$HOLOSCAN_MODEL_PATH``, else bundle's."""
    for value in (arg, os.environ.get(MODELS_ENV), os.environ.get("HOLOSCAN_MODEL_PATH")):
        if value:
            return Path(value)
    return default_models_dir()


def read_deploy_config(models_dir: str | os.PathLike) -> dict[str, Any]:
    """Regressor settings: :data:`REGRESSOR_DEFAULTS` updated by ``deploy.json`` when present.

    Raises:
        ValueError: ``deploy.json`` is not valid JSON, or names an unknown key (the message names the file).
    """
    cfg = dict(REGRESSOR_DEFAULTS)
    path = Path(models_dir) / DEPLOY_CONFIG_FILE
    if not path.is_file():
        return cfg
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    reg = d.get("regressor", {}) if isinstance(d, dict) else None
    if not isinstance(reg, dict):
        raise ValueError(f"{path}: expected {{\"regressor\": {{...}}}}")
    unknown = sorted(set(reg) - set(REGRESSOR_DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown regressor key(s) {unknown}; allowed {sorted(REGRESSOR_DEFAULTS)}")
    cfg.update(reg)
    return cfg


def _require(path: Path, what: str, models_dir: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"models folder {models_dir} has no {what} ({path.relative_to(models_dir)}): train the bundle "
            f"(docs/deploy.md) or point -m / {MODELS_ENV} at a folder that has it"
        )
    return path


def build_pipeline(models_dir: str | os.PathLike, device: str = "cpu", overlays: bool = True) -> Any:
    """A :class:`~monai_spine.inference.pipeline.SpinePipeline` (detector + BayeRegX regressor) from a models folder.

    Args:
        models_dir: the folder (layout in the module docstring).
        device: torch device.
        overlays: let the pipeline write the overlay PNG.

    Raises:
        FileNotFoundError: a required file is missing (the message names it and the folder).
        ValueError: a malformed ``deploy.json`` or detector spec.
    """
    from monai_spine.inference.detector import CHECKPOINT_FILE, SPEC_FILE, VertebraDetector
    from monai_spine.inference.pipeline import SpinePipeline
    from monai_spine.inference.regressor import KeypointPredictor, load_conformal
    from monai_spine.uncertainty.classes import PAPER_THRESHOLDS, Thresholds

    root = Path(models_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"models folder {root} does not exist (pass -m or set {MODELS_ENV})")
    det_dir = root / "detector"
    _require(det_dir / SPEC_FILE, "detector spec", root)
    _require(det_dir / CHECKPOINT_FILE, "detector weights", root)
    ckpt = _require(root / "model.pt", "regressor weights", root)
    cfg = read_deploy_config(root)
    detector = VertebraDetector.from_checkpoint(det_dir, device=device)
    thr_path = root / "thresholds.json"
    regressor = KeypointPredictor.from_checkpoint(
        ckpt,
        variant=str(cfg["variant"]),
        region=cfg["region"] or detector.spec.region,
        network_kwargs={"width": float(cfg["width"]), "fc_features": int(cfg["fc_features"])},
        spatial_size=tuple(int(s) for s in cfg["spatial_size"]),
        margin_mm=float(cfg["margin_mm"]),
        num_samples=int(cfg["mc_samples"]),
        thresholds=Thresholds.load(thr_path) if thr_path.is_file() else PAPER_THRESHOLDS,
        device=device,
        flip_tta=bool(cfg["flip_tta"]),
        conformal=load_conformal(root / "conformal.json"),
    )
    return SpinePipeline(detector, regressor, None, overlays=overlays)
