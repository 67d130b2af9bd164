"""The repository's ``transforms/`` folder is installed as ``monai_spine.transforms`` (issue 17, item 5).

No generic top-level ``transforms`` package may land in site-packages, and nothing in the project may
import it by that name: the checks read setup.py/setup.cfg and the sources, and import the installed
package in a fresh interpreter whose working directory is not the repository.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = runpy.run_path(str(REPO / "setup.py"), run_name="setup_under_test")  # setup() runs only as __main__


def test_setup_installs_only_the_project_namespace():
    packages = SETUP["PACKAGES"]
    assert "monai_spine" in packages and "monai_spine.transforms" in packages
    outside = [p for p in packages if p != "monai_spine" and not p.startswith("monai_spine.")]
    assert not outside, f"setup.py would install top-level packages {outside}"
    assert SETUP["PACKAGE_DIR"] == {"monai_spine.transforms": "transforms"}
    # every sub-package of the transforms/ folder goes in under the namespace
    sub = sorted("monai_spine." + ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "transforms").rglob("__init__.py"))
    assert sorted(p for p in packages if p.startswith("monai_spine.transforms")) == sub


def test_setup_cfg_does_not_list_packages_itself():
    # a ``packages``/``package_dir`` in setup.cfg would fight setup.py's list (``find:`` finds ``transforms``)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    assert "packages" not in cfg["options"] and "package_dir" not in cfg["options"]
    assert not cfg.has_section("options.packages.find")


def test_installed_namespace_imports_outside_the_repository(tmp_path):
    # cwd = tmp_path: the repository root is not on sys.path, only what is installed is found
    code = (
        "import importlib.util, monai_spine.transforms as t\n"
        "from monai_spine.transforms.flip import FlipKeypointsd\n"
        "print(FlipKeypointsd.__module__, importlib.util.find_spec('transforms') is None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["monai_spine.transforms.flip", "True"]


def _old_name_imports(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "transforms" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "transforms":
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("folder", ["monai_spine", "transforms", "scripts", "tests"])
def test_no_source_imports_the_top_level_name(folder):
    bad = [f"{p.relative_to(REPO)}:{n}" for p in sorted((REPO / folder).rglob("*.py")) for n in _old_name_imports(p)]
    assert not bad, f"import monai_spine.transforms instead of transforms: {bad}"


def _targets(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_" and isinstance(v, str):
                yield v
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


def test_bundle_configs_name_the_installed_package():
    configs = sorted((REPO / "bundle" / "configs").glob("*.json"))
    assert configs
    bad = [(c.name, t) for c in configs for t in _targets(json.loads(c.read_text(encoding="utf-8")))
           if t.startswith("transforms.")]
    assert not bad, f"bundle _target_ strings with the old top-level name: {bad}"
