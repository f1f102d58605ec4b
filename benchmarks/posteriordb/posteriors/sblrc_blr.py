"""sblrc-blr: Bayesian linear regression, N = 100, D = 5, no intercept (posteriordb's ``blr``).

Stan program (posteriordb), every term a ``target +=``::

    parameters { vector[D] beta; real<lower=0> sigma; }
    model {
      target += normal_lpdf(beta | 0, 10);
      target += normal_lpdf(sigma | 0, 10);
      target += normal_lpdf(y | X * beta, sigma);
    }

Translated literally: ``beta`` and ``sigma`` are flat sites on their supports
(``ImproperUniform``) and each ``target +=`` is a ``pyro.factor``, the likelihood's inside
the data plate. The same program with other data is ``sblri-blr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
from scipy import stats
from torch import Tensor
from torch.distributions import HalfNormal, Normal, constraints

from ..convert import real_tensor, stan_names
from ..linear import LinearRegression
from ..spec import Posterior

__all__ = ["POSTERIOR", "blr", "BLR"]


def blr(N: int, D: int, X: Tensor, y: Tensor) -> None:
    """The Stan program in Pyro; broadcasts over leading particle dimensions."""
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (D,)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    pyro.factor("beta_prior", dist.Normal(0.0, 10.0).log_prob(beta).sum(-1))
    pyro.factor("sigma_prior", dist.Normal(0.0, 10.0).log_prob(sigma))
    with pyro.plate("data", N) as idx:
        mean = (X[idx] * beta).sum(-1)
        pyro.factor("y", dist.Normal(mean, sigma).log_prob(y[idx]))


def _pyro_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "N": int(data["N"]),
        "D": int(data["D"]),
        "X": real_tensor(data["X"]),
        "y": real_tensor(data["y"]),
    }


def _stan_log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    X, y = np.asarray(data["X"], float), np.asarray(data["y"], float)
    beta, sigma = values["beta"], float(values["sigma"])
    return float(
        stats.norm.logpdf(beta, 0.0, 10.0).sum()
        + stats.norm.logpdf(sigma, 0.0, 10.0)
        + stats.norm.logpdf(y, X @ beta, sigma).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["beta", "sigma"])


def _native(data: Mapping[str, Any]) -> LinearRegression:
    zero, ten = real_tensor(0.0), real_tensor(10.0)
    return LinearRegression(
        real_tensor(data["X"]),
        real_tensor(data["y"]),
        coef="beta",
        coef_prior=Normal(zero, ten, validate_args=False),
        sigma_prior=HalfNormal(ten, validate_args=False),
    )


#: The parts shared with ``sblri-blr`` (the same Stan program on other data).
BLR: dict[str, Any] = {
    "pyro_model": blr,
    "pyro_data": _pyro_data,
    "stan_log_density": _stan_log_density,
    "quantities": _quantities,
    "data_plate": "data",
    "native": _native,
}

POSTERIOR = Posterior(
    name="sblrc-blr",
    notes="posterior sds near 1e-3 against prior sds of 10; betas correlated (|corr| up to 0.82)",
    **BLR,
)
