"""Mixture of Gaussians :math:`q(z) = \\sum_{c=1}^C \\pi_c \\, \\mathcal{N}(z; \\mu_c, \\Sigma_c)`.

A single Gaussian fitted by reverse KL, :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q -
\\log p]`, is mode-seeking: on a multimodal posterior it sits on one mode. A mixture can put
one component on each mode. Sampling a component index is not reparameterizable, so the
ELBO uses the *stratified* estimator (every component contributes reparameterized draws):

.. math::

    \\mathrm{ELBO} = \\sum_c \\pi_c \\, \\mathbb{E}_{q_c}\\bigl[\\log p(z, D) - \\log q(z)\\bigr]
        \\approx \\sum_c \\frac{\\pi_c}{K} \\sum_{k=1}^K \\bigl[\\log p(z_{ck}, D) -
        \\log q(z_{ck})\\bigr], \\quad z_{ck} = \\mu_c + L_c \\epsilon_{ck},

whose gradient reaches the weights :math:`\\pi = \\mathrm{softmax}(\\text{logits})` directly
(Morningstar et al. 2021, "Automatic differentiation variational inference with mixtures").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from ..registry import FAMILIES
from .base import VariationalFamily, inverse_softplus
from .gaussian import _initial_loc, _initial_scale

__all__ = ["GaussianMixture"]


@FAMILIES.register("mixture", "mixture of Gaussians (stratified ELBO), components=C")
class GaussianMixture(VariationalFamily):
    """Mixture of ``components`` Gaussians with learned weights, means and scales.

    Weights are :math:`\\pi = \\mathrm{softmax}(\\text{logits})`; scales are softplus of free
    parameters (``covariance="diag"``) or Cholesky factors with a softplus diagonal
    (``covariance="full"``). Component means start at ``init_loc`` plus a fixed
    pseudo-random offset of size ``init_spread`` (seed 0): identical components would get
    identical gradients and never separate.

    Training uses :meth:`weighted_rsample` (the stratified estimator, ``num_particles``
    draws *per component*, so one ELBO step evaluates the model at ``C * num_particles``
    points). :meth:`rsample_and_log_prob` draws from the mixture itself (a sampled
    component per draw): valid for estimates, but its draws carry no gradient to the
    weights.

    Args:
        dim: dimension :math:`D`.
        components: number of components :math:`C \\ge 1`.
        covariance: ``"diag"`` or ``"full"``.
        init_loc: centre of the initial means (scalar or ``(D,)``).
        init_scale: initial standard deviation of every component.
        init_spread: standard deviation of the initial offsets of the means.

    Example:
        >>> q = GaussianMixture(2, components=3)
        >>> z, log_q, w = q.weighted_rsample(4)
        >>> z.shape, log_q.shape, float(w.sum())
        (torch.Size([12, 2]), torch.Size([12]), 1.0)
    """

    def __init__(
        self,
        dim: int,
        components: int = 2,
        covariance: Literal["diag", "full"] = "diag",
        init_loc: Tensor | float = 0.0,
        init_scale: Tensor | float = 0.5,
        init_spread: float = 1.0,
    ) -> None:
        super().__init__(dim)
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be a positive int, got {components!r}")
        if covariance not in ("diag", "full"):
            raise ValueError(f"covariance must be 'diag' or 'full', got {covariance!r}")
        if not init_spread >= 0:
            raise ValueError(f"init_spread must be >= 0, got {init_spread!r}")
        self.components = components
        self.covariance_type = covariance
        generator = torch.Generator().manual_seed(0)
        offsets = torch.randn(components, dim, generator=generator) * init_spread
        loc = _initial_loc(dim, init_loc) + offsets.to(torch.get_default_dtype())
        raw = inverse_softplus(_initial_scale(dim, init_scale)).expand(components, dim)
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(loc)
        self.raw_scale = nn.Parameter(raw.clone())
        if covariance == "full":
            # Only the strictly lower triangles are used (``tril(-1)``); the upper ones get
            # zero gradient.
            self.tril = nn.Parameter(torch.zeros(components, dim, dim))

    @property
    def weights(self) -> Tensor:
        """Mixture weights :math:`\\pi_c`, shape ``(C,)``."""
        return torch.softmax(self.logits, -1)

    def component_distribution(self) -> Independent | MultivariateNormal:
        """The components as one distribution with batch shape ``(C,)``."""
        scale = F.softplus(self.raw_scale)
        if self.covariance_type == "diag":
            return Independent(Normal(self.locs, scale, validate_args=False), 1)
        scale_tril = self.tril.tril(-1) + torch.diag_embed(scale)
        return MultivariateNormal(self.locs, scale_tril=scale_tril, validate_args=False)

    def forward(self, context: Tensor | None = None) -> MixtureSameFamily:
        return MixtureSameFamily(
            Categorical(logits=self.logits, validate_args=False),
            self.component_distribution(),
            validate_args=False,
        )

    def weighted_rsample(
        self, num_particles: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Stratified draws: ``num_particles`` from each component, weights :math:`\\pi_c/K`.

        Returns ``z`` of shape ``(K * C, D)``, ``log q(z)`` under the whole mixture and the
        weights (shape ``(K * C,)``, summing to one).
        """
        mixture = self(context)
        z = mixture.component_distribution.rsample((num_particles,))  # (K, C, D)
        log_q = mixture.log_prob(z)  # (K, C): each draw scored under the full mixture
        weights = (self.weights / num_particles).expand(num_particles, self.components)
        return z.reshape(-1, self.dim), log_q.reshape(-1), weights.reshape(-1)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draws from the mixture: a component per draw, then a reparameterized draw from it.

        Gradients reach means and scales through ``z``, and the weights only through
        ``log q``; for training use :meth:`weighted_rsample`.
        """
        mixture = self(context)
        shape = torch.Size(sample_shape)
        index = mixture.mixture_distribution.sample(shape)  # shape
        draws = mixture.component_distribution.rsample(shape)  # shape + (C, D)
        gather = index[..., None, None].expand(*shape, 1, self.dim)
        z = draws.gather(-2, gather).squeeze(-2)
        return z, mixture.log_prob(z)

    def initialize_from_gaussian(self, loc: Tensor, covariance: Tensor) -> None:
        """Start every component at :math:`\\mathcal{N}(m, \\Sigma)`, means spread along its axes.

        Component :math:`c` gets the mean :math:`m + \\tfrac12 L\\epsilon_c` (fixed
        :math:`\\epsilon_c \\sim \\mathcal{N}(0, I)`, half a standard deviation, so the components
        differ and training can pull them apart) and the covariance :math:`\\Sigma` (its
        diagonal for ``covariance="diag"``); equal weights. The automatic method uses this to
        start a mixture at the Laplace approximation.
        """
        with torch.no_grad():
            chol = torch.linalg.cholesky(covariance.double())
            generator = torch.Generator().manual_seed(1)
            eps = torch.randn(self.components, self.dim, generator=generator, dtype=torch.float64)
            means = loc.double() + 0.5 * eps @ chol.mT
            self.locs.copy_(means.to(self.locs))
            self.logits.zero_()
            if self.covariance_type == "diag":
                scale = torch.diagonal(covariance.double()).sqrt()
                self.raw_scale.copy_(
                    inverse_softplus(scale.to(self.raw_scale)).expand_as(self.raw_scale)
                )
            else:
                diag = torch.diagonal(chol)
                self.raw_scale.copy_(
                    inverse_softplus(diag.to(self.raw_scale)).expand_as(self.raw_scale)
                )
                self.tril.copy_(chol.tril(-1).to(self.tril).expand_as(self.tril))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, components={self.components}, covariance={self.covariance_type!r}"
