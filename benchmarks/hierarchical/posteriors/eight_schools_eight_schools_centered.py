"""eight_schools-eight_schools_centered: Rubin's eight schools, centred.

The classic data (y = 28, 8, -3, 7, -1, 1, 18, 12; sigma = 15, 10, 16, 11, 9, 11, 10, 18)::

    mu ~ N(0, 5)     tau ~ HalfCauchy(5)     theta_j ~ N(mu, tau)     y_j ~ N(theta_j, sigma_j)

The same posterior as posteriordb's ``eight_schools_noncentered`` (its reference is for
that parameterisation), written the way a user first writes it. Centred, the posterior of
(theta, log tau) is a funnel: NUTS on this form diverges, so the reference was drawn from
the non-centred form and reported in mu, tau and theta (``make_references.py``).
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

__all__ = ["POSTERIOR", "eight_schools_centered"]


def eight_schools_centered(J: int, y: Tensor, sigma: Tensor) -> None:
    """The model as a user writes it in Pyro."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("data", J):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    mu, tau = float(values["mu"]), float(values["tau"])
    theta = np.asarray(values["theta"], float)
    return float(
        stats.norm.logpdf(mu, 0.0, 5.0)
        + stats.halfcauchy.logpdf(tau, scale=5.0)
        + stats.norm.logpdf(theta, mu, tau).sum()
        + stats.norm.logpdf(np.asarray(data["y"], float), theta, np.asarray(data["sigma"])).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["mu", "tau", "theta"])


POSTERIOR = Posterior(
    name="eight_schools-eight_schools_centered",
    pyro_model=eight_schools_centered,
    pyro_data=model_data,
    stan_log_density=_log_density,
    quantities=_quantities,
    notes="centred eight schools: the funnel of theta against a heavy-tailed tau reaching zero",
)
