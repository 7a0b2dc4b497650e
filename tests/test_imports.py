"""The shape of the import graph: Sanic only in service/web/ (no cycle: tests/test_import_graph.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "auth")


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
