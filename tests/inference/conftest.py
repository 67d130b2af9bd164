"""Puts this folder on ``sys.path`` so the tests can import ``corner_reference.py`` (the suite runs with
``--import-mode=importlib``, which adds no test folder to the path)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
