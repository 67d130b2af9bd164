"""Where the shipped models live and how a model folder describes itself.

The bundle ships its trained models in the model-zoo layout, one folder per region and model kind::

    bundle/models/<region>/<kind>/
        model.pt               # the weights (a state dict; loaded with weights_only=True)
        <kind>_model.json      # the spec: everything besides the weights (see SPEC_FILES)
        thresholds.json        # optional: uncertainty-class thresholds fitted on validation
        conformal.json         # optional: conformal radii fitted on validation
        README.md              # the model card: data, training command, metrics, licence

``<region>`` is ``ap`` (T1-L5), ``cervical`` or ``lumbar``; ``<kind>`` is ``detector`` (vertebra
centres and boxes), ``heatmap`` (the Al Arif corner FCN) or ``regressor`` (BayeRegX). The root is
``<repo>/bundle/models`` unless ``$MONAI_SPINE_MODELS`` names another folder (a packaged app, a
hospital's own models).

This module only locates folders and reads spec files; each model's loader
(:class:`~monai_spine.inference.detector.VertebraDetector`,
:class:`~monai_spine.inference.heatmap.CornerPredictor`,
:class:`~monai_spine.inference.regressor.KeypointPredictor`) builds the network from its spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "MODELS_ENV",
    "REGIONS",
    "KINDS",
    "SPEC_FILES",
    "CHECKPOINT_FILE",
    "models_root",
    "model_dir",
    "find_model",
    "read_spec",
]

#: Environment variable naming another models root (same layout).
MODELS_ENV = "MONAI_SPINE_MODELS"
#: Regions with shipped models.
REGIONS = ("ap", "cervical", "lumbar")
#: Model kinds, one folder each.
KINDS = ("detector", "heatmap", "regressor")
#: Spec file of each kind, beside ``model.pt``.
SPEC_FILES = {"detector": "detector_model.json", "heatmap": "heatmap_model.json", "regressor": "regressor_model.json"}
#: The weights file of every kind.
CHECKPOINT_FILE = "model.pt"


def models_root(root: str | os.PathLike | None = None) -> Path:
    """The models root: ``root`` if given, else ``$MONAI_SPINE_MODELS``, else ``<repo>/bundle/models``."""
    if root:
        return Path(root)
    env = os.environ.get(MODELS_ENV, "").strip()
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bundle" / "models"


def _check(region: str, kind: str) -> None:
    if region not in REGIONS:
        raise KeyError(f"unknown region {region!r}; known: {list(REGIONS)}")
    if kind not in KINDS:
        raise KeyError(f"unknown model kind {kind!r}; known: {list(KINDS)}")


def model_dir(region: str, kind: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<region>/<kind>``, whether or not it exists.

    Raises:
        KeyError: unknown region or kind.
    """
    _check(region, kind)
    return models_root(root) / region / kind


def find_model(region: str, kind: str, root: str | os.PathLike | None = None) -> Path | None:
    """The model folder of ``region``/``kind`` when it holds ``model.pt`` and its spec, else ``None``."""
    d = model_dir(region, kind, root)
    if (d / CHECKPOINT_FILE).is_file() and (d / SPEC_FILES[kind]).is_file():
        return d
    return None


def read_spec(folder: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The spec dict of a model folder (or of a spec file given directly).

    Raises:
        KeyError: unknown kind.
        FileNotFoundError: no spec file (the message names the path a user should look at).
        ValueError: the spec is not a JSON object (the message names the file).
    """
    if kind not in KINDS:
        raise KeyError(f"unknown model kind {kind!r}; known: {list(KINDS)}")
    p = Path(folder)
    f = p if p.suffix.lower() == ".json" else p / SPEC_FILES[kind]
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no {kind} spec; a model folder holds {CHECKPOINT_FILE} and {SPEC_FILES[kind]}")
    try:
        spec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: not a readable JSON spec ({e})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{f}: a spec must be a JSON object, got {type(spec).__name__}")
    return spec
