"""The code's layers: flows/ -> tasks/ -> model/, and inside tasks/ subpackages that import only
downwards. Every import counts: module level, inside functions and under TYPE_CHECKING."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first: a module may import from its own subpackage's lower layers (see LOCAL) or from a
# subpackage listed before its own.
TASK_LAYERS = ["frontends", "core", "prep", "training", "inference", "evaluation", "orchestration"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The repository modules `path` imports (`from pkg import mod` counts as pkg.mod)."""
    out = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    files = [p for top in ("flows", "tasks", "model") for p in (REPO / top).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) - {_module_name(p)} for p in files}


def _layer(module: str) -> tuple[str, str | None]:
    parts = module.split(".")
    return parts[0], (parts[1] if parts[0] == "tasks" and len(parts) > 1 and parts[1] in TASK_LAYERS else None)


def test_model_imports_nothing_from_tasks_or_flows_and_tasks_nothing_from_flows():
    wrong = [(m, d) for m, deps in graph().items() for d in deps
             if (m.startswith("model") and not d.startswith("model"))
             or (m.startswith("tasks") and d.startswith("flows"))]
    assert wrong == []


def test_task_subpackages_import_only_their_own_or_lower_layers():
    wrong = []
    for m, deps in graph().items():
        top, sub = _layer(m)
        if top != "tasks" or sub is None:
            continue
        for d in deps:
            dtop, dsub = _layer(d)
            if dtop == "tasks" and d != "tasks" and (dsub is None or TASK_LAYERS.index(dsub) > TASK_LAYERS.index(sub)):
                wrong.append((m, d))
    assert wrong == []


def test_no_import_cycle_between_files():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1 and d not in ("tasks", "flows", "model"):
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_every_tasks_module_lives_in_a_role_subpackage():
    loose = sorted(p.name for p in (REPO / "tasks").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    assert sorted(p.name for p in (REPO / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(TASK_LAYERS)
