"""eight_schools-eight_schools_noncentered: Rubin's eight schools, non-centred.

Stan program (posteriordb)::

    parameters { vector[J] theta_trans; real mu; real<lower=0> tau; }
    transformed parameters { vector[J] theta = theta_trans * tau + mu; }
    model {
      theta_trans ~ normal(0, 1);
      y ~ normal(theta, sigma);
      mu ~ normal(0, 5);
      tau ~ cauchy(0, 5);
    }

``tau ~ cauchy(0, 5)`` on ``tau > 0`` is a half-Cauchy up to the constant :math:`\\log 2`.
The reference reports the transformed parameter ``theta`` (a ``pyro.deterministic`` site
here) with ``mu`` and ``tau``; ``derived_params`` gives ``theta_trans``.

The native model is written here rather than taken from
:class:`svi_torch.models.EightSchools`: the built-in has the same density but names the
standardised effects ``theta_tilde``, and the Pyro sites keep the Stan name ``theta_trans``.
"""

from __future__ import annotations

import math
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
from svi_torch.models.densities import normal_log_prob

from ..convert import real_tensor, stan_names
from ..spec import Posterior

__all__ = ["POSTERIOR", "eight_schools_noncentered", "EightSchoolsNoncentered"]


def eight_schools_noncentered(J: int, y: Tensor, sigma: Tensor) -> None:
    """The Stan program in Pyro; broadcasts over leading particle dimensions."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", J):
        theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", theta_trans * tau + mu)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _pyro_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"J": int(data["J"]), "y": real_tensor(data["y"]), "sigma": real_tensor(data["sigma"])}


def _stan_log_density(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> float:
    theta_trans, mu, tau = values["theta_trans"], values["mu"], values["tau"]
    theta = theta_trans * tau + mu
    return float(
        stats.norm.logpdf(theta_trans, 0.0, 1.0).sum()
        + stats.norm.logpdf(np.asarray(data["y"], float), theta, np.asarray(data["sigma"])).sum()
        + stats.norm.logpdf(mu, 0.0, 5.0)
        + stats.cauchy.logpdf(tau, 0.0, 5.0)
    )


def _quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    theta = draws.get("theta")
    if theta is None:
        theta = draws["theta_trans"] * draws["tau"][:, None] + draws["mu"][:, None]
    return stan_names({**draws, "theta": theta}, ["theta", "mu", "tau"])


class EightSchoolsNoncentered(Model):
    """Eight schools, non-centred, with Stan's parameter names:

    .. math::

        \\mu \\sim \\mathcal{N}(0, 5^2),\\quad \\tau \\sim \\mathrm{HalfCauchy}(5),\\quad
        \\tilde\\theta_j \\sim \\mathcal{N}(0, 1),\\quad
        y_j \\sim \\mathcal{N}(\\theta_j, \\sigma_j^2),\\quad
        \\theta_j = \\mu + \\tau\\tilde\\theta_j,

    with :math:`\\tilde\\theta` named ``theta_trans``. A data row is one school (its
    effect, standard error and index), so :meth:`derived` can return ``theta`` and a
    minibatch of schools is an unbiased estimate of the likelihood.

    Args:
        y: estimated effects, shape ``(J,)``.
        sigma: their standard errors, shape ``(J,)``, positive.
    """

    def __init__(self, y: Tensor, sigma: Tensor) -> None:
        super().__init__()
        if y.dim() != 1 or sigma.shape != y.shape:
            raise ValueError(
                f"y and sigma must be vectors of equal length, got {tuple(y.shape)} "
                f"and {tuple(sigma.shape)}"
            )
        if not bool((sigma > 0).all()):
            raise ValueError("sigma (the standard errors) must be positive")
        self.add_param("mu")
        self.add_param("tau", (), constraints.positive)
        self.add_param("theta_trans", y.shape)
        self.set_data(y=y, sigma=sigma, school=torch.arange(y.shape[0]))

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        tau = params["tau"]
        # Half-Cauchy(5): log(2 / (pi * 5)) - log(1 + (tau / 5)^2).
        half_cauchy = math.log(2.0 / (math.pi * 5.0)) - torch.log1p((tau / 5.0).square())
        return (
            normal_log_prob(params["mu"], 0.0, 5.0)
            + half_cauchy
            + normal_log_prob(params["theta_trans"], 0.0, 1.0).sum(-1)
        )

    def derived(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """School effects :math:`\\theta_j = \\mu + \\tau\\tilde\\theta_j`: ``{"theta": S + (J,)}``."""
        return {"theta": params["theta_trans"] * params["tau"][..., None] + params["mu"][..., None]}

    def _theta_at(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        # set_data stores every array as floats; the school index is read back as long.
        return self.derived(params)["theta"][..., batch["school"].long()]

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return normal_log_prob(batch["y"], self._theta_at(params, batch), batch["sigma"])

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """Effects :math:`y_j = \\theta_j + \\sigma_j\\varepsilon_j` at the batch's schools."""
        batch = self.data if batch is None else batch
        theta = self._theta_at(params, batch)
        return {"y": theta + batch["sigma"] * torch.randn_like(theta)}


def _native(data: Mapping[str, Any]) -> EightSchoolsNoncentered:
    return EightSchoolsNoncentered(real_tensor(data["y"]), real_tensor(data["sigma"]))


POSTERIOR = Posterior(
    name="eight_schools-eight_schools_noncentered",
    pyro_model=eight_schools_noncentered,
    pyro_data=_pyro_data,
    stan_log_density=_stan_log_density,
    quantities=_quantities,
    data_plate=None,
    native=_native,
    notes="non-centred hierarchy on 8 points: heavy-tailed scale tau (half-Cauchy), weakly identified",
)
