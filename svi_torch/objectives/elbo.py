"""The reparameterized evidence lower bound (ELBO).

.. math::

    \\mathrm{ELBO}(\\phi) = \\mathbb{E}_{q_\\phi(z)}[\\log p(z, D)] + H[q_\\phi]
        = \\log p(D) - \\mathrm{KL}(q_\\phi \\,\\|\\, p(\\cdot \\mid D)) \\le \\log p(D),

so maximising it minimises the *reverse* (exclusive) KL, :math:`\\mathrm{KL}(q\\|p) =
\\mathbb{E}_q[\\log q - \\log p]`. It is estimated with :math:`K` reparameterized particles
:math:`z_k = g_\\phi(\\epsilon_k)` drawn in one batched call and the minibatch log joint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..data import Batch, batch_length
from ..families.base import VariationalFamily
from ..models.base import Model
from ..registry import OBJECTIVES
from ._checks import check_num_particles, total
from .base import LazyMetrics, Objective, ObjectiveOutput

__all__ = ["ELBO"]


@OBJECTIVES.register("elbo", "reparameterized ELBO (reparam or sticking-the-landing)")
@dataclass(frozen=True)
class ELBO(Objective):
    """Multi-particle reparameterized ELBO.

    Args:
        num_particles: :math:`K`, draws per step (vectorised, no Python loop).
        entropy: ``"analytic"`` uses :math:`H[q]` in closed form (lower variance, the
            default when the family has it); ``"mc"`` uses :math:`-\\frac1K\\sum_k \\log q(z_k)`.
            ``None`` picks analytic when available and the gradient is ``"reparam"``.
        gradient: ``"reparam"`` is the plain reparameterization gradient; ``"stl"``
            (sticking the landing, Roeder et al. 2017) evaluates :math:`\\log q` with detached
            parameters, dropping the zero-mean score term, so the gradient variance vanishes
            when :math:`q` equals the posterior. ``"stl"`` needs the Monte Carlo entropy.

    Particles come from ``family.weighted_rsample``: uniform weights :math:`1/K` for
    ordinary families, the stratified estimator for mixtures (``num_particles`` draws per
    component). An amortized family's per-data-point entropy is scaled by :math:`N/B`,
    like the likelihood.

    Example:
        >>> objective = ELBO(num_particles=8, gradient="stl")
    """

    num_particles: int = 1
    entropy: Literal["analytic", "mc"] | None = None
    gradient: Literal["reparam", "stl"] = "reparam"

    def __post_init__(self) -> None:
        check_num_particles(self.num_particles)
        if self.entropy not in (None, "analytic", "mc"):
            raise ValueError(f"entropy must be 'analytic' or 'mc', got {self.entropy!r}")
        if self.gradient not in ("reparam", "stl"):
            raise ValueError(f"gradient must be 'reparam' or 'stl', got {self.gradient!r}")
        if self.gradient == "stl" and self.entropy == "analytic":
            raise ValueError(
                "gradient='stl' needs the Monte Carlo entropy (log q at detached "
                "parameters); use entropy='mc' or leave entropy unset"
            )

    def _use_analytic_entropy(self, family: VariationalFamily) -> bool:
        if self.entropy is not None:
            return self.entropy == "analytic"
        return self.gradient == "reparam" and family.has_analytic_entropy

    def __call__(
        self,
        family: VariationalFamily,
        model: Model,
        batch: Batch | None,
        likelihood_scale: float | None = None,
    ) -> ObjectiveOutput:
        context = batch.get("context") if batch else None
        weights: Tensor | None = None
        if self._use_analytic_entropy(family):
            # log q is not needed: sample only, and take H[q] in closed form.
            z, entropy = family.rsample_and_entropy((self.num_particles,), context)
        else:
            # Weighted particles: 1/K for ordinary families (the plain mean); the stratified
            # estimator for mixtures (see VariationalFamily.weighted_rsample).
            z, log_q, weights = family.weighted_rsample(self.num_particles, context)
            if self.gradient == "stl":
                log_q = family.log_prob_detached(z, context)
            entropy = -_expect(log_q, weights)
        if entropy.dim() > 0:
            # One entropy per data point (amortized q(z_i | x_i) over a minibatch): local
            # terms are scaled by N/B like the likelihood, so the bound stays unbiased.
            entropy = entropy * _local_scale(model, batch, likelihood_scale)
        entropy = total(entropy)
        joint = model.log_joint(z, batch, likelihood_scale)
        terms = (joint.log_likelihood, joint.log_prior, joint.log_det_jacobian)
        if weights is None and terms[0].shape == terms[1].shape == terms[2].shape:
            # Sum the terms per particle, then one mean: the fewest tensor ops per step.
            elbo = total(joint.total.mean(0)) + entropy
        else:
            elbo = sum(total(_expect(t, weights)) for t in terms) + entropy

        def term_means() -> dict[str, Tensor]:
            means = [total(_expect(t.detach(), weights)) for t in terms]
            names = ("log_likelihood", "log_prior", "log_det_jacobian")
            return {**dict(zip(names, means, strict=True)), "entropy": entropy.detach()}

        metrics = LazyMetrics(term_means, elbo=elbo.detach())
        return ObjectiveOutput(loss=-elbo, metrics=metrics)


def _expect(x: Tensor, weights: Tensor | None) -> Tensor:
    """Weighted average over the particle axis, :math:`\\sum_s w_s x_s` (weights sum to 1);
    the plain mean when ``weights`` is None."""
    return x.mean(0) if weights is None else (weights * x).sum(0)


def _local_scale(model: Model, batch: Batch | None, likelihood_scale: float | None) -> float:
    """:math:`N/B` for per-data-point terms (1 on the full data)."""
    if likelihood_scale is not None:
        return likelihood_scale
    return model.num_data / batch_length(batch) if batch else 1.0
