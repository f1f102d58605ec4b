"""``benchmarks/posteriordb/run.py``: its scores, its verdicts, its rows file, and a
``--quick`` run as a user runs it.

The scoring tests draw on a deterministic grid of standard-normal quantiles instead of
random draws, so the only error is the grid's: with 20 000 points its sd is 1 - 1e-4 and its
5% quantile within 1e-4 of the normal's, hence the tolerance of 1e-3 (in sds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.posteriordb import run
from benchmarks.posteriordb.spec import Reference

ROOT = Path(__file__).resolve().parents[1]
GRID = 20_000
TOL = 1e-3
Z95 = run.NORMAL_Q95


def _normal_grid() -> torch.Tensor:
    """Standard-normal quantiles at (i + 1/2) / GRID: mean 0 exactly, sd 1 to 1e-4."""
    p = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    return torch.distributions.Normal(0.0, 1.0).icdf(p)


def _reference(params: dict[str, dict[str, float]]) -> Reference:
    return Reference("synthetic", "", {}, params, [], np.zeros((0, 0)), Path("synthetic"))


def _standard(mean: float = 0.0, sd: float = 1.0) -> dict[str, float]:
    return {"mean": mean, "sd": sd, "q05": mean - Z95 * sd, "q95": mean + Z95 * sd}


def test_score_names_the_worst_quantity_with_its_mean_error_sd_ratios_and_tail_errors():
    """Known shifts and scales: ``a`` is 0.5 sd off, ``b`` 0.6 times too narrow, ``c`` 1.5
    times too wide and 0.1 sd off; ``d`` has no finite variance (its reference sd of 3 is an
    artefact), so its wide draws are no sd ratio and its tails are scaled by its interval."""
    z = _normal_grid()
    reference = _reference(
        {"a": _standard(), "b": _standard(), "c": _standard(), "d": {**_standard(), "sd": 3.0}}
    )
    draws = {"a": z + 0.5, "b": 0.6 * z, "c": 1.5 * z + 0.1, "d": z}
    row = run.Row("synthetic", "test")
    run.score_quantities(row, draws, reference, sd_free=("d",))

    assert (row.mean_err_at, row.mean_err_max) == ("a", pytest.approx(0.5, abs=TOL))
    assert (row.sd_ratio_min_at, row.sd_ratio_min) == ("b", pytest.approx(0.6, abs=TOL))
    assert (row.sd_ratio_max_at, row.sd_ratio_max) == ("c", pytest.approx(1.5, abs=TOL))
    # c's 5% quantile is -1.5 z + 0.1 against -z (z = 1.645): 0.5 z - 0.1 = 0.722 sd off;
    # its 95% quantile 0.5 z + 0.1 = 0.922. b's are 0.4 z = 0.658 and a's 0.5.
    assert (row.q05_err_at, row.q05_err_max) == ("c", pytest.approx(0.5 * Z95 - 0.1, abs=TOL))
    assert (row.q95_err_at, row.q95_err_max) == ("c", pytest.approx(0.5 * Z95 + 0.1, abs=TOL))
    assert run.verdict(dataclasses.replace(row, fit_warnings=[])) == "WRONG (silent)"


def test_score_of_an_exact_q_is_right_on_every_quantity():
    z = _normal_grid()
    reference = _reference({"mu": _standard(4.0, 3.0), "tau": _standard(1.0, 0.5)})
    row = run.Row("synthetic", "test", fit_warnings=[])
    run.score_quantities(row, {"mu": 4.0 + 3.0 * z, "tau": 1.0 + 0.5 * z}, reference)
    assert row.mean_err_max < TOL and abs(row.sd_ratio_min - 1) < TOL
    assert row.q05_err_max < TOL and row.q95_err_max < TOL
    assert run.verdict(row) == "right"


def _scored(**fields) -> run.Row:
    """A completed fit's row, inside issue 25's target unless ``fields`` say otherwise."""
    base = {"mean_err_max": 0.19, "sd_ratio_min": 0.8, "sd_ratio_max": 1.25, "fit_warnings": []}
    return run.Row("p", "m", **{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "right"),
        ({"fit_warnings": ["PSIS k-hat of the fit is 0.80"]}, "right"),  # a warning, met anyway
        ({"mean_err_max": 0.21}, "WRONG (silent)"),
        ({"sd_ratio_min": 0.77, "fit_reading": "ok"}, "WRONG (silent)"),
        ({"sd_ratio_max": 1.3}, "WRONG (silent)"),
        ({"mean_err_max": math.nan}, "WRONG (silent)"),  # a NaN score is not right
        ({"sd_ratio_min": 0.5, "fit_reading": "bad"}, "flagged (k-hat bad)"),
        ({"sd_ratio_min": 0.5, "fit_warnings": ["x", "y"]}, "flagged (2 warnings)"),
        # Doubts listed on the result without a warning are not a flag: still a wrong answer.
        ({"sd_ratio_min": 0.5, "doubtful": ["tau"]}, "WRONG (no warning; doubted tau)"),
        (
            {"mean_err_max": 1.0, "fit_reading": "ok", "doubtful": list("abcde")},
            "WRONG (no warning; doubted a, b, c +2)",
        ),
        ({"mean_err_max": 1.0, "fit_warnings": ["x"], "doubtful": ["a"]}, "flagged (1 warning)"),
        ({"fit_warnings": None, "mean_err_max": 3.0}, "n/a"),  # a row from before the fields
        ({"status": "timeout after 60 s"}, "n/a"),
    ],
)
def test_verdict_is_right_flagged_by_what_the_fit_said_or_silently_wrong(fields, expected):
    assert run.verdict(_scored(**fields)) == expected


def test_alarms_keep_runtime_and_pathfinder_warnings_only():
    class PathfinderWarning(UserWarning):
        pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for message, category in (
            ("PSIS k-hat of the fit is 0.91 (> 0.7); q is not reliable", RuntimeWarning),
            ("PSIS k-hat = 0.75 (bad); heavy tail", PathfinderWarning),
            ("does not vectorise over particles", UserWarning),
            ("old name", DeprecationWarning),
        ):
            warnings.warn(message, category, stacklevel=1)
    assert run.alarms(caught) == [
        "PSIS k-hat = 0.75 (bad)",
        "PSIS k-hat of the fit is 0.91 (> 0.7)",
    ]


def test_rows_from_before_the_worst_quantity_fields_load_and_print_n_a(tmp_path):
    """A line written by the runner before issue 25 (no names, no tails, no verdict) loads
    with the defaults; its table row prints "n/a" there and keeps its old scores; a new row
    round-trips through the file unchanged."""
    old = {
        "posterior": "p",
        "method": "auto",
        "status": "ok",
        "ended_on": "auto -> ngvi from laplace",
        "mean_err_med": 0.04,
        "mean_err_max": 0.15,
        "sd_ratio_min": 0.76,
        "sd_ratio_med": 0.98,
        "sd_ratio_max": 1.02,
        "khat": 0.58,
        "wall_s": 4.3,
        "notes": [],
    }
    new = _scored(mean_err_at="tau", sd_ratio_min_at="tau", q05_err_max=0.3, q05_err_at="mu")
    new = dataclasses.replace(new, posterior="p", method="bam", status="ok")
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(old) + "\n" + json.dumps(dataclasses.asdict(new)) + "\n")
    rows = run.load_rows(path)
    # NaN scores compare unequal, so compare the lines the rows file would hold.
    assert json.dumps(dataclasses.asdict(rows[("p", "bam")])) == json.dumps(dataclasses.asdict(new))
    loaded = rows[("p", "auto")]
    assert loaded.fit_warnings is None and run.verdict(loaded) == "n/a"

    text = run.markdown(list(rows.values()), "run.py", 1.0, ["auto", "bam"])
    line = next(x for x in text.splitlines() if x.startswith("| auto |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # err max, sd min, sd max keep their numbers; the tails and the verdict are n/a.
    assert cells[4:10] == ["0.15 (n/a)", "0.76 (n/a)", "0.98", "1.02 (n/a)", "n/a", "n/a"]
    assert cells[-1] == "n/a"
    line = next(x for x in text.splitlines() if x.startswith("| bam |"))
    assert "| 0.19 (tau) |" in line and "| 0.30 (mu) |" in line and line.endswith("| right |")
    summary = text.split("### Summary")[1].splitlines()
    assert "| auto | 1/1 | 1 | 0 | 0 | 0 | 0 | 1 |" in "\n".join(summary)
    assert any(x.startswith("| bam | 1/1 | 0 | 0 | 1 | 0 | 0 | 0 |") for x in summary)


def _timed(method: str, cpu_s: float, grad_evals: float, **nuts: float) -> run.Row:
    """A right row of posterior ``p`` with its cost (and NUTS's compile split)."""
    row = dataclasses.replace(_scored(), posterior="p", method=method, status="ok")
    return dataclasses.replace(row, cpu_s=cpu_s, grad_evals=grad_evals, **nuts)


def test_nuts_rows_add_compile_divergence_and_ratio_columns_and_the_comparison():
    """With nutpie and NumPyro NUTS rows in the run, every row gets its CPU s over each
    NUTS's, and the comparison section puts auto's cost beside theirs with the ratios; an
    old row (no NUTS fields) still prints; without NUTS rows the table is as before."""
    auto = _timed("auto", 2.0, 20_000.0)
    nutpie = _timed(
        "nutpie",
        8.0,
        40_000.0,
        compile_s=6.0,
        sample_s=2.0,
        warm_compile_s=3.0,
        divergences=0.0,
    )
    numpyro = _timed("numpyro-nuts", 4.0, 80_000.0, compile_s=3.5, sample_s=0.5, divergences=2.0)
    old = run.Row(**{"posterior": "p", "method": "sgd", "status": "ok", "cpu_s": 1.0})
    text = run.markdown([auto, nutpie, numpyro, old], "run.py", 1.0, ["auto", "sgd"])

    line = next(x for x in text.splitlines() if x.startswith("| auto |"))
    assert line.endswith("| — | — | 0.25 | 0.50 |")
    line = next(x for x in text.splitlines() if x.startswith("| numpyro-nuts |"))
    assert line.endswith("| 3.5 | 2 | 0.50 | 1.00 |")
    assert "flagged (1 warning)" in line or "right" in line
    assert next(x for x in text.splitlines() if x.startswith("| sgd |")).endswith("| 0.12 | 0.25 |")

    section = text.split("### svi_torch `auto` against NUTS")[1].splitlines()
    row = next(x for x in section if x.startswith("| p |"))
    assert "| 8.0 (6.0 + 2.0), warm 3.0 | 40000 | 0 |" in row
    assert "| 4.0 (3.5 + 0.5) | 80000 | 2 |" in row
    assert row.endswith("| 0.25 | 0.50 | 0.50 | 0.25 |")
    assert next(x for x in section if x.startswith("| median |")).endswith(
        "0.25 | 0.50 | 0.50 | 0.25 |"
    )

    plain = run.markdown([auto, old], "run.py", 1.0, ["auto", "sgd"])
    assert "CPU ÷" not in plain and "against NUTS" not in plain


def test_nuts_rows_say_n_a_without_their_libraries(monkeypatch):
    """A NUTS method whose library is missing is an n/a row, not a crash."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("numpyro", "nutpie") else real(name, *a),
    )
    posterior = run.load_posteriors(["arK-arK"])["arK-arK"]
    for fit in (run.fit_nutpie, run.fit_numpyro_nuts):
        row = fit(posterior, "m", 10, 0, True)
        assert row.status.startswith("n/a (") and "bench extra" in row.status


def test_a_second_posterior_source_is_one_entry_with_its_own_reference_folder(
    tmp_path, monkeypatch
):
    """Another set of posteriors (say hierarchical models) joins by one ``Source``; its
    references are read from its folder, the posteriordb ones from theirs."""
    name = "eight_schools-eight_schools_noncentered"
    posteriordb = run.load_posteriors([name])[name]
    extra = dataclasses.replace(posteriordb, name="extra-model")
    (tmp_path / "extra-model.json").write_text(
        json.dumps({"data": {"J": 1}, "params": {"mu": _standard()}})
    )
    sources = (*run.SOURCES, run.Source(lambda: {extra.name: extra}, tmp_path))
    monkeypatch.setattr(run, "SOURCES", sources)
    run._catalogue.cache_clear()
    try:
        found = run.load_posteriors()
        assert found["extra-model"] is extra and name in found
        assert run.reference_for("extra-model").params == {"mu": _standard()}
        assert run.reference_for(name).params["mu"]["mean"] == pytest.approx(4.4, abs=0.1)
    finally:
        monkeypatch.undo()
        run._catalogue.cache_clear()


@pytest.mark.slow
def test_quick_posteriordb_run_scores_every_fit_and_auto_meets_the_targets(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# kept\n<!-- results:start -->\nold\n<!-- results:end -->\nreading kept\n")
    posteriors = ["eight_schools-eight_schools_noncentered", "kidiq-kidscore_interaction"]
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "posteriordb" / "run.py"),
        "--quick",
        "--jobs",
        "2",
        "--posteriors",
        *posteriors,
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# kept\n") and text.rstrip().endswith("reading kept")
    assert "old" not in text and "run.py --quick" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 18 and cells[0] in ("auto", "auto-native", "pyro-amvn"):
            rows.setdefault(cells[0], []).append(cells)
    assert {k: len(v) for k, v in rows.items()} == {"auto": 2, "auto-native": 2, "pyro-amvn": 2}
    for method in ("auto", "auto-native"):
        for cells in rows[method]:
            # completed, ended on the Laplace-started NGVI, and within issue 12's targets
            # (median mean error < 0.1 sd, median sd ratio in 0.9-1.1; see RESULTS.md).
            assert cells[1] == "ok" and cells[2] == "auto -> ngvi from laplace", cells
            assert cells[16] == "yes", cells
    # Issue 25's verdict is filled for every fresh fit (what it is, is the finding).
    for cells in [c for v in rows.values() for c in v]:
        assert cells[17].split(" (")[0] in ("right", "flagged", "WRONG"), cells
    assert all(cells[1] == "ok" for cells in rows["pyro-amvn"])
    assert "### Summary" in text


def test_rows_file_makes_a_killed_run_resume_without_refitting(tmp_path):
    """Fits recorded in ``--rows`` are reused (not refitted) and a torn last line is
    dropped, so that fit alone runs again; here every fit is recorded, so nothing runs."""
    import json

    rows = tmp_path / "rows.jsonl"
    name = "eight_schools-eight_schools_noncentered"
    recorded = {"posterior": name, "method": "auto", "mean_err_med": 0.0123, "wall_s": 4.5}
    torn = json.dumps({"posterior": name, "method": "sgd"})[:-7]
    rows.write_text(json.dumps(recorded) + "\n" + torn)
    out = tmp_path / "RESULTS.md"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "posteriordb" / "run.py"),
        *("--posteriors", name, "--methods", "auto", "--rows", str(rows), "--out", str(out)),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(1 of the 1 fits recorded by earlier invocations" in out.read_text()
    line = next(x for x in out.read_text().splitlines() if x.startswith("| auto |"))
    assert "| 0.01 |" in line and "| 4.5 |" in line
    # A row recorded before issue 25's fields: no verdict.
    assert line.endswith("| n/a |")
    # Nothing ran, so nothing was appended.
    assert rows.read_text().splitlines()[0] == json.dumps(recorded)
    assert len(rows.read_text().splitlines()) == 2
