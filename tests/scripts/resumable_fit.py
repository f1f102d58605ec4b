"""A resumable training run, as a separate process for the kill/resume tests.

Usage: ``python resumable_fit.py OUT_DIR SEED STEPS``. Trains a small Bayesian linear
regression with checkpoints every 7 steps (misaligned with logging every 10) into
``OUT_DIR/checkpoint.pt``, TensorBoard events into ``OUT_DIR/tb``, prints ``step N`` at
each log, resumes from the checkpoint when one exists, and writes the final family to
``OUT_DIR/family.pt`` and the history and stop reason to ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import svi_torch as st


class PrintStep:
    def on_log(self, state: st.training.TrainState, step: int, metrics: dict[str, float]) -> None:
        print(f"step {step}", flush=True)


def main() -> None:
    out, seed, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    X, y, _ = st.models.regression_data(300, 3, correlation=0.5, seed=0)
    model = st.models.BayesianLinearRegression(X, y)
    family = st.families.FullRankGaussian(model.dim)
    result = st.fit(
        model,
        family,
        st.objectives.ELBO(num_particles=2),
        batch_size=32,
        steps=steps,
        method=st.methods.SGD(lr=2e-2),
        seed=seed,
        log_every=10,
        convergence=st.training.ConvergenceMonitor(window=50, patience=10**9),
        checkpoint_path=out / "checkpoint.pt",
        checkpoint_every=7,
        keep_checkpoints=3,
        resume=True,
        loggers=[st.training.TensorBoardLogger(out / "tb")],
        callbacks=[PrintStep()],
    )
    torch.save(family.state_dict(), out / "family.pt")
    summary = {"steps": result.steps, "stop_reason": result.stop_reason, "history": result.history}
    (out / "result.json").write_text(json.dumps(summary))
    print(f"done: {result.stop_reason}", flush=True)


if __name__ == "__main__":
    main()
