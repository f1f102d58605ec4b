"""Pyro models as posteriordb writes them (flat priors, float64 data), for the Gaussian methods."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from svi_torch.models import PyroModel

F64 = torch.float64


def flat_regression(X, y):
    """Stan's ``y ~ normal(alpha + X beta, sigma)`` with no prior statements."""
    alpha = pyro.sample("alpha", dist.ImproperUniform(constraints.real, (), ()))
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (X.shape[1],)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal(alpha + X[idx] @ beta, sigma), obs=y[idx])


def regression_model(num_data: int = 500, dim: int = 3, scale: float = 1.0):
    """The model, and the flat-prior posterior of (alpha, beta) given sigma at its estimate:
    the least-squares means and sds (the posterior's, to O(1/N))."""
    g = torch.Generator().manual_seed(0)
    X = scale * torch.randn(num_data, dim, generator=g, dtype=F64)
    noise = 0.3 * torch.randn(num_data, generator=g, dtype=F64)
    y = 1.0 + X @ torch.linspace(-1, 1, dim, dtype=F64) + noise
    design = torch.cat([torch.ones(num_data, 1, dtype=F64), X], 1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    resid = y - design @ coef
    s2 = resid.square().sum() / (num_data - dim - 1)
    sd = (s2 * torch.linalg.inv(design.T @ design).diagonal()).sqrt()
    return PyroModel(flat_regression, X, y, data_plate="data"), coef, sd


Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def centred_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def schools_model():
    """Centred eight schools: no MAP (the density grows without bound as tau -> 0)."""
    return PyroModel(centred_schools, torch.tensor(Y, dtype=F64), torch.tensor(SIGMA, dtype=F64))
