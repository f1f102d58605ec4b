"""separation_synth-logistic_near_separation: logistic regression on nearly separated data.

N = 60 rows, D = 3 predictors; the first separates the classes except for the two points
nearest its boundary, whose labels are swapped::

    alpha ~ N(0, 10)     beta ~ N(0, 10)     y ~ Bernoulli(logit^-1(alpha + X beta))

The likelihood of beta[1] is a long, nearly flat ridge bounded only by those two points and
the weak prior: its posterior is wide and skewed, strongly correlated with alpha.
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

__all__ = ["POSTERIOR", "logistic_near_separation"]


def logistic_near_separation(N: int, D: int, X: Tensor, y: Tensor) -> None:
    """The model as a user writes it in Pyro (one draw at a time: ``X @ beta``)."""
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)


def _log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    alpha, beta = float(values["alpha"]), np.asarray(values["beta"], float)
    X, y = np.asarray(data["X"], float), np.asarray(data["y"], float)
    logits = alpha + X @ beta
    # log sigmoid(l) = -log(1 + e^-l), stably: -logaddexp(0, -l).
    return float(
        stats.norm.logpdf(alpha, 0.0, 10.0)
        + stats.norm.logpdf(beta, 0.0, 10.0).sum()
        - (y * np.logaddexp(0.0, -logits) + (1 - y) * np.logaddexp(0.0, logits)).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["alpha", "beta"])


POSTERIOR = Posterior(
    name="separation_synth-logistic_near_separation",
    pyro_model=logistic_near_separation,
    pyro_data=model_data,
    stan_log_density=_log_density,
    quantities=_quantities,
    notes="logistic regression with near-separation and weak N(0, 10) priors: a wide, "
    "skewed coefficient on a long likelihood ridge",
)
