"""The layout holds: one package, one owner per job, on floors, and imports only go down
(docs/code-layout.md "Code layout").

Every import of a project module, at module level or inside a function (a lazy import is still
a dependency), must name a module on a lower floor; so there is no import circle either. A module
is named by its path without `.py`: `gbsweep/studies`, and the checkout's top-level `sweep`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gbsweep"
LAYOUT_DOC = ROOT / "docs" / "code-layout.md"
DOORWAYS = ("sweep", "objective")  # the design card's top-level modules, thin


def documented_floors() -> dict[str, int]:
    """module -> floor, from the layout table."""
    text = LAYOUT_DOC.read_text()
    section = re.search(r"^## Code layout\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, f"{LAYOUT_DOC.name} has no '## Code layout' section"
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`((?:\w+/)?\w+)\.py`\s*\|", section.group(1), re.MULTILINE)
    return {module: int(floor) for floor, module in rows}


FLOORS = documented_floors()


def modules() -> list[str]:
    return sorted([f"{PACKAGE}/{path.stem}" for path in (ROOT / PACKAGE).glob("*.py")]
                  + [path.stem for path in ROOT.glob("*.py")])


def imported_modules(node: ast.AST) -> list[str]:
    """The project modules one import statement names (`from gbsweep import a, b` names two)."""
    if isinstance(node, ast.Import):
        return [f"{PACKAGE}/__init__" if alias.name == PACKAGE else alias.name.replace(".", "/")
                for alias in node.names]
    if not isinstance(node, ast.ImportFrom) or not node.module:
        return []
    assert node.level == 0, "relative imports: write `from gbsweep import x`"
    if node.module != PACKAGE:
        return [node.module.replace(".", "/")]
    return [f"{PACKAGE}/{alias.name}" if f"{PACKAGE}/{alias.name}" in FLOORS else f"{PACKAGE}/__init__"
            for alias in node.names]


def project_imports(module: str) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in the module, wherever it stands."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    return [(name, node.lineno) for node in ast.walk(tree) for name in imported_modules(node) if name in FLOORS]


def test_every_module_has_a_floor_in_the_layout_table() -> None:
    assert sorted(FLOORS) == modules()


def test_the_wheel_installs_one_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"] == [PACKAGE]
    assert "py-modules" not in pyproject["tool"]["setuptools"]


@pytest.mark.parametrize("module", DOORWAYS)
def test_the_top_level_modules_are_thin_doorways_into_the_package(module: str) -> None:
    """sweep.py and objective.py only name what the package defines: a job added to them is a job
    the wheel would not have."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    defined = [type(node).__name__ for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    assert defined == []
    assert {name.split("/")[0] for name, _ in project_imports(module)} == {PACKAGE}


@pytest.mark.parametrize("module", modules())
def test_imports_only_go_down(module: str) -> None:
    upward = [f"{module}.py:{line} imports {name} (floor {FLOORS[name]} >= {FLOORS[module]})"
              for name, line in project_imports(module) if FLOORS[name] >= FLOORS[module]]
    assert upward == []


def test_no_import_circle() -> None:
    graph = {module: {name for name, _ in project_imports(module)} for module in modules()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import circle: {' -> '.join(visiting + [module])}"
        if module in done:
            return
        visiting.append(module)
        for name in sorted(graph[module]):
            visit(name)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_the_check_sees_lazy_and_type_checking_imports() -> None:
    """The parser counts imports inside functions and TYPE_CHECKING blocks, not only the top ones."""
    cli_imports = {name for name, _ in project_imports("gbsweep/cli")}
    assert {"gbsweep/lifecycle", "gbsweep/studies", "gbsweep/reports", "gbsweep/errors"} <= cli_imports
    runner_imports = {name for name, _ in project_imports("gbsweep/runner")}
    assert "gbsweep/recorder" in runner_imports  # only under TYPE_CHECKING
