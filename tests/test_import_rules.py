"""The dependency rules of ARCHITECTURE.md, checked on every module's imports (static AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"encoders", "indexer", "search", "api"}

# package -> top-level modules it must never import (ours and third-party)
FORBIDDEN = {
    "encoders": {"indexer", "search", "api", "flask", "faiss", "duckdb", "openslide"},
    "search": {"encoders", "indexer", "api", "torch", "timm", "torchvision", "flask"},
    "indexer": {"api", "flask"},
}
# the optional GPU scoring backend imports torch lazily, inside functions, and only there
ALLOWED = {"search/gpu.py": {"torch"}}
CLIENT_FORBIDDEN = {
    "flask",
    "torch",
    "faiss",
    "duckdb",
    "werkzeug",
    "encoders",
    "indexer",
    "search",
    "numpy",
    "timm",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(_top(node.module))
    return found


def _top(module: str) -> str:
    """The package an import names: ours by their folder (``lamina.search.x`` -> ``search``)."""
    parts = module.split(".")
    if parts[0] == "lamina" and len(parts) > 1:
        return parts[1]
    return parts[0]


def _bare_imports(path: Path) -> list[str]:
    """Imports of our packages by their folder name instead of through ``lamina``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module
    ]
    return [name for name in names if name.split(".")[0] in OURS]


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_dependency_rules(package: str) -> None:
    bad = {}
    for path in _modules(package):
        rel = str(path.relative_to(REPO))
        hit = _imports(path) & FORBIDDEN[package] - ALLOWED.get(rel, set())
        if hit:
            bad[rel] = sorted(hit)
    assert not bad, f"forbidden imports: {bad}"


@pytest.mark.parametrize(
    "module",
    [
        "client.py",
        "client_base.py",
        "client_search.py",
        "client_data.py",
        "client_admin.py",
        "client_http.py",
        "client_jobs.py",
        "client_types.py",
    ],
)
def test_client_is_light(module: str) -> None:
    client = REPO / "api" / module
    assert client.exists(), f"api/{module} is missing"
    assert not (_imports(client) & CLIENT_FORBIDDEN)


def test_request_handlers_never_run_an_ingest() -> None:
    for path in (REPO / "api" / "routes").rglob("*.py"):
        text = path.read_text()
        assert "lamina.indexer.pipeline" not in text and "import ingest" not in text, path


def test_everything_imports_through_the_lamina_namespace() -> None:
    """A bare ``import search`` would load a second copy of a module (and break when installed)."""
    roots = [REPO / name for name in (*OURS, "lamina", "tests", "bench")]
    bad = {
        str(path.relative_to(REPO)): found
        for root in roots
        for path in sorted(root.rglob("*.py"))
        if (found := _bare_imports(path))
    }
    assert not bad, f"import through lamina.*: {bad}"


def test_no_grab_bag_module_names() -> None:
    names = {p.stem for pkg in OURS for p in _modules(pkg)}
    assert not names & {"utils", "helpers", "misc", "common"}
