"""The package's layering: no import cycle, and no module importing a layer above its own.

Every import counts, at module level or inside a function, except those under
``if TYPE_CHECKING:``. Importing ``a.b.c`` from outside ``a.b`` runs ``a/b/__init__.py`` first,
so it counts as an import of the package ``a.b`` too (the top-level facade
``lpsd_search/__init__.py`` excepted); a submodule must not import its own package by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lpsd_search"
TOP = "lpsd_search"

BASE = "base"
"""Modules every layer may use: errors, the registry, the presets, the option dataclasses and
their names."""
BASE_MODULES = {"errors", "checks", "registry", "presets", "config", "options", "safe_json"}

# Data flows one way: cli/api -> backends -> strategy -> procedures -> trial -> plan -> lpsd ->
# decompositions, with models/data beside them at the bottom; report reads results only.
BELOW: dict[str, set[str]] = {
    BASE: set(),
    "models": {BASE},
    "data": {BASE},
    "decompositions": {BASE},
    "lpsd": {"decompositions", BASE},
    "plan": {"lpsd", "decompositions", BASE},
    "trial": {"plan", "lpsd", "decompositions", "models", "data", BASE},
    "report": {"plan", "decompositions", BASE},
    "procedures": {"trial", "plan", "lpsd", "decompositions", "models", "data", BASE},
    "strategy": {"procedures", "report", "trial", "plan", "lpsd", "decompositions", "models",
                 "data", BASE},
    "backends": {"strategy", "procedures", "report", "trial", "plan", "lpsd",
                 "decompositions", "models", "data", BASE},
}
TOP_LAYERS = {"cli", "api", "__main__"}
"""The entry points may import anything below them (and ``__main__`` the command line)."""


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str) -> set[str]:
    """Modules of ``lpsd_search`` that ``path`` imports (TYPE_CHECKING blocks left out)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for imported in _imports(path, name):
            parts = imported.split(".")
            # The module itself and every package above it (their __init__ runs first), except
            # the packages that hold the importer: they are initialised before it runs.
            for end in range(2, len(parts) + 1):
                candidate = ".".join(parts[:end])
                inside = name.startswith(candidate + ".")
                if candidate in files and candidate != name and not inside:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    return BASE if parts[1] in BASE_MODULES else parts[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_the_package_has_no_import_cycle():
    graph = {name: targets - {TOP} for name, targets in _graph().items() if name != TOP}
    assert _cycles(graph) == []


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for name, targets in _graph().items():
        layer = _layer(name)
        if layer in TOP_LAYERS or layer == "facade":
            continue
        assert layer in BELOW, f"{name}: layer {layer!r} is not in the layering table"
        for target in targets:
            other = _layer(target)
            if other != layer and other not in BELOW[layer]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_module_imports_its_own_package():
    # A submodule importing its package's __init__ (which imports the submodules) is a cycle
    # that only the import order hides.
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    offenders = []
    for name, path in files.items():
        package = name.rsplit(".", 1)[0]
        if package == TOP or path.name == "__init__.py":
            continue
        if package in _imports(path, name):
            offenders.append(f"{name} -> {package}")
    assert offenders == []


def test_the_layering_test_sees_upward_imports(tmp_path):
    # The checks above would pass on an empty graph: make sure the parser finds real edges.
    graph = _graph()
    assert "lpsd_search.plan.choices" in graph["lpsd_search.plan.apply"]
    assert "lpsd_search.lpsd.layer" in graph["lpsd_search.plan.apply"]
    # From outside a package, importing one of its modules imports the package too.
    assert "lpsd_search.plan" in graph["lpsd_search.trial.evaluate"]
    assert "lpsd_search.plan" not in graph["lpsd_search.plan.apply"]
    cyclic = {"a.b": {"a.c"}, "a.c": {"a.b"}, "a.d": set()}
    assert _cycles(cyclic) == [["a.b", "a.c"]]


@pytest.mark.parametrize("limit", [10])
def test_at_most_ten_modules_sit_directly_in_the_package(limit):
    direct = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(direct) <= limit, direct


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}
