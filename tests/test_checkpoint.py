"""Checkpoints: atomic writes, the last K kept, safe loading, completeness, preflight checks."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import svi_torch as st
from svi_torch.data import MinibatchStream
from svi_torch.families import FullRankGaussian, MeanFieldGaussian
from svi_torch.methods import SGD
from svi_torch.models import BayesianLinearRegression, regression_data
from svi_torch.objectives import ELBO
from svi_torch.training import CheckpointError, TrainConfig, preflight
from svi_torch.training.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    save_rotating,
    step_checkpoints,
)
from svi_torch.training.preflight import check_writable_dir


@pytest.fixture(scope="module")
def model():
    X, y, _ = regression_data(200, 3, seed=0)
    return BayesianLinearRegression(X, y)


@pytest.fixture
def checkpoint(tmp_path, model):
    path = tmp_path / "run.pt"
    st.fit(model, MeanFieldGaussian(model.dim), steps=30, checkpoint_path=path)
    return path


class Payload:
    """Unpickling this would create ``marker``: proof that a checkpoint executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# -- safe loading ------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_bytes", [0, 100, 0.5, -1])
def test_truncated_checkpoint_is_refused(checkpoint, model, keep_bytes):
    data = checkpoint.read_bytes()
    size = int(len(data) * keep_bytes) if isinstance(keep_bytes, float) else keep_bytes
    checkpoint.write_bytes(data[:size])
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        load_checkpoint(checkpoint)
    # ... and resuming from it stops with the same clear error, before any step.
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        st.fit(
            model,
            MeanFieldGaussian(model.dim),
            steps=30,
            checkpoint_path=checkpoint,
            resume=True,
        )


def test_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path, model):
    marker = tmp_path / "executed"
    good = tmp_path / "good.pt"
    st.fit(model, MeanFieldGaussian(model.dim), steps=10, checkpoint_path=good)
    state = load_checkpoint(good)
    # A real checkpoint with one entry replaced by an object whose unpickling runs code.
    tampered = tmp_path / "tampered.pt"
    torch.save({**state, "family": Payload(marker)}, tampered)
    # The same object in a plain pickle file, not even torch's zip format.
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"format_version": 1, "family": Payload(marker)}, protocol=2))
    for path in (tampered, plain):
        with pytest.raises(CheckpointError, match="refusing checkpoint"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError):
            st.fit(model, MeanFieldGaussian(model.dim), steps=20, checkpoint_path=path, resume=True)
    assert not marker.exists()
    # The payload does run when unpickled unsafely: the refusal above is what stopped it.
    pickle.loads(plain.read_bytes())
    assert marker.exists()


def test_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not an svi_torch checkpoint"):
        load_checkpoint(path)


# -- atomic writes and rotation ------------------------------------------------------------------
def test_crash_while_writing_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"step": 1, "x": torch.arange(3)})

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"step": 2, "x": torch.arange(5)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # no temporary left


def test_rotation_keeps_the_last_k_and_latest_is_the_newest(tmp_path, model):
    path = tmp_path / "run.pt"
    st.fit(
        model,
        MeanFieldGaussian(model.dim),
        steps=55,
        checkpoint_path=path,
        checkpoint_every=10,
        keep_checkpoints=3,
    )
    assert [step for step, _ in step_checkpoints(path)] == [40, 50, 55]
    latest = load_checkpoint(path)
    assert latest["step"] == 55
    for step, file in step_checkpoints(path):
        assert load_checkpoint(file)["step"] == step
    assert path.read_bytes() == step_checkpoints(path)[-1][1].read_bytes()


