"""The shape of the import graph: Sanic only in service/web/, and no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "auth")
#: Cycles still waiting for their fix; the 13a rewrite (relay facade, subscription driver) removes this one.
KNOWN_CYCLES: list[set[str]] = [{"service.relay", "service.subscription"}]


def module_name(path: Path) -> str:
    """``service/web/app.py`` -> ``service.web.app`` (a package is its ``__init__``)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the relay's own packages."""
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module name an import statement of ``path`` names, anywhere in the file (absolute form)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if node.module or not node.level:
                names.add(base)  # ``from .pkg import x`` needs pkg; ``from . import x`` needs only x
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_only_the_web_package_imports_sanic() -> None:
    """No module of service/ outside service/web/ (nor auth/) imports Sanic, even inside a function."""
    offenders = {
        name: sorted(n for n in imported(path) if n == "sanic" or n.startswith("sanic."))
        for name, path in modules().items()
        if not name.startswith("service.web")
    }
    offenders = {name: found for name, found in offenders.items() if found}
    assert offenders == {}
    web = {
        name
        for name, path in modules().items()
        if name.startswith("service.web") and "sanic" in {n.split(".")[0] for n in imported(path)}
    }
    assert {"service.web.app", "service.web.wsproto", "service.web.routes.ws"} <= web  # the scan sees imports


def test_the_core_never_imports_the_web_package() -> None:
    """Only the command line (to serve) reaches into service/web/; the core stays usable without it."""
    reaching = {
        name
        for name, path in modules().items()
        if not name.startswith("service.web") and any(n.startswith("service.web") for n in imported(path))
    }
    assert reaching == {"service.cli"}


def test_the_import_graph_has_no_new_cycle() -> None:
    """Strongly connected groups of service/ and auth/ modules (type-only imports included): none but the known."""
    mods = modules()
    graph = {name: {n for n in imported(path) if n in mods and n != name} for name, path in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(group)

    for v in graph:
        if v not in index:
            visit(v)
    assert len(graph) > 30, "the scan found too few modules"
    assert [c for c in cycles if c not in KNOWN_CYCLES] == []
