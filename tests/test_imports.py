"""Imports point one way, read from the source (imports inside functions included, since a lazy import is still a
dependency): no cycle among codelm's modules, and codelm never imports the rooms built on it (except cli.py, which
wires the rooms together)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The modules `path` imports, anywhere in the file; `from pkg import name` counts pkg.name when it is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return found


def import_graph(room: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / room).rglob("*.py")}
    return {name: {m for m in imports_of(path, set(files)) if m in files and m != name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from codelm.hf import import_hf\n    from codelm import loader\n")
    assert {"codelm.hf", "codelm.loader"} <= imports_of(source, {"codelm.loader"})


def test_no_import_cycle_among_codelm_modules():
    graph = import_graph("codelm")
    assert {"codelm.checkpoint", "codelm.hf", "codelm.loader", "codelm.cli"} <= set(graph)
    assert "codelm.checkpoint" in graph["codelm.hf"]  # the one direction: hf.py builds on checkpoint.py
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_codelm_never_imports_evals_or_web_except_the_cli():
    for path in (ROOT / "codelm").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "codelm":
            continue
        outside = {m for m in imports_of(path, set()) if m.split(".")[0] in ("evals", "web")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"
