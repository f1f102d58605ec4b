"""The fifteen posteriordb posteriors in PyMC, for nutpie.

Each builder takes the posterior's JSON data and returns a ``pymc.Model``. The translations
follow the Stan programs as the Pyro ones in ``posteriors/`` do: ``pm.Flat`` /
``pm.HalfFlat`` where Stan states no prior, ``target +=`` terms as ``pm.Potential``,
Stan's ``<lower=0>`` truncations as half-distributions (equal up to a constant), free
variables named as the Pyro sites.

``positive_ordered`` (hmm_drive_0's ``phi`` and ``lambda``) is a flat variable under the
chain log, then ordered: :math:`u = (\\log x_1, \\log(\\log x_2 - \\log x_1))`, the same
unconstrained coordinates as NumPyro's and Stan's.

**The ODEs** are solved by classical fourth-order Runge-Kutta on a fixed grid, written in
PyTensor (``scan``), so that nutpie's numba backend compiles the solve and its gradient
(PyMC's ``DifferentialEquation`` calls SciPy from Python, which the numba backend can only
run in object mode, and it is not differentiable to second order). The grids:
one_comp with 40 steps per unit time (h = 0.025), lotka_volterra on :math:`\\log z` with 40
per unit time; the test bounds their error against the NumPy densities (SciPy at
``rtol=1e-12``) well below the measurement noise (:func:`ODE_LOG_DENSITY_ATOL`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.distributions import transforms

from ..posteriors import hudson_lynx_hare_lotka_volterra as lotka_volterra
from .designs import Regression, centred, lags, registry

__all__ = ["MODELS", "STEPS_PER_UNIT_TIME", "rk4_at"]

Builder = Callable[[Mapping[str, Any]], pm.Model]
#: Fixed RK4 steps per unit of time in the ODE models.
STEPS_PER_UNIT_TIME = 40


def _array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _scan(step: Callable[..., pt.TensorVariable], **kwargs: Any) -> pt.TensorVariable:
    """``pytensor.scan``'s outputs, with or without the updates it returned before 2.38
    (which warns that it will stop returning them)."""
    result = pytensor.scan(step, **kwargs)
    return result[0] if isinstance(result, tuple) else result


def _regression(spec: Regression) -> Builder:
    def build(data: Mapping[str, Any]) -> pm.Model:
        X, y = spec.design(data), spec.response(data)
        with pm.Model() as model:
            beta = pm.Flat("beta", shape=X.shape[1])
            if spec.sigma_cauchy_scale is None:
                sigma = pm.HalfFlat("sigma")
            else:
                sigma = pm.HalfCauchy("sigma", beta=spec.sigma_cauchy_scale)
            pm.Normal("y", mu=pt.dot(X, beta), sigma=sigma, observed=y)
        return model

    return build


def eight_schools_noncentered(data: Mapping[str, Any]) -> pm.Model:
    y, sigma = _array(data["y"]), _array(data["sigma"])
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 5.0)
        tau = pm.HalfCauchy("tau", beta=5.0)
        theta_trans = pm.Normal("theta_trans", 0.0, 1.0, shape=y.shape)
        theta = pm.Deterministic("theta", theta_trans * tau + mu)
        pm.Normal("y", mu=theta, sigma=sigma, observed=y)
    return model


def ark(data: Mapping[str, Any]) -> pm.Model:
    lag, target = lags(data)
    with pm.Model() as model:
        alpha = pm.Normal("alpha", 0.0, 10.0)
        beta = pm.Normal("beta", 0.0, 10.0, shape=lag.shape[1])
        sigma = pm.HalfCauchy("sigma", beta=2.5)
        pm.Normal("y", mu=alpha + pt.dot(lag, beta), sigma=sigma, observed=target)
    return model


def blr(data: Mapping[str, Any]) -> pm.Model:
    X, y = _array(data["X"]), _array(data["y"])
    with pm.Model() as model:
        beta = pm.Normal("beta", 0.0, 10.0, shape=X.shape[1])
        # target += normal_lpdf(sigma | 0, 10) on sigma > 0: a half-normal up to log 2.
        sigma = pm.HalfNormal("sigma", sigma=10.0)
        pm.Normal("y", mu=pt.dot(X, beta), sigma=sigma, observed=y)
    return model


def diamonds(data: Mapping[str, Any]) -> pm.Model:
    Xc, Y = centred(data), _array(data["Y"])
    with pm.Model() as model:
        b = pm.Normal("b", 0.0, 1.0, shape=Xc.shape[1])
        intercept = pm.StudentT("Intercept", nu=3.0, mu=8.0, sigma=10.0)
        # student_t_lpdf(sigma | 3, 0, 10) - student_t_lccdf(0 | 3, 0, 10) on sigma > 0.
        sigma = pm.HalfStudentT("sigma", nu=3.0, sigma=10.0)
        if not int(data["prior_only"]):
            pm.Normal("Y", mu=intercept + pt.dot(Xc, b), sigma=sigma, observed=Y)
    return model


def gp_regr(data: Mapping[str, Any]) -> pm.Model:
    x, y = _array(data["x"]), _array(data["y"])
    sq_dist = np.subtract.outer(x, x) ** 2
    with pm.Model() as model:
        rho = pm.Gamma("rho", alpha=25.0, beta=4.0)
        alpha = pm.HalfNormal("alpha", sigma=2.0)
        sigma = pm.HalfNormal("sigma", sigma=1.0)
        # Stan adds sigma itself (a variance) to the diagonal; kept.
        cov = alpha**2 * pt.exp(-0.5 * sq_dist / rho**2) + sigma * np.eye(x.size)
        pm.MvNormal("y", mu=np.zeros_like(y), cov=cov, observed=y)
    return model


def _positive_ordered() -> transforms.Transform:
    """log, then ordered: the unconstrained coordinates of Stan's ``positive_ordered``."""
    return transforms.Chain([transforms.log, transforms.ordered])


