"""kidiq-kidscore_interaction: child's test score on mother's IQ, school and their interaction.

Stan program (posteriordb)::

    transformed data { vector[N] inter = mom_hs .* mom_iq; }
    parameters { vector[4] beta; real<lower=0> sigma; }
    model {
      sigma ~ cauchy(0, 2.5);
      kid_score ~ normal(beta[1] + beta[2] * mom_hs + beta[3] * mom_iq + beta[4] * inter, sigma);
    }

``beta`` is flat (``ImproperUniform``); ``sigma ~ cauchy(0, 2.5)`` on ``sigma > 0`` is a
half-Cauchy up to a constant. The predictors are not centred, so intercept and slopes are
strongly correlated (|corr| up to 0.991). The model stacks the design matrix and is
written for one draw (``X[idx] @ beta``). The data's ``mom_hs_new`` and ``mom_iq_new``
are not read by the program.
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
from torch.distributions import HalfCauchy, constraints

from ..convert import real_tensor, stan_names
from ..linear import LinearRegression
from ..spec import Posterior

__all__ = ["POSTERIOR", "kidscore_interaction"]


def kidscore_interaction(N: int, kid_score: Tensor, mom_iq: Tensor, mom_hs: Tensor) -> None:
    """The Stan program in Pyro, written for one draw (``X[idx] @ beta``)."""
    inter = mom_hs * mom_iq
    X = torch.stack([torch.ones_like(mom_hs), mom_hs, mom_iq, inter], dim=-1)
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    with pyro.plate("data", N) as idx:
        pyro.sample("kid_score", dist.Normal(X[idx] @ beta, sigma), obs=kid_score[idx])


def _pyro_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "N": int(data["N"]),
        "kid_score": real_tensor(data["kid_score"]),
        "mom_iq": real_tensor(data["mom_iq"]),
        "mom_hs": real_tensor(data["mom_hs"]),
    }


def _stan_log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    beta, sigma = values["beta"], float(values["sigma"])
    mom_hs, mom_iq = np.asarray(data["mom_hs"], float), np.asarray(data["mom_iq"], float)
    mu = beta[0] + beta[1] * mom_hs + beta[2] * mom_iq + beta[3] * mom_hs * mom_iq
    return float(
        stats.cauchy.logpdf(sigma, 0.0, 2.5)
        + stats.norm.logpdf(np.asarray(data["kid_score"], float), mu, sigma).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["beta", "sigma"])


def _native(data: Mapping[str, Any]) -> LinearRegression:
    mom_hs, mom_iq = real_tensor(data["mom_hs"]), real_tensor(data["mom_iq"])
    X = torch.stack([torch.ones_like(mom_hs), mom_hs, mom_iq, mom_hs * mom_iq], dim=-1)
    return LinearRegression(
        X,
        real_tensor(data["kid_score"]),
        coef="beta",
        sigma_prior=HalfCauchy(real_tensor(2.5), validate_args=False),
    )


POSTERIOR = Posterior(
    name="kidiq-kidscore_interaction",
    pyro_model=kidscore_interaction,
    pyro_data=_pyro_data,
    stan_log_density=_stan_log_density,
    quantities=_quantities,
    data_plate="data",
    native=_native,
    notes="interaction of uncentred predictors, flat beta: intercept-slope |corr| up to 0.991",
)
