"""Micro-timings behind the README's per-step overhead figures.

* exact Hessians of a regression's minibatch log joint (B = 64, K = 2 particles): a Python
  loop of D reverse passes against one batched pass (``is_grads_batched``);
* ``torch.optim.Adam(fused=True).step()`` against the functional update it wraps (what
  ``training/fused_step.py`` calls), on a 10-dimensional full-rank Gaussian's parameters;
* aten ops per training step, svi_torch's ``Trainer.train_step`` against the hand loop of
  ``benchmarks/speed.py`` (logistic regression N=1e4, D=10, B=100, mean-field).

Each time is the best of 5 blocks (microseconds or milliseconds per call, one thread).
Usage: ``python benchmarks/step_overhead.py``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import convergence as bench  # noqa: E402
import speed  # noqa: E402

from svi_torch.curvature import _batched_hessian, _loop_hessian, log_joint_fn  # noqa: E402
from svi_torch.training.fused_step import FusedAdamStep  # noqa: E402


def best_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(max(calls // 10, 3)):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def hessians() -> None:
    print("| D | loop of D passes (ms) | one batched pass (ms) |")
    print("|---|---|---|")
    for dim in (5, 20, 100):
        problem = bench.conjugate_problem(10_000, dim, 1e2)
        model = bench.make_model(problem)
        indices = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:64]
        density = log_joint_fn(model, model.index_data(indices), 10_000 / 64)
        z = torch.randn(2, dim)
        loop = best_us(lambda d=density, z=z: _loop_hessian(d, z), 30) / 1e3
        batched = best_us(lambda d=density, z=z: _batched_hessian(d, z), 30) / 1e3
        print(f"| {dim} | {loop:.2f} | {batched:.2f} |")


def optimizer_step() -> None:
    params = [torch.zeros(10, requires_grad=True), torch.zeros(10, requires_grad=True)]
    params.append(torch.zeros(10, 10, requires_grad=True))
    for p in params:
        p.grad = torch.randn_like(p)
    adam = torch.optim.Adam(params, lr=1e-2, fused=True)
    adam.step()  # creates the state
    fast = FusedAdamStep(adam)
    print(
        f"\nAdam(fused=True).step(): {best_us(adam.step, 5000):.1f} us; "
        f"the functional update (FusedAdamStep): {best_us(fast, 5000):.1f} us"
    )


def op_counts() -> None:
    case = speed.Case("logreg", 10**4, 10, 100, "meanfield")
    X, y = speed.make_data(case)
    counts = {}
    for name, step in (
        ("svi_torch", speed.svi_torch_step(case, X, y, "cpu")),
        ("hand", speed.hand_step(case, X, y, "cpu")),
    ):
        for _ in range(20):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(100):
                step()
        events = prof.key_averages()
        counts[name] = sum(e.count for e in events if e.key.startswith("aten::")) / 100
    print(
        f"\naten ops per step ({case.label}): svi_torch {counts['svi_torch']:.0f}, "
        f"hand loop {counts['hand']:.0f}"
    )


def main() -> int:
    torch.set_num_threads(1)
    print("# python benchmarks/step_overhead.py")
    hessians()
    optimizer_step()
    op_counts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
