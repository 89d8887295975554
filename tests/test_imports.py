"""No import circles inside spkid, and every module imports on its own in a fresh interpreter.

The graph counts every ``import spkid...`` statement, also the ones inside functions: a lazy import hides a circle
from the interpreter (until the day the order changes), not from the design (``scoring/model.py`` ->
``onnx_runtime.py`` -> ``export.py`` -> ``model.py`` was one).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import spkid

PACKAGE = Path(spkid.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the spkid modules it imports anywhere in its source (``from a.b import c``: ``a.b.c`` when that
    is a module, else ``a.b``)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("spkid")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("spkid"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}            # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_find_cycle_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_spkid():
    graph = import_graph()
    assert "spkid.scoring.loader" in graph and "spkid.scoring.model" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = sorted(n for n in _modules() if n != "spkid.__main__")
    code = ("import importlib, sys\nbad = []\nfor n in sys.argv[1:]:\n"
            "    try:\n        importlib.import_module(n)\n"
            "    except ImportError as e:\n        bad.append(f'{n}: {e}')\nprint('\\n'.join(bad))")
    # one interpreter per group keeps it cheap; each group starts from nothing, so order effects show
    for i in range(0, len(names), 25):
        r = subprocess.run([sys.executable, "-c", code, *names[i:i + 25]], capture_output=True, text=True,
                           cwd=PACKAGE.parent, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        missing_optional = ("speechbrain", "resemblyzer", "librosa", "playwright")
        bad = [line for line in r.stdout.splitlines() if line and not any(m in line for m in missing_optional)]
        assert not bad, bad
