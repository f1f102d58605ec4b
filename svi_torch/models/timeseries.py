"""Time-series models."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import HalfCauchy, Normal, constraints

from ..data import Batch, as_tensor
from ..registry import MODELS
from .base import Model

__all__ = ["AutoRegressive", "lag_matrix"]


@MODELS.register("autoregressive", "AR(K) time series (posteriordb arK)")
class AutoRegressive(Model):
    """Autoregression of order :math:`K` (posteriordb's ``arK``):

    .. math::

        y_t \\sim \\mathcal{N}\\Big(\\alpha + \\sum_{k=1}^{K} \\beta_k y_{t-k},\\ \\sigma^2\\Big),
        \\quad t = K+1, \\dots, T,\\qquad
        \\alpha, \\beta_k \\sim \\mathcal{N}(0, s_0^2),\\quad \\sigma \\sim \\mathrm{HalfCauchy}(c),

    conditional on the first :math:`K` values. Each data row holds one target :math:`y_t`
    and its :math:`K` lags, so rows are conditionally independent given the parameters and
    minibatches of rows give unbiased estimates of the log likelihood.

    Args:
        y: the series, shape ``(T,)`` with ``T > order``.
        order: :math:`K`.
        prior_scale: :math:`s_0`.
        noise_prior_scale: :math:`c`.

    Example:
        >>> import torch
        >>> model = AutoRegressive(torch.randn(200), order=5)
        >>> model.dim, model.num_data
        (7, 195)
    """

    def __init__(
        self,
        y: object,
        order: int = 5,
        prior_scale: float = 10.0,
        noise_prior_scale: float = 2.5,
    ) -> None:
        super().__init__()
        y = as_tensor(y, "y")
        if y.dim() != 1:
            raise ValueError(f"y must be a series of shape (T,), got shape {tuple(y.shape)}")
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be a positive int, got {order!r}")
        if y.shape[0] <= order:
            raise ValueError(f"y has {y.shape[0]} values; an AR({order}) needs more than {order}")
        for name, value in (("prior_scale", prior_scale), ("noise_prior_scale", noise_prior_scale)):
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.order = order
        self.prior_scale = float(prior_scale)
        self.noise_prior_scale = float(noise_prior_scale)
        self.add_param("alpha")
        self.add_param("beta", (order,))
        self.add_param("sigma", (), constraints.positive)
        self.set_data(lags=lag_matrix(y, order), target=y[order:])

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        prior = Normal(0.0, self.prior_scale)
        return (
            prior.log_prob(params["alpha"])
            + prior.log_prob(params["beta"]).sum(-1)
            + HalfCauchy(self.noise_prior_scale).log_prob(params["sigma"])
        )

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def _one_step_mean(self, params: Mapping[str, Tensor], lags: Tensor) -> Tensor:
        return params["alpha"][..., None] + params["beta"] @ lags.mT

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log \\mathcal{N}(y_t; \\alpha + \\beta^\\top y_{t-K:t-1}, \\sigma^2)` per row."""
        mean = self._one_step_mean(params, batch["lags"])
        return Normal(mean, params["sigma"][..., None]).log_prob(batch["target"])

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """One-step-ahead draws :math:`y_t \\sim \\mathcal{N}(\\alpha + \\beta^\\top y_{t-K:t-1},
        \\sigma^2)` given each row's observed ``lags`` (shape ``(B, K)``, most recent first);
        ``None``: the fitted rows. Returns ``{"target": S + (B,)}``."""
        lags = (self.data if batch is None else batch)["lags"]
        mean = self._one_step_mean(params, lags)
        return {"target": mean + params["sigma"][..., None] * torch.randn_like(mean)}


def lag_matrix(y: Tensor, order: int) -> Tensor:
    """Rows :math:`(y_{t-1}, \\dots, y_{t-K})` for :math:`t = K+1, \\dots, T`: shape ``(T-K, K)``."""
    T = y.shape[0]
    return torch.stack([y[order - k : T - k] for k in range(1, order + 1)], -1)
