"""Code fingerprints of the pipeline's stages, derived from the import graph (Snakemake cannot see imported code).

A stage's fingerprint hashes the stage function, every helper and constant of ``stages`` it uses (found by
name, transitively), and the full text of every package module those import, transitively, lazy imports
inside functions included. Editing a module reruns exactly the stages that can reach it; no function name
is listed by hand. Pure ``ast``: nothing is imported.
"""
from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
STAGES = "stages"


def _module_path(name: str, package: Path = PACKAGE) -> Path | None:
    path = package / f"{name}.py"
    return path if path.exists() else None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _walk(node: ast.AST) -> list[ast.AST]:
    """Every node below ``node``, skipping ``if TYPE_CHECKING:`` blocks (annotations only, never run)."""
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(child for child in ast.iter_child_nodes(current) if not _is_type_checking(child))
    return out


def _imported(node: ast.AST, package: Path = PACKAGE) -> dict[str, str]:
    """Package modules imported anywhere under ``node``, by the local name they are bound to."""
    bound: dict[str, str] = {}
    for item in _walk(node):
        if isinstance(item, ast.ImportFrom):
            ours = item.level >= 1 or (item.module or "").startswith("influence_signals")
            if not ours:
                continue
            base = (item.module or "").removeprefix("influence_signals").lstrip(".")
            for alias in item.names:
                local = alias.asname or alias.name
                if base and _module_path(base.split(".")[0], package):
                    bound[local] = base.split(".")[0]
                elif _module_path(alias.name, package):
                    bound[local] = alias.name
        elif isinstance(item, ast.Import):
            for alias in item.names:
                if alias.name.startswith("influence_signals."):
                    module = alias.name.split(".")[1]
                    if _module_path(module, package):
                        bound[alias.asname or module] = module
    return bound


@cache
def _tree(module: str, package: Path = PACKAGE) -> ast.Module:
    path = _module_path(module, package)
    assert path is not None, module
    return ast.parse(path.read_text())


@cache
def module_closure(module: str, package: Path = PACKAGE) -> frozenset[str]:
    """``module`` and every package module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_imported(_tree(current, package), package).values())
    return frozenset(seen)


def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    """Top-level functions, classes and assigned names of a module."""
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
    return names


def _local_names(node: ast.AST) -> set[str]:
    """Names a function binds itself (parameters, assignments, loop targets): they shadow module-level names."""
    local: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = node.args
        local.update(a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs])
        local.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    for item in _walk(node):
        if isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
            local.add(item.id)
        elif isinstance(item, ast.arg):
            local.add(item.arg)
    return local


def stage_dependencies(stage: str, package: Path = PACKAGE) -> tuple[list[str], set[str]]:
    """The ``stages`` definitions (by name) and the package modules that the stage function ``stage`` reaches."""
    tree = _tree(STAGES, package)
    definitions, module_imports = _top_level(tree), _imported(ast.Module(body=[
        n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[]), package)
    if stage not in definitions:
        raise KeyError(f"no stage function {stage!r} in {STAGES}.py")
    used: list[str] = []
    modules: set[str] = set()
    todo = [stage]
    while todo:
        name = todo.pop()
        if name in used:
            continue
        used.append(name)
        node = definitions[name]
        lazy = _imported(node, package)
        modules.update(lazy.values())
        shadowed = (_local_names(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else set()) - set(lazy)
        for item in _walk(node):
            if isinstance(item, ast.Name) and isinstance(item.ctx, ast.Load) and item.id not in shadowed:
                if item.id in definitions and item.id not in used:
                    todo.append(item.id)
                elif item.id in module_imports:
                    modules.add(module_imports[item.id])
    closure: set[str] = set()
    for module in modules:
        closure |= module_closure(module, package)
    return sorted(used), closure


def stage_fingerprint(stage: str, package: Path = PACKAGE) -> str:
    """A short hash of all the code the stage function ``stage`` runs."""
    used, modules = stage_dependencies(stage, package)
    tree, source = _tree(STAGES, package), (package / f"{STAGES}.py").read_text()
    definitions = _top_level(tree)
    digest = hashlib.sha256()
    for name in used:
        digest.update((ast.get_source_segment(source, definitions[name]) or "").encode())
    for module in sorted(modules):
        digest.update(module.encode() + b"\0" + (package / f"{module}.py").read_bytes())
    return digest.hexdigest()[:16]
