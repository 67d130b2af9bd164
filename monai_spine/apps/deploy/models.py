"""The models folder of the deploy application and the :class:`SpinePipeline` built from it (no SDK import).

The application needs a vertebra detector and a BayeRegX regressor. :func:`locate_models` finds
them in a models folder ``M`` laid out in any of these ways (first match wins):

1. **kind folders**: ``M/detector/`` (``model.pt`` + ``detector_model.json``) and ``M/regressor/``
   (``model.pt`` + ``regressor_model.json``): one region of the model zoo, e.g. ``-m
   bundle/models/cervical``, or the packaged form of it (``/opt/holoscan/models/detector``, ...);
   (``regressor_model.json``, or a ``deploy.json`` for a regressor trained before specs existed);
2. **model zoo** (:mod:`monai_spine.inference.model_zoo`): ``M/<region>/detector/`` and
   ``M/<region>/regressor/``, e.g. ``bundle/models`` itself;
3. **legacy flat**: ``M/detector/`` and ``M/model.pt`` (the regressor; its build settings in the
   optional ``M/deploy.json``).

When ``M`` itself matches none, each sub-folder of ``M`` is tried (``M/models`` first, then by
name): the MONAI Deploy / Holoscan packager copies a models folder that holds files whole to
``/opt/holoscan/models/<its name>/`` (``bundle/models`` holds a README, so it lands in
``/opt/holoscan/models/models/``) and each of its sub-folders to ``/opt/holoscan/models/<name>/``
(:func:`packaged_layout` re-creates that rule for the tests). With several regions in a model zoo the region comes from ``--region``,
else from the radiograph's header (:func:`region_from_header`), else it must be given.

Beside the regressor's ``model.pt`` (or in ``M`` for the legacy layout) the optional
``thresholds.json`` (uncertainty-class thresholds) and ``conformal.json`` (conformal radii) are
used. A regressor folder describes itself with ``regressor_model.json`` (the
:class:`~monai_spine.inference.regressor.RegressorSpec` the bundle writes beside ``model.pt``):
its sizes build the network, and weights that do not fit it are refused in one line. A
``deploy.json`` (``{"regressor": {...}}`` with keys of :data:`REGRESSOR_DEFAULTS`) then only sets
``mc_samples`` / ``flip_tta``, and a build key it states must agree with the spec; it describes
the regressor only in folders written before specs existed.

The folder comes from, strongest first: the ``-m/--model`` argument, ``MONAI_SPINE_DEPLOY_MODELS``,
the SDK's ``HOLOSCAN_MODEL_PATH`` (set inside a MONAI Application Package), else the model zoo's
root (``$MONAI_SPINE_MODELS``, else ``bundle/models``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MODELS_ENV",
    "DEPLOY_CONFIG_FILE",
    "REGRESSOR_DEFAULTS",
    "ModelFolders",
    "default_models_dir",
    "resolve_models_dir",
    "region_from_header",
    "locate_models",
    "packaged_layout",
    "read_deploy_config",
    "threshold_warnings",
    "check_specs",
    "build_pipeline",
]

#: Environment variable naming the models folder (below ``--model``, above ``HOLOSCAN_MODEL_PATH``).
MODELS_ENV = "MONAI_SPINE_DEPLOY_MODELS"
#: Optional regressor settings of the legacy layout.
DEPLOY_CONFIG_FILE = "deploy.json"
#: Regressor build settings and their defaults (those of ``monai-spine predict``), for ``deploy.json``.
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
_PACKAGED_SUBDIR = "models"


@dataclass(frozen=True)
class ModelFolders:
    """Where the application's two models are.

    Attributes:
        root: the models folder that was searched.
        layout: ``kinds``, ``zoo`` or ``legacy`` (module docstring), ``+packaged`` when found in a sub-folder.
        region: the zoo region (None for ``kinds`` / ``legacy``: the detector's spec says it).
        detector_dir: folder with the detector's ``model.pt`` and ``detector_model.json``.
        regressor_checkpoint: the regressor's ``model.pt``.
        config_dir: folder of the optional ``thresholds.json`` / ``conformal.json`` / ``deploy.json``.
    """

    root: Path
    layout: str
    region: str | None
    detector_dir: Path
    regressor_checkpoint: Path
    config_dir: Path

    @property
    def regressor_dir(self) -> Path:
        return self.regressor_checkpoint.parent

    def _name(self, folder: Path) -> str:
        try:
            return folder.relative_to(self.root).as_posix() or folder.name
        except ValueError:
            return str(folder)

    def identities(self) -> list[dict[str, str]]:
        """``[{"kind", "name", "sha256"}]`` of the detector, its level anchor (if any) and the regressor weights
        (name relative to ``root``)."""
        from monai_spine.apps.deploy.identity import sha256_file
        from monai_spine.inference.level_anchor import LevelAnchor, LevelAnchorSpec

        ckpts = {"detector": self.detector_dir / "model.pt", "regressor": self.regressor_checkpoint}
        if LevelAnchor.exists(self.detector_dir):
            ckpts["level_anchor"] = self.detector_dir / LevelAnchorSpec.load(self.detector_dir).checkpoint_file
        return [{"kind": kind, "name": self._name(p if kind == "regressor" and self.layout.startswith("legacy")
                                                  else p.parent),
                 "sha256": sha256_file(p)} for kind, p in ckpts.items()]


def default_models_dir() -> Path:
    """The model zoo's root: ``$MONAI_SPINE_MODELS``, else ``<repo>/bundle/models``."""
    from monai_spine.inference.model_zoo import models_root

    return models_root()


def resolve_models_dir(arg: str | os.PathLike | None = None) -> Path:
    """The models folder: ``arg``, else ``$MONAI_SPINE_DEPLOY_MODELS``, else ``$HOLOSCAN_MODEL_PATH``, else the zoo's."""
    for value in (arg, os.environ.get(MODELS_ENV), os.environ.get("HOLOSCAN_MODEL_PATH")):
        if value:
            return Path(value)
    return default_models_dir()


def region_from_header(ds: Any) -> str | None:
    """The model-zoo region a radiograph's header suggests, or None when it says nothing clear.

    ``BodyPartExamined`` CSPINE / NECK -> ``cervical``; a frontal view (``ViewPosition`` AP / PA) of
    the spine -> ``ap``; LSPINE otherwise -> ``lumbar``.
    """
    part = str(ds.get("BodyPartExamined", "") or "").upper().replace(" ", "")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if part in ("CSPINE", "NECK", "CERVICALSPINE"):
        return "cervical"
    if view in ("AP", "PA") and ("SPINE" in part or part == "WHOLEBODY"):
        return "ap"
    if part in ("LSPINE", "LUMBARSPINE", "LSSPINE"):
        return "lumbar"
    return None


def _complete(folder: Path, spec_file: str) -> bool:
    """``folder`` holds ``model.pt`` and its spec (a regressor folder may have ``deploy.json`` instead)."""
    if not (folder / "model.pt").is_file():
        return False
    return (folder / spec_file).is_file() or (spec_file.startswith("regressor") and (folder / DEPLOY_CONFIG_FILE).is_file())


def _spec_region(detector_dir: Path) -> str | None:
    from monai_spine.inference.model_zoo import read_spec

    try:
        r = read_spec(detector_dir, "detector").get("region")
    except (OSError, ValueError):
        return None  # an unreadable spec is reported when the models load
    return None if r is None else str(r)


def _find_at(base: Path, region: str | None, prefer: str | None) -> tuple[str, str | None, Path, Path, Path] | None:
    from monai_spine.inference.model_zoo import REGIONS, SPEC_FILES

    det, reg = SPEC_FILES["detector"], SPEC_FILES["regressor"]
    if _complete(base / "detector", det) and (region is None or _spec_region(base / "detector") in (None, region)):
        if _complete(base / "regressor", reg):
            return "kinds", None, base / "detector", base / "regressor" / "model.pt", base / "regressor"
        if (base / "model.pt").is_file():
            return "legacy", None, base / "detector", base / "model.pt", base
    regions = [r for r in REGIONS if _complete(base / r / "detector", det) and _complete(base / r / "regressor", reg)]
    if region is not None:
        regions = [r for r in regions if r == region]
    if not regions:
        return None
    if len(regions) > 1:
        if prefer not in regions:
            raise FileNotFoundError(
                f"models folder {base} holds models of regions {regions} and the radiograph's header does not say "
                "which: pass --region"
            )
        regions = [prefer]
    r = regions[0]
    return "zoo", r, base / r / "detector", base / r / "regressor" / "model.pt", base / r / "regressor"


def locate_models(root: str | os.PathLike, region: str | None = None, prefer: str | None = None) -> ModelFolders:
    """Find the detector and the regressor in a models folder (layouts in the module docstring).

    Args:
        root: the models folder.
        region: the zoo region to use (None: the only one present, else ``prefer``).
        prefer: the region to take when several are present (e.g. :func:`region_from_header`).

    Raises:
        FileNotFoundError: no layout matches, or several regions and no way to choose (one line
            naming the folder and what it expected).
        KeyError: unknown ``region``.
    """
    from monai_spine.inference.model_zoo import REGIONS

    if region is not None and region not in REGIONS:
        raise KeyError(f"unknown region {region!r}; known: {list(REGIONS)}")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"models folder {base} does not exist (pass -m or set {MODELS_ENV})")
    subdirs = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: (p.name != _PACKAGED_SUBDIR, p.name))
    for where, suffix in [(base, "")] + [(d, "+packaged") for d in subdirs]:
        found = _find_at(where, region, prefer)
        if found is not None:
            layout, r, det, ckpt, cfg = found
            return ModelFolders(base, layout + suffix, r, det, ckpt, cfg)
    want = f"{region}/detector + {region}/regressor" if region else "<region>/detector + <region>/regressor"
    raise FileNotFoundError(
        f"models folder {base} has no usable models: expected {want} (model zoo), detector/ + regressor/, or "
        "detector/ + model.pt, each model folder with model.pt and its <kind>_model.json; train the bundle "
        f"(docs/deploy.md) or point -m / {MODELS_ENV} at such a folder"
    )


