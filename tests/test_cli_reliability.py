"""Reliability of the command line: malformed input stops early and cleanly; killed runs resume.

The property-based test drives ``svi_torch.cli.main`` in-process (fast); the kill test uses
real subprocesses and SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svi_torch.cli import main

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"

#: Overrides each of which is invalid on its own: a wrong type, an out-of-range value, an
#: unknown key or name, a missing file, a device this machine lacks.
BAD_OVERRIDES = [
    "train.steps=-5",
    "train.steps=abc",
    "train.batch_size=0",
    "train.batch_size=100000",
    "train.batch_size=2.5",
    "train.seed=[1]",
    "train.devcie=cpu",
    "optimizer.name=adamz",
    "optimizer.lr=-1",
    "family.name=gaussian",
    "model.name=nope",
    "objective.name=kl",
    "objective.options={num_particles: 0}",
    "data.source=/nonexistent/data.csv",
    "data.num_data=0",
    "logging.log_every=0",
    "unknown_section.x=1",
    "family=3",
]
if not torch.cuda.is_available():
    BAD_OVERRIDES.append("train.device=cuda")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bad=st.sampled_from(BAD_OVERRIDES),
    good=st.lists(
        st.sampled_from(["train.steps=50", "train.seed=3", "logging.log_every=10"]), max_size=2
    ),
)
def test_malformed_settings_exit_2_with_one_line_and_no_run_directory(tmp_path, capsys, bad, good):
    logdir = tmp_path / "runs"
    args = ["train", str(QUICK), "--quiet", "--logdir", str(logdir)]
    for item in [*good, bad]:
        args += ["--set", item]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (bad, err)
    assert err.startswith("svi-torch: error:") and "\n" not in err, err
    assert not logdir.exists() or not any(logdir.iterdir())


def test_data_with_nan_is_refused_before_any_work(tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("x1,y\n1,2\nnan,3\n4,5\n")
    logdir = tmp_path / "runs"
    code = main(["train", str(QUICK), "--quiet", "--logdir", str(logdir), "--set",
                 f"data.source={csv}", "--set", "data.x=[x1]", "--set", "data.y=y"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "NaN/Inf" in err
    assert not logdir.exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for timing in ("wall_time_s", "steps_per_s"):
        metrics.pop(timing)
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [0.3, 1.1])
def test_sigkilled_cli_run_resumes_to_identical_results(tmp_path, kill_after):
    common = ["--quiet", "--set", "train.steps=2000", "--set", "logging.checkpoint_every=50"]
    ref_dir = tmp_path / "ref"
    ref = subprocess.run(
        [sys.executable, "-m", "svi_torch", "train", str(QUICK), "--logdir", str(ref_dir), *common],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    logdir = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "svi_torch", "train", str(QUICK), "--logdir", str(logdir), *common],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(logdir.glob("*/checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(kill_after)  # a seed-dependent point after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = list(logdir.iterdir())
    assert not (run_dir / "metrics.json").exists(), "the run finished before the kill"
    resumed = subprocess.run(
        [sys.executable, "-m", "svi_torch", "train", str(run_dir), "--resume", "--quiet"],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    (ref_run,) = list(ref_dir.iterdir())
    a = torch.load(ref_run / "checkpoint.pt", weights_only=True)["family"]
    b = torch.load(run_dir / "checkpoint.pt", weights_only=True)["family"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _metrics(run_dir) == _metrics(ref_run)
