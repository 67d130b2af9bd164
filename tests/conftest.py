"""Shared fixtures: where the real data lives (read in place, never copied)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# helper modules shared by test files (e.g. corner_cases.py): the tests run with --import-mode=importlib,
# which puts no test folder on sys.path; appended, so no installed package is shadowed by a test folder
sys.path.append(str(Path(__file__).resolve().parent))


def shared_data_dir() -> Path:
    """``$MONAI_SPINE_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("MONAI_SPINE_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data folder {d} is absent")
    return d


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Generated data of the tests goes to a temporary cache, never to the user's."""
    old = os.environ.get("MONAI_SPINE_CACHE")
    os.environ["MONAI_SPINE_CACHE"] = str(tmp_path_factory.mktemp("monai-spine-cache"))
    yield
    if old is None:
        os.environ.pop("MONAI_SPINE_CACHE", None)
    else:
        os.environ["MONAI_SPINE_CACHE"] = old


@pytest.fixture(autouse=True)
def _no_log_handler_on_a_closed_stream():
    """A logger first configured inside a test (MONAI's, during the demo) keeps that test's captured
    stderr, which pytest closes afterwards; its next record would print a logging traceback into a
    later test's output. Point such handlers back at the real stderr after each test."""
    yield
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False):
                h.stream = sys.__stderr__  # setStream would flush the closed one


BLANK_FILMS = ("1x1.png", "const.png", "const.dcm")


@pytest.fixture
def blank_film(tmp_path):
    """``blank_film(kind)`` writes a film with nothing in it into ``tmp_path``: a 1 x 1 PNG, a constant
    512 x 512 PNG or a constant DICOM with a spacing (``kind`` in :data:`BLANK_FILMS`)."""

    def write(kind: str) -> Path:
        import cv2
        import numpy as np

        from monai_spine.data.synthetic_dicom import write_dx_dicom

        path = tmp_path / kind
        if kind == "1x1.png":
            cv2.imwrite(str(path), np.full((1, 1), 128, np.uint8))
        elif kind == "const.png":
            cv2.imwrite(str(path), np.full((512, 512), 128, np.uint8))
        elif kind == "const.dcm":
            write_dx_dicom(path, np.full((512, 512), 2000, np.uint16), (0.2, 0.2))
        else:
            raise KeyError(f"blank_film: unknown kind {kind!r}; known: {BLANK_FILMS}")
        return path

    return write
