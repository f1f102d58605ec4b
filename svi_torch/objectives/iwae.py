"""The importance-weighted bound (IWAE; Burda et al. 2016) with reparam or DReG gradients.

With :math:`K` draws :math:`z_k \\sim q_\\phi` and log weights
:math:`\\log w_k = \\log p(z_k, D) - \\log q_\\phi(z_k)`,

.. math::

    \\mathcal{L}_K = \\mathbb{E}\\Big[\\log \\frac1K \\sum_{k=1}^K w_k\\Big],
    \\qquad \\mathrm{ELBO} = \\mathcal{L}_1 \\le \\mathcal{L}_K \\le \\mathcal{L}_{K+1}
    \\le \\log p(D),

and :math:`\\mathcal{L}_K \\to \\log p(D)` as :math:`K \\to \\infty` (Jensen's inequality
applied to a better estimate of :math:`p(D)`). With normalised weights
:math:`\\tilde w_k = w_k / \\sum_j w_j` the reparameterized gradient is
:math:`\\sum_k \\tilde w_k \\nabla_\\phi \\log w_k(z_k(\\phi), \\phi)`.

**DReG** (doubly reparameterized, Tucker et al. 2019). The score part of that gradient,
:math:`-\\sum_k \\tilde w_k \\nabla_\\phi \\log q_\\phi(z)|_{z = z_k}`, has zero mean but a
variance that grows with :math:`K` (the signal-to-noise ratio of the plain gradient of
:math:`q` decays like :math:`K^{-1/2}`, Rainforth et al. 2018). Reparameterizing it a second
time gives the unbiased estimator

.. math::

    \\nabla_\\phi \\mathcal{L}_K \\approx \\sum_k \\tilde w_k^2\\,
        \\frac{\\partial \\log w_k}{\\partial z_k}\\frac{\\partial z_k}{\\partial \\phi},

where :math:`\\partial \\log w_k / \\partial z_k` holds :math:`\\phi` fixed inside
:math:`\\log q`. It is the gradient of the surrogate
:math:`\\sum_k \\mathrm{sg}(\\tilde w_k^2) \\log w_k` with :math:`\\log q` evaluated at detached
parameters (:meth:`VariationalFamily.log_prob_detached`). Model parameters :math:`\\theta` (if
the model has any) keep the IWAE gradient :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log
p_\\theta(z_k, D)`.

**Minibatches.** ``model.log_joint`` scales the minibatch likelihood by :math:`N/B`, so each
:math:`\\log w_k` is unbiased for the full-data log weight, but :math:`\\log\\frac1K\\sum_k w_k`
is not linear in it: minibatch IWAE is a biased estimate of the full-data bound (the usual
practice, Burda et al. train on minibatches). Full batches (or density-only targets) give
the exact bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..data import Batch
from ..families.base import VariationalFamily
from ..models.base import Model
from ..registry import OBJECTIVES
from ._checks import check_num_particles, total
from .base import Objective, ObjectiveOutput

__all__ = ["IWAE"]


@OBJECTIVES.register("iwae", "importance-weighted bound (reparam or DReG gradient)")
@dataclass(frozen=True)
class IWAE(Objective):
    """Importance-weighted bound :math:`\\mathcal{L}_K = \\log\\frac1K\\sum_k p(z_k, D)/q(z_k)`.

    Args:
        num_particles: :math:`K`; ``K = 1`` is the ELBO with a Monte Carlo entropy.
        gradient: ``"reparam"`` (plain reparameterized gradient of the bound) or ``"dreg"``
            (doubly reparameterized, Tucker et al. 2019: same expectation, lower variance,
            and a signal-to-noise ratio that does not decay with :math:`K`).

    The loss is always :math:`-\\hat{\\mathcal{L}}_K`; with ``"dreg"`` only its gradient
    differs. Metrics: ``iwae`` (the bound), ``elbo`` (:math:`\\frac1K\\sum_k \\log w_k`, an
    ELBO estimate from the same draws) and ``ess`` (effective sample size
    :math:`1/\\sum_k \\tilde w_k^2`, between 1 and :math:`K`).

    Example:
        >>> objective = IWAE(num_particles=16, gradient="dreg")
    """

    num_particles: int = 8
    gradient: Literal["reparam", "dreg"] = "reparam"

    def __post_init__(self) -> None:
        check_num_particles(self.num_particles)
        if self.gradient not in ("reparam", "dreg"):
            raise ValueError(f"gradient must be 'reparam' or 'dreg', got {self.gradient!r}")

    def __call__(
        self,
        family: VariationalFamily,
        model: Model,
        batch: Batch | None,
        likelihood_scale: float | None = None,
    ) -> ObjectiveOutput:
        context = batch.get("context") if batch else None
        z, log_q = family.rsample_and_log_prob((self.num_particles,), context)
        joint = model.log_joint(z, batch, likelihood_scale).total
        log_w = joint - log_q
        bound = total(torch.logsumexp(log_w, 0) - math.log(self.num_particles))
        normalised = torch.softmax(log_w.detach(), 0)
        if self.gradient == "reparam":
            loss = -bound
        else:
            # The DReG surrogate: gradient reaches phi only through z (log q at detached
            # parameters), weighted by the squared normalised weights.
            log_w_path = joint - family.log_prob_detached(z, context)
            surrogate = total((normalised.square() * log_w_path).sum(0))
            model_params = [p for p in model.parameters() if p.requires_grad]
            if model_params:
                # theta gets w~ grad log p (IWAE) instead of the w~^2 in the surrogate:
                # add w~ log p(sg z) and remove w~^2 log p(sg z); neither term reaches phi.
                joint_fixed_z = model.log_joint(z.detach(), batch, likelihood_scale).total
                weights = normalised - normalised.square()
                surrogate = surrogate + total((weights * joint_fixed_z).sum(0))
            # Value of the bound, gradient of the surrogate.
            loss = -(bound.detach() + surrogate - surrogate.detach())
        with torch.no_grad():
            metrics = {
                "iwae": bound.detach(),
                "elbo": total(log_w.detach().mean(0)),
                "ess": (1.0 / normalised.square().sum(0)).mean(),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)
