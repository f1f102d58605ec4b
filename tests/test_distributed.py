"""Data-parallel training: real ``torchrun`` launches on loopback (gloo), as users run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"
#: Long enough to reach the exact posterior (KL < 0.02 nats) on the quick regression.
STEPS = 1200


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(logdir: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "svi_torch", "train", str(QUICK), "--quiet", "--logdir", str(logdir),
         "--set", f"train.steps={STEPS}", *extra],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def _only_run(logdir: Path) -> Path:
    runs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _family_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["family"]


@pytest.fixture(scope="module")
def single_and_pair(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    first = _train(one)
    assert first.returncode == 0, first.stderr
    second = _train(two, "--nproc", "2")
    assert second.returncode == 0, second.stderr
    return _only_run(one), _only_run(two)


@pytest.mark.slow
def test_two_processes_match_one_process_and_reach_the_posterior(single_and_pair):
    one, two = single_and_pair
    # Same seed, same global batch: the ranks' averaged loss is the single-process loss, so
    # the parameters agree up to float32 rounding of the all-reduce.
    ref, par = _family_state(one), _family_state(two)
    for key in ref:
        torch.testing.assert_close(par[key], ref[key], atol=1e-4, rtol=1e-4, msg=key)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["steps"] == m2["steps"] == STEPS
    assert m1["kl_posterior"] < 0.02 and m2["kl_posterior"] < 0.02
    assert abs(m1["kl_posterior"] - m2["kl_posterior"]) < 1e-3


@pytest.mark.slow
def test_two_process_run_writes_one_set_of_outputs(single_and_pair):
    _, two = single_and_pair
    assert len(list(two.parent.iterdir())) == 1
    assert len(list(two.glob("metrics.json"))) == 1
    events = sorted(two.glob("events.out.tfevents.*"))
    # Scalars and the hparams summary: written by one process (rank 0) alone.
    assert events and len({e.name.split(".")[-2] for e in events}) == 1


def _start(logdir: Path, nproc: int, steps: int, every: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "svi_torch", "train", str(QUICK), "--quiet", "--logdir", str(logdir),
         "--nproc", str(nproc), "--set", f"train.steps={steps}",
         "--set", f"logging.checkpoint_every={every}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
        start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
def test_two_process_checkpoint_resumes_with_one_process(single_and_pair, tmp_path):
    one, _ = single_and_pair
    proc = _start(tmp_path, nproc=2, steps=STEPS, every=100)
    run_dir = None
    deadline = time.monotonic() + 120
    while run_dir is None or not (run_dir / "checkpoint.pt").exists():
        runs = [p for p in tmp_path.iterdir() if p.is_dir()]
        run_dir = runs[0] if runs else None
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    # Kill the whole job, launcher and both ranks (torchrun may start its workers in
    # sessions of their own, so a process-group kill alone could leave them running).
    job = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for member in job:
        member.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(job, timeout=30)
    step = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    assert step < STEPS
    resumed = subprocess.run(
        [sys.executable, "-m", "svi_torch", "train", str(run_dir), "--resume", "--quiet"],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    ref, res = _family_state(one), _family_state(run_dir)
    for key in ref:
        torch.testing.assert_close(res[key], ref[key], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_killed_rank_stops_the_job_with_its_name(tmp_path):
    proc = _start(tmp_path, nproc=2, steps=200_000, every=50)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob("*/checkpoint.pt")):  # both ranks are training
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = [
        p for p in psutil.Process(proc.pid).children(recursive=True)
        if p.environ().get("RANK") == "1"
    ]  # fmt: skip
    assert len(workers) == 1
    killed_at = time.monotonic()
    workers[0].send_signal(signal.SIGKILL)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the job did not stop within 60 s of a rank's death")
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 60
    assert "rank 1 failed" in stderr
