"""The teaching notebooks: executed end to end, outputs stripped, in sync with their sources.

Each notebook asserts its own key numbers in cells, so a notebook that runs but shows a
wrong picture fails here too. Each runs as in a plain Jupyter session: in its own folder
(``notebooks/``), with ``svi_torch`` importable as installed and nothing else of the
checkout (``benchmarks/`` is not on the path unless the notebook puts it there). The
kernel finds this checkout's ``svi_torch`` through a directory holding only that package,
so that a worktree tests its own copy (in CI it is the one ``pip install -e .`` points at).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The 'notebooks' extra (installed by `make test`); a missing one must fail, not skip.
import jupytext
import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = [
    "01_bayes_and_the_evidence",
    "02_kl_divergence",
    "03_vi_as_optimisation",
    "04_families_and_uncertainty",
    "05_conjugate_exactness",
    "06_scaling_with_minibatches",
    "07_strengths_and_limits",
    "08_a_real_model",
]
#: Seconds a whole notebook may take under pytest (they take well under a minute on an idle
#: laptop; the margin is for loaded CI machines).
NOTEBOOK_TIMEOUT = 420


def _ids(path: Path) -> str:
    return path.stem


def test_every_notebook_is_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert sorted(p.stem for p in (NOTEBOOK_DIR / "src").glob("*.py")) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_stripped(path: Path):
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {index} has a count"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_matches_its_percent_source(path: Path):
    """``notebooks/src/<name>.py`` (jupytext percent format) is the file to edit."""
    source = jupytext.read(NOTEBOOK_DIR / "src" / f"{path.stem}.py")
    nb = nbformat.read(path, as_version=4)
    got = [(c.cell_type, c.source) for c in nb.cells]
    want = [(c.cell_type, c.source) for c in source.cells]
    assert got == want, (
        f"{path.name} is out of date with src/{path.stem}.py; regenerate it with the "
        "command in notebooks/README.md"
    )


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a plain Jupyter kernel on this checkout.

    ``PYTHONPATH`` holds a directory with only ``svi_torch`` in it (a link to this
    checkout's), as an installed package is; entries naming the checkout itself are
    dropped, since they would hand the notebooks ``benchmarks`` and the other top-level
    folders that Jupyter does not give them.
    """
    site = tmp_path_factory.mktemp("site-packages")
    (site / "svi_torch").symlink_to(ROOT / "svi_torch", target_is_directory=True)
    inherited = [
        entry
        for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != ROOT
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *inherited])
    # Headless plotting inside the kernel, one thread per op (CI shares two cores).
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_the_kernel_sees_svi_torch_as_installed_and_not_the_checkout(
    kernel_env: dict[str, str],
) -> None:
    probe = (
        "import importlib.util, svi_torch; "
        "print(svi_torch.__file__); print(importlib.util.find_spec('benchmarks'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=NOTEBOOK_DIR,
        env=kernel_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert Path(out[0]).resolve() == ROOT / "svi_torch" / "__init__.py"
    assert out[1] == "None"  # a notebook that needs benchmarks/ must say where it is


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_executes(
    path: Path, kernel_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PYTHONPATH", "MPLBACKEND", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, kernel_env[name])  # the kernel inherits this process's
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=NOTEBOOK_TIMEOUT,
        kernel_name="python3",
        # The notebook's own folder, as Jupyter runs it (what it writes, e.g. the
        # TensorBoard runs of notebook 6, goes to notebooks/runs/, ignored by git).
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
