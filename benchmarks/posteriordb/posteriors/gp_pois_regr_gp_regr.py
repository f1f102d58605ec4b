"""gp_pois_regr-gp_regr: the hyperparameters of a Gaussian-process regression on 11 points.

.. math::

    y \\sim \\mathcal{N}(0, K + \\sigma I), \\quad
    K_{ij} = \\alpha^2 \\exp\\!\\big(-\\tfrac{(x_i - x_j)^2}{2\\rho^2}\\big),

    \\rho \\sim \\mathrm{Gamma}(25, 4), \\quad \\alpha \\sim \\mathcal{N}^+(0, 2^2), \\quad
    \\sigma \\sim \\mathcal{N}^+(0, 1).

The Stan program adds :math:`\\sigma` itself, not :math:`\\sigma^2`, to the diagonal
(``diag_matrix(rep_vector(sigma, N))``): :math:`\\sigma` is the noise *variance* here, and
the translation keeps it so. The half-normals are Stan's ``<lower=0>`` truncations, equal
up to a constant.
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

from svi_torch.data import Batch
from svi_torch.models import Model

from ..convert import real_tensor, stan_names
from ..spec import Posterior

__all__ = ["POSTERIOR", "model", "data", "log_density", "quantities", "native", "GPRegression"]


def covariance(x: Tensor, rho: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """:math:`K + \\sigma I` for each particle: shape particles + ``(N, N)``."""
    sq_dist = (x[:, None] - x[None, :]).square()
    kernel = alpha[..., None, None].square() * torch.exp(
        -0.5 * sq_dist / rho[..., None, None].square()
    )
    return kernel + sigma[..., None, None] * torch.eye(x.shape[0], dtype=x.dtype)


def _priors(dtype: torch.dtype) -> tuple[dist.Distribution, ...]:
    """The priors of ``rho``, ``alpha``, ``sigma``."""
    one = torch.ones((), dtype=dtype)
    return dist.Gamma(25 * one, 4 * one), dist.HalfNormal(2 * one), dist.HalfNormal(one)


def model(N: int, x: Tensor, y: Tensor) -> None:
    """The Stan program in Pyro; broadcasts over an outer particle plate (dim -1)."""
    one = torch.ones((), dtype=y.dtype)
    rho = pyro.sample("rho", dist.Gamma(25 * one, 4 * one))
    alpha = pyro.sample("alpha", dist.HalfNormal(2 * one))
    sigma = pyro.sample("sigma", dist.HalfNormal(one))
    L_cov = torch.linalg.cholesky(covariance(x, rho, alpha, sigma))
    pyro.sample("y", dist.MultivariateNormal(torch.zeros_like(y), scale_tril=L_cov), obs=y)


def data(json_data: Mapping[str, Any]) -> dict[str, Any]:
    """The Stan data as the model's keyword arguments (``k``, the counts of the Poisson
    variant, is unused by this program)."""
    return {
        "N": int(json_data["N"]),
        "x": real_tensor(json_data["x"]),
        "y": real_tensor(json_data["y"]),
    }


def log_density(values: Mapping[str, np.ndarray], json_data: Mapping[str, Any]) -> float:
    """Stan's ``target`` in NumPy/SciPy."""
    x = np.asarray(json_data["x"], dtype=float)
    y = np.asarray(json_data["y"], dtype=float)
    rho, alpha, sigma = (float(values[k]) for k in ("rho", "alpha", "sigma"))
    cov = alpha**2 * np.exp(-0.5 * np.subtract.outer(x, x) ** 2 / rho**2) + sigma * np.eye(x.size)
    return float(
        stats.gamma.logpdf(rho, 25.0, scale=1 / 4.0)
        + stats.norm.logpdf(alpha, 0.0, 2.0)
        + stats.norm.logpdf(sigma, 0.0, 1.0)
        + stats.multivariate_normal.logpdf(y, np.zeros_like(y), cov)
    )


def quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``rho``, ``alpha``, ``sigma``."""
    return stan_names(draws, ["rho", "alpha", "sigma"])


class GPRegression(Model):
    """The native model: the whole data set is one observation (``num_data = 1``).

    The marginal likelihood of a GP does not factorise over points, so the data are stored
    as a single row (``x``, ``y`` of shape ``(1, N)``) and every batch is the full data.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        super().__init__()
        for name in ("rho", "alpha", "sigma"):
            self.add_param(name, support=constraints.positive)
        self.set_data(x=x[None], y=y[None])

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        rho_prior, alpha_prior, sigma_prior = _priors(params["rho"].dtype)
        return (
            rho_prior.log_prob(params["rho"])
            + alpha_prior.log_prob(params["alpha"])
            + sigma_prior.log_prob(params["sigma"])
        )

    def _marginal(self, params: Mapping[str, Tensor], x: Tensor) -> dist.MultivariateNormal:
        cov = covariance(x, params["rho"], params["alpha"], params["sigma"])
        zero = cov.new_zeros(cov.shape[:-1])
        return dist.MultivariateNormal(zero, scale_tril=torch.linalg.cholesky(cov))

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        # One row per batch: the full data set (see the class docstring).
        return self._marginal(params, batch["x"][0]).log_prob(batch["y"][0])

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """A replicated data set :math:`y^{rep} \\sim \\mathcal{N}(0, K + \\sigma I)`, shape
        particles + ``(1, N)``."""
        batch = self.data if batch is None else batch
        return {"y": self._marginal(params, batch["x"][0]).sample()[..., None, :]}


def native(json_data: Mapping[str, Any]) -> GPRegression:
    """The native model on the full data."""
    return GPRegression(real_tensor(json_data["x"]), real_tensor(json_data["y"]))


POSTERIOR = Posterior(
    name="gp_pois_regr-gp_regr",
    pyro_model=model,
    pyro_data=data,
    stan_log_density=log_density,
    quantities=quantities,
    native=native,
    notes="GP hyperparameters (length scale, amplitude, noise variance) from 11 points; "
    "skewed positive marginals, near-zero correlations",
)
