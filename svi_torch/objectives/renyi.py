"""The variational Rényi bound (Li & Turner 2016).

For :math:`\\alpha \\ne 1` and :math:`K` draws :math:`z_k \\sim q_\\phi` with log weights
:math:`\\log w_k = \\log p(z_k, D) - \\log q_\\phi(z_k)`,

.. math::

    \\mathcal{L}_\\alpha = \\frac{1}{1 - \\alpha}\\log \\frac1K \\sum_{k=1}^K w_k^{1 - \\alpha}
        \\quad\\text{estimates}\\quad
        \\frac{1}{1 - \\alpha}\\log \\mathbb{E}_q\\Big[\\Big(\\frac{p(z, D)}{q(z)}\\Big)^{1-\\alpha}\\Big]
        = \\log p(D) - D_\\alpha(q \\,\\|\\, p(\\cdot\\mid D)),

with :math:`D_\\alpha` Rényi's divergence of order :math:`\\alpha`. The limit
:math:`\\alpha \\to 1` is the ELBO (:math:`D_1 = \\mathrm{KL}(q\\|p)`, the reverse KL), used
exactly at ``alpha=1``; :math:`\\alpha = 0` is the IWAE bound; :math:`\\alpha < 0` can exceed
:math:`\\log p(D)` (no longer a lower bound) and is more mass-covering, :math:`\\alpha > 1`
more mode-seeking. :math:`\\mathcal{L}_\\alpha` decreases in :math:`\\alpha`. As for IWAE, on
minibatches the log of an average of scaled weights is a biased estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data import Batch
from ..families.base import VariationalFamily
from ..models.base import Model
from ..registry import OBJECTIVES
from ._checks import check_num_particles, total
from .base import Objective, ObjectiveOutput

__all__ = ["RenyiELBO"]


@OBJECTIVES.register("renyi", "variational Renyi bound of order alpha")
@dataclass(frozen=True)
class RenyiELBO(Objective):
    """Variational Rényi bound :math:`\\frac{1}{1-\\alpha}\\log\\frac1K\\sum_k w_k^{1-\\alpha}`.

    Args:
        alpha: order :math:`\\alpha` (any finite real; ``1`` gives the ELBO exactly).
        num_particles: :math:`K` (at least 2 to differ from the ELBO for :math:`\\alpha \\ne 1`).

    Metrics: ``renyi`` (the bound) and ``elbo`` (:math:`\\frac1K\\sum_k \\log w_k`).

    Example:
        >>> objective = RenyiELBO(alpha=0.5, num_particles=8)
    """

    alpha: float = 0.5
    num_particles: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise TypeError(f"alpha must be a real number, got {self.alpha!r}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite, got {self.alpha}")
        check_num_particles(self.num_particles)

    def __call__(
        self,
        family: VariationalFamily,
        model: Model,
        batch: Batch | None,
        likelihood_scale: float | None = None,
    ) -> ObjectiveOutput:
        context = batch.get("context") if batch else None
        z, log_q = family.rsample_and_log_prob((self.num_particles,), context)
        log_w = model.log_joint(z, batch, likelihood_scale).total - log_q
        elbo = total(log_w.mean(0))
        if self.alpha == 1:
            bound = elbo
        else:
            one_minus_alpha = 1.0 - self.alpha
            scaled = one_minus_alpha * log_w
            bound = total(
                (torch.logsumexp(scaled, 0) - math.log(self.num_particles)) / one_minus_alpha
            )
        return ObjectiveOutput(
            loss=-bound, metrics={"renyi": bound.detach(), "elbo": elbo.detach()}
        )
