"""Shared machinery of studies: settings, a grid of logged runs, ``summary.csv`` and plots.

A study describes its grid as :class:`GridPoint` s (a run name, a full
:class:`~svi_torch.config.Config` and the grid variables as tags). :func:`run_grid`
validates every point, then trains each one with :func:`~svi_torch.runs.train_run` into
``outdir/runs/<name>`` (one TensorBoard run per point, so ``tensorboard --logdir outdir``
overlays them) and returns :class:`GridRun` records holding the final metrics and the
logged history. :func:`write_summary` writes one CSV row per run.

Example:
    >>> settings = load_settings(MySettings, "scalability", quick=True, overrides={"steps": 50})
    >>> # runs = run_grid(points, outdir); write_summary(outdir / "summary.csv", rows)
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, config_from_dict, dataclass_from_dict

__all__ = [
    "GridPoint",
    "GridRun",
    "load_settings",
    "run_grid",
    "write_summary",
    "time_per_step",
    "cumulative_wall_time",
    "save_figure",
]


@dataclass
class GridPoint:
    """One run of a study: its directory name, config and the grid variables it sets."""

    name: str
    config: Config
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridRun:
    """A finished grid point: tags, final metrics (``metrics.json``) and logged history."""

    point: GridPoint
    run_dir: Path
    metrics: dict[str, Any]
    history: dict[str, list[float]]

    @property
    def tags(self) -> dict[str, Any]:
        return self.point.tags


def load_settings(
    cls: type, study: str, quick: bool = False, overrides: dict[str, Any] | None = None
) -> Any:
    """Study settings ``cls`` from ``svi_torch/configs/<study>.yaml`` plus overrides.

    The YAML holds a ``default`` mapping and a ``quick`` mapping applied over it when
    ``quick``; ``overrides`` (from ``--set key=value``) are applied last. Unknown keys and
    wrong types raise :class:`ConfigError` naming the key.
    """
    path = Path(__file__).parents[1] / "configs" / f"{study}.yaml"
    raw = yaml.safe_load(path.read_text()) if path.is_file() else {}
    values = dict(raw.get("default") or {})
    if quick:
        values.update(raw.get("quick") or {})
    values.update(overrides or {})
    return dataclass_from_dict(cls, values, study)


def make_config(raw: dict[str, Any]) -> Config:
    """A validated :class:`Config` from a nested dict (a study's grid point)."""
    return config_from_dict(raw)


def run_grid(points: Sequence[GridPoint], outdir: Path, quiet: bool = False) -> list[GridRun]:
    """Train every point into ``outdir/runs/<name>``; returns the records in order."""
    from ..build import build
    from ..runs import train_run

    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"grid point names repeat: {sorted(n for n in names if names.count(n) > 1)}"
        )
    # Build (and so validate) one point of each kind before any directory is written.
    for point in points[:1]:
        build(point.config)
    outdir.mkdir(parents=True, exist_ok=True)
    runs = []
    start = time.perf_counter()
    for i, point in enumerate(points, 1):
        outcome = train_run(point.config, outdir / "runs" / point.name)
        runs.append(GridRun(point, outcome.run_dir, outcome.metrics, outcome.result.history))
        if not quiet:
            extra = ", ".join(f"{k}={v}" for k, v in point.tags.items())
            print(
                f"[{i}/{len(points)}] {point.name}: {extra}; ELBO {outcome.metrics['elbo']:.4g}, "
                f"{outcome.metrics['steps_per_s']:.0f} steps/s ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return runs


def write_summary(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as CSV; the columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


def time_per_step(history: dict[str, list[float]]) -> float:
    """Seconds per training step: the median over logging intervals, skipping the first.

    The trainer's throughput excludes logging and monitoring; the median discards
    intervals slowed by other processes, and the first interval holds warm-up.
    """
    rates = history.get("throughput/steps_per_s", [])
    rates = rates[1:] if len(rates) > 2 else rates
    return 1.0 / statistics.median(rates) if rates else math.nan


def cumulative_wall_time(history: dict[str, list[float]]) -> list[float]:
    """Training seconds elapsed at each logged step (from the per-interval throughput)."""
    steps = history.get("step", [])
    rates = history.get("throughput/steps_per_s", [])
    elapsed, out, previous = 0.0, [], 0.0
    for step, rate in zip(steps, rates, strict=False):
        elapsed += (step - previous) / rate if rate > 0 else 0.0
        previous = step
        out.append(elapsed)
    return out


def save_figure(fig: Any, path: Path) -> Path:
    """Save a ``matplotlib.figure.Figure`` as PNG."""
    fig.savefig(path, dpi=110)
    return path
