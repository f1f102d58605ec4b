"""The fifteen posteriordb posteriors in NumPyro, for NumPyro's NUTS.

Each builder takes the posterior's JSON data and returns a model of no arguments. The
translations follow the Stan programs as the Pyro ones in ``posteriors/`` do: flat
priors (``ImproperUniform``) where Stan states none, ``target +=`` terms as
``numpyro.factor``, Stan's ``<lower=0>`` truncations as half-distributions (equal up to a
constant), latent sites named as the Pyro sites. Float64 throughout (the caller enables
``jax_enable_x64``; earn_height's dollar scales need it, and Stan computes in double).

The ODE posteriors use ``jax.experimental.ode.odeint`` (adaptive Dormand-Prince, gradients
by the adjoint method) at the Pyro models' tolerances: one_comp at ``rtol=1e-7``,
``atol=1e-9``; lotka_volterra on :math:`\\log z` at ``rtol = atol = 1e-6`` (the Pyro
module's docstring gives why :math:`\\log z`). The test checks each density against the
NumPy one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ..posteriors import hudson_lynx_hare_lotka_volterra as lotka_volterra
from ..posteriors import one_comp_mm_elim_abs_one_comp_mm_elim_abs as one_comp
from .designs import Regression, centred, lags, registry

__all__ = ["MODELS"]

Model = Callable[[], None]


def _array(value: Any) -> jax.Array:
    return jnp.asarray(np.asarray(value, dtype=np.float64))


def _flat(name: str, support: constraints.Constraint, shape: tuple[int, ...] = ()) -> jax.Array:
    """A site with a flat (improper) prior on ``support``: Stan's parameter without a prior."""
    return numpyro.sample(name, dist.ImproperUniform(support, (), shape))


def _regression(spec: Regression) -> Callable[[Mapping[str, Any]], Model]:
    def build(data: Mapping[str, Any]) -> Model:
        X, y = _array(spec.design(data)), _array(spec.response(data))

        def model() -> None:
            beta = _flat("beta", constraints.real, (X.shape[1],))
            if spec.sigma_cauchy_scale is None:
                sigma = _flat("sigma", constraints.positive)
            else:
                sigma = numpyro.sample("sigma", dist.HalfCauchy(spec.sigma_cauchy_scale))
            numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)

        return model

    return build


def eight_schools_noncentered(data: Mapping[str, Any]) -> Model:
    y, sigma = _array(data["y"]), _array(data["sigma"])

    def model() -> None:
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand(y.shape))
        theta = numpyro.deterministic("theta", theta_trans * tau + mu)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)

    return model


def ark(data: Mapping[str, Any]) -> Model:
    lag, target = (_array(a) for a in lags(data))

    def model() -> None:
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([lag.shape[1]]))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
        numpyro.sample("y", dist.Normal(alpha + lag @ beta, sigma), obs=target)

    return model


def blr(data: Mapping[str, Any]) -> Model:
    X, y = _array(data["X"]), _array(data["y"])

    def model() -> None:
        # target += normal_lpdf(beta | 0, 10) on an unbounded beta is the normal prior.
        beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]))
        # target += normal_lpdf(sigma | 0, 10) on sigma > 0: a half-normal up to log 2.
        sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)

    return model


def diamonds(data: Mapping[str, Any]) -> Model:
    Xc, Y = _array(centred(data)), _array(data["Y"])
    prior_only = bool(int(data["prior_only"]))

    def model() -> None:
        b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([Xc.shape[1]]))
        intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
        # student_t_lpdf(sigma | 3, 0, 10) - student_t_lccdf(0 | 3, 0, 10) on sigma > 0.
        sigma = _flat("sigma", constraints.positive)
        numpyro.factor("sigma_prior", dist.StudentT(3.0, 0.0, 10.0).log_prob(sigma) - math.log(0.5))
        if not prior_only:
            numpyro.sample("Y", dist.Normal(intercept + Xc @ b, sigma), obs=Y)

    return model


def gp_regr(data: Mapping[str, Any]) -> Model:
    x, y = _array(data["x"]), _array(data["y"])
    sq_dist = (x[:, None] - x[None, :]) ** 2

    def model() -> None:
        rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
        alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        # Stan adds sigma itself (a variance) to the diagonal; kept.
        cov = alpha**2 * jnp.exp(-0.5 * sq_dist / rho**2) + sigma * jnp.eye(x.shape[0])
        numpyro.sample("y", dist.MultivariateNormal(jnp.zeros_like(y), cov), obs=y)

    return model


