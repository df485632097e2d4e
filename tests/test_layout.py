"""The package's shape: no import cycles, a CLI that starts without torch, one definition per registered name."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import relaxcli

PACKAGE = Path(relaxcli.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the relaxcli modules it imports anywhere (top level or inside functions; not TYPE_CHECKING)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        type_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        found = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                    target = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            found |= {c for c in candidates if c in modules and c != name}
        graph[name] = found
    return graph


def test_no_import_cycles() -> None:
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                if not any(nxt.startswith(m + ".") for m in cycle[:-1]):
                    cycles.append(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_graph_pass_does_not_import_the_program_code() -> None:
    assert "relaxcli.ops.program" not in _imports()["relaxcli.core.graph"]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["recipes"]])
def test_cli_starts_without_torch(args: list[str]) -> None:
    code = (
        "import sys\nfrom relaxcli.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'e3nn', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _registry_names() -> dict[str, list[str]]:
    from relaxcli.core.schedules import SCHEDULES
    from relaxcli.ops.registry import ACTIONS
    from relaxcli.run.evaluation import METRICS

    return {"schedule": list(SCHEDULES), "action": list(ACTIONS), "metric": list(METRICS)}


@pytest.mark.parametrize("kind", ["schedule", "action", "metric"])
def test_each_registered_name_is_defined_in_one_place(kind: str) -> None:
    """A schedule, op action or metric name is written once in the package's code: where it is registered."""
    other_meaning = {
        ("constant", "steerable.py"),  # F.pad(mode="constant"), not the schedule
        ("accuracy", "compare.py"),  # "accuracy" in a metric's name means higher is better: any accuracy metric
    }
    for name in _registry_names()[kind]:
        places = []
        for path in PACKAGE.rglob("*.py"):
            if (name, path.name) in other_meaning:
                continue
            code = "".join(tok for tok in _code_strings(path.read_text()))
            places += [path.name] * len(re.findall(rf"[\"']{name}[\"']", code))
        assert len(places) == 1, f"{kind} {name!r} is written in {places}"


def _code_strings(source: str) -> list[str]:
    """The string literals of a module that are not docstrings."""
    tree = ast.parse(source)
    docs = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    exports = {
        id(c)
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)
        for c in ast.walk(n.value)
    }
    return [
        repr(n.value) + " "
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs and id(n) not in exports
    ]