def test_rotation_without_hard_links_writes_a_copy(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "run.pt"
    for step in (1, 2, 3):
        save_rotating(path, {"step": step}, step, keep=2)
    assert [s for s, _ in step_checkpoints(path)] == [2, 3]
    assert load_checkpoint(path)["step"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- completeness ------------------------------------------------------------------------------
def test_checkpoint_holds_everything_needed_to_continue(tmp_path, model):
    path = tmp_path / "run.pt"
    loop = SGD().prepare(
        model,
        FullRankGaussian(model.dim),
        ELBO(num_particles=2),
        TrainConfig(steps=400, batch_size=32, convergence=True, checkpoint_path=path, seed=3),
    )
    loop.run(stop_at=250)
    state = load_checkpoint(path)
    for key in (
        "step", "method", "family", "model_params", "rule", "schedule", "monitor", "stream",
        "rng", "skipped_steps", "step_size_factor", "elbo_ema", "history", "health",
    ):  # fmt: skip
        assert key in state, key
    assert state["step"] == 250
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    # The data order position: where a fresh stream is after drawing 250 batches.
    stream = MinibatchStream(200, 32, seed=3)
    for _ in range(250):
        stream.next_indices()
    assert state["stream"] == {"epoch": stream.epoch, "position": stream.position}
    assert state["stream"]["position"] > 0  # mid-epoch: the position matters
    assert state["method"]["name"] == "sgd"
    assert state["rule"]["optimizer"]["state"], "optimizer moments missing"
    assert (
        state["rule"]["average"]["count"] == 50
    )  # averaging runs from step 200 (average_from=0.5)


def test_convergence_stop_reason_survives_a_resume(tmp_path, model):
    settings = dict(steps=3000, batch_size=32, convergence=True, seed=3, log_every=50)
    expected = st.fit(
        model, FullRankGaussian(model.dim), ELBO(num_particles=2), method="sgd", **settings
    )
    assert expected.stop_reason.startswith("converged")  # the rule fires before 3000
    path = tmp_path / "run.pt"
    loop = SGD().prepare(
        model,
        FullRankGaussian(model.dim),
        ELBO(num_particles=2),
        TrainConfig(**settings, checkpoint_path=path),
    )
    loop.run(stop_at=expected.steps - 10)  # after the rule fired, inside the refine phase
    assert loop.state.monitor is not None and loop.state.monitor.reason is not None
    resumed = st.fit(
        model,
        FullRankGaussian(model.dim),
        ELBO(num_particles=2),
        method="sgd",
        **settings,
        checkpoint_path=path,
        resume=True,
    )
    assert resumed.steps == expected.steps
    assert resumed.stop_reason == expected.stop_reason


def test_resumed_tensorboard_events_have_no_duplicates_or_gaps(tmp_path, model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = dict(steps=200, batch_size=32, seed=1, log_every=10)
    ref_dir, run_dir, path = tmp_path / "ref", tmp_path / "run", tmp_path / "run.pt"
    st.fit(
        model,
        MeanFieldGaussian(model.dim),
        method="sgd",
        **settings,
        loggers=[st.training.TensorBoardLogger(ref_dir)],
    )
    first = SGD().prepare(
        model,
        MeanFieldGaussian(model.dim),
        None,
        TrainConfig(**settings, checkpoint_path=path, checkpoint_every=25, keep_checkpoints=10),
        loggers=[st.training.TensorBoardLogger(run_dir)],
    )
    first.run(stop_at=140)
    for logger in first.loggers:
        logger.close()
    # As if killed at step 140: its events up to 140 are on disk, its last checkpoint is 125.
    shutil.copy(dict(step_checkpoints(path))[125], path)
    resumed = SGD().prepare(
        model,
        MeanFieldGaussian(model.dim),
        None,
        TrainConfig(**settings, checkpoint_path=path, resume=True),
        loggers=[st.training.TensorBoardLogger(run_dir)],
    )
    assert resumed.state.step == 125
    resumed.run()
    for logger in resumed.loggers:
        logger.close()

    def scalars(logdir, tag):
        acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    # The smoothed ELBO and its noise band continue from the checkpoint's moments.
    for tag in ("elbo", "loss", "lr", "elbo/smoothed", "elbo/band_upper"):
        points = scalars(run_dir, tag)
        assert [s for s, _ in points] == list(range(10, 201, 10)), tag
        assert points == scalars(ref_dir, tag), tag


# -- preflight ---------------------------------------------------------------------------------
def test_checkpoint_directory_under_a_file_is_refused_before_any_work(tmp_path, model):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        st.fit(model, MeanFieldGaussian(model.dim), steps=5, checkpoint_path=blocker / "a" / "r.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]


def test_unwritable_directory_is_refused_and_nothing_is_created(tmp_path):
    # sysfs refuses new files even to root; a chmod-ed directory would not stop root.
    if not Path("/sys/kernel").is_dir():
        pytest.fail("this test needs Linux sysfs at /sys")
    with pytest.raises(ValueError, match="is not writable"):
        check_writable_dir("/sys/kernel/svi_torch_run/logs", "log directory")
    assert not Path("/sys/kernel/svi_torch_run").exists()


def test_full_disk_is_refused(tmp_path, monkeypatch, model):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        preflight.shutil, "disk_usage", lambda p: usage._replace(free=2**20)
    )  # 1 MiB left
    with pytest.raises(ValueError, match="full disk"):
        st.fit(
            model, MeanFieldGaussian(model.dim), steps=5, checkpoint_path=tmp_path / "r" / "c.pt"
        )
    assert not (tmp_path / "r").exists()


def test_checkpoint_path_that_is_a_directory_is_refused(tmp_path, model):
    with pytest.raises(ValueError, match="is a directory; give a file path"):
        st.fit(model, MeanFieldGaussian(model.dim), steps=5, checkpoint_path=tmp_path)


def test_resume_removes_temporaries_of_a_killed_write(tmp_path, model):
    path = tmp_path / "run.pt"
    st.fit(model, MeanFieldGaussian(model.dim), steps=10, checkpoint_path=path)
    stale = tmp_path / ".run.pt.abc123.tmp"
    stale.write_bytes(b"PK half")
    # keep_checkpoints > 1 writes step-numbered copies through temporaries of their own.
    numbered = tmp_path / ".run-step000000063.pt.peadkkw3.tmp"
    numbered.write_bytes(b"PK half")
    other = tmp_path / ".other.pt.abc123.tmp"  # another checkpoint's: not ours to delete
    other.write_bytes(b"x")
    st.fit(model, MeanFieldGaussian(model.dim), steps=20, checkpoint_path=path, resume=True)
    assert not stale.exists() and not numbered.exists() and other.exists()
