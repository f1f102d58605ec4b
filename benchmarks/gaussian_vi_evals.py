"""Gradient evaluations and wall time to KL(q||p) < 0.01: Pathfinder, batch-and-match, ELBO-SGD.

Conjugate Bayesian linear regressions (``regression_data(N, D, correlation=0.5)``, N = 1000,
float64, exact posterior known), D = 5, 20, 100. KL(q||p) = E_q[log q - log p], the reverse
KL that VI minimises, computed analytically between Gaussians. Every score is a full-data
gradient of log p(z, D), so the evaluation counts compare like with like.

* **Pathfinder** (``svi_torch.methods.pathfinder``): one multi-path run; its best Gaussian is
  the fit. At Stan's defaults (4 paths, history 5, c2 = 0.9, 25 ELBO draws, 1000 draws a
  path) and with ``history_size=D, wolfe_c2=0.01``. It also spends density-only evaluations
  (ELBO and final draws), shown apart.
* **BaM** (``svi_torch.methods.bam``, full rank, default learning rate, 16 draws a step):
  from N(0, I), and from Pathfinder's default result (its evaluations included). KL
  checked after every step (not timed).
* **ELBO-SGD**: ``st.fit(model, FullRankGaussian(D), objective=ELBO(num_particles=8), lr=lr,
  steps=steps, batch_size=N)`` (Adam, the loop's default schedule: constant then cosine
  decay with iterate averaging over the second half), for lr in {0.01, 0.03, 0.1} and step
  budgets from a ladder; the smallest budget that reaches the target is reported (8 gradient
  evaluations a step), its wall time is that of the whole fit.

Usage::

    nice -n 10 python benchmarks/gaussian_vi_evals.py           # D = 5, 20, 100
    nice -n 10 python benchmarks/gaussian_vi_evals.py --quick   # D = 5, 20, short ladder
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import svi_torch as st  # noqa: E402
from svi_torch.divergences import kl_mvn  # noqa: E402
from svi_torch.methods.bam import BatchAndMatch  # noqa: E402
from svi_torch.methods.pathfinder import pathfinder_model  # noqa: E402
from svi_torch.objectives import ELBO  # noqa: E402

TARGET = 0.01
NUM_DATA = 1000
F64 = torch.float64


@dataclass
class Row:
    problem: str
    method: str
    kl: float
    grad_evals: int
    density_evals: int
    seconds: float
    reached: bool

    def markdown(self) -> str:
        evals = f"{self.grad_evals}" if self.reached else f"> {self.grad_evals}"
        return (
            f"| {self.problem} | {self.method} | {'yes' if self.reached else 'no'} | "
            f"{self.kl:.2g} | {evals} | {self.density_evals or '-'} | {self.seconds:.2f} |"
        )


def problem(dim: int) -> tuple[st.models.BayesianLinearRegression, torch.Tensor, torch.Tensor]:
    X, y, _ = st.models.regression_data(NUM_DATA, dim, correlation=0.5, seed=0)
    model = st.models.BayesianLinearRegression(X.double(), y.double())
    post = model.exact_posterior()
    return model, post.mean, post.covariance_matrix


def kl(loc: torch.Tensor, cov: torch.Tensor, mean: torch.Tensor, post_cov: torch.Tensor) -> float:
    try:
        return float(kl_mvn(loc.double(), cov.double(), mean, post_cov))
    except ValueError:  # not positive definite
        return math.inf


def run_pathfinder(name: str, model, mean, cov, label: str, **kwargs) -> tuple[Row, object]:
    start = time.perf_counter()
    res = pathfinder_model(model, warn=False, seed=0, **kwargs)
    seconds = time.perf_counter() - start
    value = kl(res.gaussian.loc, res.gaussian.covariance(), mean, cov)
    row = Row(
        name, label, value, res.num_grad_evals, res.num_density_evals, seconds, value < TARGET
    )
    return row, res


def run_bam(
    name: str, model, mean, cov, label: str, max_steps: int, init=None, extra: Row | None = None
) -> Row:
    kwargs = {}
    if init is not None:
        kwargs = {"init_loc": init.gaussian.loc, "init_cov": init.gaussian.covariance()}
    torch.manual_seed(0)
    bam = BatchAndMatch(model.dim, batch_size=16, dtype=F64, **kwargs)
    seconds, value = 0.0, kl(bam.mean, bam.cov, mean, cov)
    for _ in range(max_steps):
        if value < TARGET:
            break
        start = time.perf_counter()
        bam.step(model.full_log_joint)
        seconds += time.perf_counter() - start
        value = kl(bam.mean, bam.cov, mean, cov)
    grads, densities = bam.num_score_evals, 0
    if extra is not None:
        grads, densities, seconds = (
            grads + extra.grad_evals,
            extra.density_evals,
            seconds + extra.seconds,
        )
    return Row(name, label, value, grads, densities, seconds, value < TARGET)


def run_sgd(name: str, model, mean, cov, lrs, budgets) -> Row:
    best: Row | None = None
    for lr in lrs:
        row = None
        for steps in budgets:
            family = st.families.FullRankGaussian(model.dim).double()
            start = time.perf_counter()
            st.fit(
                model,
                family,
                objective=ELBO(num_particles=8),
                lr=lr,
                steps=steps,
                batch_size=NUM_DATA,
                seed=0,
                progress=False,
            )
            seconds = time.perf_counter() - start
            with torch.no_grad():
                value = kl(family.loc, family.covariance(), mean, cov)
            row = Row(name, f"ELBO-SGD (Adam, lr={lr})", value, 8 * steps, 0, seconds, False)
            if value < TARGET:
                row.reached = True
                break
        assert row is not None
        if best is None or (row.reached, -row.grad_evals) > (best.reached, -best.grad_evals):
            best = row
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="D = 5, 20 and a short ladder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dims = (5, 20) if args.quick else (5, 20, 100)
    budgets = (100, 300, 1000, 3000) if args.quick else (100, 300, 1000, 3000, 10000)
    print(f"command: python benchmarks/gaussian_vi_evals.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"torch {torch.__version__}, {args.threads} thread(s), N = {NUM_DATA}, float64\n")
    print(
        "| problem | method | reached | KL(q‖p) | gradient evals | density-only evals | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for dim in dims:
        model, mean, cov = problem(dim)
        name = f"linreg D={dim}"
        rows = []
        default, pf = run_pathfinder(name, model, mean, cov, "Pathfinder (Stan defaults)")
        rows.append(default)
        rows.append(
            run_pathfinder(
                name, model, mean, cov, f"Pathfinder (history {dim}, c2=0.01)",
                history_size=dim, wolfe_c2=0.01,
            )[0]
        )  # fmt: skip
        if dim <= 20:
            rows.append(
                run_pathfinder(
                    name, model, mean, cov, f"Pathfinder (history {2 * dim}, c2=0.9)",
                    history_size=2 * dim,
                )[0]
            )  # fmt: skip
        rows.append(run_bam(name, model, mean, cov, "BaM B=16 from N(0, I)", 500))
        rows.append(
            run_bam(name, model, mean, cov, "Pathfinder (defaults) + BaM B=16", 500, pf, default)
        )
        rows.append(run_sgd(name, model, mean, cov, (0.01, 0.03, 0.1), budgets))
        for row in rows:
            print(row.markdown(), flush=True)


if __name__ == "__main__":
    main()