def packaged_layout(models: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Copy ``models`` into ``dest`` as the MAP packager does with ``-m models``; returns the model folders made.

    The packager's rule (holoscan ``packager/models.py``): a folder that directly holds a file is one
    model, copied whole to ``dest/<folder name>``; each of its sub-folders is also a model, copied
    to ``dest/<sub-folder name>``. ``dest`` plays ``/opt/holoscan/models`` (``HOLOSCAN_MODEL_PATH``).
    """
    src, out = Path(models), Path(dest)
    made = []
    entries = sorted(src.iterdir())
    if any(e.is_file() for e in entries):
        shutil.copytree(src, out / src.resolve().name, dirs_exist_ok=True)
        made.append(out / src.resolve().name)
    for e in entries:
        if e.is_dir():
            shutil.copytree(e, out / e.name, dirs_exist_ok=True)
            made.append(out / e.name)
    return made


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


#: Below this tau2 (either unit) practically every point is "highly uncertain".
_TAU2_TINY = 1e-6
#: Above these tau2 practically no point is "highly uncertain" (a sigma of the whole crop / 10 cm).
_TAU2_HUGE = {"frac": 1.0, "mm": 100.0}


def threshold_warnings(thresholds: Any) -> list[str]:
    """Warnings about uncertainty-class thresholds that make a class unreachable (empty when they look usable).

    Degenerate: ``tau1 == 0`` (nothing certain), ``tau2`` below 1e-6 (everything highly uncertain),
    ``tau2`` above 1 crop fraction / 100 mm (nothing highly uncertain), ``tau2 - tau1`` below 1e-6 of
    ``tau2`` (no moderate class). Each pair of ``per_point_type`` is checked too.
    """
    pairs = {"": (thresholds.tau1, thresholds.tau2)}
    pairs.update({f" ({k})": tuple(v) for k, v in (thresholds.per_point_type or {}).items()})
    src = f" from {thresholds.source}" if getattr(thresholds, "source", "") else ""
    out = []
    for label, (t1, t2) in pairs.items():
        why = []
        if t1 <= 0:
            why.append("tau1 = 0: no point can be 'certain'")
        if t2 < _TAU2_TINY:
            why.append(f"tau2 = {t2:g}: practically every point is 'highly uncertain'")
        if t2 > _TAU2_HUGE.get(thresholds.units, math.inf):
            why.append(f"tau2 = {t2:g} {thresholds.units}: practically no point is 'highly uncertain'")
        if t2 - t1 < _TAU2_TINY * t2:
            why.append(f"tau1 = {t1:g} and tau2 = {t2:g} leave no 'moderately uncertain' class")
        if why:
            out.append(f"warning: degenerate uncertainty thresholds{label}{src}: {'; '.join(why)}")
    return out


def _raw_deploy_config(folder: Path) -> dict[str, Any]:
    """The keys ``deploy.json`` sets itself (validated by :func:`read_deploy_config`), without the defaults."""
    read_deploy_config(folder)
    path = folder / DEPLOY_CONFIG_FILE
    return dict(json.loads(path.read_text(encoding="utf-8")).get("regressor", {})) if path.is_file() else {}


def check_specs(folders: ModelFolders) -> None:
    """JSON-only checks of the two specs (no torch): readable, a regressor spec, the same region.

    Raises:
        ValueError: a spec is unreadable, not a regressor spec, or names another region than the
            detector's (one line naming the file).
        FileNotFoundError: the detector spec vanished.
    """
    from monai_spine.inference.model_zoo import SPEC_FILES, read_spec

    det_region = read_spec(folders.detector_dir, "detector").get("region")
    spec_file = folders.regressor_dir / SPEC_FILES["regressor"]
    if not spec_file.is_file():
        return
    spec = read_spec(spec_file, "regressor")
    if spec.get("format") != "monai-spine-regressor":
        raise ValueError(f"{spec_file}: not a regressor spec (format {spec.get('format')!r})")
    if det_region is not None and spec.get("region") not in (None, det_region):
        raise ValueError(f"{spec_file}: the regressor was trained for region {spec.get('region')!r} but the detector "
                         f"{folders.detector_dir} for {det_region!r}")


def build_pipeline(folders: ModelFolders, device: str = "cpu", overlays: bool = True) -> Any:
    """A :class:`~monai_spine.inference.pipeline.SpinePipeline` (detector + BayeRegX regressor) from located models.

    A regressor folder with ``regressor_model.json`` is built from that spec (its sizes, crop and
    margin); a ``deploy.json`` beside it may only set the run-time keys ``mc_samples`` and
    ``flip_tta``, and any build key it sets must agree with the spec. Without a spec the regressor is
    built from ``deploy.json`` (or :data:`REGRESSOR_DEFAULTS`), as before specs existed.

    Args:
        folders: :func:`locate_models`' answer.
        device: torch device.
        overlays: let the pipeline write the overlay PNG.

    Raises:
        FileNotFoundError: a model file vanished.
        ValueError: a malformed ``deploy.json`` or spec, weights that do not fit their spec, a
            ``deploy.json`` contradicting the spec, or models of two regions (one line naming the file).
    """
    from monai_spine.inference.detector import VertebraDetector
    from monai_spine.inference.model_zoo import SPEC_FILES
    from monai_spine.inference.pipeline import SpinePipeline
    from monai_spine.inference.regressor import KeypointPredictor, load_conformal
    from monai_spine.uncertainty.classes import PAPER_THRESHOLDS, Thresholds

    check_specs(folders)
    detector = VertebraDetector.from_checkpoint(folders.detector_dir, device=device)
    cfg_dir = folders.config_dir
    cfg = read_deploy_config(cfg_dir)
    thr_path = cfg_dir / "thresholds.json"
    thresholds = Thresholds.load(thr_path) if thr_path.is_file() else PAPER_THRESHOLDS
    conformal = load_conformal(cfg_dir / "conformal.json")
    run_kw = dict(num_samples=int(cfg["mc_samples"]), device=device, flip_tta=bool(cfg["flip_tta"]),
                  thresholds=thresholds, conformal=conformal)
    if (folders.regressor_dir / SPEC_FILES["regressor"]).is_file():
        given = _raw_deploy_config(cfg_dir)  # only what deploy.json states is checked against the spec
        net_kw = {k: given[k] for k in ("width", "fc_features") if k in given}
        for key in ("spatial_size", "margin_mm"):
            if key in given:
                run_kw[key] = given[key]
        regressor = KeypointPredictor.from_checkpoint(
            folders.regressor_dir, variant=str(given.get("variant", "bayecbam")), network_kwargs=net_kw or None,
            **run_kw)
        spec = regressor.spec
        if "variant" in given and str(given["variant"]).lower() != spec.variant:
            raise ValueError(f"{cfg_dir / DEPLOY_CONFIG_FILE}: variant {given['variant']!r} but the spec says "
                             f"{spec.variant!r}")
        if "margin_mm" in given and float(given["margin_mm"]) != spec.margin_mm:
            raise ValueError(f"{cfg_dir / DEPLOY_CONFIG_FILE}: margin_mm {given['margin_mm']} but the spec says "
                             f"{spec.margin_mm}")
    else:
        regressor = KeypointPredictor.from_checkpoint(
            folders.regressor_checkpoint,
            variant=str(cfg["variant"]),
            region=cfg["region"] or detector.spec.region,
            network_kwargs={"width": float(cfg["width"]), "fc_features": int(cfg["fc_features"])},
            spatial_size=tuple(int(s) for s in cfg["spatial_size"]),
            margin_mm=float(cfg["margin_mm"]),
            **run_kw,
        )
    return SpinePipeline(detector, regressor, None, overlays=overlays)
