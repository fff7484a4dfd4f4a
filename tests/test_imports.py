"""Modules import in one direction: no cycle among the packages' modules, and no function-local import
of one of them (the way a cycle hides)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("amdet", "analyze", "attacks", "baselines", "benign_ft", "core", "evaluation", "inspector",
            "prompt_tuning", "sweeps", "vision")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(node: ast.AST, known: dict[str, Path]) -> set[str]:
    """The project modules an import statement names (`from a.b import c` is a.b.c when that is a module)."""
    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [f"{node.module}.{a.name}" for a in node.names]
    else:
        return set()
    return {m for m in map(resolve, names) if m}


def graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module → the project modules it imports, and every function-local import of one."""
    known, edges, local = modules(), {}, []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        edges[name] = set()
        for node in ast.walk(tree):
            edges[name] |= imported(node, known) - {name}
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                if imported(node, known):
                    local.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return edges, local


def test_no_import_cycle_among_the_packages_modules():
    edges, _ = graph()
    assert len(edges) > 50 and "sweeps.cell" in edges["sweeps.run"]  # the walk sees the modules and their imports
    try:
        TopologicalSorter(edges).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' → '.join(exc.args[1])}") from None


def test_no_function_local_import_of_a_project_module():
    _, local = graph()
    assert not local, f"import these at the top of their modules: {local}"

