"""The ``svi-torch`` command line: real subprocesses, TensorBoard's own reader and server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import get_json, stopped_at, tensorboard_server

from svi_torch.cli import main

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"
QUICK_CFG = yaml.safe_load(QUICK.read_text())
STEPS = QUICK_CFG["train"]["steps"]
LOG_EVERY = QUICK_CFG["logging"]["log_every"]
GRAD_EVERY = QUICK_CFG["logging"]["grad_stats_every"]

#: Every scalar tag the issue lists, logged every ``log_every`` steps.
SCALAR_TAGS = [
    "elbo",
    "loss",
    "elbo/smoothed",
    "kl/prior",
    "kl/posterior",
    "posterior/variance_mean",
    "posterior/variance_min",
    "posterior/variance_max",
    "grad/norm",
    "lr",
    "throughput/samples_per_s",
]
#: Logged every ``grad_stats_every`` steps.
GRAD_TAGS = ["grad/variance", "grad/snr"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "svi_torch", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd or ROOT,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``svi-torch train experiments/configs/quick.yaml`` once, shared by the tests below."""
    logdir = tmp_path_factory.mktemp("runs")
    proc = _cli("train", str(QUICK), "--logdir", str(logdir), "--set", "train.num_threads=1")
    assert proc.returncode == 0, proc.stderr
    runs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0], proc


@pytest.fixture(scope="module")
def events(quick_run: tuple[Path, subprocess.CompletedProcess]):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(quick_run[0]), size_guidance={"scalars": 0, "histograms": 0, "images": 0}
    )
    acc.Reload()
    return acc


def test_train_writes_run_directory_with_config_metrics_checkpoint_events(quick_run) -> None:
    run_dir, proc = quick_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.json", "checkpoint.pt", "posterior_marginals.png"} <= names
    assert any(n.startswith("events.out.tfevents.") for n in names)
    # The directory name carries the time and the key settings.
    assert "linear_regression" in run_dir.name.replace("-", "_") and "fullrank" in run_dir.name
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["steps"] == STEPS and resolved["family"]["options"] == {
        "init_scale": 0.02
    }
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["stop_reason"] == "max_steps"
    assert metrics["wall_time_s"] > 0 and metrics["steps_per_s"] > 0
    assert set(metrics["posterior"]) == {"beta[0]", "beta[1]", "beta[2]"}
    # The bound: ELBO <= log p(D) up to the estimate's noise (4 s.e.), and the gap is KL(q||p).
    gap = metrics["log_evidence"] - metrics["elbo"]
    assert gap > -4 * metrics["elbo_se"]
    assert metrics["kl_posterior"] < 0.1
    assert f"tensorboard --logdir {run_dir.parent}" in proc.stdout


def test_event_files_hold_every_tag_with_finite_values_at_expected_steps(events) -> None:
    expected = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    tags = set(events.Tags()["scalars"])
    for tag in SCALAR_TAGS:
        assert tag in tags, tag
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == expected, tag
        assert all(math.isfinite(s.value) for s in scalars), tag
    for tag in GRAD_TAGS:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == list(range(GRAD_EVERY, STEPS + 1, GRAD_EVERY)), tag
        assert all(math.isfinite(s.value) and s.value > 0 for s in scalars), tag
    assert {"family/loc", "family/scale"} <= set(events.Tags()["histograms"])
    assert "posterior/marginals" in events.Tags()["images"]
    assert {"hparam/elbo", "hparam/kl_posterior"} <= tags


def test_kl_to_posterior_falls_tenfold_on_conjugate_model(events) -> None:
    kl = [s.value for s in events.Scalars("kl/posterior")]
    assert kl[-1] <= kl[0] / 10, (kl[0], kl[-1])
    # Logged ELBO is the bound (to maximise), loss its negative: never mixed up.
    elbo = events.Scalars("elbo")[-1].value
    loss = events.Scalars("loss")[-1].value
    assert elbo == pytest.approx(-loss, rel=1e-6)


