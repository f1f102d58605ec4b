"""binomial_synth-binomial_hierarchy: a logit-normal binomial hierarchy with few groups.

Twelve groups with 7 to 60 trials each (a rats-like table)::

    mu ~ N(0, 2.5)     sigma ~ HalfNormal(1)
    theta_j ~ N(mu, sigma)      y_j ~ Binomial(n_j, logit^-1(theta_j))

With twelve groups and small counts the between-group scale sigma is poorly determined and
its posterior reaches zero; the centred theta funnels into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
from scipy import special, stats
from torch import Tensor

from ...posteriordb.convert import stan_names
from ...posteriordb.spec import Posterior
from . import model_data

__all__ = ["POSTERIOR", "binomial_hierarchy"]


def binomial_hierarchy(J: int, n: Tensor, y: Tensor) -> None:
    """The model as a user writes it in Pyro."""
    mu = pyro.sample("mu", dist.Normal(0.0, 2.5))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", J):
        theta = pyro.sample("theta", dist.Normal(mu, sigma))
        pyro.sample("y", dist.Binomial(total_count=n, logits=theta), obs=y)


def _log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    mu, sigma = float(values["mu"]), float(values["sigma"])
    theta = np.asarray(values["theta"], float)
    n, y = np.asarray(data["n"]), np.asarray(data["y"])
    return float(
        stats.norm.logpdf(mu, 0.0, 2.5)
        + stats.halfnorm.logpdf(sigma, scale=1.0)
        + stats.norm.logpdf(theta, mu, sigma).sum()
        + stats.binom.logpmf(y, n, special.expit(theta)).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["mu", "sigma", "theta"])


POSTERIOR = Posterior(
    name="binomial_synth-binomial_hierarchy",
    pyro_model=binomial_hierarchy,
    pyro_data=model_data,
    stan_log_density=_log_density,
    quantities=_quantities,
    notes="binomial hierarchy, 12 groups, logit-normal: a between-group scale sigma with "
    "little data, centred group effects",
)