def hmm_drive_0(data: Mapping[str, Any]) -> pm.Model:
    u, v, alpha = _array(data["u"]), _array(data["v"]), _array(data["alpha"])
    prior_loc = np.array([0.0, 3.0])  # phi[1] ~ normal(0, 1), phi[2] ~ normal(3, 1); lambda alike
    with pm.Model() as model:
        theta1 = pm.Dirichlet("theta1", a=alpha[0])
        theta2 = pm.Dirichlet("theta2", a=alpha[1])
        start = np.array([1.0, 2.0])  # an ordered positive initial point
        phi = pm.Flat("phi", shape=2, transform=_positive_ordered(), initval=start)
        lam = pm.Flat("lambda", shape=2, transform=_positive_ordered(), initval=start)
        pm.Potential("phi_prior", pm.logp(pm.Normal.dist(prior_loc, 1.0), phi).sum())
        pm.Potential("lambda_prior", pm.logp(pm.Normal.dist(prior_loc, 1.0), lam).sum())
        log_theta = pt.log(pt.stack([theta1, theta2]))
        # exponential_lpdf(y | rate) = log(rate) - rate * y, per time and state.
        emission = pt.log(phi) - u[:, None] * phi + pt.log(lam) - v[:, None] * lam

        def step(
            e_t: pt.TensorVariable, log_alpha: pt.TensorVariable, log_theta: pt.TensorVariable
        ) -> pt.TensorVariable:
            return pt.logsumexp(log_alpha[:, None] + log_theta, axis=0) + e_t

        # The forward algorithm; no initial-state law (Stan's program has none). The random
        # variables enter the scan as explicit non-sequences: PyMC replaces them by their
        # values only in the outer graph.
        gammas = _scan(
            step, sequences=[emission[1:]], outputs_info=[emission[0]], non_sequences=[log_theta]
        )
        pm.Potential("forward", pt.logsumexp(gammas[-1]))
    return model