@pytest.mark.timeout(180)
def test_tensorboard_server_serves_run_and_scalar_tags(quick_run) -> None:
    run_dir = quick_run[0]
    with tensorboard_server(
        run_dir.parent, lambda tags: "kl/posterior" in tags.get(run_dir.name, {}), env=_env()
    ) as url:
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        assert run_dir.name in tags, tags  # type: ignore[operator]
        assert set(SCALAR_TAGS + GRAD_TAGS) <= set(tags[run_dir.name])  # type: ignore[index]
        runs = get_json(f"{url}/data/runs")
        assert run_dir.name in runs  # type: ignore[operator]


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["--set", "train.stepz=5"],
            "unknown config key 'train.stepz'; valid keys in 'train': steps",
        ),
        (["--set", "trian.steps=5"], "unknown config section 'trian'; valid sections: model"),
        (["--set", "train.steps=many"], "config key 'train.steps' must be an integer"),
        (["--set", "train.convergence=7"], "'train.convergence' must be true or false"),
        (
            ["--set", "family.name=gaussian"],
            "unknown family 'gaussian'; choose one of ['amortized'",
        ),
        (["--set", "model.name=nope"], "unknown model 'nope'; choose one of ['autoregressive'"),
        (
            ["--set", "objective.name=nope"],
            "unknown objective 'nope'; choose one of ['elbo', 'forward_kl'",
        ),
        (["--set", "model.name=no_such_module:Model"], "cannot import module 'no_such_module'"),
        (["--set", "train.steps"], "must look like key=value"),
        (["--set", "family.options.bogus=1"], "family 'fullrank':"),
        (["--set", "logging.grad_stats_every=30"], "multiple of logging.log_every"),
        (["--set", "data.source=missing.csv"], "missing.csv' does not exist"),
        (["--set", "method.options.optimizer=adamw2"], "unknown optimizer 'adamw2'"),
        (["--set", "method.name=adamw"], "unknown method 'adamw'; choose one of"),
        (["--set", "optimizer.lr=0.1"], "config section 'optimizer' was replaced by 'method'"),
        (["--set", "train.batch_size=5000"], "batch_size must be between 1 and the number of data"),
    ],
)
def test_invalid_overrides_give_one_line_error_exit_2_and_no_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    logdir = tmp_path / "runs"
    status = main(["train", str(QUICK), "--logdir", str(logdir), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("svi-torch: error: "), err
    assert fragment in err, err
    assert not logdir.exists() or not any(logdir.iterdir())


def test_invalid_config_file_fails_as_subprocess_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: {name: fullrank}\ntrain: {steps: 10, batchsize: 4}\n")
    proc = _cli("train", str(bad), "--logdir", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "train.batchsize" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_and_malformed_config_files(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "nope.yaml"), "--logdir", str(tmp_path)]) == 2
    assert "cannot read config" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [steps: 1\n")
    assert main(["train", str(broken), "--logdir", str(tmp_path / "r")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# -- list, user classes, files, resume ------------------------------------------------------
def test_list_prints_one_line_per_registered_name(capsys) -> None:
    from svi_torch.registry import FAMILIES, MODELS, OBJECTIVES, STUDIES

    assert main(["list"]) == 0
    sections: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith(" "):
            current = sections.setdefault(line.rstrip(":"), [])
        else:
            current.append(line)
    registries = {"families": FAMILIES, "models": MODELS, "objectives": OBJECTIVES}
    for title, registry in {**registries, "studies": STUDIES}.items():
        for entry in registry.entries():
            matching = [line for line in sections[title] if line.split()[:1] == [entry.name]]
            assert len(matching) == 1 and entry.description in matching[0], (title, entry.name)
    assert "scalability" in STUDIES


def test_list_prints_each_methods_options_with_their_defaults(capsys) -> None:
    """The README: method options are those of st.methods.Auto, NGVI and SGD, and
    `svi-torch list` prints them; no pointer into the source ("(module docstring)")."""
    import inspect

    from svi_torch.methods import METHODS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    methods = out.split("methods:\n")[1].split("studies:")[0]
    assert "module docstring" not in methods
    flat = " " + " ".join(methods.split())  # options wrap over lines
    for name, cls in METHODS.items():
        options = flat.split(f" {name} ", 1)[1].split("options: ", 1)[1].split(" options: ")[0]
        for option in inspect.signature(cls).parameters:
            assert f"{option}=" in options, (name, option)
    assert "lr=0.01" in flat and "optimizer='adam'" in flat and "optimizer_kwargs={}" in flat
    assert max(len(line) for line in methods.splitlines()) <= 100


USER_MODULE = '''
import torch
from torch.distributions import Normal
import svi_torch as st


class ShiftModel(st.models.Model):
    """A user's model: x ~ N(mu + shift, 1), mu ~ N(0, 1)."""

    def __init__(self, x, shift=0.0):
        super().__init__()
        self.shift = float(shift)
        self.add_param("mu")
        self.set_data(x=x)

    def log_prior(self, params):
        return Normal(0.0, 1.0).log_prob(params["mu"])

    def log_likelihood(self, params, batch):
        return Normal(params["mu"][..., None] + self.shift, 1.0).log_prob(batch["x"]).sum(-1)
'''


def test_user_model_class_and_csv_data_from_config(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    x = 3.0 + torch.randn(400, generator=torch.Generator().manual_seed(1))
    (tmp_path / "obs.csv").write_text("x\n" + "\n".join(f"{v:.6f}" for v in x.tolist()))
    config = {
        "model": {"name": "user_models:ShiftModel", "options": {"shift": 1.0}},
        "data": {"source": str(tmp_path / "obs.csv")},
        "family": {"name": "meanfield"},
        "objective": {"options": {"num_particles": 4}},
        "method": {"name": "sgd", "options": {"lr": 0.05}},
        "train": {"steps": 600, "batch_size": 100, "num_threads": 1},
        "logging": {"log_every": 100, "grad_stats_every": 0, "histogram_every": 0, "figure": False},
    }
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--logdir", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = Path(capsys.readouterr().out.strip())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Posterior of mu: N(sum(x - 1)/(N + 1), 1/(N + 1)); sd 0.05, so 0.02 is 0.4 sd.
    post_mean = (x - 1.0).sum().item() / (len(x) + 1)
    assert metrics["posterior"]["mu"]["mean"] == pytest.approx(post_mean, abs=0.02)
    assert metrics["posterior"]["mu"]["sd"] == pytest.approx((len(x) + 1) ** -0.5, rel=0.25)


def test_resume_continues_interrupted_run_exactly(tmp_path: Path, monkeypatch, capsys) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = ["--set", "train.steps=200", "--set", "logging.checkpoint_every=100"]
    overrides += ["--set", "logging.log_every=50", "--set", "logging.grad_stats_every=100"]
    overrides += ["--set", "logging.figure=false", "--set", "train.num_threads=1"]
    assert main(["train", str(QUICK), "--logdir", str(tmp_path / "a"), "--quiet", *overrides]) == 0
    straight = Path(capsys.readouterr().out.strip())

    with stopped_at(150):
        status = main(["train", str(QUICK), "--logdir", str(tmp_path / "b"), "--quiet", *overrides])
    assert status == 130
    (interrupted,) = (tmp_path / "b").iterdir()
    assert not (interrupted / "metrics.json").exists()
    assert main(["train", str(interrupted), "--resume", "--quiet"]) == 0

    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((interrupted / "metrics.json").read_text())
    assert b["steps"] == 200
    # Same seed, same batches, same particles: the resumed run ends where the straight one does.
    assert b["posterior"] == a["posterior"] and b["elbo"] == a["elbo"]
    acc = EventAccumulator(str(interrupted), size_guidance={"scalars": 0})
    acc.Reload()
    assert [s.step for s in acc.Scalars("elbo")] == [50, 100, 150, 200]


def test_resume_needs_a_run_directory(tmp_path: Path, capsys) -> None:
    assert main(["train", str(QUICK), "--resume"]) == 2
    assert "--resume needs the run directory" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(QUICK.read_text())
    assert main(["train", str(tmp_path / "run"), "--resume"]) == 2
    assert "checkpoint.pt does not exist" in capsys.readouterr().err


def test_a_config_of_model_data_family_and_train_runs_the_automatic_method_as_python_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No objective, no method: the CLI runs what ``st.fit(model, family)`` runs, bit for bit."""
    import svi_torch as st
    from svi_torch.training import load_checkpoint

    config = {
        "model": {"name": "linear_regression", "options": {"noise_scale": 1.0, "prior_scale": 1.0}},
        "data": {"num_data": 4000, "dim": 5, "correlation": 0.6, "seed": 0},
        "family": {"name": "fullrank"},
        "train": {"steps": 2000, "batch_size": 64, "seed": 0},
    }
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--logdir", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "auto -> ngvi from laplace"
    assert metrics["kl_posterior"] < 0.01
    X, y, _ = st.models.regression_data(4000, 5, correlation=0.6, seed=0)
    model = st.models.BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)
    family = st.families.FullRankGaussian(model.dim)
    result = st.fit(model, family, batch_size=64, steps=2000, seed=0)
    assert result.steps == metrics["steps"] and result.method == metrics["method"]
    saved = load_checkpoint(run_dir / "checkpoint.pt")["family"]
    for key, value in family.state_dict().items():
        assert torch.equal(saved[key], value), key


@pytest.mark.parametrize(
    ("method", "steps"),
    [
        ({"name": "bam", "options": {"num_draws": 4}}, 40),
        ({"name": "pathfinder", "options": {"num_paths": 2}}, None),
    ],
)
def test_bam_and_pathfinder_from_a_config_give_what_python_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method, steps
) -> None:
    """``method: {name: bam|pathfinder, options: ...}`` runs the value that
    ``st.methods.resolve_method`` builds, and ends where ``st.fit`` with it ends."""
    import svi_torch as st
    from svi_torch.training import load_checkpoint

    config = {
        "model": {"name": "linear_regression", "options": {"noise_scale": 1.0, "prior_scale": 1.0}},
        "data": {"num_data": 500, "dim": 3, "correlation": 0.6, "seed": 0},
        "family": {"name": "fullrank"},
        "method": method,
        "train": {"seed": 0, **({"steps": steps} if steps else {})},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--logdir", str(tmp_path / "runs"), "--quiet"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    X, y, _ = st.models.regression_data(500, 3, correlation=0.6, seed=0)
    model = st.models.BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)
    family = st.families.FullRankGaussian(model.dim)
    value = st.methods.resolve_method(method)
    result = st.fit(model, family, method=value, **({"steps": steps} if steps else {}))
    assert metrics["method"] == result.method == value.summary
    assert metrics["kl_posterior"] < 0.01 and metrics["grad_evals"] == result.grad_evals
    saved = load_checkpoint(run_dir / "checkpoint.pt")["family"]
    for key, tensor in family.state_dict().items():
        assert torch.equal(saved[key], tensor), key
    loaded = st.load_run(run_dir)
    assert torch.equal(loaded.sample()["beta"], result.sample()["beta"])
    if method["name"] == "pathfinder":  # the run's draws are Pathfinder's resampled ones
        assert loaded.draws is not None and metrics["diagnostics/khat"] == result.diagnostics.khat
