"""The teaching notebooks: executed end to end, outputs stripped, in sync with their sources.

Each notebook asserts its own key numbers in cells, so a notebook that runs but shows a
wrong picture fails here too. The notebooks import the installed ``svi_torch``; the kernel
gets this checkout on ``PYTHONPATH`` so that a worktree tests its own copy (in CI it is the
same directory that ``pip install -e .`` points at).
"""

from __future__ import annotations

import os
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


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pythonpath = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), pythonpath])))
    # Headless plotting inside the kernel, one thread per op (CI shares two cores).
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=NOTEBOOK_TIMEOUT,
        kernel_name="python3",
        # Run in a scratch directory: notebooks that write logs write them there.
        resources={"metadata": {"path": str(tmp_path)}},
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
