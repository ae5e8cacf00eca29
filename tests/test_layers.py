"""Imports run one way (issue 13; docs/design.md, "Design notes").

Every import statement of every .py file in ``fairprune/`` and ``app/`` is read from its AST (module level or
inside a function; relative imports resolved), as /work/shared/tools/import_cycles.py reads them: an import names
the longest module of the two trees it reaches, and a module importing its own package's face (an ancestor
``__init__``) does not count. Then:

- no import cycle;
- no module imports a higher layer: core (0) < zoo, data, present (1) < engine (2) < run (3) < app (4); within
  layer 1 zoo, data and present never import each other, except data -> zoo (a demo builds its model);
- fairprune never imports streamlit or app;
- ``import fairprune`` loads no torch, and every name of ``fairprune.__all__`` resolves.

The checker is also run on small synthetic trees with a planted cycle / upward import, so each check is seen to fail.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: top-level folder of fairprune -> (layer, name)
LAYERS = {"core": 0, "zoo": 1, "data": 1, "present": 1, "engine": 2, "run": 3}
#: imports allowed inside layer 1 between different packages
LAYER1_ALLOWED = {("data", "zoo")}
APP_LAYER = 4


def modname(path: Path, root: Path) -> str:
    rel = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def collect(roots: list[Path]) -> tuple[dict[str, Path], dict[str, list[tuple[str, int, str]]]]:
    """({module: path}, {module: [(imported module, line, top-level name as written)]}) of the trees ``roots``."""
    mods: dict[str, Path] = {}
    for root in roots:
        for d, _, files in os.walk(root):
            for f in files:
                if f.endswith(".py"):
                    p = Path(d) / f
                    mods[modname(p, root)] = p
    edges: dict[str, list[tuple[str, int, str]]] = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        out = []
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"), str(p))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for written in names:
                n = written
                while n and n not in mods:
                    n = n.rsplit(".", 1)[0] if "." in n else ""
                if not n:
                    out.append(("", node.lineno, written.split(".")[0]))     # outside the trees (stdlib, torch, ...)
                elif n != m and not (mods[n].name == "__init__.py" and m.startswith(n + ".")):
                    out.append((n, node.lineno, written.split(".")[0]))
        edges[m] = out
    return mods, edges


def cycles(edges: dict[str, list[tuple[str, int, str]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: {t for t, _, _ in out if t} for m, out in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                comps.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def layer_of(module: str, package: str = "fairprune", app: str = "app") -> tuple[int, str] | None:
    """(layer, folder) of a module; None for the package root and ``__main__`` (the public face, above the layers)."""
    parts = module.split(".")
    if parts[0] == app:
        return APP_LAYER, app
    if parts[0] != package or len(parts) == 1 or parts[1] == "__main__":
        return None
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: a module outside the layers ({', '.join(LAYERS)}); put it in one "
                             f"and name it in docs/design.md's layer map")
    return LAYERS[parts[1]], parts[1]


def _relpath(module: str, path: Path) -> str:
    return module.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")


def layer_violations(mods: dict[str, Path], edges, package: str = "fairprune", app: str = "app") -> list[str]:
    found: dict[tuple[str, int, str], str] = {}     # one line per statement and layer: its deepest module named
    for m, imports in edges.items():
        src = layer_of(m, package, app)
        if src is None:
            continue
        for target, line, _ in imports:
            dst = layer_of(target, package, app) if target else None
            if dst is None:
                continue
            (ls, fs), (ld, fd) = src, dst
            if ld > ls or (ld == ls == 1 and fs != fd and (fs, fd) not in LAYER1_ALLOWED):
                key = (m, line, fd)
                if len(target) > len(found.get(key, "")):
                    found[key] = target
    return [f"{_relpath(m, mods[m])}:{line}: {m} ({layer_of(m, package, app)[1]}, layer {layer_of(m, package, app)[0]}) "
            f"imports {t} ({fd}, layer {layer_of(t, package, app)[0]})" for (m, line, fd), t in found.items()]


def forbidden_imports(mods: dict[str, Path], edges, package: str = "fairprune",
                      forbidden: tuple[str, ...] = ("streamlit", "app")) -> list[str]:
    return list(dict.fromkeys(f"{_relpath(m, mods[m])}:{line}: {m} imports {name}" for m, imports in edges.items()
                              if m.split(".")[0] == package for target, line, name in imports if name in forbidden))


# ---- the project -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project():
    return collect([ROOT / "fairprune", ROOT / "app"])


def test_no_import_cycle(project):
    _, edges = project
    found = cycles(edges)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_run_down_the_layers(project):
    mods, edges = project
    bad = layer_violations(mods, edges)
    assert not bad, "imports of a higher layer (core 0 < zoo/data/present 1 < engine 2 < run 3 < app 4):\n" + "\n".join(bad)


def test_every_layer_is_populated_and_nothing_sits_beside_them(project):
    mods, _ = project
    top = {m.split(".")[1] for m in mods if m.startswith("fairprune.")}
    assert top == set(LAYERS) | {"__main__"}, f"fairprune/ holds {sorted(top)}; expected the layers {sorted(LAYERS)}"


def test_the_library_never_imports_streamlit_or_the_app(project):
    mods, edges = project
    bad = forbidden_imports(mods, edges)
    assert not bad, "\n".join(bad)


def test_import_fairprune_costs_no_torch_and_every_public_name_resolves():
    code = ("import sys, fairprune\n"
            "assert 'torch' not in sys.modules, 'import fairprune loaded torch'\n"
            "missing = [n for n in fairprune.__all__ if n not in dir(fairprune)]\n"
            "assert not missing, missing\n"
            "for n in fairprune.__all__:\n"
            "    getattr(fairprune, n)\n"
            "from fairprune import audit, load_model, AuditResult\n"
            "import fairprune.engine.audit as a\n"
            "assert audit is a.audit and callable(audit)\n"
            "print(len(fairprune.__all__))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) >= 15


def test_an_unknown_public_name_is_an_attribute_error():
    import fairprune

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        fairprune.no_such_name  # noqa: B018


# ---- the checks can fail: planted faults in a synthetic tree ---------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return [tmp_path / "fairprune", tmp_path / "app"]


CLEAN = {
    "fairprune/__init__.py": "", "fairprune/core/__init__.py": "", "fairprune/core/errors.py": "",
    "fairprune/zoo/__init__.py": "from ._load import load\n", "fairprune/zoo/_load.py": "from ..core import errors\n",
    "fairprune/data/__init__.py": "import fairprune\n",
    "fairprune/data/demos.py": "def f():\n    from ..zoo import load\n",
    "fairprune/present/__init__.py": "", "fairprune/engine/__init__.py": "",
    "fairprune/engine/audit.py": "from ..present import report\nfrom ..data import demos\n",
    "fairprune/present/report.py": "from ..core.errors import x\n",
    "fairprune/run/__init__.py": "", "fairprune/run/cli.py": "from ..engine.audit import audit\n",
    "app/__init__.py": "", "app/main.py": "import streamlit\nfrom fairprune.run import cli\n",
}


def test_the_checker_passes_a_clean_tree(tmp_path):
    mods, edges = collect(_tree(tmp_path, CLEAN))
    assert cycles(edges) == [] and layer_violations(mods, edges) == [] and forbidden_imports(mods, edges) == []
    assert ("fairprune.zoo", 2, "fairprune") in [(t, ln, n) for t, ln, n in edges["fairprune.data.demos"]]


def test_the_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    files = {**CLEAN, "fairprune/core/errors.py": "def f():\n    from . import result\n",
             "fairprune/core/result.py": "from .errors import f\n"}
    _, edges = collect(_tree(tmp_path, files))
    assert cycles(edges) == [["fairprune.core.errors", "fairprune.core.result"]]


def test_the_checker_finds_an_upward_import_and_names_file_line_and_layers(tmp_path):
    files = {**CLEAN, "fairprune/engine/audit.py": "import os\n\n\ndef f():\n    from ..run import cli\n"}
    mods, edges = collect(_tree(tmp_path, files))
    bad = layer_violations(mods, edges)
    assert bad == ["fairprune/engine/audit.py:5: fairprune.engine.audit (engine, layer 2) imports fairprune.run.cli "
                   "(run, layer 3)"], bad
    assert cycles(edges) == [["fairprune.engine.audit", "fairprune.run.cli"]]


def test_the_checker_refuses_imports_across_layer_one_but_data_to_zoo(tmp_path):
    files = {**CLEAN, "fairprune/zoo/_load.py": "from ..present.report import x\n"}
    mods, edges = collect(_tree(tmp_path, files))
    assert [b.split(": ", 1)[1] for b in layer_violations(mods, edges)] == [
        "fairprune.zoo._load (zoo, layer 1) imports fairprune.present.report (present, layer 1)"]


def test_the_checker_finds_streamlit_and_app_in_the_library(tmp_path):
    files = {**CLEAN, "fairprune/present/report.py": "def f():\n    import streamlit as st\n    from app import main\n"}
    mods, edges = collect(_tree(tmp_path, files))
    assert [b.rsplit(": ", 1)[1] for b in forbidden_imports(mods, edges)] == [
        "fairprune.present.report imports streamlit", "fairprune.present.report imports app"]
    assert any("imports app.main (app, layer 4)" in b for b in layer_violations(mods, edges))


def test_the_checker_refuses_a_module_outside_the_layers(tmp_path):
    files = {**CLEAN, "fairprune/misc.py": "from .core import errors\n"}
    mods, edges = collect(_tree(tmp_path, files))
    with pytest.raises(AssertionError, match="fairprune.misc: a module outside the layers"):
        layer_violations(mods, edges)
