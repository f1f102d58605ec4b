"""Hierarchical models."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import HalfCauchy, Normal, constraints

from ..data import Batch, as_tensor
from ..registry import MODELS
from .base import Model

__all__ = ["EightSchools"]

#: Rubin (1981): estimated treatment effects and their standard errors.
EIGHT_SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
EIGHT_SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


@MODELS.register("eight_schools", "eight schools, non-centered hierarchical")
class EightSchools(Model):
    """Eight schools, non-centered:

    .. math::

        \\mu \\sim \\mathcal{N}(0, 5^2),\\quad \\tau \\sim \\mathrm{HalfCauchy}(5),\\quad
        \\tilde\\theta_j \\sim \\mathcal{N}(0, 1),\\quad
        y_j \\sim \\mathcal{N}(\\mu + \\tau\\tilde\\theta_j, \\sigma_j^2).

    ``tau`` is positive-constrained (mapped by :math:`\\exp`). Each data row carries its
    school's index, so a minibatch of schools still gives an unbiased (if noisy) estimate.

    Args:
        y: effects, default the classic data.
        sigma: their standard errors.
    """

    def __init__(self, y: object = None, sigma: object = None) -> None:
        super().__init__()
        y = as_tensor(EIGHT_SCHOOLS_Y if y is None else y, "y")
        sigma = as_tensor(EIGHT_SCHOOLS_SIGMA if sigma is None else sigma, "sigma")
        if y.dim() != 1 or sigma.shape != y.shape:
            raise ValueError(
                f"y and sigma must be vectors of equal length, got {tuple(y.shape)} "
                f"and {tuple(sigma.shape)}"
            )
        if not bool((sigma > 0).all()):
            raise ValueError("sigma (standard errors) must be positive")
        self.num_schools = y.shape[0]
        self.add_param("mu")
        self.add_param("tau", (), constraints.positive)
        self.add_param("theta_tilde", (self.num_schools,))
        self.set_data(y=y, sigma=sigma, school=torch.arange(self.num_schools))

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        return (
            Normal(0.0, 5.0).log_prob(params["mu"])
            + HalfCauchy(5.0).log_prob(params["tau"])
            + Normal(0.0, 1.0).log_prob(params["theta_tilde"]).sum(-1)
        )

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log \\mathcal{N}(y_j; \\theta_j, \\sigma_j^2)` per school of the batch."""
        theta = self.theta(params)[..., batch["school"].long()]
        return Normal(theta, batch["sigma"]).log_prob(batch["y"])

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """:math:`y_j \\sim \\mathcal{N}(\\theta_j, \\sigma_j^2)` for the rows of ``batch``, which
        name a ``school`` (index) and its standard error ``sigma``; ``None``: the fitted
        schools. Returns ``{"y": S + (B,)}``."""
        batch = self.data if batch is None else batch
        theta = self.theta(params)[..., batch["school"].long()]
        return {"y": theta + batch["sigma"] * torch.randn_like(theta)}

    def derived(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The school effects ``theta`` (see :meth:`theta`)."""
        return {"theta": self.theta(params)}

    def theta(self, params: Mapping[str, Tensor]) -> Tensor:
        """School effects :math:`\\theta_j = \\mu + \\tau\\tilde\\theta_j`."""
        return params["mu"][..., None] + params["tau"][..., None] * params["theta_tilde"]
