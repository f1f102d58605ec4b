"""What ``svi-torch`` says: one-line errors before any work, naming the key and the choices;
the printout of a finished run; ``--version``; the interrupt message; studies' files."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import stopped_at

from svi_torch.cli import MAX_PRINTED_PARAMETERS, gap_note, main
from svi_torch.training import load_checkpoint

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"
QUIET_LOGS = [
    *("--set", "logging.grad_stats_every=0", "--set", "logging.histogram_every=0"),
    *("--set", "logging.figure=false", "--set", "train.num_threads=1"),
]


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


# -- errors before work ----------------------------------------------------------------------------
BAD = [
    (
        ["method.options.optimizer=adamw2"],
        "method.options.optimizer: unknown optimizer 'adamw2'; choose one of",
    ),  # fmt: skip
    (
        ["method.options.lrr=0.1"],
        "method.options.lrr: method 'sgd' has no option(s) ['lrr']; its options are",
    ),  # fmt: skip
    (["train.batch_size=5000"], "train.batch_size: batch_size must be between 1 and the number"),
    (
        ['train.steps="1000"'],
        "config key 'train.steps' must be an integer, got str '1000' (a "
        "quoted number: write it without quotes)",
    ),  # fmt: skip
    (['method.options.lr="3e-2"'], "method.options.lr: SGD lr must be a positive number"),
    (
        ["family.init_scale=0.2"],
        "unknown config key 'family.init_scale'; valid keys in 'family': "
        "name, options (constructor arguments go under 'family.options'",
    ),  # fmt: skip
    (["train.dtype=float16"], "train.dtype must be one of None, float32, float64; got 'float16'"),
    (["data.y=y", "data.x=[x1,nope]"], "data.x ['nope'] not found in"),
    (["data.y=nope"], "data.y 'nope' is not in"),
]
if not torch.cuda.is_available():
    BAD.append(
        (
            ["train.device=cuda"],
            "train.device: 'cuda' was requested but no CUDA device is available; use 'cpu'",
        )  # fmt: skip
    )


@pytest.mark.parametrize(("overrides", "fragment"), BAD)
def test_an_invalid_setting_is_one_line_naming_its_key_before_any_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], fragment: str
) -> None:
    data = _csv(tmp_path / "d.csv", ["x1,x2,y", "1,2,3", "4,5,6", "7,8,9"])
    logdir = tmp_path / "runs"
    args = ["train", str(QUICK), "--logdir", str(logdir)]
    if any(o.startswith("data.") for o in overrides):
        args += ["--set", f"data.source={data}", "--set", "train.batch_size=2"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "run directory" not in captured.out
    assert captured.err.count("\n") == 1 and captured.err.startswith("svi-torch: error: ")
    assert fragment in captured.err, captured.err
    assert "device(type=" not in captured.err
    assert not logdir.exists()


def test_data_with_nan_names_the_data_source_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _csv(tmp_path / "nan.csv", ["x1,y", "1,2", "nan,3", "4,5"])
    logdir = tmp_path / "runs"
    args = ["train", str(QUICK), "--logdir", str(logdir), "--set", f"data.source={data}"]
    args += ["--set", "data.y=y", "--set", "train.batch_size=2"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "data.source" in captured.err and "NaN/Inf" in captured.err, captured.err
    assert not logdir.exists()


def test_a_study_with_a_bad_setting_names_no_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "studies"
    assert (
        main(["study", "scalability", "--quick", "--logdir", str(logdir), "--set", "stepz=1"]) == 2
    )
    captured = capsys.readouterr()
    assert "study directory" not in captured.out and captured.err.count("\n") == 1
    assert "stepz" in captured.err
    assert not logdir.exists() or not any(logdir.iterdir())


def test_a_study_prints_every_figure_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from svi_torch.registry import STUDIES, Entry

    def tiny(outdir: Path, quick: bool = False, overrides: dict | None = None) -> Path:
        (outdir / "plots").mkdir(parents=True)
        for name in ("a.png", "plots/b.png", "summary.csv"):
            (outdir / name).write_text("x")
        return outdir

    monkeypatch.setitem(STUDIES._entries, "tiny", Entry("tiny", tiny, "writes two figures"))
    assert main(["study", "tiny", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    (outdir,) = tmp_path.iterdir()
    assert out[0] == f"study directory: {outdir}"
    assert [line for line in out if line.startswith("figure: ")] == [
        f"figure: {outdir / 'a.png'}",
        f"figure: {outdir / 'plots' / 'b.png'}",
    ]


# -- the printout --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A 25-parameter regression: more parameters than the printout shows."""
    import contextlib
    import io

    logdir = tmp_path_factory.mktemp("wide")
    args = ["train", str(QUICK), "--logdir", str(logdir), "--set", "data.dim=25"]
    args += ["--set", "train.steps=100", "--set", "logging.log_every=50", *QUIET_LOGS]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    (run_dir,) = logdir.iterdir()
    return run_dir, out.getvalue().splitlines()


