"""nes2000-nes: party identification (7-point scale) on ideology, race, age group, education,
gender and income in the 2000 National Election Study.

.. math::

    \\text{partyid7}_i \\sim \\mathcal{N}(\\beta_1 + \\beta_2\\,\\text{ideo}_i
        + \\beta_3\\,\\text{race}_i + \\beta_4 [a_i = 2] + \\beta_5 [a_i = 3] + \\beta_6 [a_i = 4]
        + \\beta_7\\,\\text{educ}_i + \\beta_8\\,\\text{gender}_i + \\beta_9\\,\\text{income}_i,
        \\sigma^2),

with the age group :math:`a_i` as three indicator columns (Stan's transformed data) and
flat priors on :math:`\\beta \\in \\mathbb{R}^9`, :math:`\\sigma > 0`.
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

from ..convert import int_tensor, real_tensor, stan_names
from ..linear import LinearRegression
from ..spec import Posterior

__all__ = ["POSTERIOR", "model", "data", "log_density", "quantities", "native"]

_REAL_COLUMNS = ("real_ideo", "race_adj", "educ1", "gender", "income")


def model(
    N: int,
    partyid7: Tensor,
    real_ideo: Tensor,
    race_adj: Tensor,
    educ1: Tensor,
    gender: Tensor,
    income: Tensor,
    age_discrete: Tensor,
) -> None:
    """The Stan program in Pyro; broadcasts over an outer particle plate."""
    age30_44 = (age_discrete == 2).to(partyid7.dtype)
    age45_64 = (age_discrete == 3).to(partyid7.dtype)
    age65up = (age_discrete == 4).to(partyid7.dtype)
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (9,)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", N) as idx:
        mu = (
            beta[..., 0]
            + beta[..., 1] * real_ideo[idx]
            + beta[..., 2] * race_adj[idx]
            + beta[..., 3] * age30_44[idx]
            + beta[..., 4] * age45_64[idx]
            + beta[..., 5] * age65up[idx]
            + beta[..., 6] * educ1[idx]
            + beta[..., 7] * gender[idx]
            + beta[..., 8] * income[idx]
        )
        pyro.sample("partyid7", dist.Normal(mu, sigma), obs=partyid7[idx])


def data(json_data: Mapping[str, Any]) -> dict[str, Any]:
    """The Stan data as the model's keyword arguments (``year`` is unused by Stan)."""
    out: dict[str, Any] = {"N": int(json_data["N"]), "partyid7": real_tensor(json_data["partyid7"])}
    out.update({name: real_tensor(json_data[name]) for name in _REAL_COLUMNS})
    out["age_discrete"] = int_tensor(json_data["age_discrete"])
    return out


def _design(json_data: Mapping[str, Any]) -> np.ndarray:
    col = {name: np.asarray(json_data[name], dtype=float) for name in _REAL_COLUMNS}
    age = np.asarray(json_data["age_discrete"])
    return np.column_stack(
        [np.ones(age.size), col["real_ideo"], col["race_adj"]]
        + [(age == level).astype(float) for level in (2, 3, 4)]
        + [col["educ1"], col["gender"], col["income"]]
    )


def log_density(values: Mapping[str, np.ndarray], json_data: Mapping[str, Any]) -> float:
    """Stan's ``target`` in NumPy: the normal log likelihood (flat priors add nothing)."""
    y = np.asarray(json_data["partyid7"], dtype=float)
    mu = _design(json_data) @ np.asarray(values["beta"], dtype=float)
    return float(stats.norm.logpdf(y, mu, float(values["sigma"])).sum())


def quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``beta[1..9]`` and ``sigma``."""
    return stan_names(draws, ["beta", "sigma"])


def native(json_data: Mapping[str, Any]) -> LinearRegression:
    """The native model on Stan's design (intercept, 5 covariates, 3 age indicators)."""
    return LinearRegression(torch.as_tensor(_design(json_data)), real_tensor(json_data["partyid7"]))


POSTERIOR = Posterior(
    name="nes2000-nes",
    pyro_model=model,
    pyro_data=data,
    stan_log_density=log_density,
    quantities=quantities,
    data_plate="data",
    native=native,
    notes="survey regression, 9 coefficients on integer-coded predictors (max |corr| 0.78)",
)
