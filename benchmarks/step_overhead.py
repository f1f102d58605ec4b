"""Micro-timings behind the README's per-step overhead figures.

* exact Hessians of a regression's minibatch log joint (B = 64, K = 2 particles): a Python
  loop of D reverse passes against one batched pass (``is_grads_batched``);
* ``torch.optim.Adam(fused=True).step()`` against the functional update it wraps (what
  ``training/fused_step.py`` calls), on a 10-dimensional full-rank Gaussian's parameters;
* ``Optimizer.zero_grad(set_to_none=True)`` against ``optimizer_zero_grad``'s direct loop;
* a minibatch gather of B random rows (a fresh slice of a permutation each call, as the
  sampler draws them): ``X[idx]`` against ``X.index_select(0, idx)`` (what
  ``Model.index_data`` uses), at the speed benchmark's three logistic-regression sizes;
* a whole ``TrainingLoop.train_step`` with ``training.backward.backward`` against the same step
  with ``loss.backward()`` (paired blocks, median ratio, as in ``speed.py``);
* a full-rank step whose strictly lower factor goes through ``_StrictLowerMatmul`` (one
  D x D gradient buffer) against plain autograd (``tril(-1)``), at D = 100, 300, 600;
* aten ops per training step, svi_torch's ``TrainingLoop.train_step`` against the hand loop of
  ``benchmarks/speed.py`` (logistic regression N=1e4, D=10, B=100, mean-field).

Each time is the best of 5 blocks (microseconds or milliseconds per call, one thread).
Usage: ``python benchmarks/step_overhead.py``.
"""

from __future__ import annotations

import itertools
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

import svi_torch.families.gaussian as gaussian  # noqa: E402
import svi_torch.methods.sgd as trainer_module  # noqa: E402 (the SGD rule calls backward)
from svi_torch.curvature import _batched_hessian, _loop_hessian, log_joint_fn  # noqa: E402
from svi_torch.training.backward import backward  # noqa: E402
from svi_torch.training.fused_step import FusedAdamStep, optimizer_zero_grad  # noqa: E402

DEFAULT_MIN_DIM = gaussian.FULL_RANK_FUNCTION_MIN_DIM


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
    zero_grad = optimizer_zero_grad(adam)
    print(
        f"Adam.zero_grad(set_to_none=True): "
        f"{best_us(lambda: adam.zero_grad(set_to_none=True), 5000):.1f} us; "
        f"optimizer_zero_grad: {best_us(zero_grad, 5000):.1f} us"
    )


def gathers() -> None:
    print("\n| N | D | B | X[idx] (us) | X.index_select(0, idx) (us) |")
    print("|---|---|---|---|---|")
    for n, d, b in ((10**4, 10, 100), (10**5, 100, 256), (10**6, 50, 1024)):
        X = torch.randn(n, d)
        batches = torch.randperm(n)[: n // b * b].view(-1, b)
        rows = itertools.cycle(list(batches))  # a fresh batch every call

        indexing = best_us(lambda X=X, rows=rows: X[next(rows)], 2000)
        selecting = best_us(lambda X=X, rows=rows: X.index_select(0, next(rows)), 2000)
        print(f"| {n:.0e} | {d} | {b} | {indexing:.1f} | {selecting:.1f} |")


def backward_path() -> None:
    print("\n| configuration | step with loss.backward() / with backward() |")
    print("|---|---|")
    for n, d, b in ((10**4, 10, 100), (10**5, 100, 256)):
        case = speed.Case("logreg", n, d, b, "meanfield")
        X, y = speed.make_data(case)
        with_wrapper = speed.svi_torch_step(case, X, y, "cpu")
        direct = speed.svi_torch_step(case, X, y, "cpu")

        def wrapper_step(step=with_wrapper) -> None:
            trainer_module.backward = lambda loss: loss.backward()
            step()

        def direct_step(step=direct) -> None:
            trainer_module.backward = backward
            step()

        ms = speed.time_interleaved(
            {"wrapper": wrapper_step, "direct": direct_step}, 41, 0.05, "cpu"
        )
        trainer_module.backward = backward
        print(f"| {case.label} | {ms['wrapper/direct']:.3f} |")


def full_rank_function() -> None:
    print("\n| full-rank logreg (N=1e4, B=256) | step with _StrictLowerMatmul / with autograd |")
    print("|---|---|")
    for d in (100, 300, 600):
        case = speed.Case("logreg", 10**4, d, 256, "fullrank")
        X, y = speed.make_data(case)
        with_function = speed.svi_torch_step(case, X, y, "cpu")
        with_autograd = speed.svi_torch_step(case, X, y, "cpu")

        def function_step(step=with_function) -> None:
            gaussian.FULL_RANK_FUNCTION_MIN_DIM = 0
            step()

        def autograd_step(step=with_autograd) -> None:
            gaussian.FULL_RANK_FUNCTION_MIN_DIM = 10**9
            step()

        ms = speed.time_interleaved(
            {"function": function_step, "autograd": autograd_step}, 41, 0.05, "cpu"
        )
        print(f"| D={d} | {ms['function/autograd']:.3f} |")
    gaussian.FULL_RANK_FUNCTION_MIN_DIM = DEFAULT_MIN_DIM


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
    gathers()
    backward_path()
    full_rank_function()
    op_counts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
