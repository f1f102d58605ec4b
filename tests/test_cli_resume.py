"""``svi-torch train RUN --resume``: a larger budget continues the fit; any other change is
refused in one line, before the run directory is touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import stopped_at

from svi_torch.cli import main
from svi_torch.training import load_checkpoint

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"
#: Short, quiet runs of the quick config (SGD, Adam, "auto" schedule).
FAST = [
    "--quiet",
    *("--set", "logging.log_every=20", "--set", "logging.grad_stats_every=0"),
    *("--set", "logging.histogram_every=0", "--set", "logging.figure=false"),
    *("--set", "logging.checkpoint_every=50", "--set", "logging.elbo_samples=200"),
    *("--set", "train.num_threads=1"),
]


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> Path:
    assert main(["train", *args, *FAST]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Name -> content hash of every file: what "not touched" compares."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir()}


def _elbo_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [s.step for s in acc.Scalars("elbo")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 200-step run of the quick config."""
    logdir = tmp_path_factory.mktemp("finished")
    args = ["train", str(QUICK), "--logdir", str(logdir), "--set", "train.steps=200", *FAST]
    assert main(args) == 0
    (run_dir,) = logdir.iterdir()
    return run_dir


def test_resume_in_the_constant_phase_to_more_steps_equals_a_straight_longer_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = _train(
        capsys, str(QUICK), "--logdir", str(tmp_path / "a"), "--set", "train.steps=400"
    )
    # A 200-step run killed at step 80 (last checkpoint: step 50, before its averaging
    # phase at 100), then resumed with a budget of 400.
    args = ["train", str(QUICK), "--logdir", str(tmp_path / "b"), "--set", "train.steps=200"]
    with stopped_at(80):
        assert main([*args, *FAST]) == 130
    capsys.readouterr()
    (resumed,) = (tmp_path / "b").iterdir()
    assert load_checkpoint(resumed / "checkpoint.pt")["step"] == 50
    _train(capsys, str(resumed), "--resume", "--set", "train.steps=400")

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert b["steps"] == 400 and b["posterior"] == a["posterior"] and b["elbo"] == a["elbo"]
    fa, fb = (load_checkpoint(d / "checkpoint.pt")["family"] for d in (straight, resumed))
    for key in fa:
        assert torch.equal(fa[key], fb[key]), key
    assert yaml.safe_load((resumed / "config.yaml").read_text())["train"]["steps"] == 400
    assert _elbo_steps(resumed) == list(range(20, 401, 20))


def test_resume_of_a_finished_run_to_more_steps_extends_its_averaging_phase(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    before = json.loads((run_dir / "metrics.json").read_text())
    _train(capsys, str(run_dir), "--resume", "--set", "train.steps=400")
    after = json.loads((run_dir / "metrics.json").read_text())
    saved = load_checkpoint(run_dir / "checkpoint.pt")
    assert after["steps"] == saved["step"] == 400 and after["stop_reason"] == "max_steps"
    # The averaging phase began at step 100 of the 200-step plan and now ends at 400: the
    # result averages the iterates of steps 101..400.
    assert saved["schedule"] == {"refine_start": 100, "refine_end": 400, "total_steps": 400}
    assert saved["rule"]["average"]["count"] == 300
    # Twice the steps, half the averaging noise: the KL to the exact posterior falls.
    assert after["kl_posterior"] < before["kl_posterior"]
    assert _elbo_steps(run_dir) == list(range(20, 401, 20))  # no step logged twice


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["family.name=meanfield"],
            "with family.name='meanfield': the run was fitted with family.name='fullrank'",
        ),  # fmt: skip
        (["train.batch_size=32"], "with train.batch_size=32"),
        (["data.seed=1"], "with data.seed=1"),
        (["model.options.prior_scale=2.0"], "with model.options.prior_scale=2.0"),
        (["method.options.lr=0.1"], "with method.options.lr=0.1"),
        (["objective.options.num_particles=4"], "with objective.options.num_particles=4"),
        (["train.seed=3"], "with train.seed=3"),
        (["train.dtype=float64"], "with train.dtype='float64'"),
        ([], "already finished (200 steps); to train it further, resume with a larger budget"),
        (["train.steps=150"], "train.steps=150 is not more than the 200 steps"),
        (['train.steps="400"'], "config key 'train.steps' must be an integer, got str '400'"),
    ],
)
def test_a_resume_the_run_cannot_honour_is_refused_in_one_line_and_touches_nothing(
    finished: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], fragment: str
) -> None:
    before = _snapshot(finished)
    args = ["train", str(finished), "--resume"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "run directory:" line
    assert captured.err.count("\n") == 1 and fragment in captured.err, captured.err
    assert _snapshot(finished) == before


def test_a_new_budget_for_the_automatic_method_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "auto.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"num_data": 500, "dim": 2},
                "train": {"steps": 100, "batch_size": 50},
                "logging": {"log_every": 20, "checkpoint_every": 50},
            }
        )
    )
    run_dir = _train(capsys, str(config), "--logdir", str(tmp_path / "runs"))
    before = _snapshot(run_dir)
    assert main(["train", str(run_dir), "--resume", "--set", "train.steps=400"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method 'auto' cannot continue to a new budget" in err
    assert _snapshot(run_dir) == before
