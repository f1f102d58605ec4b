"""A point mass :math:`q(z) = \\delta(z - \\hat z)`: the MAP baseline.

With :math:`q = \\delta_{\\hat z}` the ELBO reduces to :math:`\\log p(\\hat z, D)` plus the
entropy of a point mass, which is :math:`-\\infty` for a continuous distribution. We drop
that constant (entropy taken as 0, so ``ELBO(Delta) = log p(z_hat, D)``): maximising it is
maximum a posteriori estimation. Note that it is MAP **in the unconstrained space**:
:math:`\\log p(z, D) = \\log p(T(z), D) + \\log\\lvert\\det J_T(z)\\rvert` includes the
log-Jacobian of the constraining map, so for a positive parameter :math:`\\sigma = e^z` the
optimum maximises :math:`p(\\sigma \\mid D)\\,\\sigma`, not :math:`p(\\sigma \\mid D)` (the MAP
of a density depends on the parameterisation). Its "ELBO" is not a bound on
:math:`\\log p(D)`; compare point estimates, not ELBOs.
"""

from __future__ import annotations

import torch
from pyro.distributions import Delta as PyroDelta
from torch import Tensor, nn

from ..registry import FAMILIES
from .base import VariationalFamily
from .gaussian import _initial_loc

__all__ = ["Delta"]


@FAMILIES.register("delta", "point mass: MAP in the unconstrained space")
class Delta(VariationalFamily):
    """Point estimate :math:`\\hat z` (``loc``); samples are ``loc`` itself, with gradient.

    ``log_prob`` is 0 at ``loc`` (Pyro's ``Delta`` convention), ``entropy()`` is defined as
    0 (see the module note), ``variance()`` is 0.

    Args:
        dim: dimension :math:`D`.
        init_loc: initial point (scalar or ``(D,)``).

    Example:
        >>> q = Delta(3, init_loc=1.0)
        >>> q.rsample_and_log_prob((2,))[0]
        tensor([[1., 1., 1.],
                [1., 1., 1.]], grad_fn=<ExpandBackward0>)
    """

    def __init__(self, dim: int, init_loc: Tensor | float = 0.0) -> None:
        super().__init__(dim)
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))

    def forward(self, context: Tensor | None = None) -> PyroDelta:
        return PyroDelta(self.loc, event_dim=1)

    def entropy(self, context: Tensor | None = None) -> Tensor:
        """0 by convention (a point mass has entropy :math:`-\\infty`; the constant is dropped)."""
        return self.loc.new_zeros(())

    def variance(self, context: Tensor | None = None, num_samples: int = 4096) -> Tensor:
        return torch.zeros_like(self.loc)