def rk4_at(
    rhs: Callable[..., pt.TensorVariable],
    y0: pt.TensorVariable,
    t0: float,
    times: np.ndarray,
    params: list[pt.TensorVariable],
    steps_per_unit: int = STEPS_PER_UNIT_TIME,
) -> pt.TensorVariable:
    """The solution of :math:`\\dot y = f(y, t, p)`, :math:`y(t_0) = y_0` at ``times`` by
    classical RK4 on a fixed grid: each interval between output times cut into
    ``ceil(steps_per_unit * length)`` equal steps. ``rhs(y, t, *params)``; the parameters
    enter the scan explicitly (PyMC replaces random variables by their values only outside
    it). Returns shape ``(len(times),) + y0.shape``; differentiable (PyTensor ``scan``)."""
    edges = np.concatenate([[t0], np.asarray(times, dtype=float)])
    starts, sizes, record = [], [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        n = max(1, math.ceil(steps_per_unit * (b - a)))
        starts += list(a + (b - a) * np.arange(n) / n)
        sizes += [(b - a) / n] * n
        record += [False] * (n - 1) + [True]

    def step(
        t: pt.TensorVariable, h: pt.TensorVariable, y: pt.TensorVariable, *p: pt.TensorVariable
    ) -> pt.TensorVariable:
        k1 = rhs(y, t, *p)
        k2 = rhs(y + 0.5 * h * k1, t + 0.5 * h, *p)
        k3 = rhs(y + 0.5 * h * k2, t + 0.5 * h, *p)
        k4 = rhs(y + h * k3, t + h, *p)
        return y + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    grid = [pt.as_tensor(np.array(starts)), pt.as_tensor(np.array(sizes))]
    path = _scan(step, sequences=grid, outputs_info=[y0], non_sequences=params)
    return path[np.flatnonzero(record)]


def one_comp_mm_elim_abs(data: Mapping[str, Any]) -> pm.Model:
    D, V, t0 = float(data["D"]), float(data["V"]), float(data["t0"])
    times, C_hat = _array(data["times"]), _array(data["C_hat"])
    with pm.Model() as model:
        k_a = pm.HalfCauchy("k_a", beta=1.0)
        K_m = pm.HalfCauchy("K_m", beta=1.0)
        V_m = pm.HalfCauchy("V_m", beta=1.0)
        sigma = pm.HalfCauchy("sigma", beta=1.0)

        def rhs(C, t, k_a, K_m, V_m):  # noqa: ANN001, ANN202 (PyTensor variables)
            # Dosing for t >= 0: the same solution as Stan's t > 0 (the Pyro module says why).
            return pt.exp(-k_a * t) * D * k_a / V - (V_m / V) * C / (K_m + C)

        C = rk4_at(rhs, pt.as_tensor(np.zeros(1)), t0, times, [k_a, K_m, V_m])[:, 0]
        pm.LogNormal("C_hat", mu=pt.log(C), sigma=sigma, observed=C_hat)
    return model


def lotka_volterra_model(data: Mapping[str, Any]) -> pm.Model:
    ts, y_init, y = _array(data["ts"]), _array(data["y_init"]), _array(data["y"])
    loc, scale = np.array(lotka_volterra._THETA_LOC), np.array(lotka_volterra._THETA_SCALE)
    with pm.Model() as model:
        theta = pm.HalfFlat("theta", shape=4)
        pm.Potential("theta_prior", pm.logp(pm.Normal.dist(loc, scale), theta).sum())
        z_init = pm.LogNormal("z_init", mu=math.log(10.0), sigma=1.0, shape=2)
        sigma = pm.LogNormal("sigma", mu=-1.0, sigma=1.0, shape=2)

        def rhs(w, t, theta):  # noqa: ANN001, ANN202 (PyTensor variables)
            # The ODE for w = log z (the Pyro module's docstring says why).
            return pt.stack(
                [theta[0] - theta[1] * pt.exp(w[1]), -theta[2] + theta[3] * pt.exp(w[0])]
            )

        log_z = rk4_at(rhs, pt.log(z_init), 0.0, ts, [theta])
        pm.LogNormal("y_init", mu=pt.log(z_init), sigma=sigma, observed=y_init)
        pm.LogNormal("y", mu=log_z, sigma=sigma, observed=y)
    return model


#: Builders by posteriordb name: JSON data -> ``pymc.Model``.
MODELS: dict[str, Builder] = registry(globals(), _regression)
