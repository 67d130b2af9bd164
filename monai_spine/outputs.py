"""Checks a command runs before any work: the output folder is usable, the inputs exist, a film can hold a result.

``monai-spine`` calls the path checks before it reads a film or loads a model, so that a bad
``--out`` or a mistyped input is named as the problem at once (exit status 2), not blamed on every
input file after minutes of model loading.

A film in which nothing can be found (a constant image, 1 x 1 pixel included, or one where the
detector saw no vertebra) gives no result rather than an empty or invented one:
:class:`NothingFoundError`, whose message starts ``nothing found in <file>``. ``predict`` lists such
films on stderr, writes none of their outputs and exits 1 (a batch with files that gave no result);
``corners`` stops with exit 2 (its one input cannot be used). Only the standard library is imported
at module level (numpy inside :func:`check_film_has_contrast`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["check_output_dir", "check_output_file", "check_inputs_exist", "NothingFoundError",
           "check_film_has_contrast", "IMAGE_EXTENSIONS", "output_stem"]

#: File name endings taken from a folder given as input (files named explicitly are always tried).
IMAGE_EXTENSIONS = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".nrrd")


def output_stem(path: str | os.PathLike) -> str:
    """The output name of an image: its file name without a known image extension (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    low = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


class NothingFoundError(ValueError):
    """A film gave no result: nothing can be found in it. The message starts ``nothing found in <file>``."""


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


def check_film_has_contrast(image: Any, path: str | os.PathLike) -> None:
    """Refuse a film with no contrast (every finite pixel equal; a 1 x 1 image is one).

    Args:
        image: the film's pixels, any shape (``(H, W)`` or ``(1, H, W)``).
        path: the film, named in the message.

    Raises:
        NothingFoundError: ``nothing found in <path>: constant image (N pixels, every one = v), no contrast``.
    """
    import numpy as np

    a = np.asarray(image)
    vals = a[np.isfinite(a)] if a.dtype.kind in "fc" else a  # integer films: no copy
    if vals.size == 0:
        raise NothingFoundError(f"nothing found in {os.fspath(path)}: no finite pixel value")
    lo, hi = float(vals.min()), float(vals.max())
    if lo == hi:
        raise NothingFoundError(
            f"nothing found in {os.fspath(path)}: constant image ({a.size} pixel{'s' if a.size != 1 else ''}, "
            f"every one = {lo:g}), no contrast")
