"""mesquite-mesquite: the weight of mesquite bushes on their raw (unlogged) dimensions.

.. math::

    \\text{weight}_i \\sim \\mathcal{N}(\\beta_1 + \\beta_2\\,\\text{diam1}_i
        + \\beta_3\\,\\text{diam2}_i + \\beta_4\\,\\text{canopy\\_height}_i
        + \\beta_5\\,\\text{total\\_height}_i + \\beta_6\\,\\text{density}_i
        + \\beta_7\\,\\text{group}_i, \\sigma^2),

with flat priors on :math:`\\beta \\in \\mathbb{R}^7` and :math:`\\sigma > 0`; 46 bushes.
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

__all__ = ["POSTERIOR", "model", "data", "log_density", "quantities", "native"]

_COLUMNS = ("diam1", "diam2", "canopy_height", "total_height", "density", "group")


def model(
    N: int,
    weight: Tensor,
    diam1: Tensor,
    diam2: Tensor,
    canopy_height: Tensor,
    total_height: Tensor,
    density: Tensor,
    group: Tensor,
) -> None:
    """The Stan program in Pyro; broadcasts over an outer particle plate."""
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (7,)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", N) as idx:
        mu = (
            beta[..., 0]
            + beta[..., 1] * diam1[idx]
            + beta[..., 2] * diam2[idx]
            + beta[..., 3] * canopy_height[idx]
            + beta[..., 4] * total_height[idx]
            + beta[..., 5] * density[idx]
            + beta[..., 6] * group[idx]
        )
        pyro.sample("weight", dist.Normal(mu, sigma), obs=weight[idx])


def data(json_data: Mapping[str, Any]) -> dict[str, Any]:
    """The Stan data as the model's keyword arguments."""
    out: dict[str, Any] = {"N": int(json_data["N"]), "weight": real_tensor(json_data["weight"])}
    out.update({name: real_tensor(json_data[name]) for name in _COLUMNS})
    return out


def _design(json_data: Mapping[str, Any]) -> np.ndarray:
    columns = [np.asarray(json_data[name], dtype=float) for name in _COLUMNS]
    return np.column_stack([np.ones(columns[0].size), *columns])


def log_density(values: Mapping[str, np.ndarray], json_data: Mapping[str, Any]) -> float:
    """Stan's ``target`` in NumPy: the normal log likelihood (flat priors add nothing)."""
    y = np.asarray(json_data["weight"], dtype=float)
    mu = _design(json_data) @ np.asarray(values["beta"], dtype=float)
    return float(stats.norm.logpdf(y, mu, float(values["sigma"])).sum())


def quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``beta[1..7]`` and ``sigma``."""
    return stan_names(draws, ["beta", "sigma"])


def native(json_data: Mapping[str, Any]) -> LinearRegression:
    """The native model on the raw design (intercept and six columns)."""
    return LinearRegression(torch.as_tensor(_design(json_data)), real_tensor(json_data["weight"]))


POSTERIOR = Posterior(
    name="mesquite-mesquite",
    pyro_model=model,
    pyro_data=data,
    stan_log_density=log_density,
    quantities=quantities,
    data_plate="data",
    native=native,
    notes="raw-scale regression with flat priors, posterior sds 30 to 220, N = 46",
)
