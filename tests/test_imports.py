"""The package's import graph: every module imports, no circles, no hidden (deferred) imports of
the package's own modules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jointsparse"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom | ast.Import, path: Path) -> list[str]:
    """The package's modules that ``node`` (in ``module``) imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base not in MODULES:
        return []
    found = [base]
    found += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return found


def _imports(module: str, path: Path) -> tuple[set[str], list[str]]:
    """(modules imported, deferred imports of package modules as 'line: target')."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    edges: set[str] = set()
    deferred: list[str] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = [t for t in _resolve(module, child, path) if t != module]
                edges.update(targets)
                if nested and targets:
                    deferred.append(f"{module}:{child.lineno} imports {targets[0]}")
            visit(child, inside)

    visit(tree, False)
    return edges, deferred


GRAPH = {module: _imports(module, path)[0] for module, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_import_circles():
    """Depth-first search for a back edge; a package's own submodules are not a circle with it
    (``codecs/__init__`` importing ``codecs.container`` is how packages work)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def edges(module: str) -> list[str]:
        return sorted(t for t in GRAPH[module] if not t.startswith(module + ".") and not module.startswith(t + "."))

    def dfs(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in edges(module):
            if state.get(target) == 1:
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                dfs(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            dfs(module)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_package_imports_its_own_modules_at_the_top():
    deferred = [line for module, path in MODULES.items() for line in _imports(module, path)[1]]
    assert not deferred, "imports hidden inside functions: " + "; ".join(deferred)
