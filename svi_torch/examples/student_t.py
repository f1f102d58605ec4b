"""The Student-t family written in docs/extending.md: a new family in about twenty lines.

Heavier tails than a Gaussian guard the importance weights :math:`p/q` against blowing up
where the posterior has more mass in its tails than :math:`q`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, StudentT

from svi_torch.families import VariationalFamily, inverse_softplus

__all__ = ["StudentTFamily"]


class StudentTFamily(VariationalFamily):
    """:math:`q(z) = \\prod_d t_\\nu(z_d; \\mu_d, s_d)`, with :math:`\\nu = 2 + \\mathrm{softplus}(\\cdot)`
    learned (:math:`\\nu > 2`: finite variance)."""

    def __init__(self, dim: int, init_scale: float = 0.1, init_df: float = 5.0) -> None:
        super().__init__(dim)  # checks dim, stores self.dim
        self.loc = nn.Parameter(torch.zeros(dim))
        self.raw_scale = nn.Parameter(inverse_softplus(torch.full((dim,), init_scale)))
        self.raw_df = nn.Parameter(inverse_softplus(torch.tensor(init_df - 2.0)))

    def forward(self, context=None):
        df = 2.0 + F.softplus(self.raw_df)
        scale = F.softplus(self.raw_scale)
        return Independent(StudentT(df, self.loc, scale), 1)