def test_printout_shows_the_first_parameters_aligned_then_how_many_more(wide_run) -> None:
    run_dir, lines = wide_run
    params = [line for line in lines if re.match(r"  beta\[\d+\] +mean ", line)]
    assert len(params) == MAX_PRINTED_PARAMETERS
    assert len({line.index(" mean ") for line in params}) == 1  # one column for all names
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["posterior"]) == 25
    more = f"  ... and {25 - MAX_PRINTED_PARAMETERS} more (all in metrics.json; svi-torch summary"
    assert any(line.startswith(more) for line in lines), lines
    first = metrics["posterior"]["beta[0]"]
    assert f"mean {first['mean']:+.4f}  sd {first['sd']:.4f}" in params[0]


def test_printout_gives_the_elbo_gap_and_k_hat_with_its_reading(wide_run) -> None:
    run_dir, lines = wide_run
    m = json.loads((run_dir / "metrics.json").read_text())
    (elbo,) = [line for line in lines if line.startswith("ELBO: ")]
    gap = m["log_evidence"] - m["elbo"]
    assert f"gap log p(D) - ELBO: {gap:.3f} ± {m['elbo_se']:.3f}" in elbo
    assert f"log p(D): {m['log_evidence']:.3f} (exact)" in elbo
    (khat,) = [line for line in lines if line.startswith("PSIS k-hat: ")]
    assert khat.startswith(
        f"PSIS k-hat: {m['diagnostics/khat']:.3f} ± {m['diagnostics/khat_se']:.2f} "
        f"({m['diagnostics/khat_reading']}: "
    )


def test_a_negative_gap_is_explained_in_one_line() -> None:
    """`make demo` printed `gap log p(D) - ELBO: -0.020 ± 0.051` with no word on why."""
    assert gap_note(0.3, 0.05) == ""
    note = gap_note(-0.020, 0.051)
    assert "\n" not in note and "Monte Carlo error of the ELBO estimate" in note
    assert "true gap KL(q||p) is >= 0" in note
    assert "more than the ELBO estimate's Monte Carlo error explains" in gap_note(-1.0, 0.05)


def test_printout_lists_every_file_of_the_run(wide_run) -> None:
    run_dir, lines = wide_run
    listed = lines[lines.index("files:") + 1 : -1]
    assert listed == [f"  {p}" for p in sorted(run_dir.iterdir())]
    assert {"config.yaml", "checkpoint.pt", "metrics.json"} <= {p.name for p in run_dir.iterdir()}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import svi_torch

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"svi-torch {svi_torch.__version__}"


def test_sigint_stops_at_a_step_boundary_and_says_which_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", str(QUICK), "--logdir", str(tmp_path), "--quiet", *QUIET_LOGS]
    args += ["--set", "logging.log_every=20"]
    with stopped_at(60, ctrl_c=True):
        assert main(args) == 128 + signal.SIGINT
    (run_dir,) = tmp_path.iterdir()
    err = capsys.readouterr().err
    assert err == (
        f"svi-torch: interrupted by SIGINT at step 60; resume with `svi-torch train {run_dir} "
        "--resume`\n"
    )
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 60
    assert not (run_dir / "metrics.json").exists()


# -- paths and dtypes --------------------------------------------------------------------------------
def test_a_relative_data_path_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = x @ np.array([1.0, -1.0]) + rng.normal(size=200)
    _csv(
        folder / "data.csv",
        ["x1,x2,y", *(f"{a:.5f},{b:.5f},{c:.5f}" for (a, b), c in zip(x, y, strict=True))],
    )
    config = yaml.safe_load(QUICK.read_text())
    config["data"] = {"source": "data.csv", "y": "y"}
    config["train"].update(steps=50, batch_size=50)
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # not the config's directory
    args = ["train", "project/run.yaml", "--logdir", "runs", "--quiet", *QUIET_LOGS]
    assert main(args) == 0
    run_dir = Path(capsys.readouterr().out.strip())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["source"] == str(folder / "data.csv")  # absolute: resumable anywhere


def test_train_dtype_float64_fits_in_double_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", str(QUICK), "--logdir", str(tmp_path), "--quiet", *QUIET_LOGS]
    args += ["--set", "train.steps=40", "--set", "logging.log_every=20"]
    assert main([*args, "--set", "train.dtype=float64"]) == 0
    run_dir = Path(capsys.readouterr().out.strip())
    family = load_checkpoint(run_dir / "checkpoint.pt")["family"]
    assert {t.dtype for t in family.values()} == {torch.float64}
