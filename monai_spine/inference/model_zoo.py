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

This module locates folders, reads spec files and chooses the models ``monai-spine predict`` runs
(:func:`resolve_models`); each model's loader
(:class:`~monai_spine.inference.detector.VertebraDetector`,
:class:`~monai_spine.inference.heatmap.CornerPredictor`,
:class:`~monai_spine.inference.regressor.KeypointPredictor`) builds the network from its spec.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "MODELS_ENV",
    "REGIONS",
    "KINDS",
    "SPEC_FILES",
    "CHECKPOINT_FILE",
    "models_root",
    "model_dir",
    "find_model",
    "load_strict_weights",
    "read_spec",
    "default_detector_dir",
    "default_regressor_checkpoint",
    "DEFAULT_REGION_ORDER",
    "resolve_models",
    "load_weights",
    "read_state_dict",
    "load_thresholds",
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


def default_detector_dir() -> Path:
    """``<repo>/bundle/models/detector``, where ``detector_train.json`` stores the detector."""
    return Path(__file__).resolve().parents[2] / "bundle" / "models" / "detector"


def default_regressor_checkpoint() -> Path:
    """``<repo>/bundle/models/model.pt``, where ``train.json`` stores the regressor."""
    return Path(__file__).resolve().parents[2] / "bundle" / "models" / "model.pt"


#: Region tried first when ``predict`` is given no region and no model: the first with a shipped detector.
DEFAULT_REGION_ORDER = ("ap", "lumbar", "cervical")


def _spec_region(folder: Path, kind: str) -> str | None:
    r = read_spec(folder, kind).get("region")
    return None if r is None else str(r)


def resolve_models(
    region: str | None = None,
    model: str | None = None,
    detector_dir: str | os.PathLike | None = None,
    regressor_checkpoint: str | os.PathLike | None = None,
    heatmap_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Which models ``predict`` runs: the options given, the rest from the model zoo.

    With no option at all the region is the first of :data:`DEFAULT_REGION_ORDER` with a shipped
    detector, and the model is what the region ships: ``both`` with a regressor and a heatmap FCN,
    else the one there is. A folder given explicitly or found in the zoo must describe the region
    asked for (its spec's ``region``).

    Returns:
        dict with ``region``, ``model``, ``detector_dir``, ``heatmap_dir`` and ``regressor_dir`` (Paths or None).

    Raises:
        FileNotFoundError: no detector (or no model of the kind asked for) for the region.
        ValueError: a model folder describes another region than the one asked for.
    """
    if region is not None and region not in REGIONS:
        raise ValueError(f"--region must be one of {list(REGIONS)}, got {region!r}")
    det = Path(detector_dir) if detector_dir else None
    if det is None:
        regions = [region] if region else [r for r in DEFAULT_REGION_ORDER if find_model(r, "detector", root)]
        if not regions or find_model(regions[0], "detector", root) is None:
            legacy = default_detector_dir()
            if region is None and (legacy / "model.pt").is_file():
                det = legacy
            else:
                raise FileNotFoundError(
                    f"no shipped detector for region {region or 'any'} under {models_root(root)} "
                    f"(expected <region>/detector/model.pt and detector_model.json); pass --detector-dir")
        else:
            det = find_model(regions[0], "detector", root)
            region = regions[0]
    det_region = _spec_region(det, "detector")
    if region is None:
        region = det_region
    elif det_region is not None and det_region != region:
        raise ValueError(f"{det}: the detector was trained for region {det_region!r}, not {region!r} (--region)")
    found: dict[str, Path | None] = {"heatmap": None, "regressor": None}
    if heatmap_dir:
        found["heatmap"] = Path(heatmap_dir)
    elif region in REGIONS:
        found["heatmap"] = find_model(region, "heatmap", root)
    if regressor_checkpoint is None and region in REGIONS:
        found["regressor"] = find_model(region, "regressor", root)
    for kind in ("heatmap", "regressor"):
        f = found[kind]
        if f is not None and f.is_dir():
            r = _spec_region(f, kind)
            if r is not None and region is not None and r != region:
                raise ValueError(f"{f}: the {kind} model was trained for region {r!r}, not {region!r} (--region)")
    if model is None:
        have_reg = found["regressor"] is not None or regressor_checkpoint is not None
        if have_reg and found["heatmap"] is not None:
            model = "both"
        elif found["heatmap"] is not None:
            model = "heatmap"
        elif have_reg or (default_regressor_checkpoint()).is_file():
            model = "regressor"
        else:
            raise FileNotFoundError(f"no heatmap or regressor model for region {region!r} under {models_root(root)}")
    if model in ("heatmap", "both") and found["heatmap"] is None:
        raise FileNotFoundError(f"no heatmap model for region {region!r} under {models_root(root)}; pass --heatmap-dir")
    return {"region": region, "model": model, "detector_dir": det, "heatmap_dir": found["heatmap"],
            "regressor_dir": found["regressor"]}


def load_weights(network: "torch.nn.Module", checkpoint: str | os.PathLike) -> "torch.nn.Module":
    """Load a bundle checkpoint (``{"model": state_dict}`` or a bare state dict) strictly, weights only.

    Raises:
        FileNotFoundError: no checkpoint at ``checkpoint`` (train first, or pass ``--checkpoint``).
    """
    state = read_state_dict(checkpoint, "train the bundle first or pass --checkpoint")
    target = network.module if hasattr(network, "module") else network
    target.load_state_dict(state)
    return network


def load_strict_weights(network: "torch.nn.Module", checkpoint: str | os.PathLike,
                        what: str = "the network described by the spec", hint: str = "") -> "torch.nn.Module":
    """Load ``checkpoint`` (a bare state dict or ``{"model": ...}``) into ``network`` strictly, weights only.

    Args:
        network: the network the model folder's spec describes.
        checkpoint: the weights file.
        what: how the error names the network (``"the spine-strip spec beside them (...)"``).
        hint: appended to the missing-file message.

    Raises:
        FileNotFoundError: no checkpoint (:func:`read_state_dict`).
        ValueError: the weights do not fit the network, in one line naming the file, ``what`` and the first
            mismatching tensors (not PyTorch's page-long message).
    """
    path = Path(checkpoint)
    state = read_state_dict(path, hint)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {name} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise ValueError(f"{path}: the weights do not match {what}: {'; '.join(parts)}")
    network.load_state_dict(state)
    return network


def read_state_dict(checkpoint: str | os.PathLike, hint: str = "") -> Any:
    """The weights in ``checkpoint``: a bare state dict, or the ``"model"`` entry of a bundle checkpoint.

    Loaded with ``torch.load(weights_only=True)`` on the CPU: a checkpoint file cannot run code.

    Raises:
        FileNotFoundError: no file at ``checkpoint`` (``hint`` is appended to the message).
    """
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" + (f": {hint}" if hint else ""))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_thresholds(path: str | os.PathLike | None):
    """Uncertainty thresholds stored with the model (``thresholds.json``), else the paper's."""
    from monai_spine.uncertainty.classes import PAPER_THRESHOLDS, Thresholds

    if path and Path(path).is_file():
        return Thresholds.load(path)
    return PAPER_THRESHOLDS
