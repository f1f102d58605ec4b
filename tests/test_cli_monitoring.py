"""TensorBoard tags: every tag a run writes is in the README's table, and the averaged
iterate's curve ends at the KL the run prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from svi_torch.cli import main

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"


def _documented_tags() -> set[str]:
    """Tags in the first column of the README's "Monitoring" table."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Monitoring") :]
    section = section[: section.index("\n## ", 1)]
    tags: set[str] = set()
    for row in re.findall(r"^\| (.+?) \|", section, re.M):
        tags |= set(re.findall(r"`([^`]+)`", row))
    return tags


def _run(tmp_path: Path, config: Path, *overrides: str) -> Path:
    args = ["train", str(config), "--logdir", str(tmp_path), "--quiet"]
    args += ["--set", "train.num_threads=1", "--set", "logging.figure=false"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    return run_dir


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A stochastic-gradient run (quick config) and an automatic-method run (MAP, NGVI)."""
    auto = tmp_path_factory.mktemp("cfg") / "auto.yaml"
    auto.write_text(
        yaml.safe_dump(
            {
                "data": {"num_data": 2000, "dim": 3, "correlation": 0.5},
                "train": {"steps": 600, "batch_size": 64},
                "logging": {"log_every": 50, "grad_stats_every": 100, "histogram_every": 100},
            }
        )
    )
    return {
        "sgd": _run(tmp_path_factory.mktemp("sgd"), QUICK, "train.steps=200"),
        "auto": _run(tmp_path_factory.mktemp("auto"), auto),
    }


@pytest.mark.parametrize("kind", ["sgd", "auto"])
def test_every_tag_a_run_writes_is_in_the_readme_table(runs: dict[str, Path], kind: str) -> None:
    written = set(_scalars(runs[kind]))
    assert "kl/posterior_averaged" in written and "hparam/khat" in written
    assert not [tag for tag in written if tag.startswith("diagnostics/")]
    assert written - _documented_tags() == set()


@pytest.mark.parametrize("kind", ["sgd", "auto"])
def test_the_averaged_kl_curve_ends_at_the_printed_kl(runs: dict[str, Path], kind: str) -> None:
    run_dir = runs[kind]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scalars = _scalars(run_dir)
    step, averaged = scalars["kl/posterior_averaged"][-1]
    assert step == metrics["steps"]
    # The final KL is computed in float64 from the family the run returns; the curve's
    # last point from the same averaged parameters (event files store float32).
    assert averaged == pytest.approx(metrics["kl_posterior"], rel=1e-5)
    variance = scalars["posterior/variance_mean_averaged"][-1][1]
    assert variance == pytest.approx(metrics["posterior_variance_mean"], rel=1e-5)
    # The raw iterate is another point: its curve is not the result.
    assert scalars["kl/posterior"][-1][1] != pytest.approx(metrics["kl_posterior"], rel=1e-3)
