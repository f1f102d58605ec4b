"""The :class:`VariationalFamily` base class: an ``nn.Module`` that returns a distribution.

A family :math:`q_\\phi(z)` lives on the unconstrained space :math:`z \\in \\mathbb{R}^D`.
Subclasses write one method, :meth:`VariationalFamily.forward`, returning a plain
``torch.distributions.Distribution`` with event shape ``(D,)``; everything else
(sampling with log density, moments, entropy, detached log density for
sticking-the-landing gradients) is derived from it here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call

from ..numerics import inverse_softplus

__all__ = ["VariationalFamily", "inverse_softplus"]


class VariationalFamily(nn.Module, ABC):
    """Base class of variational families :math:`q_\\phi(z)` over :math:`z \\in \\mathbb{R}^D`.

    Subclasses create their parameters in ``__init__`` (never lazily) and implement
    :meth:`forward`. Scales are kept positive by a transform such as softplus, never by
    clamping, so that gradients flow everywhere.

    Args:
        dim: dimension :math:`D` of the unconstrained latent vector.

    Example:
        >>> class Diagonal(VariationalFamily):
        ...     def __init__(self, dim):
        ...         super().__init__(dim)
        ...         self.loc = nn.Parameter(torch.zeros(dim))
        ...     def forward(self, context=None):
        ...         return torch.distributions.Independent(
        ...             torch.distributions.Normal(self.loc, 1.0), 1)
    """

    def __new__(cls, *args: object, **kwargs: object) -> VariationalFamily:
        # Record the constructor's arguments (every subclass, none has to pass them up), so
        # that a saved result can rebuild the family: ``svi_torch.posterior.family_spec``.
        instance = super().__new__(cls)
        instance.__dict__["_init_args"] = (args, dict(kwargs))
        return instance

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim

    @abstractmethod
    def forward(self, context: Tensor | None = None) -> Distribution:
        """Return :math:`q_\\phi(z \\mid \\text{context})` with event shape ``(dim,)``."""

    # -- derived API ---------------------------------------------------------------
    def distribution(self, context: Tensor | None = None) -> Distribution:
        """Alias of ``self(context)`` for readability."""
        return self(context)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw reparameterized :math:`z \\sim q_\\phi` and return ``(z, log q_phi(z))``.

        ``z`` has shape ``sample_shape + batch_shape + (dim,)``. Override when a fused
        computation is cheaper (flows compute the log-density while sampling).
        """
        dist = self(context)
        z = dist.rsample(torch.Size(sample_shape))
        return z, dist.log_prob(z)

    def weighted_rsample(
        self, num_particles: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Particles with weights for the ELBO: ``(z, log q(z), weights)``.

        The ELBO is estimated as :math:`\\sum_s w_s [\\log p(z_s, D) - \\log q(z_s)]`, where
        ``weights`` has the shape of ``log q`` and sums to one over the particle axis.
        Ordinary families draw ``num_particles`` i.i.d. particles with weights :math:`1/K`
        (the plain Monte Carlo mean). Mixtures override this with the stratified
        estimator: :math:`K` reparameterized draws from *every* component :math:`c`, weighted
        :math:`\\pi_c / K`, so that gradients reach the mixture weights :math:`\\pi`.
        """
        z, log_q = self.rsample_and_log_prob((num_particles,), context)
        return z, log_q, torch.full_like(log_q, 1.0 / num_particles).detach()

    def rsample(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> Tensor:
        """Reparameterized :math:`z \\sim q_\\phi` alone, for objectives that need no :math:`\\log q`.

        Override with a direct computation when the distribution object is costly to build.
        """
        return self(context).rsample(torch.Size(sample_shape))

    def rsample_and_entropy(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterized :math:`z \\sim q_\\phi` and the analytic :math:`H[q_\\phi]` together.

        What the ELBO with an analytic entropy needs each step; families override it to
        compute their scale once for both.
        """
        return self.rsample(sample_shape, context), self.entropy(context)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """:math:`\\log q_\\phi(z)`."""
        return self(context).log_prob(z)

    def log_prob_detached(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """:math:`\\log q_{\\bar\\phi}(z)` with the variational parameters detached.

        Used by the sticking-the-landing gradient (Roeder et al. 2017): gradients reach
        :math:`\\phi` only through the sample ``z``, not through the score term
        :math:`\\nabla_\\phi \\log q_\\phi(z)`, whose expectation is zero.
        """
        detached = {name: p.detach() for name, p in self.named_parameters()}
        return functional_call(self, detached, (context,)).log_prob(z)

    def sample(self, num_samples: int, context: Tensor | None = None) -> Tensor:
        """Draw ``num_samples`` samples without gradients."""
        with torch.no_grad():
            return self(context).sample((num_samples,))

    @property
    def has_analytic_entropy(self) -> bool:
        """Whether ``self().entropy()`` has a closed form.

        Probed once per instance and cached: the objective asks every step, and whether a
        closed form exists depends on the family's structure, not on its parameter values.
        """
        cached = self.__dict__.get("_has_analytic_entropy")
        if cached is None:
            try:
                with torch.no_grad():
                    self.entropy()
                cached = True
            except NotImplementedError:
                cached = False
            self.__dict__["_has_analytic_entropy"] = cached
        return cached

    def entropy(self, context: Tensor | None = None) -> Tensor:
        """Analytic entropy :math:`H[q] = -\\mathbb{E}_q[\\log q(z)]`; raises if none exists."""
        return self(context).entropy()

    def mean(self, context: Tensor | None = None, num_samples: int = 4096) -> Tensor:
        """:math:`\\mathbb{E}_q[z]`: analytic where the distribution has it, else Monte Carlo."""
        dist = self(context)
        try:
            return dist.mean
        except NotImplementedError:
            return self.sample(num_samples, context).mean(0)

    def variance(self, context: Tensor | None = None, num_samples: int = 4096) -> Tensor:
        """Marginal variances :math:`\\mathrm{Var}_q[z_d]`: analytic or Monte Carlo."""
        dist = self(context)
        try:
            return dist.variance
        except NotImplementedError:
            return self.sample(num_samples, context).var(0)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
