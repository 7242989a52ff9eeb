"""Every stage's dvc.yaml deps name the code it runs: its stage module and every toolsel module it imports,
directly or through other toolsel modules (so editing that code reruns the stage, and nothing else does)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of an importable toolsel/stages module name, or None if it names no module."""
    parts = name.split(".")
    base = ROOT if parts[0] == "stages" else SRC
    path = base.joinpath(*parts)
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return None


def imported_files(path: Path) -> set[Path]:
    """toolsel modules a file imports (anywhere in it: stage modules import lazily inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in ("toolsel", "stages") and (file := module_file(name)):
                found.add(file)
    return found


def closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        file = todo.pop()
        if file not in seen:
            seen.add(file)
            todo.extend(imported_files(file))
    return seen


def trivial(file: Path) -> bool:
    """A package __init__ with nothing but a docstring and constants (`__version__`): not worth a dep."""
    body = ast.parse(file.read_text()).body
    return file.name == "__init__.py" and all(isinstance(n, (ast.Expr, ast.Assign, ast.ImportFrom)) and
                                              not (isinstance(n, ast.ImportFrom) and n.module != "__future__")
                                              for n in body)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(stage):
    deps = [ROOT / d for d in STAGES[stage].get("deps", [])]
    module = ROOT / "stages" / f"{stage}.py"
    assert module in deps, f"{stage}: its own module {module.relative_to(ROOT)} is not a dep"
    missing = sorted(str(f.relative_to(ROOT)) for f in closure(module)
                     if not trivial(f) and not any(f == d or d in f.parents for d in deps))
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not depend on: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_exist(stage):
    absent = [d for d in STAGES[stage].get("deps", []) if not (ROOT / d).exists()
              and not d.startswith(("data/", "models/"))]  # pipeline outputs appear as stages run
    assert not absent, f"{stage}: deps that do not exist: {absent}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_name_no_code_it_does_not_run(stage):
    """Editing eval code must rerun eval only: no stage depends on a module it never imports."""
    used = closure(ROOT / "stages" / f"{stage}.py")
    extra = [d for d in STAGES[stage].get("deps", []) if d.endswith(".py") and ROOT / d not in used]
    assert not extra, f"{stage}: depends on code it does not import: {extra}"
