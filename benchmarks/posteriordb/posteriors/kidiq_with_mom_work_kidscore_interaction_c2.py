"""kidiq_with_mom_work-kidscore_interaction_c2: child test score on the mother's high-school
degree and IQ, centred on reference points (0.5, 100), with their interaction.

.. math::

    \\text{kid\\_score}_i \\sim \\mathcal{N}(\\beta_1 + \\beta_2 h_i + \\beta_3 q_i
        + \\beta_4 h_i q_i, \\sigma^2),
    \\quad h_i = \\text{mom\\_hs}_i - 0.5, \\; q_i = \\text{mom\\_iq}_i - 100,

with Stan's flat priors on :math:`\\beta \\in \\mathbb{R}^4` and :math:`\\sigma > 0`.
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


def model(N: int, kid_score: Tensor, mom_hs: Tensor, mom_iq: Tensor) -> None:
    """The Stan program in Pyro.

    It broadcasts over an outer particle plate (each plate owns a batch dimension, the
    Pyro idiom): under ``pyro.plate("particles", K, dim=-2)`` the coefficients have shape
    ``(K, 1, 4)`` and the mean ``(K, N)``.
    """
    c2_mom_hs = mom_hs - 0.5
    c2_mom_iq = mom_iq - 100
    inter = c2_mom_hs * c2_mom_iq
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", N) as idx:
        mu = (
            beta[..., 0]
            + beta[..., 1] * c2_mom_hs[idx]
            + beta[..., 2] * c2_mom_iq[idx]
            + beta[..., 3] * inter[idx]
        )
        pyro.sample("kid_score", dist.Normal(mu, sigma), obs=kid_score[idx])


def data(json_data: Mapping[str, Any]) -> dict[str, Any]:
    """The Stan data as the model's keyword arguments (``mom_work`` is unused by Stan)."""
    return {
        "N": int(json_data["N"]),
        "kid_score": real_tensor(json_data["kid_score"]),
        "mom_hs": real_tensor(json_data["mom_hs"]),
        "mom_iq": real_tensor(json_data["mom_iq"]),
    }


def _design(json_data: Mapping[str, Any]) -> np.ndarray:
    hs = np.asarray(json_data["mom_hs"], dtype=float) - 0.5
    iq = np.asarray(json_data["mom_iq"], dtype=float) - 100.0
    return np.column_stack([np.ones_like(hs), hs, iq, hs * iq])


def log_density(values: Mapping[str, np.ndarray], json_data: Mapping[str, Any]) -> float:
    """Stan's ``target`` in NumPy: the normal log likelihood (flat priors add nothing)."""
    y = np.asarray(json_data["kid_score"], dtype=float)
    mu = _design(json_data) @ np.asarray(values["beta"], dtype=float)
    return float(stats.norm.logpdf(y, mu, float(values["sigma"])).sum())


def quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``beta[1..4]`` and ``sigma``."""
    return stan_names(draws, ["beta", "sigma"])


def native(json_data: Mapping[str, Any]) -> LinearRegression:
    """The native model on the centred design :math:`[1, h, q, hq]`."""
    return LinearRegression(
        torch.as_tensor(_design(json_data)), real_tensor(json_data["kid_score"])
    )


POSTERIOR = Posterior(
    name="kidiq_with_mom_work-kidscore_interaction_c2",
    pyro_model=model,
    pyro_data=data,
    stan_log_density=log_density,
    quantities=quantities,
    data_plate="data",
    native=native,
    notes="centred interaction regression with flat priors (max |corr| 0.68): an easy baseline",
)
