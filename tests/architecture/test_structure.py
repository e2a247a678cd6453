"""The package's shape: short functions, few parameters, no import circles, layers that only
import downwards.

Which bugs this catches: a function that grows past what a reader holds in their head (> 80
lines), a signature that should have become a config dataclass (> 8 parameters), an import
circle between two modules (lazy imports inside functions count: they are circles all the same),
and a lower layer reaching up (``geometry`` importing ``diffusion``, ``bench`` importing
``batch``, ``batch`` calling the CLI). ``docs/architecture.md`` draws the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "diffusion_handles"
ROOT = Path(__file__).resolve().parents[2] / "src" / PKG
MAX_LINES = 80
MAX_PARAMS = 8

# Each top-level module or subpackage and its layer: a module may import from a strictly lower
# layer, or from its own subpackage. Siblings on one layer stay independent of each other.
LAYERS: dict[str, int] = {
    "errors": -1, "": 0, "hub": 0, "outputs": 0, "viz": 0, "stats": 0, "limits": 0, "progress": 0,  # "": the package's __init__
    "geometry": 1,
    "io": 2, "animation": 2,
    "diffusion": 3, "perception": 3, "preview": 3,
    "stages": 4,
    "pipeline": 5,
    "world": 6,
    "bench": 7,
    "batch": 8, "web": 8,
    "cli": 9, "__main__": 10,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of the package that ``name`` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith(PKG):
                found.add(t)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _functions():
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def _params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
    return names + (["*" + a.vararg.arg] if a.vararg else []) + (["**" + a.kwarg.arg] if a.kwarg else [])


def test_no_function_longer_than_80_lines():
    long = [f"{p}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)" for p, fn in _functions()
            if fn.end_lineno - fn.lineno + 1 > MAX_LINES]
    assert not long, "split these functions:\n" + "\n".join(long)


def test_no_function_with_more_than_8_parameters():
    many = [f"{p}:{fn.name} ({len(_params(fn))}: {', '.join(_params(fn))})" for p, fn in _functions()
            if len(_params(fn)) > MAX_PARAMS]
    assert not many, "carry these parameters in a config dataclass:\n" + "\n".join(many)


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_every_top_level_module_has_a_layer():
    assert {_top(m) for m in MODULES} <= set(LAYERS), sorted({_top(m) for m in MODULES} - set(LAYERS))


def test_imports_only_go_down_the_layers():
    upward = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts
                    if _top(m) != _top(t) and LAYERS[_top(t)] >= LAYERS[_top(m)])
    assert not upward, "imports that reach up or sideways:\n" + "\n".join(upward)


# ---- the checks themselves can fail ---------------------------------------------------------
def test_cycle_finder_finds_a_circle_and_ignores_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_walker_sees_lazy_and_relative_imports(tmp_path):
    src = "import os\nfrom . import io\n\ndef f():\n    from diffusion_handles.geometry import warp\n"
    mod = f"{PKG}.pipeline"
    path = tmp_path / "pipeline.py"
    path.write_text(src)
    found = _imports(mod, path)
    assert {f"{PKG}.io", f"{PKG}.geometry"} <= found  # relative, and lazy inside a function
    assert not any(m.startswith("os") for m in found)


@pytest.mark.parametrize("module", ["geometry", "diffusion", "stages", "pipeline"])
def test_core_layers_exist(module):
    assert any(_top(m) == module for m in MODULES), module
