"""The layout rules of the codebase (issue 12), checked on the source: module and function size,
no imports of another module's private names, no workflow importing another, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dmf_ray"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


MODULES = _modules()


def _imports(tree: ast.Module, module: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every dmf_ray import, lazy ones included."""
    found = []
    package = module if (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists() else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("dmf_ray")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("dmf_ray"):
                found += [(base, a.name) for a in node.names]
    return found


def test_modules_and_functions_are_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") + 1 > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {text.count(chr(10)) + 1} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}() {length} lines")
    assert not too_long, "\n".join(too_long)


def test_no_module_imports_another_modules_private_name():
    private = []
    for module, tree in MODULES.items():
        for target, name in _imports(tree, module):
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                private.append(f"{module} imports {target}.{name}")
    assert not private, "\n".join(private)


def test_no_workflow_imports_another():
    crossing = []
    for module, tree in MODULES.items():
        if not module.startswith("dmf_ray.pipelines."):
            continue
        own = module.split(".")[2]
        for target, name in _imports(tree, module):
            full = f"{target}.{name}" if name else target
            parts = full.split(".")
            if len(parts) > 2 and parts[1] == "pipelines" and parts[2] != own:
                crossing.append(f"{module} imports {full}")
    assert not crossing, "\n".join(crossing)


def test_core_never_imports_a_workflow_or_the_cli():
    upward = []
    for module, tree in MODULES.items():
        if module.startswith(("dmf_ray.pipelines", "dmf_ray.cli")):
            continue
        for target, name in _imports(tree, module):
            if target.startswith(("dmf_ray.pipelines", "dmf_ray.cli")):
                upward.append(f"{module} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycle_at_module_level():
    # Module-level imports only: a lazy import inside a function is how a cycle is avoided.
    graph: dict[str, set[str]] = {}
    for module, tree in MODULES.items():
        edges = set()
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, name in _imports(ast.Module(body=[node], type_ignores=[]), module):
                    for candidate in (f"{target}.{name}" if name else None, target):
                        if candidate in MODULES and candidate != module:
                            edges.add(candidate)
                            break
        graph[module] = edges
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
