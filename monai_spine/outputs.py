"""Checks a command runs on its paths before any work: the output folder is usable, the inputs exist.

``monai-spine`` calls them before it reads a film or loads a model, so that a bad ``--out`` or a
mistyped input is named as the problem at once (exit status 2), not blamed on every input file
after minutes of model loading. Only the standard library is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

__all__ = ["check_output_dir", "check_output_file", "check_inputs_exist"]


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def check_output_dir(out: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``out`` is, or can be created as, a writable folder; returns it as a Path.

    Raises:
        ValueError: ``out`` is an existing file, or lies under a file (the message names it).
        PermissionError: the folder, or its nearest existing parent, is not writable.
    """
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{option} {out_dir}: is a file, not a folder")
    probe = _nearest_existing(out_dir)
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{option} {out_dir}: {probe} is a file, so the folder cannot be created")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {out_dir}: {probe} is not writable")
    return out_dir


def check_output_file(out: str | os.PathLike, option: str = "--out") -> Path:
    """Check that the file ``out`` can be written (it is no folder; its folder is usable); returns it.

    Raises:
        ValueError: ``out`` is a folder, or its folder is a file.
        PermissionError: its folder is not writable.
    """
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give the file name to write")
    check_output_dir(path.parent if str(path.parent) else ".", option=f"{option} {path}: folder")
    return path


def check_inputs_exist(paths: Iterable[str | os.PathLike], what: str = "input") -> None:
    """Raise one ``FileNotFoundError`` naming every path of ``paths`` that does not exist."""
    missing = [os.fspath(p) for p in paths if not Path(p).exists()]
    if missing:
        names = ", ".join(missing)
        raise FileNotFoundError(f"{what} {names} {'does' if len(missing) == 1 else 'do'} not exist")
