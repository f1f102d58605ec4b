"""The ``scalability`` study: how SVI behaves as N, the batch size, D and the particles grow.

Four sweeps, each a grid of logged runs (``svi-torch study scalability``):

* ``num_data``: :math:`N` grows on the conjugate linear regression (exact posterior known)
  and on logistic regression, full-rank Gaussian. The posterior variance shrinks like
  :math:`1/N`; on the conjugate model the fitted variance is compared with the exact one.
  The time per step stays flat: a step touches :math:`B` points, not :math:`N`.
* ``batch_size``: several :math:`B` at fixed :math:`N`; the reverse
  :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q - \\log p]` to the exact posterior against
  steps and against wall time (small batches: cheap noisy steps; large: costly precise ones).
* ``dim``: :math:`D` grows for each family (mean-field, low-rank, full-rank); time per
  step against :math:`D` (full-rank sampling and log-density cost :math:`O(D^2)` per
  particle, mean-field and low-rank :math:`O(D)`, plus the :math:`O(BD)` likelihood).
* ``num_particles``: :math:`K` grows; final KL (conjugate) and final ELBO (logistic).

Settings live in ``svi_torch/configs/scalability.yaml`` (``default`` and ``quick`` grids);
``--set key=value`` overrides any of :class:`ScalabilitySettings`. Writes
``summary.csv`` (one row per run) and the PNG plots listed in :data:`FIGURES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..registry import STUDIES
from .runner import (
    GridPoint,
    GridRun,
    cumulative_wall_time,
    load_settings,
    make_config,
    run_grid,
    save_figure,
    time_per_step,
    write_summary,
)

__all__ = ["ScalabilitySettings", "run", "grid", "FIGURES"]

#: The plots the study writes into its directory.
FIGURES = (
    "variance_vs_num_data.png",
    "kl_vs_steps.png",
    "kl_vs_wall_time.png",
    "time_per_step_vs_num_data.png",
    "time_per_step_vs_dim.png",
    "particles.png",
)

CONJUGATE, LOGISTIC = "linear_regression", "logistic_regression"


@dataclass
class ScalabilitySettings:
    """The grids and shared run settings (defaults in ``configs/scalability.yaml``)."""

    num_data: list[int] = field(default_factory=lambda: [1000, 10000, 100000, 1000000])
    models: list[str] = field(default_factory=lambda: [CONJUGATE, LOGISTIC])
    batch_sizes: list[int] = field(default_factory=lambda: [16, 64, 256, 1024])
    batch_num_data: int = 100000
    dims: list[int] = field(default_factory=lambda: [5, 20, 50, 100])
    families: list[str] = field(default_factory=lambda: ["meanfield", "lowrank", "fullrank"])
    dim_num_data: int = 10000
    dim_steps: int = 300
    particles: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    dim: int = 5
    correlation: float = 0.5
    batch_size: int = 128
    num_particles: int = 8
    steps: int = 2000
    lr: float = 0.03
    log_every: int = 50
    elbo_samples: int = 200
    run_figures: bool = True
    num_threads: int | None = 1
    seed: int = 0


def _config(
    s: ScalabilitySettings,
    *,
    model: str,
    family: str = "fullrank",
    num_data: int,
    dim: int,
    batch_size: int,
    num_particles: int,
    steps: int,
) -> Any:
    options = (
        {"noise_scale": 1.0, "prior_scale": 1.0} if model == CONJUGATE else {"prior_scale": 1.0}
    )
    # Start q at the posterior's scale, ~1/sqrt(N) for standardised features: Adam moves a
    # log-scale by about lr per step, so a start at 0.1 wastes the budget at large N.
    family_options: dict[str, Any] = {"init_scale": min(0.1, num_data**-0.5)}
    if family == "lowrank":
        family_options["rank"] = min(2, dim)
    return make_config(
        {
            "model": {"name": model, "options": options},
            "data": {
                "source": "synthetic",
                "num_data": num_data,
                "dim": dim,
                "correlation": s.correlation,
                "seed": s.seed,
            },
            "family": {"name": family, "options": family_options},
            "objective": {"name": "elbo", "options": {"num_particles": num_particles}},
            "method": {"name": "sgd", "options": {"lr": s.lr}},
            "train": {
                "steps": steps,
                "batch_size": min(batch_size, num_data),
                "seed": s.seed,
                "num_threads": s.num_threads,
            },
            "logging": {
                "log_every": s.log_every,
                "grad_stats_every": 0,
                "histogram_every": 0,
                "checkpoint_every": None,
                "elbo_samples": s.elbo_samples,
                "figure": s.run_figures,
            },
        }
    )


def grid(s: ScalabilitySettings) -> list[GridPoint]:
    """All grid points of the study, validated (raises :class:`ConfigError`)."""
    for key in ("num_data", "models", "batch_sizes", "dims", "families", "particles"):
        if not getattr(s, key):
            raise ConfigError(f"study 'scalability' setting {key!r} must be a non-empty list")
    unknown = [m for m in s.models if m not in (CONJUGATE, LOGISTIC)]
    if unknown:
        raise ConfigError(
            f"scalability models must be among {[CONJUGATE, LOGISTIC]}, got {unknown}"
        )
    short = {CONJUGATE: "linreg", LOGISTIC: "logreg"}
    points = []
    for model in s.models:
        for n in s.num_data:
            config = _config(
                s,
                model=model,
                num_data=n,
                dim=s.dim,
                batch_size=s.batch_size,
                num_particles=s.num_particles,
                steps=s.steps,
            )
            points.append(
                GridPoint(f"num_data_{short[model]}_N{n}", config, _tags("num_data", config))
            )
    for b in s.batch_sizes:
        config = _config(
            s,
            model=CONJUGATE,
            num_data=s.batch_num_data,
            dim=s.dim,
            batch_size=b,
            num_particles=s.num_particles,
            steps=s.steps,
        )
        points.append(GridPoint(f"batch_size_B{b}", config, _tags("batch_size", config)))
    for family in s.families:
        for d in s.dims:
            config = _config(
                s,
                model=CONJUGATE,
                family=family,
                num_data=s.dim_num_data,
                dim=d,
                batch_size=s.batch_size,
                num_particles=s.num_particles,
                steps=s.dim_steps,
            )
            points.append(GridPoint(f"dim_{family}_D{d}", config, _tags("dim", config)))
    for model in s.models:
        for k in s.particles:
            config = _config(
                s,
                model=model,
                num_data=s.batch_num_data,
                dim=s.dim,
                batch_size=s.batch_size,
                num_particles=k,
                steps=s.steps,
            )
            points.append(
                GridPoint(f"particles_{short[model]}_K{k}", config, _tags("num_particles", config))
            )
    return points


def _tags(sweep: str, config: Any) -> dict[str, Any]:
    return {
        "sweep": sweep,
        "model": config.model.name,
        "family": config.family.name,
        "num_data": config.data.num_data,
        "dim": config.data.dim,
        "batch_size": config.train.batch_size,
        "num_particles": config.objective.options["num_particles"],
        "steps": config.train.steps,
    }


@STUDIES.register(
    "scalability",
    "SVI as N, batch size, D and particles grow (variance, KL, time per step)",
)
def run(outdir: Path, quick: bool = False, overrides: dict[str, Any] | None = None) -> Path:
    """Run the study into ``outdir``: runs, ``summary.csv`` and the plots; returns ``outdir``."""
    settings = load_settings(ScalabilitySettings, "scalability", quick, overrides)
    points = grid(settings)
    outdir = Path(outdir)
    runs = run_grid(points, outdir)
    rows = [_row(r) for r in runs]
    write_summary(outdir / "summary.csv", rows)
    plot(runs, outdir)
    return outdir


def _row(r: GridRun) -> dict[str, Any]:
    m = r.metrics
    return {
        **r.tags,
        "elbo": m["elbo"],
        "elbo_se": m["elbo_se"],
        "log_evidence": m.get("log_evidence"),
        "kl_posterior": m.get("kl_posterior"),
        "kl_prior": m["kl_prior"],
        "posterior_variance_mean": m["posterior_variance_mean"],
        "exact_variance_mean": m.get("exact_variance_mean"),
        "time_per_step_ms": 1e3 * time_per_step(r.history),
        "wall_time_s": m["wall_time_s"],
        "stop_reason": m["stop_reason"],
        "run_dir": str(Path("runs") / r.run_dir.name),
    }


# -- plots -------------------------------------------------------------------------------
def plot(runs: list[GridRun], outdir: Path) -> list[Path]:
    """Write every figure of :data:`FIGURES` into ``outdir``."""
    from matplotlib.figure import Figure

    by_sweep: dict[str, list[GridRun]] = {}
    for r in runs:
        by_sweep.setdefault(r.tags["sweep"], []).append(r)
    paths = []
    label = {CONJUGATE: "linear regression (conjugate)", LOGISTIC: "logistic regression"}

    # Posterior variance against N, with the exact variance beside it.
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for i, model in enumerate((CONJUGATE, LOGISTIC)):
        rs = sorted((r for r in by_sweep.get("num_data", []) if r.tags["model"] == model), key=_n)
        if not rs:
            continue
        ax.plot(
            [_n(r) for r in rs],
            [r.metrics["posterior_variance_mean"] for r in rs],
            "o-",
            color=f"C{i}",
            label=f"q, {label[model]}",
        )
        if model == CONJUGATE:
            ax.plot(
                [_n(r) for r in rs],
                [r.metrics["exact_variance_mean"] for r in rs],
                "k--",
                marker="x",
                label="exact posterior",
            )
    ax.set(
        xscale="log", yscale="log", xlabel="number of data N", ylabel="mean marginal variance of q"
    )
    ax.set_title("posterior variance shrinks like 1/N", fontsize=10)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, outdir / "variance_vs_num_data.png"))

    # KL(q || p) against steps and wall time for several batch sizes.
    batch_runs = sorted(by_sweep.get("batch_size", []), key=lambda r: r.tags["batch_size"])
    for name, xlabel, xs in (
        ("kl_vs_steps.png", "step", lambda r: r.history["step"]),
        (
            "kl_vs_wall_time.png",
            "training wall time (s)",
            lambda r: cumulative_wall_time(r.history),
        ),
    ):
        fig = Figure(figsize=(5.5, 4), layout="constrained")
        ax = fig.subplots()
        for i, r in enumerate(batch_runs):
            ax.plot(
                xs(r), r.history["kl/posterior"], color=f"C{i}", label=f"B = {r.tags['batch_size']}"
            )
        ax.set(yscale="log", xlabel=xlabel, ylabel="KL(q || exact posterior) (nats)")
        if batch_runs:
            ax.set_title(f"conjugate regression, N = {batch_runs[0].tags['num_data']}", fontsize=10)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, outdir / name))

    # Time per step against N (flat) and against D per family.
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for i, model in enumerate((CONJUGATE, LOGISTIC)):
        rs = sorted((r for r in by_sweep.get("num_data", []) if r.tags["model"] == model), key=_n)
        if rs:
            ax.plot(
                [_n(r) for r in rs],
                [1e3 * time_per_step(r.history) for r in rs],
                "o-",
                color=f"C{i}",
                label=label[model],
            )
    ax.set(xscale="log", xlabel="number of data N", ylabel="time per step (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("a step costs O(batch), not O(N)", fontsize=10)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, outdir / "time_per_step_vs_num_data.png"))

    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    dim_runs = by_sweep.get("dim", [])
    for i, family in enumerate(dict.fromkeys(r.tags["family"] for r in dim_runs)):
        rs = sorted(
            (r for r in dim_runs if r.tags["family"] == family), key=lambda r: r.tags["dim"]
        )
        ax.plot(
            [r.tags["dim"] for r in rs],
            [1e3 * time_per_step(r.history) for r in rs],
            "o-",
            color=f"C{i}",
            label=family,
        )
    ax.set(xlabel="dimension D", ylabel="time per step (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("time per step against D, per family", fontsize=10)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, outdir / "time_per_step_vs_dim.png"))

    # Final KL (conjugate) and ELBO (logistic) against the number of particles.
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_kl, ax_elbo = fig.subplots(1, 2)
    part = by_sweep.get("num_particles", [])
    for model, ax, key, ylabel in (
        (CONJUGATE, ax_kl, "kl_posterior", "final KL(q || exact posterior) (nats)"),
        (LOGISTIC, ax_elbo, "elbo", "final ELBO"),
    ):
        rs = sorted(
            (r for r in part if r.tags["model"] == model), key=lambda r: r.tags["num_particles"]
        )
        if not rs:
            ax.set_visible(False)
            continue
        ks = [r.tags["num_particles"] for r in rs]
        if key == "elbo":
            ax.errorbar(
                ks,
                [r.metrics["elbo"] for r in rs],
                yerr=[2 * r.metrics["elbo_se"] for r in rs],
                fmt="o-",
                capsize=3,
            )
        else:
            ax.plot(ks, [r.metrics[key] for r in rs], "o-")
            ax.set_yscale("log")
        ax.set(xscale="log", xlabel="particles K", ylabel=ylabel)
        ax.set_title(
            f"{label[model]}, N = {rs[0].tags['num_data']}, {rs[0].tags['steps']} steps",
            fontsize=10,
        )
    paths.append(save_figure(fig, outdir / "particles.png"))
    return paths


def _n(r: GridRun) -> int:
    return int(r.tags["num_data"])
