"""The import layering of issue 17, checked by reading the sources with ``ast`` (nothing is imported).

Every ``import`` statement counts, also those inside functions (lazy imports), so a prediction path
that imports training code only when one branch runs still fails here.

* Prediction code (``monai_spine/inference``, ``monai_spine/codecs``, ``monai_spine/apps/deploy``) never
  reaches ``monai_spine.engines`` (training), ``monai_spine.bench`` (benchmarks) or
  ``monai_spine.evaluation`` (evaluation against annotations), directly or through any chain of
  project imports.
* The Label app imports training code only where it trains: :data:`LABEL_TRAINING_IMPORTS`.
* Benchmarks live in ``monai_spine/bench``, not in ``engines``.
* No new import cycle between packages: the cycles left are listed in :data:`KNOWN_PACKAGE_CYCLES`
  (fixing one means deleting its entry).
* No import cycle between the modules of ``monai_spine/uncertainty``, and they hold statistics only: they
  never reach prediction files (``monai_spine.data.prediction``), evaluation, the commands or training.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: folders of the project that are scanned, with the package each is installed as (setup.py)
PACKAGES = {"monai_spine": "monai_spine", "transforms": "monai_spine.transforms"}
#: packages of training code (the Label app may import them only in its trainer)
TRAINING = ("monai_spine.engines", "monai_spine.bench")
#: packages prediction must not reach: training, benchmarks and evaluation
NOT_FOR_PREDICTION = TRAINING + ("monai_spine.evaluation",)
#: packages that predict (the Label app's inference tasks are covered by its own rule below)
PREDICTION = ("monai_spine.inference", "monai_spine.codecs", "monai_spine.apps.deploy")
#: (file, enclosing function, imported module): the Label app's trainer builds the regressor's loss
LABEL_TRAINING_IMPORTS = {
    ("monai_spine/apps/label/lib/training.py", "finetune_regressor", "monai_spine.engines.regressor"),
}
#: package cycles still there (issue 17); none left
KNOWN_PACKAGE_CYCLES: set[frozenset[str]] = set()
#: module cycles still there inside a package (fixing one means deleting its entry); none left
KNOWN_MODULE_CYCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts = PACKAGES[parts[0]].split(".") + parts[1:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


MODULES = _modules()


def _package(module: str) -> str:
    """``monai_spine.<sub>`` for the project package, else the top-level name."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "monai_spine" and len(parts) > 1 else parts[0]


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module of the project, enclosing function or None, line)`` of every import in ``module``.

    ``from a.b import c`` counts as ``a.b.c`` when that is a module, else ``a.b``; relative imports are
    resolved; imports of other projects are left out.
    """
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    src = ".".join(base + ([child.module] if child.module else []))
                else:
                    src = child.module or ""
                names = [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src for a in child.names]
            for name in names:
                parts = name.split(".")
                found = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in MODULES),
                             None)
                if found is not None:
                    out.append((found, func, child.lineno))
            is_func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            visit(child, child.name if is_func and func is None else func)

    visit(tree, None)
    return out


def _is_under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _reach(starts: list[str], skip: set[tuple[str, str]] = frozenset()) -> dict[str, list[str]]:
    """Every project module reachable from ``starts`` through imports (parents' ``__init__`` included),
    with one import chain to it; ``skip``: ``(importer, imported)`` edges not followed."""
    chains = {m: [m] for m in starts}
    todo = list(starts)
    while todo:
        m = todo.pop()
        for dep, _, _ in _imports(m):
            if (m, dep) in skip:
                continue
            parts = dep.split(".")
            for target in [".".join(parts[:k]) for k in range(1, len(parts))] + [dep]:
                if target in MODULES and target not in chains:
                    chains[target] = chains[m] + [target]
                    todo.append(target)
    return chains


def test_the_scan_sees_the_project():
    # the scan reads real files and sees a known lazy import: else every check below passes vacuously
    assert "monai_spine.inference.detector" in MODULES and "monai_spine.engines.regressor" in MODULES
    lazy = [(m, f) for m, f, _ in _imports("monai_spine.apps.label.lib.training")]
    assert ("monai_spine.engines.regressor", "finetune_regressor") in lazy
    # a from-import names the module it imports from
    assert ("monai_spine.codecs.detection", None) in [(m, f) for m, f, _ in _imports("monai_spine.inference.detector")]


@pytest.mark.parametrize("package", PREDICTION)
def test_prediction_never_reaches_training_code(package):
    starts = [m for m in MODULES if _is_under(m, (package,))]
    assert starts, f"no module under {package}"
    bad = {m: chain for m, chain in _reach(starts).items() if _is_under(m, NOT_FOR_PREDICTION)}
    assert not bad, "prediction code imports training, benchmark or evaluation code:\n" + "\n".join(
        " -> ".join(chain) for chain in bad.values())


#: what the statistics of ``monai_spine/uncertainty`` never reach: prediction files, their matching to
#: annotations and the runs and reports over them (``monai_spine.evaluation``), training and benchmarks
NOT_FOR_UNCERTAINTY = NOT_FOR_PREDICTION + ("monai_spine.data.prediction", "monai_spine.cli")


def test_uncertainty_holds_statistics_only():
    starts = [m for m in MODULES if _is_under(m, ("monai_spine.uncertainty",))]
    assert "monai_spine.uncertainty.thresholds" in starts and "monai_spine.uncertainty.conformal" in starts
    bad = {m: chain for m, chain in _reach(starts).items() if _is_under(m, NOT_FOR_UNCERTAINTY)}
    assert not bad, "monai_spine/uncertainty reaches file matching, evaluation or training code:\n" + "\n".join(
        " -> ".join(chain) for chain in bad.values())


def test_label_app_imports_training_code_only_in_its_trainer():
    found = set()
    for m in (m for m in MODULES if _is_under(m, ("monai_spine.apps.label",))):
        for dep, func, line in _imports(m):
            if _is_under(dep, TRAINING):
                key = (MODULES[m].relative_to(REPO).as_posix(), func, dep)
                assert key in LABEL_TRAINING_IMPORTS, f"{key[0]}:{line} imports {dep} (in {func or 'module scope'})"
                found.add(key)
    assert found == LABEL_TRAINING_IMPORTS, f"allowed imports no longer there (shrink the list): {LABEL_TRAINING_IMPORTS - found}"


def test_label_app_inference_does_not_reach_training_code_outside_the_trainer():
    label = [m for m in MODULES if _is_under(m, ("monai_spine.apps.label",))]
    skip = {(m, dep) for m in label for dep, func, _ in _imports(m)
            if (MODULES[m].relative_to(REPO).as_posix(), func, dep) in LABEL_TRAINING_IMPORTS}
    bad = {m: c for m, c in _reach(label, skip).items() if _is_under(m, TRAINING)}
    assert not bad, "\n".join(" -> ".join(c) for c in bad.values())


#: the one command module that trains (``monai-spine demo``); every other command predicts or evaluates
CLI_TRAINING = "monai_spine.cli.demo"


def test_only_the_demo_command_reaches_training_code():
    commands = [m for m in MODULES if _is_under(m, ("monai_spine.cli",)) and m != CLI_TRAINING]
    assert "monai_spine.cli.predict" in commands and CLI_TRAINING in MODULES
    skip = {("monai_spine.cli", CLI_TRAINING)}  # the parser registers the demo without importing engines
    bad = {m: c for m, c in _reach(commands, skip).items() if _is_under(m, TRAINING)}
    assert not bad, "a command other than demo imports training code:\n" + "\n".join(" -> ".join(c) for c in bad.values())
    assert any(_is_under(d, TRAINING) for d, _, _ in _imports(CLI_TRAINING)), "the demo no longer trains: update CLI_TRAINING"


def test_engines_holds_no_benchmark():
    names = sorted(p.name for p in (REPO / "monai_spine" / "engines").glob("bench*"))
    assert names == [], f"benchmarks belong in monai_spine/bench/, found in engines/: {names}"
    assert (REPO / "monai_spine" / "bench" / "__init__.py").is_file()


def test_no_new_package_cycle():
    edges: dict[str, dict[str, str]] = defaultdict(dict)
    for m in MODULES:
        for dep, _, line in _imports(m):
            a, b = _package(m), _package(dep)
            if a != b:
                edges[a].setdefault(b, f"{MODULES[m].relative_to(REPO).as_posix()}:{line}")
    cycles = {frozenset({a, b}): (edges[a][b], edges[b][a]) for a in edges for b in edges[a] if a in edges.get(b, {})}
    new = {tuple(sorted(k)): v for k, v in cycles.items() if k not in KNOWN_PACKAGE_CYCLES}
    assert not new, f"new import cycles between packages (one import each way): {new}"
    gone = [sorted(k) for k in KNOWN_PACKAGE_CYCLES if k not in cycles]
    assert not gone, f"cycles fixed: remove them from KNOWN_PACKAGE_CYCLES: {gone}"


def _module_cycle(modules: list[str], known: set[frozenset[str]] = frozenset()) -> list[str] | None:
    """One import cycle among ``modules`` (``[a, b, ..., a]``), or None; ``known``: module pairs whose
    imports of each other are not followed (cycles already listed)."""
    inside = set(modules)
    edges = {m: sorted({d for d, _, _ in _imports(m) if d in inside and d != m and frozenset({m, d}) not in known})
             for m in modules}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d, path + [d])):
                return found
        state[m] = 2
        return None

    for m in modules:
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_module_cycle_scan_finds_a_cycle(monkeypatch):
    # the cycle check below could pass vacuously: here it must find a made-up two-module cycle
    fake = {"a": [("b", None, 1)], "b": [("a", None, 1)]}
    monkeypatch.setitem(globals(), "_imports", lambda m: fake[m])
    assert _module_cycle(["a", "b"]) == ["a", "b", "a"]


@pytest.mark.parametrize("package", ["monai_spine.uncertainty"])
def test_no_module_cycle_inside(package):
    modules = [m for m in MODULES if _is_under(m, (package,))]
    assert modules, f"no module under {package}"
    known = {c for c in KNOWN_MODULE_CYCLES if all(_is_under(m, (package,)) for m in c)}
    # the known cycles' edges are left out one at a time, so a new cycle still shows
    skip = {frozenset(c) for c in known}
    cycle = _module_cycle(modules, skip)
    assert cycle is None, f"import cycle between modules of {package}: {' -> '.join(cycle or [])}"
    gone = [sorted(c) for c in known if _module_cycle(sorted(c)) is None]
    assert not gone, f"module cycles fixed: remove them from KNOWN_MODULE_CYCLES: {gone}"
