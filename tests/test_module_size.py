"""Issue 17: no library module above about 600 lines without a written reason.

A long module either does one job that does not split well (a file format, one class, one
benchmark) and says so in its docstring, in a paragraph that starts with ``Why one module:``, or it
is split by job. The scan reads the sources (nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: lines above which a module must say why it is one module
LIMIT = 600
MARK = "Why one module:"


def _modules() -> list[Path]:
    return sorted(p for folder in ("monai_spine", "transforms") for p in (REPO / folder).rglob("*.py"))


def _long_modules() -> list[Path]:
    return [p for p in _modules() if len(p.read_text(encoding="utf-8").splitlines()) > LIMIT]


@pytest.mark.parametrize("path", _long_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_a_long_module_says_why_it_is_one_module(path):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert MARK in doc, f"{path.relative_to(REPO)} has more than {LIMIT} lines: split it by job, or say '{MARK} ...'"
    reason = doc.split(MARK, 1)[1].strip()
    assert len(reason.split()) >= 8, f"{path.relative_to(REPO)}: the reason after '{MARK}' is too short"


def test_the_scan_finds_modules_and_counts_lines(tmp_path):
    """The scan is not vacuous: it sees the package and would flag a long module without a reason."""
    assert len(_modules()) > 50
    fake = tmp_path / "long.py"
    fake.write_text('"""A module."""\n' + "x = 1\n" * (LIMIT + 1))
    doc = ast.get_docstring(ast.parse(fake.read_text()))
    assert len(fake.read_text().splitlines()) > LIMIT and MARK not in doc
