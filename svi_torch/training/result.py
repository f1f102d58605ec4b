"""What ``fit`` returns: the trained family, its history, and posterior summaries."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..families.base import VariationalFamily
from ..models.base import Model

if TYPE_CHECKING:
    from ..diagnostics import Diagnostics

__all__ = ["FitResult", "Decision", "estimate_elbo"]


@dataclass
class Decision:
    """One decision of a method (the automatic method logs each stage it tried).

    Attributes:
        stage: what was tried (``"map"``, ``"ngvi from laplace"``, ``"k-hat"``, ...).
        outcome: ``"ok"``, ``"completed"``, ``"failed"``, ``"repaired"``, a reading...
        reason: one line: how it went, or why the method moved on.
        grad_evals: gradient evaluations spent, in full-data units.
        seconds: wall time spent.
    """

    stage: str
    outcome: str
    reason: str
    grad_evals: float = 0.0
    seconds: float = 0.0


@dataclass
class FitResult:
    """Outcome of a training run.

    Attributes:
        family: the trained family (averaged iterates when averaging ran).
        model: the model it was fitted to.
        history: metrics at each logging step; ``history["step"]`` holds the steps.
        steps: optimisation steps taken.
        stop_reason: why the run stopped (``"max_steps"`` or the convergence message).
        wall_time: seconds spent in the training loop.
        skipped_steps: steps skipped because the loss or gradient was not finite.
        method: the method that produced the family (``"sgd"``, ``"ngvi"``, for the
            automatic method ``"auto -> <stage>"``).
        grad_evals: gradient evaluations of the log joint in full-data units (a minibatch
            gradient at one point counts :math:`B/N`, a Hessian :math:`D`), the start's
            MAP search included.
        interrupted_by: the signal that paused the run, or None.
        decisions: what the method tried, in order (see :class:`Decision`).
        diagnostics: the final PSIS k-hat, importance-weighted evidence and ELBO, where the
            method computed them (the automatic method does).
    """

    family: VariationalFamily
    model: Model
    history: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    stop_reason: str = "max_steps"
    wall_time: float = 0.0
    skipped_steps: int = 0
    method: str = ""
    grad_evals: float = 0.0
    interrupted_by: int | None = None
    decisions: list[Decision] = field(default_factory=list)
    diagnostics: Diagnostics | None = None

    @property
    def decision_summary(self) -> str:
        """The decisions in one line, e.g. ``map: ok -> ngvi from laplace: completed -> ...``."""
        if not self.decisions:
            return f"{self.method or 'fit'}: {self.steps} steps; {self.stop_reason}"
        parts = [f"{d.stage}: {d.outcome}" for d in self.decisions]
        evals = sum(d.grad_evals for d in self.decisions)
        seconds = sum(d.seconds for d in self.decisions)
        return f"{' -> '.join(parts)} ({evals:.4g} gradient evaluations, {seconds:.3g} s)"

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_time if self.wall_time > 0 else math.nan

    def sample(self, num_samples: int = 1000) -> dict[str, Tensor]:
        """Named draws of the constrained parameters, each of shape ``(num_samples, *shape)``."""
        z = self.family.sample(num_samples)
        with torch.no_grad():
            params, _ = self.model.constrain(z)
        return params

    def posterior_summary(self, num_samples: int = 4000) -> dict[str, dict[str, float]]:
        """Mean, sd and 5/50/95% quantiles of every constrained scalar, e.g. ``"beta[0]"``."""
        draws = self.sample(num_samples)
        flat = torch.cat(
            [draws[name].reshape(num_samples, -1) for name in self.model.param_specs], -1
        ).double()
        quantiles = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95], dtype=flat.dtype), dim=0)
        mean, sd = flat.mean(0), flat.std(0)
        return {
            name: {
                "mean": mean[i].item(),
                "sd": sd[i].item(),
                "q05": quantiles[0, i].item(),
                "q50": quantiles[1, i].item(),
                "q95": quantiles[2, i].item(),
            }
            for i, name in enumerate(self.model.flat_names())
        }

    def elbo(self, num_samples: int = 1000) -> tuple[float, float]:
        """Full-data ELBO estimate and its standard error; see :func:`estimate_elbo`."""
        return estimate_elbo(self.model, self.family, num_samples)

    def diagnose(self, num_samples: int = 2000, seed: int | None = None) -> Diagnostics:
        """PSIS k-hat with its reading, importance-weighted log p(D) ± se and ELBO ± se.

        See :func:`svi_torch.diagnostics.diagnose`; ``.as_dict()`` gives the
        ``diagnostics/khat`` and ``diagnostics/log_evidence_iw`` scalars to log.
        """
        from ..diagnostics import diagnose  # deferred: diagnostics imports the objectives

        return diagnose(self.model, self.family, num_samples, seed)


def estimate_elbo(
    model: Model, family: VariationalFamily, num_samples: int = 1000, chunk: int = 250
) -> tuple[float, float]:
    """:math:`\\widehat{\\mathrm{ELBO}} = \\frac1S\\sum_s \\log p(z_s, D) - \\log q(z_s)` on the
    full data, with its Monte Carlo standard error :math:`\\hat\\sigma/\\sqrt{S}`."""
    values = []
    with torch.no_grad():
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            z, log_q = family.rsample_and_log_prob((n,))
            values.append(model.full_log_joint(z) - log_q)
    terms = torch.cat(values).double()
    return terms.mean().item(), (terms.std() / math.sqrt(terms.numel())).item()
