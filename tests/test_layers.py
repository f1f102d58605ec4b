"""The package's layers point one way (docs/architecture.md).

Three checks, each also run on a small broken package so that none can pass vacuously:

* every module of ``svi_torch`` imports on its own, first, in a fresh process (an import
  cycle shows up as an ``ImportError`` or a partly initialised module in some order);
* no cycle among the module-level imports (``ast``; imports inside functions and under
  ``if TYPE_CHECKING:`` do not run at import time and are not counted);
* the layers contract in ``setup.cfg`` holds (``lint-imports``, import-linter).
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "svi_torch"


# -- the package's modules ------------------------------------------------------------------------
def module_names(package_dir: Path) -> dict[str, Path]:
    """``{"pkg.sub.mod": path}`` for every ``.py`` file under ``package_dir`` (no imports)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _env() -> dict[str, str]:
    # The worktree's package, not an installed copy of it.
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


# -- (a) each module imports first, on its own ----------------------------------------------------
#: Run in a subprocess: imports the third-party stack once, then forks one child per module,
#: so that each child imports its module into an interpreter that holds no svi_torch module
#: (a fresh ``python -c`` per module costs ~1.5 s of torch import, ~2 min for the package).
_FORK_EACH = textwrap.dedent(
    """
    import importlib, os, sys, traceback
    import torch, numpy, yaml  # the slow third-party imports, done once
    names = sys.argv[1:]
    assert not [m for m in sys.modules if m.split(".")[0] == "svi_torch"]
    failed = []
    for name in names:
        pid = os.fork()
        if pid == 0:
            try:
                module = importlib.import_module(name)
                assert module.__file__.startswith(os.environ["LAYERS_ROOT"]), module.__file__
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(name)
    print("FAILED", " ".join(failed))
    sys.exit(1 if failed else 0)
    """
)


def import_each_alone(names: Iterable[str], root: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **_env(),
        "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)]),
        "LAYERS_ROOT": str(root),
    }
    return subprocess.run(
        [sys.executable, "-c", _FORK_EACH, *names],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks one child per module")
@pytest.mark.timeout(300)
def test_every_module_imports_first_in_a_fresh_process() -> None:
    # __main__ runs the command line when imported (``python -m svi_torch``): not imported.
    names = sorted(set(module_names(PACKAGE)) - {"svi_torch.__main__"})
    assert len(names) > 80  # the whole package, found from the files
    done = import_each_alone(names, ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert done.stdout.strip() == "FAILED"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks one child per module")
def test_import_each_alone_catches_a_cycle(tmp_path: Path) -> None:
    # a imports b at the top; b takes a name from a that a defines after that import.
    _write(
        tmp_path / "toycycle", {"a": "from . import b\nVALUE = 1\n", "b": "from .a import VALUE\n"}
    )
    done = import_each_alone(["toycycle.a", "toycycle.b"], tmp_path)
    assert done.returncode == 1
    # b first works (a runs to the end inside b's import, so VALUE exists when b reads it);
    # a first fails: b reads VALUE from a that has not reached it yet.
    assert done.stdout.split() == ["FAILED", "toycycle.a"]
    assert "partially initialized" in done.stderr


# -- (b) no cycle among module-level imports ------------------------------------------------------
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> Iterable[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not TYPE_CHECKING."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _top_level_imports(block)
        elif isinstance(node, ast.With | ast.ClassDef):  # class bodies run at import too
            yield from _top_level_imports(node.body)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level.

    ``from X import a`` counts as importing ``X.a`` where that is a module, else ``X``; an
    import of ``X.Y`` counts ``X.Y`` only, not the parent packages Python also runs (every
    module would otherwise depend on the root package, which imports everything).
    """
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in modules)
                continue
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    targets.add(sub)
                elif base in modules:
                    targets.add(base)
        targets.discard(name)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_no_import_cycle_among_module_level_imports() -> None:
    graph = import_graph(PACKAGE)
    assert sum(len(t) for t in graph.values()) > 200  # the graph was read, not empty
    assert "svi_torch.registry" in graph["svi_torch.families.gaussian"]
    assert import_cycles(graph) == []


def test_cycle_detector_finds_a_cycle_and_ignores_deferred_imports(tmp_path: Path) -> None:
    _write(
        tmp_path / "toy",
        {
            "__init__": "",
            "a": "from . import b\n",
            "b": "from .c import thing\n",
            "c": "import toy.a\nthing = 1\n",
            # d <-> e only through a function and TYPE_CHECKING: not a cycle at import time.
            "d": "from .e import x\n",
            "e": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import x\n"
                "def f():\n    from .d import x\nx = 1\n"
            ),
            "sub/__init__": "from ..a import b\n",
        },
    )
    graph = import_graph(tmp_path / "toy")
    assert graph["toy.sub"] == {"toy.a"} and graph["toy.e"] == set()
    assert import_cycles(graph) == [["toy.a", "toy.b", "toy.c"]]


# -- (c) the layers contract ----------------------------------------------------------------------
def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _contract() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_layers_contract_holds() -> None:
    pytest.importorskip("importlinter")
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_every_module_sits_in_a_layer() -> None:
    # A new module outside every layer would escape the contract; only the packages that
    # gather a public API (the root, posterior/__init__) are left out on purpose.
    layers = _contract()["importlinter:contract:layers"]["layers"]
    named = {m.strip() for line in layers.splitlines() for m in line.replace(":", "|").split("|")}
    named.discard("")
    outside = [
        m
        for m in module_names(PACKAGE)
        if not any(m == layer or m.startswith(layer + ".") for layer in named)
    ]
    assert sorted(outside) == ["svi_torch", "svi_torch.posterior"]


def test_layers_contract_reports_an_import_that_points_up(tmp_path: Path) -> None:
    pytest.importorskip("importlinter")
    _write(tmp_path / "toylayers", {"__init__": "", "high": "", "low": "from . import high\n"})
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = toylayers\n\n"
        "[importlinter:contract:layers]\nname = toy\ntype = layers\n"
        "layers =\n    toylayers.high\n    toylayers.low\n"
    )
    done = lint_imports(tmp_path)
    assert done.returncode == 1
    assert "toylayers.low -> toylayers.high" in done.stdout


def _write(package_dir: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = package_dir / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    init = package_dir / "__init__.py"
    if not init.exists():
        init.write_text("")
