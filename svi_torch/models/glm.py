"""Generalised linear models without a closed-form posterior."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import MultivariateNormal

from ..data import Batch, as_tensor
from ..registry import MODELS
from .base import Model
from .densities import normal_log_prob

__all__ = ["BayesianLogisticRegression"]


@MODELS.register("logistic_regression", "Bayesian logistic regression")
class BayesianLogisticRegression(Model):
    """Logistic regression :math:`y_i \\sim \\mathrm{Bernoulli}(\\mathrm{sigmoid}(x_i^\\top\\beta))`,
    :math:`\\beta \\sim \\mathcal{N}(0, s_0^2 I)`.

    The log likelihood is :math:`\\sum_i y_i \\eta_i - \\log(1 + e^{\\eta_i})` with
    :math:`\\eta_i = x_i^\\top\\beta`, evaluated for all particles in one matrix product.

    Args:
        X: design matrix ``(N, D)``.
        y: labels in {0, 1}, shape ``(N,)``.
        prior_scale: :math:`s_0`.
    """

    def __init__(self, X: object, y: object, prior_scale: float = 1.0) -> None:
        super().__init__()
        X, y = as_tensor(X, "X"), as_tensor(y, "y")
        if X.dim() != 2:
            raise ValueError(f"X must be a matrix of shape (N, D), got shape {tuple(X.shape)}")
        if y.dim() != 1:
            raise ValueError(f"y must be a vector of shape (N,), got shape {tuple(y.shape)}")
        if X.shape[0] != y.shape[0]:
            raise ValueError(
                f"X has {X.shape[0]} rows but y has {y.shape[0]} entries; they must match"
            )
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("y must contain only 0 and 1 labels")
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {prior_scale}")
        self.prior_scale = float(prior_scale)
        self.add_param("beta", (X.shape[1],))
        self.set_data(X=X, y=y)

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        return normal_log_prob(params["beta"], 0.0, self.prior_scale).sum(-1)

    def unconstrained_prior(self) -> MultivariateNormal:
        """:math:`\\mathcal{N}(0, s_0^2 I)` over :math:`z = \\beta` (real-valued: no transform)."""
        eye = torch.eye(self.dim, dtype=self.X.dtype, device=self.X.device)
        return MultivariateNormal(torch.zeros_like(eye[0]), eye * self.prior_scale**2)

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`y_i \\eta_i - \\log(1 + e^{\\eta_i})` per point: shape ``S + (B,)``."""
        logits = params["beta"] @ batch["X"].mT  # (S, B)
        return batch["y"] * logits - F.softplus(logits)

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """:math:`y_i \\sim \\mathrm{Bernoulli}(\\mathrm{sigmoid}(x_i^\\top\\beta))` at the rows of
        ``batch["X"]`` (the fitted design when ``None``): ``{"y": S + (B,)}`` of 0/1 values."""
        X = (self.data if batch is None else batch)["X"]
        return {"y": torch.bernoulli(torch.sigmoid(params["beta"] @ X.mT))}
