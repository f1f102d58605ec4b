"""A Bayesian neural network with one hidden layer, batched over particles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Batch, as_tensor
from ..registry import MODELS
from .base import Model
from .densities import normal_log_prob

__all__ = ["BayesianNeuralNetwork", "bnn_data"]

_LIKELIHOODS = ("regression", "classification")


@MODELS.register("bnn", "one-hidden-layer Bayesian neural network")
class BayesianNeuralNetwork(Model):
    """One-hidden-layer network with Gaussian priors on every weight.

    .. math::

        f_\\theta(x) = w_2^\\top \\tanh(W_1^\\top x + b_1) + b_2, \\qquad
        W_1, b_1, w_2, b_2 \\sim \\mathcal{N}(0, s_0^2),

    with :math:`y_i \\sim \\mathcal{N}(f_\\theta(x_i), \\sigma^2)` (``"regression"``, known
    noise :math:`\\sigma`) or :math:`y_i \\sim \\mathrm{Bernoulli}(\\mathrm{sigmoid}(f_\\theta(x_i)))`
    (``"classification"``). The weights are declared parameters (``W1`` of shape
    ``(D, H)``, ``b1`` ``(H,)``, ``w2`` ``(H,)``, ``b2`` ``()``), so
    :math:`\\dim z = DH + 2H + 1`; the forward pass runs for all particles at once with
    ``einsum`` over leading particle dimensions.

    Args:
        X: inputs ``(N, D)``.
        y: targets ``(N,)``: real values, or 0/1 labels for classification.
        hidden: :math:`H`, hidden units.
        likelihood: ``"regression"`` or ``"classification"``.
        prior_scale: :math:`s_0`.
        noise_scale: :math:`\\sigma` (regression only).

    Example:
        >>> X, y = bnn_data(200, 3, seed=0)
        >>> model = BayesianNeuralNetwork(X, y, hidden=8)
        >>> model.dim
        49
    """

    def __init__(
        self,
        X: object,
        y: object,
        hidden: int = 50,
        likelihood: Literal["regression", "classification"] = "regression",
        prior_scale: float = 1.0,
        noise_scale: float = 1.0,
    ) -> None:
        super().__init__()
        X, y = as_tensor(X, "X"), as_tensor(y, "y")
        if X.dim() != 2:
            raise ValueError(f"X must be a matrix of shape (N, D), got shape {tuple(X.shape)}")
        if y.dim() != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"y must be a vector with one entry per row of X ({X.shape[0]}), "
                f"got shape {tuple(y.shape)}"
            )
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if likelihood not in _LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {likelihood!r}")
        if likelihood == "classification" and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("classification needs y to contain only 0 and 1 labels")
        if not prior_scale > 0 or not noise_scale > 0:
            raise ValueError(
                f"prior_scale and noise_scale must be positive, got {prior_scale}, {noise_scale}"
            )
        self.hidden = hidden
        self.likelihood = likelihood
        self.prior_scale = float(prior_scale)
        self.noise_scale = float(noise_scale)
        self.add_param("W1", (X.shape[1], hidden))
        self.add_param("b1", (hidden,))
        self.add_param("w2", (hidden,))
        self.add_param("b2", ())
        self.set_data(X=X, y=y)

    def predict(self, params: Mapping[str, Tensor], X: Tensor) -> Tensor:
        """:math:`f_\\theta(x_n)` for every particle and row: shape ``S + (N,)``."""
        hidden = torch.tanh(
            torch.einsum("nd,...dh->...nh", X, params["W1"]) + params["b1"].unsqueeze(-2)
        )
        return torch.einsum("...nh,...h->...n", hidden, params["w2"]) + params["b2"].unsqueeze(-1)

    def log_prior_from_z(self, z: Tensor) -> Tensor:
        # Every weight has the same N(0, s0^2) prior and no constraint: one formula on z.
        return normal_log_prob(z, 0.0, self.prior_scale).sum(-1)

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        s0 = self.prior_scale
        return (
            normal_log_prob(params["W1"], 0.0, s0).sum((-2, -1))
            + normal_log_prob(params["b1"], 0.0, s0).sum(-1)
            + normal_log_prob(params["w2"], 0.0, s0).sum(-1)
            + normal_log_prob(params["b2"], 0.0, s0)
        )

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log p(y_i \\mid f_\\theta(x_i))` per point: shape ``S + (B,)``."""
        f = self.predict(params, batch["X"])
        if self.likelihood == "classification":
            return batch["y"] * f - F.softplus(f)
        return normal_log_prob(batch["y"], f, self.noise_scale)

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """:math:`y_i \\sim \\mathcal{N}(f_\\theta(x_i), \\sigma^2)` or
        :math:`\\mathrm{Bernoulli}(\\mathrm{sigmoid}(f_\\theta(x_i)))` at the rows of
        ``batch["X"]`` (the fitted inputs when ``None``): ``{"y": S + (B,)}``."""
        f = self.predict(params, (self.data if batch is None else batch)["X"])
        if self.likelihood == "classification":
            return {"y": torch.bernoulli(torch.sigmoid(f))}
        return {"y": f + self.noise_scale * torch.randn_like(f)}


def bnn_data(
    num_data: int = 1000,
    dim: int = 5,
    hidden: int = 50,
    likelihood: Literal["regression", "classification"] = "regression",
    noise_scale: float = 0.5,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(X, y)`` from a random one-hidden-layer tanh network (weights :math:`\\mathcal{N}(0, 1/\\text{fan-in})`)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=g)
    W1 = torch.randn(dim, hidden, generator=g) / dim**0.5
    w2 = torch.randn(hidden, generator=g) / hidden**0.5
    f = torch.tanh(X @ W1) @ w2
    if likelihood == "classification":
        return X, torch.bernoulli(torch.sigmoid(3 * f), generator=g)
    return X, f + noise_scale * torch.randn(num_data, generator=g)
