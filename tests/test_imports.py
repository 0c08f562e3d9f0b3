"""The package's modules import each other at the top, one way: no import cycle, and every
module imports on its own, whichever is imported first."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "npvae"

def module_names():
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


MODULES = module_names()


def _top_level_imports(body):
    """Import statements run when the module is imported (not those inside functions)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", []),
                          *(h.body for h in getattr(node, "handlers", []))):
                yield from _top_level_imports(block)


def import_graph():
    """module -> the npvae modules its top-level imports run (a submodule's packages included:
    importing npvae.kernels.jit runs npvae/kernels/__init__.py first)."""
    known = set(MODULES)
    graph = {}
    for name in MODULES:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        is_package = not path.exists()
        if is_package:
            path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in known else module)
        deps = set()
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the package itself (npvae) runs first for every module
                dep = ".".join(parts[:i])
                if dep in known and dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = deps
    return graph


def cycles(graph):
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def one_cycle(graph, group):
    """A path through ``group`` (a strongly connected group) back to its start, to name."""
    start = min(group)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in group)
        back = [w for w in nxt if w == start]
        if back or not nxt:
            return path + [start]
        step = next((w for w in nxt if w not in seen), None)
        if step is None:  # the rest of the group loops elsewhere: name where it rejoins
            return path + [nxt[0]]
        path.append(step)
        seen.add(step)


def test_the_modules_import_each_other_one_way():
    graph = import_graph()
    # the edges that made the old cycle model <-> checkpoint <-> estimators <-> parallel
    assert "npvae.model" in graph["npvae.checkpoint"] and "npvae.checkpoint" not in graph["npvae.model"]
    assert "npvae.checkpoint" in graph["npvae.parallel"]
    assert {"npvae.parallel", "npvae.checkpoint"}.isdisjoint(graph["npvae.model"] | graph["npvae.estimators"])
    # the formula modules import the kernels package, which imports none of them
    assert "npvae.activations" in graph["npvae.step" if "npvae.step" in graph else "npvae.kernels.step"]
    assert not {"npvae.activations", "npvae.likelihoods", "npvae.optim", "npvae.posterior"} & graph["npvae.kernels"]


def test_the_whole_package_is_free_of_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(one_cycle(graph, g)) for g in found)


def test_the_test_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


# Imports each module in a fresh interpreter, npvae's __init__ not run first (it would fix
# one order for all): only the module's own imports, in their own order. A cycle that works
# only when another module of it was imported first fails here.
ALONE = """
import importlib, importlib.util, sys
spec = importlib.util.find_spec("npvae")
sys.modules["npvae"] = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
importlib.import_module(sys.argv[1])
"""


@pytest.mark.parametrize("name", [m for m in MODULES if m != "npvae"])
def test_every_module_imports_on_its_own(name):
    res = subprocess.run([sys.executable, "-c", ALONE, name], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert res.returncode == 0, f"import {name} alone failed:\n{res.stderr[-3000:]}"


def test_the_package_imports_in_a_fresh_interpreter():
    code = "import npvae, npvae.cli; print(len(npvae.__all__))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert res.returncode == 0, res.stderr[-3000:]


def test_no_imports_inside_functions_to_dodge_a_cycle():
    """An import inside a function is allowed for an optional extra or to keep a heavy import
    off the start-up path, with a comment saying so; npvae's own modules are imported at the
    top."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    assert node.level == 0 and not (node.module or "").startswith("npvae"), \
                        f"{path.name}:{node.lineno} imports npvae's {node.module} inside a function"
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    assert "#" in lines[node.lineno - 1], \
                        f"{path.name}:{node.lineno}: an import inside a function needs a comment saying why"
                if isinstance(node, ast.Import):
                    assert not any(a.name.startswith("npvae") for a in node.names), \
                        f"{path.name}:{node.lineno} imports npvae inside a function"
