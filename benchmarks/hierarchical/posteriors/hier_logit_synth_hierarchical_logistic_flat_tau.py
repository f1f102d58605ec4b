"""hier_logit_synth-hierarchical_logistic_flat_tau: a new user's hierarchical logistic regression.

200 rows in 5 groups of 40, three predictors, ten parameters, and the flat prior on the
group scale a new user reaches for::

    mu ~ N(0, 5)     tau ~ Uniform(0, 100)     beta ~ N(0, 5)
    alpha_j ~ N(mu, tau)     y_i ~ Bernoulli(logit^-1(alpha[g_i] + x_i . beta))

With five groups the data say little about tau, and the flat prior lets its posterior
reach far to the right: skewed, with a long tail and a funnel at small tau.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
from scipy import stats
from torch import Tensor

from ...posteriordb.convert import stan_names
from ...posteriordb.spec import Posterior
from . import model_data

__all__ = ["POSTERIOR", "hierarchical_logistic_flat_tau"]


def hierarchical_logistic_flat_tau(
    N: int, J: int, D: int, group: Tensor, X: Tensor, y: Tensor
) -> None:
    """The model as a user writes it in Pyro (one draw at a time: ``X @ beta``)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.Uniform(0.0, 100.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 5.0).expand([D]).to_event(1))
    with pyro.plate("groups", J):
        alpha = pyro.sample("alpha", dist.Normal(mu, tau))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Bernoulli(logits=alpha[group] + X @ beta), obs=y)


def _log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    mu, tau = float(values["mu"]), float(values["tau"])
    beta, alpha = np.asarray(values["beta"], float), np.asarray(values["alpha"], float)
    X, y = np.asarray(data["X"], float), np.asarray(data["y"], float)
    logits = alpha[np.asarray(data["group"])] + X @ beta
    return float(
        stats.norm.logpdf(mu, 0.0, 5.0)
        + stats.uniform.logpdf(tau, 0.0, 100.0)
        + stats.norm.logpdf(beta, 0.0, 5.0).sum()
        + stats.norm.logpdf(alpha, mu, tau).sum()
        - (y * np.logaddexp(0.0, -logits) + (1 - y) * np.logaddexp(0.0, logits)).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["mu", "tau", "beta", "alpha"])


POSTERIOR = Posterior(
    name="hier_logit_synth-hierarchical_logistic_flat_tau",
    pyro_model=hierarchical_logistic_flat_tau,
    pyro_data=model_data,
    stan_log_density=_log_density,
    quantities=_quantities,
    notes="hierarchical logistic regression, 5 groups, flat Uniform(0, 100) prior on the "
    "group scale tau: a skewed, long-tailed scale with little data",
)
