"""The layout README's "Architecture" describes: every module imports, no import cycles, layers hold.

Imports are read from the source (module level and inside functions; ``if TYPE_CHECKING:`` blocks
are type-only and left out). Packages are the second level (``lightning_cat.cat``,
``lightning_cat.callbacks``, ...); ``callbacks/`` and ``datamodules/`` install as
``lightning_cat.callbacks`` and ``lightning_cat.datamodules``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"lightning_cat": ROOT / "lightning_cat", "lightning_cat.callbacks": ROOT / "callbacks"}
SOURCES["lightning_cat.datamodules"] = ROOT / "datamodules"

#: Contracts and generic plumbing: they import no other part of the library than each other.
FOUNDATION = {"atomic", "options", "pixels", "seeding", "images", "imageset", "optimization", "perceptual", "diffusion"}
#: The algorithms, in plain torch: no Lightning, no glue.
ALGORITHMS = {"cat", "customization", "protections", "purification", "sampling", "metrics", "studies"}
#: The Lightning glue and the runner, which only the layers above may import.
GLUE = {"modules", "callbacks", "datamodules", "experiment", "cli", "lightning_cli", "__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for file in folder.rglob("*.py"):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = file
    return found


MODULES = _modules()


def _imported(file: Path) -> set[str]:
    """Every ``lightning_cat`` module ``file`` imports, resolved to a module of the library."""
    tree = ast.parse(file.read_text())
    type_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for statement in branch.body
        for node in ast.walk(statement)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    resolved = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("lightning_cat"):
            resolved.add(name)
    return resolved


GRAPH = {module: _imported(file) - {module} for module, file in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_module_imports_itself_through_others():
    assert _cycles(GRAPH) == []


def test_packages_form_no_cycle():
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        packages.setdefault(_package(module), set()).update(
            _package(t) for t in targets if _package(t) != _package(module)
        )
    packages.pop("", None)
    for targets in packages.values():
        targets.discard("")  # lightning_cat itself: __version__ only
    assert _cycles(packages) == []


def test_foundation_and_algorithms_stay_below_the_glue():
    for module, targets in GRAPH.items():
        package = _package(module)
        used = {_package(t) for t in targets} - {package, ""}
        if package in FOUNDATION:
            assert used <= FOUNDATION, f"{module} reaches up to {sorted(used - FOUNDATION)}"
        if package in ALGORITHMS:
            assert not used & GLUE, f"{module} imports the glue {sorted(used & GLUE)}"


def test_plain_torch_packages_do_not_import_lightning():
    for module, file in MODULES.items():
        if _package(module) in FOUNDATION | ALGORITHMS:
            tree = ast.parse(file.read_text())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            lightning = sorted(
                n for n in imported if n == "lightning" or n.startswith(("lightning.", "pytorch_lightning"))
            )
            assert not lightning, f"{module} imports {lightning}"
