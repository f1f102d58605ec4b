"""``svi-torch summary`` and ``svi-torch predict`` on a real run directory, and its posterior.nc."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import torch

import svi_torch as st
from svi_torch.cli import EXIT_CONFIG_ERROR, main

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"
SETTINGS = [
    "train.steps=120",
    "train.num_threads=1",
    "logging.grad_stats_every=0",
    "logging.histogram_every=0",
    "logging.checkpoint_every=60",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logdir = tmp_path_factory.mktemp("runs")
    args = ["train", str(QUICK), "--logdir", str(logdir), "--quiet"]
    for setting in SETTINGS:
        args += ["--set", setting]
    assert main(args) == 0
    (run,) = [p for p in logdir.iterdir() if p.is_dir()]
    return run


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


def test_run_directory_holds_posterior_nc_readable_by_arviz(run_dir: Path) -> None:
    dt = az.from_netcdf(run_dir / "posterior.nc")
    # N = 2000 points: 1000 draws keep each per-point group at 2e6 numbers (<= 4e6).
    assert dt["posterior"]["beta"].shape == (1, 1000, 3)
    assert dt["log_likelihood"]["y"].shape == (1, 1000, 2000)
    assert dt["posterior_predictive"]["y"].shape == (1, 1000, 2000)
    assert dt["observed_data"]["y"].shape == (2000,)
    result = st.load_run(run_dir)
    means = result.posterior_summary(1000)
    assert float(dt["posterior"]["beta"].mean(("chain", "draw"))[2]) == pytest.approx(
        means["beta[2]"]["mean"], rel=1e-12
    )


def test_summary_prints_the_table_the_same_way_twice(run_dir: Path, capsys) -> None:
    assert main(["summary", str(run_dir), "--num-samples", "2000"]) == 0
    first = capsys.readouterr().out
    assert main(["summary", str(run_dir), "--num-samples", "2000"]) == 0
    assert capsys.readouterr().out == first
    lines = first.strip().splitlines()
    assert lines[0].split() == ["mean", "sd", "q05", "q50", "q95", "mcse_mean"]
    assert [line.split()[0] for line in lines[1:4]] == ["beta[0]", "beta[1]", "beta[2]"]
    assert "2000 draws from q (seed 0); PSIS k-hat" in lines[-1]
    expected = st.load_run(run_dir).summary(2000)
    assert float(lines[1].split()[1]) == pytest.approx(expected["beta[0]"]["mean"], rel=1e-3)


def test_predict_writes_draws_at_the_fitted_inputs(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(run_dir), "--num-samples", "40"]) == 0
    out = run_dir / "posterior_predictive.csv"
    assert str(out) in capsys.readouterr().out
    header, values = _read_csv(out)
    assert header[:3] == ["draw", "y[0]", "y[1]"] and len(header) == 2001
    assert values.shape == (40, 2001)
    expected = st.load_run(run_dir).predictive(40)["y"]
    assert np.allclose(values[:, 1:], expected.double().numpy())


def test_predict_at_new_inputs_matches_the_posterior_mean_line(
    run_dir: Path, tmp_path: Path
) -> None:
    new = tmp_path / "new.csv"
    X_new = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [2.0, 1.0, -1.0]])
    with new.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c"])
        writer.writerows(X_new.tolist())
    out = tmp_path / "pred.csv"
    num = 4000
    args = [
        "predict",
        str(run_dir),
        "--data",
        str(new),
        "--num-samples",
        str(num),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    _, values = _read_csv(out)
    assert values.shape == (num, 4)
    result = st.load_run(run_dir)
    beta = result.sample(num)["beta"].double()
    line = torch.as_tensor(X_new) @ beta.mean(0)
    # y = x beta + N(0, 1) noise: sd of the mean of the draws is sqrt((1 + x' S x) / num).
    sd = ((1 + (torch.as_tensor(X_new) @ beta.T).var(1)) / num).sqrt()
    assert torch.all((torch.as_tensor(values[:, 1:].mean(0)) - line).abs() < 4.5 * sd)
    nc = tmp_path / "pred.nc"
    assert (
        main(["predict", str(run_dir), "--data", str(new), "--num-samples", "30", "--out", str(nc)])
        == 0
    )
    dt = az.from_netcdf(nc)
    assert dt["posterior_predictive"]["y"].shape == (1, 30, 3)


def test_bad_arguments_fail_with_one_line_and_status_2(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    wide = tmp_path / "wide.csv"
    wide.write_text("a,b\n1,2\n")
    cases = [
        (["summary", str(tmp_path / "nowhere")], "neither a run directory nor a saved result"),
        (["summary", str(tmp_path)], "not a finished svi-torch run"),
        (["predict", str(run_dir), "--out", str(tmp_path / "x.txt")], ".csv or .nc"),
        (["predict", str(run_dir), "--data", str(wide)], "gives 2 input columns"),
        (["predict", str(run_dir), "--num-samples", "0"], "--num-samples must be a positive"),
        (["predict", str(run_dir), "--data", str(tmp_path / "none.csv")], "does not exist"),
    ]
    for args, message in cases:
        assert main(args) == EXIT_CONFIG_ERROR, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)


def test_summary_runs_as_a_real_command(run_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "svi_torch", "summary", str(run_dir), "--num-samples", "500"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "beta[2]" in proc.stdout and "PSIS k-hat" in proc.stdout
    assert math.isfinite(float(proc.stdout.splitlines()[1].split()[1]))
