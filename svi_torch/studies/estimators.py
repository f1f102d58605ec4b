"""Study ``estimators``: gradient noise and accuracy at equal wall time, per gradient estimator.

Model: a conjugate Bayesian linear regression (exact posterior known), fitted with a
full-rank Gaussian on the full data. Estimators, each with :math:`K` particles:

* ``reparam``: the reparameterized ELBO gradient (analytic entropy);
* ``stl``: sticking the landing (Roeder et al. 2017), :math:`\\log q` at detached parameters;
  its variance vanishes at the exact posterior;
* ``iwae-dreg``: the IWAE bound with the doubly reparameterized gradient (Tucker et al. 2019).

For each (estimator, :math:`K`) the study reports the trace of the gradient covariance and
the mean signal-to-noise ratio at the initial parameters and at the exact posterior
(:func:`svi_torch.diagnostics.gradient_variance`), then gives every configuration the same
wall-time budget (steps = budget / fastest measured seconds per gradient evaluation) and reports
:math:`\\mathrm{KL}(q\\|p)` (reverse, exact, :func:`svi_torch.divergences.kl_mvn`) after it.
Timings come from this machine and are noisy when it is shared.

A finding to expect: the IWAE bound becomes flat in the spread of ``q`` as :math:`K` grows
(an over-dispersed proposal still gives a tight bound), so IWAE-trained ``q`` drifts wide and
its reverse KL to the posterior is worse than the ELBO fits', although its bound is tight.
The IWAE ``q`` is a proposal for importance sampling, not the posterior approximation.

Writes ``summary.csv`` and ``estimators.png``. Run: ``svi-torch study estimators``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..diagnostics import gradient_variance
from ..divergences import kl_mvn
from ..families import FullRankGaussian
from ..fitting import fit
from ..methods import SGD
from ..models import BayesianLinearRegression, regression_data
from ..objectives import ELBO, IWAE, Objective
from ..registry import STUDIES
from ._common import new_figure, save_figure, settings, tensorboard, write_csv

__all__ = ["run", "DEFAULTS", "make_objective"]

DEFAULTS: dict[str, Any] = {
    "estimators": ["reparam", "stl", "iwae-dreg"],
    "num_particles": [1, 4, 16, 64],
    "num_data": 500,
    "dim": 5,
    "correlation": 0.6,
    "num_repeats": 100,
    "budget_seconds": 3.0,
    "lr": 0.01,
    "seed": 0,
    "tensorboard": True,
}
QUICK: dict[str, Any] = {"num_particles": [1, 8], "num_repeats": 30, "budget_seconds": 1.0}


def make_objective(estimator: str, num_particles: int) -> Objective:
    """The objective for an estimator name: ``reparam``, ``stl`` or ``iwae-dreg``."""
    if estimator == "reparam":
        return ELBO(num_particles=num_particles)
    if estimator == "stl":
        return ELBO(num_particles=num_particles, gradient="stl")
    if estimator == "iwae-dreg":
        return IWAE(num_particles=num_particles, gradient="dreg")
    raise ValueError(f"unknown estimator {estimator!r}; choose 'reparam', 'stl' or 'iwae-dreg'")


def _seconds_per_step(objective: Objective, family, model, repeats: int = 10) -> float:
    """Fastest of three timed blocks: the cost of a gradient step on an idle machine.

    The minimum, not the mean, so that other processes on a shared machine do not change
    how many steps a configuration gets.
    """
    params = list(family.parameters())
    for _ in range(3):  # warm-up
        torch.autograd.grad(objective(family, model, None).loss, params)
    blocks = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.autograd.grad(objective(family, model, None).loss, params)
        blocks.append((time.perf_counter() - start) / repeats)
    return min(blocks)


@STUDIES.register("estimators", "gradient variance and KL at equal wall time")
def run(outdir: Path, quick: bool = False, overrides: dict | None = None) -> Path:
    """Measure gradient statistics and equal-time KL per estimator and K; return ``outdir``."""
    cfg = settings(DEFAULTS, QUICK, quick, overrides)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    X, y, _ = regression_data(
        cfg["num_data"], cfg["dim"], correlation=cfg["correlation"], seed=cfg["seed"]
    )
    model = BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)
    post = model.exact_posterior()
    rows = []
    for estimator in cfg["estimators"]:
        for k in cfg["num_particles"]:
            objective = make_objective(estimator, int(k))
            family = FullRankGaussian(model.dim)
            at_init = gradient_variance(
                objective, family, model, num_repeats=cfg["num_repeats"], seed=cfg["seed"]
            )
            seconds = _seconds_per_step(objective, family, model)
            exact = FullRankGaussian(model.dim)
            exact.set_moments(post.mean, post.covariance_matrix)
            at_post = gradient_variance(
                objective, exact, model, num_repeats=cfg["num_repeats"], seed=cfg["seed"]
            )
            steps = max(20, int(cfg["budget_seconds"] / seconds))
            loggers = tensorboard(outdir, f"{estimator}/K={k}", cfg["tensorboard"])
            result = fit(
                model,
                family,
                objective,
                steps=steps,
                method=SGD(lr=cfg["lr"]),
                seed=cfg["seed"],
                loggers=loggers,
                log_every=max(1, steps // 50),
            )
            for logger in loggers:
                logger.close()
            with torch.no_grad():
                kl = kl_mvn(
                    family.loc.double(),
                    family.covariance().double(),
                    post.mean.double(),
                    post.covariance_matrix.double(),
                ).item()
            rows.append(
                {
                    "estimator": estimator,
                    "num_particles": int(k),
                    "grad_variance_init": at_init.total_variance,
                    "snr_init": at_init.mean_snr,
                    "grad_variance_posterior": at_post.total_variance,
                    "seconds_per_step": seconds,
                    "steps": result.steps,
                    "wall_time": result.wall_time,
                    "kl_after_budget": kl,
                }
            )
    write_csv(outdir / "summary.csv", rows)
    _plot(outdir / "estimators.png", rows, cfg["budget_seconds"])
    return outdir


def _plot(path: Path, rows: list[dict[str, Any]], budget: float) -> Path:
    fig, axes = new_figure(ncols=3, width=4.2)
    floor = 1e-16  # STL's variance at the posterior is zero up to rounding; show it at a floor
    panels = [
        ("grad_variance_init", "gradient variance (trace) at init"),
        ("grad_variance_posterior", "gradient variance at the exact posterior"),
        ("kl_after_budget", f"KL(q‖p) after {budget:g} s of training"),
    ]
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for i, estimator in enumerate(dict.fromkeys(r["estimator"] for r in rows)):
            sub = [r for r in rows if r["estimator"] == estimator]
            ax.plot(
                [r["num_particles"] for r in sub],
                [max(r[key], floor) for r in sub],
                "o-",
                color=f"C{i}",
                label=estimator,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("particles K")
        ax.set_title(title, fontsize=9)
    axes[0, 0].legend(fontsize=8)
    return save_figure(fig, path)
