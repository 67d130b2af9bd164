"""Shared helpers of the application tests: where the apps' own virtual environments are.

The MONAI Deploy app and the MONAI Label app each run in their own venv at the repo root
(``.venv-deploy``, built by ``scripts/deploy_env.sh``; ``.venv-label``). The main venv's pytest
runs them as subprocesses. When a venv is missing the tests **skip**, unless the environment
variable ``MONAI_SPINE_REQUIRE_APPS=1`` is set (CI sets it), in which case they **fail**.

Use the ``app_python`` fixture: ``py = app_python(".venv-deploy")`` gives the venv's python.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: App venv names and the script that builds each (named in skip / failure messages).
APP_VENVS = {".venv-deploy": "scripts/deploy_env.sh", ".venv-label": "scripts/label_server.sh"}

#: Environment variable that turns a missing app venv from a skip into a failure.
REQUIRE_ENV = "MONAI_SPINE_REQUIRE_APPS"


def app_venv_python(name: str) -> Path | None:
    """``<repo>/<name>/bin/python`` when it exists and is executable, else None.

    Raises:
        KeyError: ``name`` is not one of :data:`APP_VENVS`.
    """
    if name not in APP_VENVS:
        raise KeyError(f"unknown app venv {name!r}; expected one of {sorted(APP_VENVS)}")
    py = REPO_ROOT / name / "bin" / "python"
    return py if py.is_file() and os.access(py, os.X_OK) else None


def require_app_python(name: str) -> Path:
    """The venv's python, or skip the test (fail it when ``MONAI_SPINE_REQUIRE_APPS=1``)."""
    py = app_venv_python(name)
    if py is not None:
        return py
    msg = f"{REPO_ROOT / name} is missing: build it with {APP_VENVS[name]}"
    if os.environ.get(REQUIRE_ENV, "") == "1":
        pytest.fail(f"{msg} ({REQUIRE_ENV}=1 requires the app environments)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def app_python():
    """``app_python(name) -> Path`` of ``<repo>/<name>/bin/python`` (skip / fail rule: module docstring)."""
    return require_app_python
