"""NumPyro translations of the hierarchical set's Pyro models, for the NUTS references.

Each function is the Pyro model of the same name in ``posteriors/`` written site for site
in NumPyro: the same site names, supports, priors and likelihood, so that the two log
densities agree up to a constant (``tests/test_hierarchical_models.py`` checks it at
points, in the unconstrained space with each support's log-Jacobian). The references are
drawn from these (non-centred by :class:`numpyro.infer.reparam.LocScaleReparam` where
``make_references.py`` says so; the reparameterised model keeps the centred site as a
deterministic, so its draws are draws of the same posterior).

Importing this module needs NumPyro and JAX (the ``bench`` extra); the Pyro side does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpyro
import numpyro.distributions as dist

__all__ = [
    "MODELS",
    "binomial_hierarchy",
    "eight_schools_centered",
    "hierarchical_logistic_flat_tau",
    "horseshoe_regression",
    "logistic_near_separation",
    "varying_slopes_centered",
]


def varying_slopes_centered(N: int, J: int, group: Any, x: Any, y: Any) -> None:
    """Varying intercepts and slopes, centred (see the Pyro model)."""
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 10.0))
    mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfCauchy(1.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    with numpyro.plate("groups", J):
        a = numpyro.sample("a", dist.Normal(mu_a, sigma_a))
        b = numpyro.sample("b", dist.Normal(mu_b, sigma_b))
    with numpyro.plate("data", N):
        numpyro.sample("y", dist.Normal(a[group] + b[group] * x, sigma_y), obs=y)


def binomial_hierarchy(J: int, n: Any, y: Any) -> None:
    """Logit-normal binomial hierarchy (see the Pyro model)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.5))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", J):
        theta = numpyro.sample("theta", dist.Normal(mu, sigma))
        numpyro.sample("y", dist.Binomial(total_count=n, logits=theta), obs=y)


def eight_schools_centered(J: int, y: Any, sigma: Any) -> None:
    """Rubin's eight schools, centred (see the Pyro model)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("data", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def horseshoe_regression(N: int, D: int, X: Any, y: Any) -> None:
    """Horseshoe regression (see the Pyro model)."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(1.0))
    with numpyro.plate("predictors", D):
        lam = numpyro.sample("lambda", dist.HalfCauchy(1.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, tau * lam))
    with numpyro.plate("data", N):
        numpyro.sample("y", dist.Normal(alpha + X @ beta, sigma), obs=y)


def logistic_near_separation(N: int, D: int, X: Any, y: Any) -> None:
    """Logistic regression on nearly separated data, weak priors (see the Pyro model)."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    with numpyro.plate("data", N):
        numpyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)


def hierarchical_logistic_flat_tau(N: int, J: int, D: int, group: Any, X: Any, y: Any) -> None:
    """Hierarchical logistic regression with a flat prior on the scale (see the Pyro model)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.Uniform(0.0, 100.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 5.0).expand([D]).to_event(1))
    with numpyro.plate("groups", J):
        alpha = numpyro.sample("alpha", dist.Normal(mu, tau))
    with numpyro.plate("data", N):
        numpyro.sample("y", dist.Bernoulli(logits=alpha[group] + X @ beta), obs=y)


#: Posterior name -> its NumPyro translation.
MODELS: dict[str, Callable[..., None]] = {
    "radon_synth-varying_slopes_centered": varying_slopes_centered,
    "binomial_synth-binomial_hierarchy": binomial_hierarchy,
    "eight_schools-eight_schools_centered": eight_schools_centered,
    "horseshoe_synth-horseshoe_regression": horseshoe_regression,
    "separation_synth-logistic_near_separation": logistic_near_separation,
    "hier_logit_synth-hierarchical_logistic_flat_tau": hierarchical_logistic_flat_tau,
}
