"""Resident memory of a long training run: is it flat over 10^5 steps?

Trains a one-parameter normal-mean model (the smallest model, so that steps are cheap and
any growth is the loop's own) for 10^5 steps with everything that keeps state switched
on: history (bounded by ``max_history``), the convergence monitor's buffers, iterate
averaging, NaN-recovery snapshots, rotating checkpoints and a TensorBoard logger. Prints
the resident set size (RSS) every 10^4 steps relative to the RSS after the first 10^4.

Run: ``PYTHONPATH=. python benchmarks/long_run_memory.py [--steps N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

import svi_torch as st


class RSSProbe:
    """Records the process RSS (bytes) at every multiple of ``every`` steps."""

    def __init__(self, every: int) -> None:
        self.every, self.rss, self.process = every, {}, psutil.Process()

    def on_log(self, state: st.training.TrainState, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0:
            self.rss[step] = self.process.memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--max-history", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="also print a JSON line")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = st.models.normal_mean_data(64, true_mean=1.0, seed=0)
    model = st.models.NormalMean(x)
    family = st.families.MeanFieldGaussian(1)
    probe = RSSProbe(every=args.steps // 10)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = st.fit(
            model,
            family,
            st.objectives.ELBO(num_particles=1),
            steps=args.steps,
            batch_size=16,
            method=st.methods.SGD(optimizer="sgd", lr=1e-3, schedule="constant"),
            log_every=10,
            max_history=args.max_history,
            convergence=st.training.ConvergenceMonitor(window=100, patience=10**9),
            checkpoint_path=Path(tmp) / "run.pt",
            checkpoint_every=args.steps // 20,
            keep_checkpoints=2,
            loggers=[st.training.TensorBoardLogger(Path(tmp) / "tb")],
            callbacks=[probe],
            seed=0,
        )
    wall = time.perf_counter() - start
    first = probe.rss[min(probe.rss)]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{'step':>8} {'RSS MiB':>9} {'vs first':>9}")
    for step, rss in sorted(probe.rss.items()):
        print(f"{step:>8} {rss / 2**20:>9.1f} {rss / first:>9.3f}")
    print(f"steps/s: {args.steps / wall:.0f}; history entries: {len(result.history['step'])}")
    if args.json:
        report = {
            "steps": result.steps,
            "rss_1e4": first,
            "rss_end": probe.rss[max(probe.rss)],
            "history_len": len(result.history["step"]),
            "max_history": args.max_history,
        }
        print(json.dumps(report))


if __name__ == "__main__":
    main()
