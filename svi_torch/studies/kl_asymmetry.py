"""Study ``kl-asymmetry``: one Gaussian fitted to a bimodal target by reverse and forward KL.

The target is :class:`~svi_torch.models.GaussianMixtureTarget` (by default
:math:`0.5\\,\\mathcal{N}(-3, 1) + 0.5\\,\\mathcal{N}(3, 1)`, mean 0, variance 10). Two fits of
a Gaussian ``q``:

* **reverse** :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q - \\log p]` (the ELBO, what VI
  does): mode-seeking, ``q`` locks onto one mode and its variance (about 1) is far below
  the target's 10;
* **forward** :math:`\\mathrm{KL}(p\\|q) = \\mathbb{E}_p[\\log p - \\log q]`
  (:class:`~svi_torch.objectives.ForwardKL`): mass-covering, ``q`` matches the target's mean
  and variance, spans both modes and puts its peak in the valley between them.

Both KLs are reported for both fits (Monte Carlo, with standard errors), beside the
analytic forward-KL optimum (moment matching). Writes ``summary.csv``, ``densities.png``
and TensorBoard runs under ``runs/``.

Run: ``svi-torch study kl-asymmetry`` or
``python -c "from pathlib import Path; from svi_torch.studies import kl_asymmetry;
kl_asymmetry.run(Path('out'))"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.distributions import Normal

from ..diagnostics import diagnose
from ..divergences import forward_kl, reverse_kl
from ..families import FullRankGaussian
from ..fitting import fit
from ..methods import SGD
from ..models.targets import GaussianMixtureTarget
from ..objectives import ELBO, ForwardKL
from ..registry import STUDIES
from ._common import new_figure, save_figure, settings, tensorboard, write_csv

__all__ = ["run", "DEFAULTS"]

DEFAULTS: dict[str, Any] = {
    "locs": [-3.0, 3.0],
    "scales": [1.0, 1.0],
    "weights": [0.5, 0.5],
    "steps": 3000,
    "lr": 0.05,
    "num_particles": 16,
    "num_samples": 256,
    "init_loc": 1.0,
    "init_scale": 1.0,
    "kl_samples": 50_000,
    "seed": 0,
    "tensorboard": True,
}
QUICK: dict[str, Any] = {"steps": 800, "kl_samples": 10_000}


@STUDIES.register("kl-asymmetry", "reverse vs forward KL fit to a bimodal target")
def run(outdir: Path, quick: bool = False, overrides: dict | None = None) -> Path:
    """Fit by reverse and forward KL, write ``summary.csv`` and ``densities.png``; return ``outdir``."""
    cfg = settings(DEFAULTS, QUICK, quick, overrides)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    target = GaussianMixtureTarget(cfg["locs"], cfg["scales"], cfg["weights"])
    p = target.distribution()
    objectives = {
        "reverse": ELBO(num_particles=cfg["num_particles"]),
        "forward": ForwardKL(num_samples=cfg["num_samples"]),
    }
    fitted: dict[str, FullRankGaussian] = {}
    rows = []
    for name, objective in objectives.items():
        family = FullRankGaussian(
            target.dim, init_loc=cfg["init_loc"], init_scale=cfg["init_scale"]
        )
        loggers = tensorboard(outdir, name, cfg["tensorboard"])
        fit(
            target,
            family,
            objective,
            steps=cfg["steps"],
            method=SGD(lr=cfg["lr"]),
            seed=cfg["seed"],
            loggers=loggers,
            log_every=max(1, cfg["steps"] // 50),
        )
        diagnostics = diagnose(target, family, num_samples=4000, seed=cfg["seed"])
        for logger in loggers:
            # Single end-of-fit numbers: the HParams tab, not one-point line charts.
            final = {
                k.removeprefix("diagnostics/"): v
                for k, v in diagnostics.as_dict().items()
                if math.isfinite(v)
            }
            logger.log_hparams({"objective": name}, final)
            logger.close()
        fitted[name] = family
        rows.append(
            _row(name, family(), p, target, cfg["kl_samples"], cfg["seed"], diagnostics.khat)
        )
    # The exact forward-KL optimum over Gaussians: match the target's mean and covariance.
    moment_matched = torch.distributions.MultivariateNormal(target.mean, target.covariance)
    rows.append(
        _row(
            "moment-matching (exact forward optimum)",
            moment_matched,
            p,
            target,
            cfg["kl_samples"],
            cfg["seed"],
            math.nan,
        )
    )
    write_csv(outdir / "summary.csv", rows)
    _plot(outdir / "densities.png", target, fitted, rows)
    return outdir


def _row(name, q, p, target, kl_samples: int, seed: int, khat: float) -> dict[str, Any]:
    with torch.no_grad():
        rev = reverse_kl(q, p, num_samples=kl_samples, seed=seed)
        fwd = forward_kl(q, p, num_samples=kl_samples, seed=seed)
        variance = torch.diagonal(q.covariance_matrix).mean().item()
        target_variance = torch.diagonal(target.covariance).mean().item()
        return {
            "fit": name,
            "mean": q.mean[0].item(),
            "variance": variance,
            "target_mean": target.mean[0].item(),
            "target_variance": target_variance,
            "reverse_kl": rev.value.item(),
            "reverse_kl_se": rev.stderr.item(),
            "forward_kl": fwd.value.item(),
            "forward_kl_se": fwd.stderr.item(),
            "khat": khat,
        }


def _plot(path: Path, target: GaussianMixtureTarget, fitted: dict, rows: list[dict]) -> Path:
    """Densities along the first coordinate: the target and both fitted Gaussians."""
    with torch.no_grad():
        locs, scales, weights = target.locs[:, 0], target.scales[:, 0], target.weights
        spread = (locs.abs() + 4 * scales).max().item()
        grid = torch.linspace(-spread, spread, 600)
        density = (weights * Normal(locs, scales).log_prob(grid[:, None]).exp()).sum(-1)
        fig, axes = new_figure()
        ax = axes[0, 0]
        ax.fill_between(grid, density, color="0.85", label="target p (mixture)")
        styles = {
            "reverse": ("C3", "reverse KL(q‖p): mode-seeking"),
            "forward": ("C0", "forward KL(p‖q): mass-covering"),
        }
        for name, family in fitted.items():
            q = family()
            sd = q.covariance_matrix[0, 0].sqrt()
            color, label = styles[name]
            row = next(r for r in rows if r["fit"] == name)
            ax.plot(
                grid,
                Normal(q.mean[0], sd).log_prob(grid).exp(),
                color=color,
                label=f"{label}, var {row['variance']:.2f}",
            )
        ax.set_xlabel("z")
        ax.set_ylabel("density")
        ax.set_title(
            f"Gaussian fits to a bimodal target (variance {rows[0]['target_variance']:.1f})"
        )
        ax.legend(fontsize=8)
    return save_figure(fig, path)
