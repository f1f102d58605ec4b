"""A native Gaussian linear regression with the priors posteriordb's regressions state.

.. math::

    y_i \\sim \\mathcal{N}(a + x_i^\\top\\beta,\\ \\sigma^2),\\qquad
    \\beta_j \\sim p_\\beta,\\quad a \\sim p_a,\\quad \\sigma \\sim p_\\sigma,

where each prior is a univariate ``torch.distributions.Distribution`` applied elementwise,
or ``None`` for Stan's flat prior (no statement about the parameter: a constant density on
its support). The intercept :math:`a` is a separate parameter only where the Stan program
has one (brms's centred ``Intercept``); elsewhere the caller puts a column of ones in the
design, as the Stan program does. The design is the Stan program's transformed data,
computed by the caller from the raw data.

The parameter names are the Stan program's (``beta``, ``sigma``; ``b``, ``Intercept``),
so the draws of the native model and of the Pyro translation map to the reference
quantities by one function.

Example:
    >>> import torch
    >>> from torch.distributions import HalfCauchy
    >>> X = torch.randn(50, 2, dtype=torch.float64)
    >>> model = LinearRegression(X, X.sum(-1), sigma_prior=HalfCauchy(2.5))
    >>> model.dim, model.num_data
    (3, 50)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from svi_torch.data import Batch
from svi_torch.models import Model
from svi_torch.models.densities import normal_log_prob

__all__ = ["LinearRegression"]


class LinearRegression(Model):
    """Gaussian linear regression with elementwise (or flat) priors; see the module docstring.

    Args:
        X: design matrix ``(N, D)`` (the Stan program's transformed data).
        y: responses ``(N,)``.
        coef: name of the coefficient vector :math:`\\beta`.
        coef_prior: prior of each coefficient, or ``None`` (flat).
        sigma_prior: prior of :math:`\\sigma` on :math:`(0, \\infty)`, or ``None`` (flat).
        intercept: name of a separate intercept :math:`a`, or ``None`` for none.
        intercept_prior: prior of the intercept, or ``None`` (flat).

    Raises:
        ValueError: for a design that is not ``(N, D)``, a response that does not match
            it, or a prior with a batch or event shape (priors are elementwise).
    """

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        *,
        coef: str = "beta",
        coef_prior: Distribution | None = None,
        sigma_prior: Distribution | None = None,
        intercept: str | None = None,
        intercept_prior: Distribution | None = None,
    ) -> None:
        super().__init__()
        if X.dim() != 2:
            raise ValueError(f"X must be a matrix of shape (N, D), got shape {tuple(X.shape)}")
        if y.shape != X.shape[:1]:
            raise ValueError(
                f"y has shape {tuple(y.shape)} but X has {X.shape[0]} rows; give one "
                "response per row"
            )
        for name, prior in (
            ("coef_prior", coef_prior),
            ("sigma_prior", sigma_prior),
            ("intercept_prior", intercept_prior),
        ):
            if prior is not None and (prior.batch_shape or prior.event_shape):
                raise ValueError(
                    f"{name} must be a univariate distribution applied elementwise, got "
                    f"batch shape {tuple(prior.batch_shape)} and event shape "
                    f"{tuple(prior.event_shape)}"
                )
        self.coef = coef
        self.intercept = intercept
        self.coef_prior = coef_prior
        self.sigma_prior = sigma_prior
        self.intercept_prior = intercept_prior
        self.add_param(coef, (X.shape[1],))
        if intercept is not None:
            self.add_param(intercept)
        self.add_param("sigma", (), constraints.positive)
        self.set_data(X=X, y=y)

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        """:math:`\\sum_j \\log p_\\beta(\\beta_j) + \\log p_a(a) + \\log p_\\sigma(\\sigma)` (flat terms 0)."""
        sigma = params["sigma"]
        total = sigma.new_zeros(sigma.shape)
        if self.coef_prior is not None:
            total = total + self.coef_prior.log_prob(params[self.coef]).sum(-1)
        if self.intercept is not None and self.intercept_prior is not None:
            total = total + self.intercept_prior.log_prob(params[self.intercept])
        if self.sigma_prior is not None:
            total = total + self.sigma_prior.log_prob(sigma)
        return total

    def mean(self, params: Mapping[str, Tensor], X: Tensor) -> Tensor:
        """:math:`a + X\\beta` for every particle: shape ``S + (B,)``."""
        mean = params[self.coef] @ X.mT
        if self.intercept is not None:
            mean = mean + params[self.intercept][..., None]
        return mean

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log \\mathcal{N}(y_i; a + x_i^\\top\\beta, \\sigma^2)` per row: ``S + (B,)``."""
        return normal_log_prob(
            batch["y"], self.mean(params, batch["X"]), params["sigma"][..., None]
        )

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """Responses :math:`y_i = a + x_i^\\top\\beta + \\sigma\\varepsilon_i`: ``{"y": S + (B,)}``."""
        X = (self.data if batch is None else batch)["X"]
        mean = self.mean(params, X)
        return {"y": mean + params["sigma"][..., None] * torch.randn_like(mean)}
