"""The bundle's configs read as one :class:`monai.bundle.ConfigParser` (``train.json`` + ``inference.json``).

Shared by the benchmarks (:mod:`monai_spine.bench`) and the commands that evaluate or ship a model
(:mod:`monai_spine.engines.demo`, :mod:`monai_spine.engines.ship`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["bundle_parser"]


def _bundle_files(bundle_root: str | os.PathLike, *configs: str) -> tuple[str, list[str]]:
    cfg = Path(bundle_root) / "configs"
    files = [str(cfg / c) for c in configs]
    for f in files + [str(cfg / "metadata.json")]:
        if not Path(f).is_file():
            raise FileNotFoundError(f"bundle file {f} does not exist")
    return str(cfg / "metadata.json"), files


def bundle_parser(overrides: dict[str, Any], bundle_root: str | os.PathLike, inference: bool = True):
    """A :class:`monai.bundle.ConfigParser` of ``train.json`` (+ ``inference.json``) with ``overrides``."""
    from monai.bundle import ConfigParser

    configs = ("train.json", "inference.json") if inference else ("train.json",)
    meta, files = _bundle_files(bundle_root, *configs)
    parser = ConfigParser()
    parser.read_meta(meta)
    parser.read_config(files)
    parser.update(dict(overrides))
    return parser
