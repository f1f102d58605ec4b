"""earnings-earn_height: earnings in dollars on height in inches, flat priors, N = 1192.

Stan program (posteriordb)::

    data { int<lower=0> N; vector[N] earn; vector[N] height; }
    parameters { vector[2] beta; real<lower=0> sigma; }
    model { earn ~ normal(beta[1] + beta[2] * height, sigma); }

No prior is stated, so ``beta`` and ``sigma`` are flat on their supports
(``ImproperUniform``). The unstandardised scales put the posterior sds between 1.4e2 and
9.7e3, with an intercept-slope correlation of -0.998. The likelihood is written for one
draw (``beta[0] + beta[1] * height``), as one reads it off the Stan program.
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
from torch.distributions import constraints

from ..convert import real_tensor, stan_names
from ..linear import LinearRegression
from ..spec import Posterior

__all__ = ["POSTERIOR", "earn_height"]


def earn_height(N: int, earn: Tensor, height: Tensor) -> None:
    """The Stan program in Pyro, written for one draw."""
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", N) as idx:
        pyro.sample("earn", dist.Normal(beta[0] + beta[1] * height[idx], sigma), obs=earn[idx])


def _pyro_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "N": int(data["N"]),
        "earn": real_tensor(data["earn"]),
        "height": real_tensor(data["height"]),
    }


def _stan_log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    beta, sigma = values["beta"], float(values["sigma"])
    height = np.asarray(data["height"], float)
    return float(
        stats.norm.logpdf(np.asarray(data["earn"], float), beta[0] + beta[1] * height, sigma).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["beta", "sigma"])


def _native(data: Mapping[str, Any]) -> LinearRegression:
    height = real_tensor(data["height"])
    X = torch.stack([torch.ones_like(height), height], dim=-1)
    return LinearRegression(X, real_tensor(data["earn"]), coef="beta")


POSTERIOR = Posterior(
    name="earnings-earn_height",
    pyro_model=earn_height,
    pyro_data=_pyro_data,
    stan_log_density=_stan_log_density,
    quantities=_quantities,
    data_plate="data",
    native=_native,
    notes="unstandardised, flat priors: dollar-scale sds 1.4e2 to 9.7e3, intercept-slope corr -0.998",
)
