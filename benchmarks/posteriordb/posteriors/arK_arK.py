"""arK-arK: an autoregression of order K = 5 on T = 200 points.

Stan program (posteriordb)::

    parameters { real alpha; array[K] real beta; real<lower=0> sigma; }
    model {
      alpha ~ normal(0, 10);
      beta ~ normal(0, 10);
      sigma ~ cauchy(0, 2.5);
      for (t in (K + 1):T) {
        real mu = alpha;
        for (k in 1:K) mu = mu + beta[k] * y[t - k];
        y[t] ~ normal(mu, sigma);
      }
    }

The likelihood conditions on the first K values, so its terms are conditionally
independent rows :math:`(y_t, y_{t-1}, \\dots, y_{t-K})`: the Pyro model builds the lag
matrix (Stan's inner loop) and puts the rows in the data plate. ``sigma ~ cauchy(0, 2.5)``
on ``sigma > 0`` is a half-Cauchy up to a constant.

The native model is :class:`svi_torch.models.AutoRegressive` (same names ``alpha``,
``beta``, ``sigma`` and the same priors), extended here with the per-row likelihood and
its one-step-ahead simulation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import stats
from torch import Tensor

from svi_torch.data import Batch
from svi_torch.models import AutoRegressive

from ..convert import real_tensor, stan_names
from ..spec import Posterior

__all__ = ["POSTERIOR", "ark", "ArK"]


def ark(K: int, T: int, y: Tensor) -> None:
    """The Stan program in Pyro; broadcasts over leading particle dimensions."""
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    # Row t - K - 1 holds y[t - 1], ..., y[t - K] (Stan's 1-based t = K + 1, ..., T).
    lags = torch.stack([y[K - k : T - k] for k in range(1, K + 1)], dim=-1)
    with pyro.plate("data", T - K) as idx:
        mu = alpha + (lags[idx] * beta).sum(-1)
        pyro.sample("y", dist.Normal(mu, sigma), obs=y[K:][idx])


def _pyro_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"K": int(data["K"]), "T": int(data["T"]), "y": real_tensor(data["y"])}


def _stan_log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    K, T = int(data["K"]), int(data["T"])
    y = np.asarray(data["y"], float)
    alpha, beta, sigma = float(values["alpha"]), values["beta"], float(values["sigma"])
    target = (
        stats.norm.logpdf(alpha, 0.0, 10.0)
        + stats.norm.logpdf(beta, 0.0, 10.0).sum()
        + stats.cauchy.logpdf(sigma, 0.0, 2.5)
    )
    # Stan's loops, 0-based: y[t] for t = K .. T-1 regressed on y[t-1], ..., y[t-K].
    mu = np.array(
        [alpha + sum(beta[k - 1] * y[t - k] for k in range(1, K + 1)) for t in range(K, T)]
    )
    return float(target + stats.norm.logpdf(y[K:], mu, sigma).sum())


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["alpha", "beta", "sigma"])


class ArK(AutoRegressive):
    """:class:`~svi_torch.models.AutoRegressive` with the per-row hooks of the suite.

    A row is a target :math:`y_t` with its lags, so the per-row log likelihood is
    :math:`\\log\\mathcal{N}(y_t; \\alpha + \\sum_k \\beta_k y_{t-k}, \\sigma^2)` and the
    simulation is one step ahead: new targets given the observed lags.
    """

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        mean = params["alpha"][..., None] + params["beta"] @ batch["lags"].mT
        return torch.distributions.Normal(mean, params["sigma"][..., None]).log_prob(
            batch["target"]
        )

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """One-step-ahead targets :math:`y_t \\mid y_{t-1..t-K}`: ``{"target": S + (B,)}``."""
        lags = (self.data if batch is None else batch)["lags"]
        mean = params["alpha"][..., None] + params["beta"] @ lags.mT
        return {"target": mean + params["sigma"][..., None] * torch.randn_like(mean)}


def _native(data: Mapping[str, Any]) -> ArK:
    return ArK(
        real_tensor(data["y"]), order=int(data["K"]), prior_scale=10.0, noise_prior_scale=2.5
    )


POSTERIOR = Posterior(
    name="arK-arK",
    pyro_model=ark,
    pyro_data=_pyro_data,
    stan_log_density=_stan_log_density,
    quantities=_quantities,
    data_plate="data",
    native=_native,
    notes="AR(5) on 195 conditional rows: correlated lag coefficients (|corr| up to 0.63)",
)
