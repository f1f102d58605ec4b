"""Does ``torch.compile`` of the objective pay off per step? (the measurement behind README).

Times the svi_torch ELBO step for Bayesian logistic regression eagerly and with the
objective call wrapped in ``torch.compile``, interleaved, median over repeats, and prints
the compile time. Usage: ``python benchmarks/compile_probe.py [--steps 200]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import svi_torch as st


def make_step(compiled: bool, n: int, d: int, b: int):
    X, y, _ = st.models.logistic_data(n, d, seed=0)
    model = st.models.BayesianLogisticRegression(X, y)
    family = st.families.MeanFieldGaussian(model.dim)
    config = st.training.TrainConfig(steps=10**9, batch_size=b, seed=0)
    loop = st.methods.SGD().prepare(model, family, st.objectives.ELBO(), config)
    if compiled:
        loop.state.objective = torch.compile(loop.state.objective, dynamic=False)
    return loop.train_step


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# python benchmarks/compile_probe.py {' '.join(sys.argv[1:])}")
    for n, d, b in [(10**4, 10, 100), (10**5, 100, 256)]:
        steps = {"eager": make_step(False, n, d, b)}
        start = time.perf_counter()
        steps["compiled"] = make_step(True, n, d, b)
        for _ in range(3):
            steps["compiled"]()
        compile_s = time.perf_counter() - start
        for _ in range(3):
            steps["eager"]()
        samples = {k: [] for k in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    step()
                samples[name].append((time.perf_counter() - t) / args.steps * 1e3)
        eager, comp = (statistics.median(samples[k]) for k in ("eager", "compiled"))
        print(
            f"N={n:.0e} D={d} B={b}: eager {eager:.3f} ms/step, compiled {comp:.3f} ms/step "
            f"(ratio {comp / eager:.2f}), first compiled steps took {compile_s:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
