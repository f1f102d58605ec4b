"""NGVI after a Laplace start: KL reached in 2000 steps as a function of the step size.

For each problem of ``benchmarks/convergence.py`` (conjugate regressions, against the
float64 exact posterior; the logistic regression, against the family optimum q*) this fits
``fit(model, FullRankGaussian, optimizer="ngvi", batch_size=64, steps=2000)`` with
rho_0 = B / (c N) for each c given, and with the library default (``c = auto``), and prints
the worst KL over the seeds; ``c = start`` is the Laplace start itself, before any step.
This is the measurement behind ``default_step_size``.

Usage::

    python benchmarks/ngvi_step_size.py                 # c in {start, 4, 16, 64, auto}
    python benchmarks/ngvi_step_size.py --c 4 auto --seeds 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import convergence as bench  # noqa: E402

import svi_torch as st  # noqa: E402

BATCH = 64


def problems() -> list[bench.Problem]:
    return [
        bench.conjugate_problem(1000, 5, 1.0),
        bench.conjugate_problem(10_000, 20, 1e2),
        bench.conjugate_problem(100_000, 5, 1e4),
        bench.conjugate_problem(10_000, 100, 1e3),
        bench.logistic_problem(100_000, 50),
    ]


def worst_kl(problem: bench.Problem, c: str, seeds: list[int], steps: int) -> float:
    worst = 0.0
    num_data = problem.X.shape[0]
    lr = None if c in ("auto", "start") else min(1.0, BATCH / (float(c) * num_data))
    for seed in seeds:
        model = bench.make_model(problem)
        family = st.families.FullRankGaussian(model.dim)
        if c == "start":
            st.methods.initialize(model, family, "laplace")
        else:
            st.fit(
                model,
                family,
                method=st.methods.NGVI(step_size=lr),
                batch_size=BATCH,
                steps=steps,
                seed=seed,
            )
        with torch.no_grad():
            kl = bench.gaussian_kl(family.loc, family.covariance(), problem.reference)
        worst = max(worst, kl)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c", nargs="*", default=["start", "4", "16", "64", "auto"])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "# python benchmarks/ngvi_step_size.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    print(f"# worst KL over seeds {args.seeds}, {args.steps} steps, batch {BATCH}, Laplace start")
    print("| problem | " + " | ".join(f"c={c}" for c in args.c) + " |")
    print("|---|" + "---|" * len(args.c))
    for problem in problems():
        kls = [worst_kl(problem, c, args.seeds, args.steps) for c in args.c]
        print(f"| {problem.name} | " + " | ".join(f"{kl:.4f}" for kl in kls) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
