"""The shape of the package: layers follow the data's path, no import cycles, small modules.

The import graph is read from the source (every ``import`` statement, inside
functions too), so a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "crab"

#: Layers, lowest first: a module may import its own layer and the layers below it.
LAYERS = ("core", "physics", "io", "analysis", "models", "generation", "validation", "integrations", "pipeline", "cli")
#: Optional extras that only the integration layer (and the MPI split) may import.
OPTIONAL = {"litebird_sim": ("integrations", "io"), "mpi4py": ("generation.mpi",), "toast": ("integrations",)}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The crab module that ``name`` (a module or a name in a module) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod: str) -> set[str]:
    """Crab modules imported anywhere in ``mod`` (``from crab import __version__`` excluded)."""
    tree = ast.parse(MODULES[mod].read_text())
    is_pkg = MODULES[mod].name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            names = [f"{pkg}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n == "crab.__version__" or not n.startswith("crab"):
                continue
            r = _resolve(n)
            if r and r != mod and r != "crab":
                out.add(r)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) == 1:
        return -1  # the package root: imports core only (checked below)
    return LAYERS.index(parts[1])


def test_every_module_is_in_a_layer():
    unknown = [m for m in MODULES if m != "crab" and m.split(".")[1] not in LAYERS]
    assert not unknown, f"modules outside the layers {LAYERS}: {unknown}"


def test_no_import_from_a_higher_layer():
    bad = []
    for m, deps in GRAPH.items():
        lm = max(_layer(m), 0)
        for d in deps:
            if _layer(d) > lm:
                bad.append(f"{m} ({LAYERS[lm]}) imports {d} ({LAYERS[_layer(d)]})")
    assert not bad, "imports against the data's path:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The reader itself: an import inside a function counts (so the cycle test can fail)."""
    src = "def f():\n    from crab.generation import TodGenerator\n"
    tree = ast.parse(src)
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found and _resolve("crab.generation.TodGenerator") == "crab.generation"


def test_optional_extras_stay_in_their_layers():
    bad = []
    for m, p in MODULES.items():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                top = n.split(".")[0]
                if top in OPTIONAL and not any(m.startswith(f"crab.{ok}") for ok in OPTIONAL[top]):
                    bad.append(f"{m} imports {n}")
    assert not bad, "optional extras imported outside their layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_size(mod):
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[mod].relative_to(SRC)} has {n} lines (at most {MAX_LINES}): split it by what it does"
