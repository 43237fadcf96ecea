"""The hash of the code that computes a cached result: a stage's module and every module of this
project it imports (at any depth, inside functions too), plus the data files those packages ship.
Part of every stage's cache keys, so any edit to that code recomputes its results, with no version
to bump. Modules loaded by name (the frontend registry's backends) are named by the caller.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder holding tasks/ and model/
PACKAGES = ("tasks", "model")  # flows/ orchestrates; it computes nothing that is cached


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


@functools.cache
def _named_modules(path: Path) -> frozenset[str]:
    """Project modules `path` imports (parsed once per process)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    found = set()
    for name in names:
        if name.split(".")[0] not in PACKAGES:
            continue
        while name and module_file(name) is None:  # `from pkg import function`: the module is pkg
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return frozenset(found)


@functools.cache
def code_files(*modules: str) -> tuple[Path, ...]:
    """Every file the code of `modules` consists of: their import closure inside this project (with
    the packages' __init__ files that importing them runs) and files in those packages' data/."""
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += _named_modules(module_file(name))
    files = {module_file(name) for name in seen}
    for file in list(files):  # a package's data/ belongs to the modules that open it
        data = file.parent / "data"
        if data.is_dir() and _opens_data(file):
            files.update(p for p in data.rglob("*") if p.is_file())
    return tuple(sorted(files))


def _opens_data(path: Path) -> bool:
    """Whether a module names its package's `data` folder (`Path(__file__).parent / "data" / ...`)."""
    return any(isinstance(n, ast.Constant) and n.value == "data" for n in ast.walk(ast.parse(path.read_bytes())))


@functools.cache
def code_hash(*modules: str) -> str:
    """sha256 over the relative paths and bytes of `code_files(*modules)`."""
    h = hashlib.sha256()
    for path in code_files(*modules):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
