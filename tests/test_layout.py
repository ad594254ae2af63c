"""The layout holds: one owner per job, on floors, and imports only go down (README "Code layout").

Every import of a project module, at module level or inside a function (a lazy import is still
a dependency), must name a module on a lower floor; so there is no import circle either.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def readme_floors() -> dict[str, int]:
    """module -> floor, from the README's layout table."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Code layout\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Code layout' section"
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)\.py`\s*\|", section.group(1), re.MULTILINE)
    return {module: int(floor) for floor, module in rows}


FLOORS = readme_floors()


def modules() -> list[str]:
    return sorted(path.stem for path in ROOT.glob("*.py"))


def project_imports(module: str) -> list[tuple[str, int]]:
    """(imported project module, line) for every import in the module, wherever it stands."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        found += [(name, node.lineno) for name in names if name in FLOORS]
    return found


def test_every_module_has_a_floor_in_the_readme() -> None:
    assert sorted(FLOORS) == modules()


def test_the_installed_modules_are_the_modules() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert sorted(pyproject["tool"]["setuptools"]["py-modules"]) == modules()


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
    sweep_imports = {name for name, _ in project_imports("sweep")}
    assert {"lifecycle", "studies", "reports", "errors"} <= sweep_imports
    runner_imports = {name for name, _ in project_imports("runner")}
    assert "recorder" in runner_imports  # only under TYPE_CHECKING
