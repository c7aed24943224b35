"""The three-part layout holds: the method at the bottom, the Flower app above it, the bench on top.

Read from the source (every import statement, including the lazy ones inside functions), so a
violation is caught whether or not the importing code path ever runs in the suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flexmoe_core", "client_app", "server_app", "flexmoe_bench")
# What each package may import from the project, besides itself.
ALLOWED = {
    "flexmoe_core": set(),
    "client_app": {"flexmoe_core"},
    "server_app": {"flexmoe_core"},
    "flexmoe_bench": {"flexmoe_core", "client_app", "server_app"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (`from pkg import mod` counts as `pkg.mod` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    sources = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    known = set(sources)
    graph = {name: imports_of(path, root, known) - {name} for name, path in sources.items()}
    # A package's own __init__ is not an edge worth tracking: every submodule loads it.
    return {name: {t for t in targets if t not in packages} for name, targets in graph.items()}


def upward_imports(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(graph.items()):
        top = source.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != top and other not in allowed[top]:
                bad.append(f"{source} imports {target}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by depth-first search (each reported once, from its smallest node)."""
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()

    def visit(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                cycle = path[:]
                key = tuple(sorted(cycle))
                if key not in seen:
                    seen.add(key)
                    found.append(cycle + [start])
            elif nxt not in path and nxt > start:
                visit(start, nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, start, [start])
    return found


def test_no_package_imports_one_above_it():
    assert upward_imports(import_graph(ROOT, PACKAGES), ALLOWED) == []


def test_no_module_imports_form_a_circle():
    assert cycles(import_graph(ROOT, PACKAGES)) == []


def test_the_bench_is_on_top_and_the_apps_use_the_core():
    graph = import_graph(ROOT, PACKAGES)
    uses = {src.split(".")[0]: set() for src in graph}
    for source, targets in graph.items():
        uses[source.split(".")[0]].update(t.split(".")[0] for t in targets)
    assert "flexmoe_core" in uses["server_app"] and "flexmoe_core" in uses["client_app"]
    assert {"flexmoe_core", "server_app"} <= uses["flexmoe_bench"]


@pytest.fixture()
def bad_tree(tmp_path: Path) -> Path:
    core, app = tmp_path / "flexmoe_core", tmp_path / "server_app"
    for pkg in (core, app, tmp_path / "client_app", tmp_path / "flexmoe_bench"):
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
    (core / "plots.py").write_text("from flexmoe_core.results import write\n")
    (core / "results.py").write_text("def f():\n    from flexmoe_core import plots\n")
    (core / "config.py").write_text("from server_app.strategy import X\n")
    (app / "strategy.py").write_text("import flexmoe_bench.report\n")
    (tmp_path / "flexmoe_bench" / "report.py").write_text("")
    return tmp_path


def test_the_checks_find_a_lazy_circle_and_upward_imports(bad_tree: Path):
    graph = import_graph(bad_tree, PACKAGES)
    assert cycles(graph) == [["flexmoe_core.plots", "flexmoe_core.results", "flexmoe_core.plots"]]
    assert upward_imports(graph, ALLOWED) == [
        "flexmoe_core.config imports server_app.strategy",
        "server_app.strategy imports flexmoe_bench.report",
    ]
