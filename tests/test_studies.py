"""``svi-torch study scalability --quick``: one run per grid point, summary.csv, PNG plots."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svi_torch.cli import main
from svi_torch.studies.runner import cumulative_wall_time, load_settings, time_per_step
from svi_torch.studies.scalability import FIGURES, ScalabilitySettings, grid

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logdir = tmp_path_factory.mktemp("studies")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", "svi_torch", "study", "scalability", "--quick", "--quiet"]
        + ["--logdir", str(logdir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    outdir = Path(proc.stdout.strip().splitlines()[-1])
    assert outdir.parent == logdir
    return outdir


@pytest.fixture(scope="module")
def rows(quick_study: Path) -> list[dict[str, str]]:
    with (quick_study / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_quick_study_writes_one_row_and_one_tensorboard_run_per_grid_point(
    quick_study: Path, rows: list[dict[str, str]]
) -> None:
    points = grid(load_settings(ScalabilitySettings, "scalability", quick=True))
    assert len(rows) == len(points)
    assert sorted(Path(r["run_dir"]).name for r in rows) == sorted(p.name for p in points)
    for row in rows:
        run_dir = quick_study / row["run_dir"]
        assert any(p.name.startswith("events.out.tfevents.") for p in run_dir.iterdir())
        assert float(row["time_per_step_ms"]) > 0 and row["stop_reason"] == "max_steps"
    for name in FIGURES:
        data = (quick_study / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


@pytest.mark.slow
def test_posterior_variance_falls_with_n_as_the_exact_one_does(rows: list[dict[str, str]]) -> None:
    conj = sorted(
        (r for r in rows if r["sweep"] == "num_data" and r["model"] == "linear_regression"),
        key=lambda r: int(r["num_data"]),
    )
    assert len(conj) >= 2
    fitted = [float(r["posterior_variance_mean"]) for r in conj]
    exact = [float(r["exact_variance_mean"]) for r in conj]
    # A full-rank Gaussian contains the exact posterior, so the only error is the optimiser's
    # noise; the 10% bound applies to each N and to the ratio between Ns.
    for q, p in zip(fitted, exact, strict=True):
        assert q == pytest.approx(p, rel=0.10)
    assert exact[-1] < exact[0] / 5  # N grows 10x: the exact variance falls ~10x
    assert fitted[-1] / fitted[0] == pytest.approx(exact[-1] / exact[0], rel=0.10)
    logistic = sorted(
        (r for r in rows if r["sweep"] == "num_data" and r["model"] == "logistic_regression"),
        key=lambda r: int(r["num_data"]),
    )
    assert float(logistic[-1]["posterior_variance_mean"]) < float(
        logistic[0]["posterior_variance_mean"]
    )


def test_study_rejects_unknown_settings_with_exit_2_and_no_directory(
    tmp_path: Path, capsys
) -> None:
    status = main(
        ["study", "scalability", "--quick", "--set", "stepz=5", "--logdir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "unknown config key" in err and "stepz" in err and "num_data" in err
    assert not any(tmp_path.iterdir())
    status = main(["study", "scalability", "--set", "num_data=[]", "--logdir", str(tmp_path)])
    assert status == 2 and "non-empty list" in capsys.readouterr().err
    assert main(["study", "nope", "--logdir", str(tmp_path)]) == 2
    assert "unknown study 'nope'; choose one of ['estimators'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_overrides_reach_every_grid_point() -> None:
    settings = load_settings(
        ScalabilitySettings, "scalability", quick=True, overrides={"steps": 50, "dims": [3]}
    )
    points = grid(settings)
    assert {p.config.train.steps for p in points if p.tags["sweep"] != "dim"} == {50}
    assert {p.config.data.dim for p in points if p.tags["sweep"] == "dim"} == {3}


def test_time_helpers_use_the_logged_throughput() -> None:
    history = {
        "step": [10.0, 20.0, 30.0, 40.0],
        "throughput/steps_per_s": [5.0, 100.0, 50.0, 100.0],
    }
    # Median of the rates after the warm-up interval: 100 steps/s -> 10 ms.
    assert time_per_step(history) == pytest.approx(0.01)
    assert cumulative_wall_time(history) == pytest.approx([2.0, 2.1, 2.3, 2.4])
