"""The package's shape, checked: the import graph (deferred imports included) has no cycle, the layers
import only downwards (plan <- build <- publish <- cli), nothing below the CLI imports it, and no
`release_*` module stands in for a folder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imagefactory"
# Each layer may import the ones before it (and the shared modules: errors, log, run, tags).
LAYERS = ("imagefactory.plan", "imagefactory.build", "imagefactory.publish", "imagefactory.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every imagefactory module this file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    # Importing a package runs its __init__: those edges are implied, not chosen, so they are left out.
    return {name: {dep for dep in imports(path, known) if dep != name and not name.startswith(f"{dep}.")}
            for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_graph_sees_deferred_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from imagefactory.cli import main\n    import imagefactory.log\n")
    assert imports(source, {"imagefactory.cli", "imagefactory.log", "imagefactory.run"}) == {"imagefactory.cli", "imagefactory.log"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert find_cycle(graph) == []


def test_nothing_below_the_cli_imports_it(graph: dict[str, set[str]]) -> None:
    importers = sorted(name for name, deps in graph.items() if "imagefactory.cli" in deps)
    assert importers == ["imagefactory.__main__"]


def test_layers_import_only_downwards(graph: dict[str, set[str]]) -> None:
    def layer(name: str) -> int:
        """Index in LAYERS; -1 for the shared modules (errors, log, run, tags), which import no layer above plan."""
        return next((i for i, prefix in enumerate(LAYERS) if name == prefix or name.startswith(f"{prefix}.")), -1)

    entry_points = {"imagefactory", "imagefactory.__main__"}
    upward = [f"{name} -> {dep}" for name, deps in graph.items() if name not in entry_points for dep in deps
              if layer(dep) > max(layer(name), 0)]
    assert upward == []


def test_no_release_prefixed_modules() -> None:
    assert [name for name in modules() if name.rsplit(".", 1)[-1].startswith("release")] == []


def test_the_architecture_doc_names_every_module_and_only_those() -> None:
    """docs/ARCHITECTURE.md's layout table matches the folders: a new module gets a row, a removed one loses it."""
    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(imagefactory/[\w/]+\.py)`", text))
    files = {str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
             if path.name not in ("__init__.py", "__main__.py")}  # package boilerplate
    assert sorted(files - named) == [] and sorted(named - files) == []
