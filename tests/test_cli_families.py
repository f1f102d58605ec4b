"""Expressive families from configs: mixtures and flows train through ``svi-torch train``
and log posterior variance like the Gaussians."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from svi_torch.cli import main

QUICK = Path(__file__).parents[1] / "experiments" / "configs" / "quick.yaml"


@pytest.mark.parametrize(
    "family",
    [
        "{name: mixture, options: {components: 2}}",
        "{name: flow, options: {transform: iaf, layers: 2}}",
    ],
)
def test_mixture_and_flow_configs_train_and_log_variance(tmp_path, family):
    logdir = tmp_path / "runs"
    code = main(["train", str(QUICK), "--quiet", "--logdir", str(logdir),
                 "--set", f"family={family}", "--set", "train.steps=60",
                 "--set", "logging.log_every=20", "--set", "logging.elbo_samples=200",
                 "--set", "logging.grad_stats_every=60", "--set", "logging.histogram_every=60"])  # fmt: skip
    assert code == 0
    (run_dir,) = list(logdir.iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 60 and math.isfinite(metrics["elbo"])
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    points = acc.Scalars("posterior/variance_mean")
    assert [p.step for p in points] == [20, 40, 60]
    assert all(math.isfinite(p.value) and p.value > 0 for p in points)
