"""Dataset folders: the index, seeded splits, the embedded synthetic default, per-vertebra items.

A dataset folder holds annotation files in the ``monai-spine-keypoints`` format (one JSON per image,
whose ``image`` field points at the radiograph) and optionally a ``dataset.json`` index::

    {"region": "cervical",
     "training": [{"image": "case_0000.dcm", "label": "case_0000.json"}, ...],   # explicit split, or
     "data": [{"image": ..., "label": ...}, ...]}                                  # split by seed

Without ``dataset.json`` every ``*.json`` annotation in the folder is used. Paths are relative to the
folder. Without an explicit split, cases are split by image with :func:`split_cases` (seeded), so
vertebrae of one radiograph never fall in two parts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_spine.data.annotation import AnnotationError, SpineAnnotation, read_annotation
from monai_spine.data.keypoints import get_region

__all__ = [
    "SPLITS",
    "default_cache_dir",
    "list_cases",
    "split_cases",
    "ensure_synthetic",
    "vertebra_items",
    "bundle_splits",
    "vertebra_datalists",
]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")


def default_cache_dir() -> Path:
    """Folder for generated data: ``$MONAI_SPINE_CACHE`` or ``~/.cache/monai-spine``."""
    return Path(os.environ.get("MONAI_SPINE_CACHE", Path.home() / ".cache" / "monai-spine"))


def list_cases(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a dataset folder's index.

    Returns:
        ``{"region": str | None, "cases": [label_path, ...]}`` or, when the index has an explicit
        split, ``{"region": ..., "training": [...], "validation": [...], "test": [...]}``; label paths
        are absolute.

    Raises:
        FileNotFoundError: the folder does not exist or holds no annotation.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    index = root / "dataset.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            d = json.load(f)
        out: dict[str, Any] = {"region": d.get("region")}

        def _labels(entries: Sequence[Any]) -> list[str]:
            labels = []
            for e in entries:
                lab = e["label"] if isinstance(e, dict) else e
                labels.append(str((root / lab).resolve()))
            return labels

        if any(s in d for s in SPLITS):
            for s in SPLITS:
                out[s] = _labels(d.get(s, []))
        else:
            out["cases"] = _labels(d.get("data", []))
        return out
    cases = []
    for p in sorted(root.glob("*.json")):
        try:
            with open(p, encoding="utf-8") as f:
                if json.load(f).get("format") == "monai-spine-keypoints":
                    cases.append(str(p.resolve()))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
    if not cases:
        raise FileNotFoundError(f"no monai-spine-keypoints annotation (*.json) in {root}")
    return {"region": None, "cases": cases}


def split_cases(
    cases: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """Split cases (one per image) into training / validation / test with a seeded permutation.

    Args:
        cases: label paths (sorted first, so the split does not depend on listing order).
        fractions: shares of training, validation and test; normalised to sum 1.
        seed: permutation seed.

    Returns:
        dict with keys :data:`SPLITS`. With at least 3 cases, validation and test get one each at least.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions!r}")
    fr = fr / fr.sum()
    ordered = sorted(cases)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n = len(ordered)
    n_val = int(round(fr[1] * n))
    n_test = int(round(fr[2] * n))
    if n >= 3:
        n_val = max(n_val, 1 if fr[1] > 0 else 0)
        n_test = max(n_test, 1 if fr[2] > 0 else 0)
    n_train = n - n_val - n_test
    idx = {"training": perm[:n_train], "validation": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
    return {k: [ordered[i] for i in sorted(v)] for k, v in idx.items()}


def ensure_synthetic(
    cache_dir: str | os.PathLike,
    region: str = "cervical",
    n: int = 60,
    seed: int = 0,
    hard_case_rate: float = 0.1,
    size: Sequence[int] = (1024, 1024),
) -> Path:
    """Generate the embedded synthetic set into ``cache_dir`` unless it is already there.

    The folder name records the generator parameters, so a different request never reuses a stale set.

    Returns:
        The dataset folder (holding ``dataset.json``).
    """
    from monai_spine.data.synthetic import generate_dataset

    folder = Path(cache_dir) / f"synthetic-{region}-n{n}-seed{seed}-hard{hard_case_rate:g}-{size[0]}x{size[1]}"
    if (folder / "dataset.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    logger.info("generating %d synthetic %s radiographs into %s", n, region, folder)
    generate_dataset(tmp, region=region, n=n, seed=seed, hard_case_rate=hard_case_rate, size=tuple(size))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process (e.g. another torchrun rank) made it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "dataset.json").is_file():
            raise
    return folder


def vertebra_items(label_paths: Sequence[str], region: str | None = None, image_id_offset: int = 0) -> list[dict]:
    """One item per annotated vertebra, for crop-based training and evaluation.

    Args:
        label_paths: annotation files (each naming its image).
        region: keep only annotations of this region (``None``: all); its levels filter vertebrae.
        image_id_offset: first image id (ids number the radiographs, so metrics can group by scan).

    Returns:
        dicts with ``image`` (path), ``keypoints_px`` (K, 2) float32, ``visible`` (K,) bool,
        ``box_px`` (4,) float32, ``box_angle_rad`` (the box's turn about its centre, 0.0 for an
        axis-aligned box), ``level``, ``level_index`` (index in the region's levels),
        ``image_id``, ``scheme``, ``label_path`` and, where the annotation records one and the image
        file cannot (PNG/JPEG), ``sidecar_spacing_mm``.

    Raises:
        AnnotationError: an annotation is malformed (message names the file).
    """
    items: list[dict] = []
    for i, path in enumerate(label_paths):
        ann: SpineAnnotation = read_annotation(path)
        if region is not None and ann.region != region:
            continue
        if ann.image is None:
            raise AnnotationError(f"{path}: annotation names no image")
        levels = get_region(ann.region).levels
        boxes = ann.boxes_px if ann.boxes_px is not None else ann.boxes_from_keypoints()
        for j, level in enumerate(ann.levels):
            if level not in levels or not ann.visible[j].any():
                continue
            item = {
                "image": ann.image,
                "keypoints_px": ann.keypoints_px[j].astype(np.float32),
                "visible": ann.visible[j].copy(),
                "box_px": boxes[j].astype(np.float32),
                "box_angle_rad": float(ann.box_angles_rad[j]) if ann.box_angles_rad is not None else 0.0,
                "level": level,
                "level_index": levels.index(level),
                "image_id": image_id_offset + i,
                "scheme": ann.scheme,
                "label_path": str(path),
            }
            if ann.spacing_override_mm is not None:
                item["sidecar_spacing_mm"] = np.asarray(ann.spacing_override_mm, dtype=np.float32)
            items.append(item)
    return items


def bundle_splits(
    dataset_dir: str | None = None,
    region: str = "cervical",
    synthetic_n: int = 60,
    synthetic_seed: int = 0,
    hard_case_rate: float = 0.1,
    synthetic_size: Sequence[int] = (1024, 1024),
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    split_seed: int = 0,
    max_cases: int | None = None,
) -> dict[str, list[str]]:
    """Annotation paths per split: ``{"training": [...], "validation": [...], "test": [...]}``.

    Args:
        dataset_dir: a dataset folder in the project's format; ``None`` or ``""`` means the embedded
            synthetic default, generated on first use under :func:`default_cache_dir`.
        region: ``cervical``, ``lumbar`` or ``ap``.
        synthetic_n, synthetic_seed, hard_case_rate, synthetic_size: generator settings for the default.
        split_fractions, split_seed: the seeded split by image, when the index has none.
        max_cases: keep at most this many cases per split (tiny test runs).
    """
    if not dataset_dir:
        if region == "ap":
            raise ValueError("there is no synthetic AP generator: pass dataset_dir for the AP region")
        dataset_dir = str(
            ensure_synthetic(default_cache_dir(), region, synthetic_n, synthetic_seed, hard_case_rate, synthetic_size)
        )
    index = list_cases(dataset_dir)
    if "cases" in index:
        splits = split_cases(index["cases"], split_fractions, split_seed)
    else:
        splits = {s: index[s] for s in SPLITS}
    if max_cases:
        splits = {s: v[:max_cases] for s, v in splits.items()}
    if not splits["training"]:
        raise ValueError(f"{dataset_dir}: the training split is empty")
    return splits


def vertebra_datalists(splits: dict[str, list[str]], region: str | None = None) -> dict[str, list[dict]]:
    """Per-vertebra datalists of every split (image ids are unique across splits).

    Raises:
        ValueError: the training split holds no vertebra of ``region``.
    """
    out: dict[str, list[dict]] = {}
    offset = 0
    for s in SPLITS:
        labels = splits.get(s, [])
        out[s] = vertebra_items(labels, region=region, image_id_offset=offset)
        offset += len(labels)
    if not out["training"]:
        raise ValueError(f"no {region} vertebra in the training split")
    return out