def hmm_drive_0(data: Mapping[str, Any]) -> Model:
    u, v, alpha = _array(data["u"]), _array(data["v"]), _array(data["alpha"])
    prior_loc = jnp.array([0.0, 3.0])  # phi[1] ~ normal(0, 1), phi[2] ~ normal(3, 1); lambda alike

    def model() -> None:
        theta1 = numpyro.sample("theta1", dist.Dirichlet(alpha[0]))
        theta2 = numpyro.sample("theta2", dist.Dirichlet(alpha[1]))
        phi = _flat("phi", constraints.positive_ordered_vector, (2,))
        lam = _flat("lambda", constraints.positive_ordered_vector, (2,))
        numpyro.factor("phi_prior", dist.Normal(prior_loc, 1.0).log_prob(phi).sum())
        numpyro.factor("lambda_prior", dist.Normal(prior_loc, 1.0).log_prob(lam).sum())
        log_theta = jnp.log(jnp.stack([theta1, theta2]))
        emission = dist.Exponential(phi).log_prob(u[:, None]) + dist.Exponential(lam).log_prob(
            v[:, None]
        )

        def step(log_alpha: jax.Array, e_t: jax.Array) -> tuple[jax.Array, None]:
            return jax.nn.logsumexp(log_alpha[:, None] + log_theta, axis=0) + e_t, None

        # The forward algorithm; no initial-state law (Stan's program has none).
        last, _ = jax.lax.scan(step, emission[0], emission[1:])
        numpyro.factor("forward", jax.nn.logsumexp(last))

    return model


def one_comp_mm_elim_abs(data: Mapping[str, Any]) -> Model:
    from jax.experimental.ode import odeint

    D, V, t0 = float(data["D"]), float(data["V"]), float(data["t0"])
    times, C_hat = _array(data["times"]), _array(data["C_hat"])
    grid = jnp.concatenate([jnp.array([t0]), times])

    def rhs(C: jax.Array, t: jax.Array, k_a: jax.Array, K_m: jax.Array, V_m: jax.Array):
        # Dosing for t >= 0: the same solution as Stan's t > 0 (the Pyro module says why).
        return jnp.exp(-k_a * t) * D * k_a / V - (V_m / V) * C / (K_m + C)

    def model() -> None:
        k_a = numpyro.sample("k_a", dist.HalfCauchy(1.0))
        K_m = numpyro.sample("K_m", dist.HalfCauchy(1.0))
        V_m = numpyro.sample("V_m", dist.HalfCauchy(1.0))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(1.0))
        C = odeint(rhs, jnp.zeros(1), grid, k_a, K_m, V_m, rtol=one_comp.RTOL, atol=one_comp.ATOL)[
            1:, 0
        ]
        numpyro.sample("C_hat", dist.LogNormal(jnp.log(C), sigma), obs=C_hat)

    return model


def lotka_volterra_model(data: Mapping[str, Any]) -> Model:
    from jax.experimental.ode import odeint

    ts, y_init, y = _array(data["ts"]), _array(data["y_init"]), _array(data["y"])
    grid = jnp.concatenate([jnp.zeros(1), ts])
    loc, scale = jnp.array(lotka_volterra._THETA_LOC), jnp.array(lotka_volterra._THETA_SCALE)

    def rhs(w: jax.Array, t: jax.Array, theta: jax.Array) -> jax.Array:
        # The ODE for w = log z (the Pyro module's docstring says why).
        alpha, beta, gamma, delta = theta
        return jnp.stack([alpha - beta * jnp.exp(w[1]), -gamma + delta * jnp.exp(w[0])])

    def model() -> None:
        theta = _flat("theta", constraints.positive, (4,))
        numpyro.factor("theta_prior", dist.Normal(loc, scale).log_prob(theta).sum())
        z_init = numpyro.sample("z_init", dist.LogNormal(math.log(10.0), 1.0).expand([2]))
        sigma = numpyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]))
        log_z = odeint(
            rhs,
            jnp.log(z_init),
            grid,
            theta,
            rtol=lotka_volterra.RTOL,
            atol=lotka_volterra.ATOL,
        )[1:]
        numpyro.sample("y_init", dist.LogNormal(jnp.log(z_init), sigma), obs=y_init)
        numpyro.sample("y", dist.LogNormal(log_z, sigma), obs=y)

    return model


#: Builders by posteriordb name: JSON data -> model of no arguments.
MODELS: dict[str, Callable[[Mapping[str, Any]], Model]] = registry(globals(), _regression)
