"""Fitting by the forward (inclusive) KL, for targets that can be sampled.

.. math::

    \\mathrm{KL}(p\\|q_\\phi) = \\mathbb{E}_{p}[\\log p(z) - \\log q_\\phi(z)]
        = -H[p] - \\mathbb{E}_{p}[\\log q_\\phi(z)],

so minimising it over :math:`\\phi` is maximum likelihood of :math:`q_\\phi` on exact draws
:math:`z_s \\sim p`: the loss is the cross-entropy :math:`-\\frac1S\\sum_s \\log q_\\phi(z_s)`.
It is mass-covering (``q`` must be wide wherever ``p`` has mass); for a Gaussian ``q`` the
optimum matches the target's mean and covariance. VI on a posterior cannot do this (it
cannot sample the posterior), which is why VI minimises the reverse
:math:`\\mathrm{KL}(q\\|p)`; this objective is for demonstrations on known targets
(:mod:`svi_torch.models.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import Batch
from ..families.base import VariationalFamily
from ..models.base import Model
from ..registry import OBJECTIVES
from ._checks import check_num_particles, total
from .base import Objective, ObjectiveOutput

__all__ = ["ForwardKL"]


@OBJECTIVES.register("forward_kl", "forward KL(p||q) fit for targets that can be sampled")
@dataclass(frozen=True)
class ForwardKL(Objective):
    """Minimise :math:`\\mathrm{KL}(p\\|q) = \\mathbb{E}_p[\\log p - \\log q]` with draws from ``p``.

    The model must have ``sample(n)`` returning ``n`` exact draws of the unconstrained
    :math:`z`, shape ``(n, dim)``, such as the targets in :mod:`svi_torch.models.targets`.

    Args:
        num_samples: :math:`S`, target draws per step.
        elbo_particles: draws from ``q`` for the (detached) ``elbo`` metric, so the
            reverse-KL view is logged as well; 0 turns it off.

    Metrics: ``cross_entropy`` (:math:`-\\frac1S\\sum_s \\log q(z_s)`, the loss),
    ``forward_kl`` (:math:`\\frac1S\\sum_s \\log p(z_s) - \\log q(z_s)`, when the target is
    normalised and has ``log_prob``) and ``elbo``.

    Example:
        >>> objective = ForwardKL(num_samples=64)
    """

    num_samples: int = 64
    elbo_particles: int = 8

    def __post_init__(self) -> None:
        check_num_particles(self.num_samples, "num_samples")
        if isinstance(self.elbo_particles, bool) or not isinstance(self.elbo_particles, int):
            raise TypeError(f"elbo_particles must be an int, got {self.elbo_particles!r}")
        if self.elbo_particles < 0:
            raise ValueError(f"elbo_particles must be >= 0, got {self.elbo_particles}")

    def __call__(
        self,
        family: VariationalFamily,
        model: Model,
        batch: Batch | None,
        likelihood_scale: float | None = None,
    ) -> ObjectiveOutput:
        sampler = getattr(model, "sample", None)
        if not callable(sampler):
            raise TypeError(
                f"ForwardKL needs a target that can be sampled, but {type(model).__name__} "
                "has no sample(n) method; use a target from svi_torch.models.targets, or "
                "ELBO/IWAE for posteriors (which cannot be sampled)"
            )
        context = batch.get("context") if batch else None
        z = sampler(self.num_samples)
        if z.shape[-1] != family.dim or z.shape[0] != self.num_samples:
            raise ValueError(
                f"{type(model).__name__}.sample({self.num_samples}) returned shape "
                f"{tuple(z.shape)}; expected ({self.num_samples}, {family.dim})"
            )
        z = z.to(next(family.parameters()).dtype).detach()
        log_q = family.log_prob(z, context)
        cross_entropy = total(-log_q.mean(0))
        metrics = {"cross_entropy": cross_entropy.detach()}
        with torch.no_grad():
            log_p = getattr(model, "log_prob", None)
            if callable(log_p):
                metrics["forward_kl"] = total((log_p(z) - log_q).mean(0))
            if self.elbo_particles:
                zq, log_qq = family.rsample_and_log_prob((self.elbo_particles,), context)
                log_w = model.log_joint(zq, batch, likelihood_scale).total - log_qq
                metrics["elbo"] = total(log_w.mean(0))
        return ObjectiveOutput(loss=cross_entropy, metrics=metrics)
