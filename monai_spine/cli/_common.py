"""Helpers shared by the ``monai-spine`` command modules: one-line messages, the debug switch."""

from __future__ import annotations

import os

__all__ = ["DEBUG_ENV", "one_line", "debug"]

#: Environment variable: when set (non-empty, not "0"), unexpected errors show their traceback.
DEBUG_ENV = "MONAI_SPINE_DEBUG"


def one_line(msg: object) -> str:
    """``msg`` as a single line (newlines and runs of spaces collapsed)."""
    return " ".join(str(msg).split())


def debug() -> bool:
    """Whether :data:`DEBUG_ENV` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
