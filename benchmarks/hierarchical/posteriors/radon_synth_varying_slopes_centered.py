"""radon_synth-varying_slopes_centered: varying intercepts and slopes, written centred.

A radon-like design (Gelman and Hill's counties): 300 measurements in 10 groups of very
unequal sizes (4 to 90), one binary predictor ``x`` ("floor"), and per group an intercept
``a_j`` and a slope ``b_j`` drawn around their means::

    mu_a, mu_b ~ N(0, 10)        sigma_a ~ HalfNormal(1)   sigma_b ~ HalfCauchy(1)
    sigma_y ~ HalfNormal(1)      a_j ~ N(mu_a, sigma_a)    b_j ~ N(mu_b, sigma_b)
    y_i ~ N(a[g_i] + b[g_i] x_i, sigma_y)

The data were drawn with a small slope spread (sigma_b = 0.15), so the small groups barely
inform their slopes: sigma_b's posterior reaches zero, and the centred b funnels into it.
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

__all__ = ["POSTERIOR", "varying_slopes_centered"]


def varying_slopes_centered(N: int, J: int, group: Tensor, x: Tensor, y: Tensor) -> None:
    """The model as a user writes it in Pyro (one draw at a time)."""
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 10.0))
    mu_b = pyro.sample("mu_b", dist.Normal(0.0, 10.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_b = pyro.sample("sigma_b", dist.HalfCauchy(1.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(1.0))
    with pyro.plate("groups", J):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
        b = pyro.sample("b", dist.Normal(mu_b, sigma_b))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Normal(a[group] + b[group] * x, sigma_y), obs=y)


def _log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    v = {k: np.asarray(val, float) for k, val in values.items()}
    group = np.asarray(data["group"])
    x, y = np.asarray(data["x"], float), np.asarray(data["y"], float)
    return float(
        stats.norm.logpdf(v["mu_a"], 0.0, 10.0)
        + stats.norm.logpdf(v["mu_b"], 0.0, 10.0)
        + stats.halfnorm.logpdf(v["sigma_a"], scale=1.0)
        + stats.halfcauchy.logpdf(v["sigma_b"], scale=1.0)
        + stats.halfnorm.logpdf(v["sigma_y"], scale=1.0)
        + stats.norm.logpdf(v["a"], v["mu_a"], v["sigma_a"]).sum()
        + stats.norm.logpdf(v["b"], v["mu_b"], v["sigma_b"]).sum()
        + stats.norm.logpdf(y, v["a"][group] + v["b"][group] * x, v["sigma_y"]).sum()
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return stan_names(draws, ["mu_a", "mu_b", "sigma_a", "sigma_b", "sigma_y", "a", "b"])


POSTERIOR = Posterior(
    name="radon_synth-varying_slopes_centered",
    pyro_model=varying_slopes_centered,
    pyro_data=model_data,
    stan_log_density=_log_density,
    quantities=_quantities,
    notes="varying intercepts and slopes, centred, 10 unequal groups: the slope scale "
    "sigma_b is weakly identified and the centred slopes funnel into it",
)
