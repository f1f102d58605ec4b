"""Study ``meanfield``: how a factorised Gaussian sees a correlated one, against :math:`\\rho`.

Target: :class:`~svi_torch.models.CorrelatedGaussianTarget`,
:math:`\\mathcal{N}(0, \\sigma^2[[1, \\rho], [\\rho, 1]])`. For each :math:`\\rho` the study fits

* a mean-field Gaussian by the ELBO (reverse :math:`\\mathrm{KL}(q\\|p)`): its exact optimum has
  variance :math:`1/\\Lambda_{dd} = (1 - \\rho^2)\\sigma^2` (the conditional variance), so it
  underestimates the marginal :math:`\\sigma^2` more and more as :math:`\\rho \\to 1`, at a
  cost :math:`\\mathrm{KL}(q^*\\|p) = -\\tfrac12\\log(1-\\rho^2)`;
* a full-rank Gaussian by the ELBO: exact (variance :math:`\\sigma^2`, correlation
  :math:`\\rho`, KL 0);
* a mean-field Gaussian by the forward :math:`\\mathrm{KL}(p\\|q)`: it matches the marginals,
  variance :math:`\\sigma^2` (mass-covering), for contrast.

Writes ``summary.csv`` (fitted and exact values per :math:`\\rho`) and ``variance.png``.

Run: ``svi-torch study meanfield``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..divergences import kl_mvn
from ..families import FullRankGaussian, MeanFieldGaussian
from ..fitting import fit
from ..methods import SGD
from ..models.targets import CorrelatedGaussianTarget
from ..objectives import ELBO, ForwardKL
from ..registry import STUDIES
from ._common import new_figure, save_figure, settings, tensorboard, write_csv

__all__ = ["run", "DEFAULTS"]

DEFAULTS: dict[str, Any] = {
    "rhos": [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
    "sigma": 1.0,
    "steps": 4000,
    "lr": 0.05,
    "num_particles": 8,
    "num_samples": 256,
    "seed": 0,
    "tensorboard": True,
}
QUICK: dict[str, Any] = {"rhos": [0.0, 0.9, 0.99], "steps": 1000}


@STUDIES.register("meanfield", "mean-field variance (1 - rho^2) sigma^2 against rho")
def run(outdir: Path, quick: bool = False, overrides: dict | None = None) -> Path:
    """Fit the three Gaussians for each rho, write ``summary.csv`` and ``variance.png``."""
    cfg = settings(DEFAULTS, QUICK, quick, overrides)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for rho in cfg["rhos"]:
        target = CorrelatedGaussianTarget(rho=float(rho), sigma=cfg["sigma"])
        fits = {
            "meanfield": (
                MeanFieldGaussian(2, init_scale=cfg["sigma"]),
                ELBO(cfg["num_particles"]),
            ),
            "fullrank": (FullRankGaussian(2, init_scale=cfg["sigma"]), ELBO(cfg["num_particles"])),
            "meanfield_forward": (
                MeanFieldGaussian(2, init_scale=cfg["sigma"]),
                ForwardKL(cfg["num_samples"]),
            ),
        }
        fitted = {}
        for name, (family, objective) in fits.items():
            loggers = tensorboard(outdir, f"rho={rho}/{name}", cfg["tensorboard"])
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
            for logger in loggers:
                logger.close()
            with torch.no_grad():
                cov = family.covariance().double()
                fitted[name] = {
                    "variance": torch.diagonal(cov).mean().item(),
                    "correlation": (cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()).item(),
                    "kl": kl_mvn(
                        family.loc.double(), cov, target.loc.double(), target.cov.double()
                    ).item(),
                }
        rows.append(
            {
                "rho": float(rho),
                "meanfield_variance": fitted["meanfield"]["variance"],
                "meanfield_variance_exact": target.meanfield_variance(),
                "meanfield_kl": fitted["meanfield"]["kl"],
                "meanfield_kl_exact": target.meanfield_kl(),
                "fullrank_variance": fitted["fullrank"]["variance"],
                "fullrank_correlation": fitted["fullrank"]["correlation"],
                "fullrank_kl": fitted["fullrank"]["kl"],
                "forward_meanfield_variance": fitted["meanfield_forward"]["variance"],
                "target_variance": cfg["sigma"] ** 2,
            }
        )
    write_csv(outdir / "summary.csv", rows)
    _plot(outdir / "variance.png", rows, cfg["sigma"])
    return outdir


def _plot(path: Path, rows: list[dict[str, Any]], sigma: float) -> Path:
    rho = [r["rho"] for r in rows]
    fine = torch.linspace(0, max(rho), 200)
    fig, axes = new_figure(ncols=2)
    ax = axes[0, 0]
    ax.plot(fine, (1 - fine**2) * sigma**2, color="C3", lw=1, label="(1 − ρ²)σ² (theory)")
    ax.plot(
        rho,
        [r["meanfield_variance"] for r in rows],
        "o",
        color="C3",
        label="mean-field, reverse KL",
    )
    ax.axhline(sigma**2, color="0.5", lw=1, ls="--", label="σ² (true marginal)")
    ax.plot(
        rho,
        [r["fullrank_variance"] for r in rows],
        "s",
        mfc="none",
        color="C2",
        label="full-rank, reverse KL",
    )
    ax.plot(
        rho,
        [r["forward_meanfield_variance"] for r in rows],
        "^",
        mfc="none",
        color="C0",
        label="mean-field, forward KL",
    )
    ax.set_xlabel("correlation ρ")
    ax.set_ylabel("fitted marginal variance")
    ax.set_title("Mean-field VI underestimates variance")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.plot(
        fine[:-1],
        -0.5 * torch.log1p(-(fine[:-1] ** 2)),
        color="C3",
        lw=1,
        label="−½ log(1 − ρ²) (theory)",
    )
    ax.plot(rho, [r["meanfield_kl"] for r in rows], "o", color="C3", label="mean-field")
    ax.plot(rho, [r["fullrank_kl"] for r in rows], "s", mfc="none", color="C2", label="full-rank")
    ax.set_xlabel("correlation ρ")
    ax.set_ylabel("KL(q‖p) after fitting")
    ax.set_title("The price of factorising")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
