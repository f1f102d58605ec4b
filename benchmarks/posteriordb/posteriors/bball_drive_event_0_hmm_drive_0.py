"""bball_drive_event_0-hmm_drive_0: a two-state hidden Markov model of a basketball drive.

A player's inverse speed :math:`u_t` and distance to the hoop :math:`v_t` (:math:`t = 1..416`)
are exponential given the hidden state :math:`s_t \\in \\{1, 2\\}` (none, drive):

.. math::

    u_t \\mid s_t = k \\sim \\mathrm{Exp}(\\phi_k), \\quad
    v_t \\mid s_t = k \\sim \\mathrm{Exp}(\\lambda_k), \\quad
    P(s_t = k \\mid s_{t-1} = j) = \\theta_{jk},

with rows :math:`\\theta_j \\sim \\mathrm{Dirichlet}(\\alpha_j)`, ordered
:math:`0 < \\phi_1 < \\phi_2` and :math:`0 < \\lambda_1 < \\lambda_2` (``positive_ordered``)
under the unnormalised densities :math:`\\mathcal{N}(\\phi_1; 0, 1)\\,\\mathcal{N}(\\phi_2; 3, 1)`
(the same for :math:`\\lambda`), and the states summed out by the forward algorithm,

.. math::

    \\gamma_1(k) = e_1(k), \\quad
    \\gamma_t(k) = \\log\\sum_j \\exp\\big(\\gamma_{t-1}(j) + \\log\\theta_{jk}\\big) + e_t(k),
    \\quad \\log p(u, v \\mid \\cdot) = \\log\\sum_k \\exp \\gamma_T(k),

where :math:`e_t(k) = \\log \\mathrm{Exp}(u_t; \\phi_k) + \\log \\mathrm{Exp}(v_t; \\lambda_k)`.
The Stan program has no initial-state distribution (a uniform weight of one per state).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from scipy.special import gammaln, logsumexp
from scipy.stats import norm
from torch import Tensor

from svi_torch.data import Batch
from svi_torch.models import Model

from ..convert import real_tensor, stan_names
from ..spec import Posterior

__all__ = [
    "POSTERIOR",
    "model",
    "data",
    "log_density",
    "quantities",
    "native",
    "forward_log_marginal",
    "HMMDrive",
]

_PRIOR_LOC = (0.0, 3.0)  # Stan: phi[1] ~ normal(0, 1), phi[2] ~ normal(3, 1); lambda alike


def forward_log_marginal(log_theta: Tensor, log_emission: Tensor) -> Tensor:
    """The forward algorithm: :math:`\\log \\sum_{s_{1:T}} \\prod_t \\theta_{s_{t-1}s_t} e^{e_t(s_t)}`.

    A Python loop over time, as a user writes it, with no control flow on tensor values, so
    ``torch.func.vmap`` maps it over particles too.

    Args:
        log_theta: log transition matrix, rows "from", columns "to": particles + ``(K, K)``.
        log_emission: :math:`e_t(k)`, particles + ``(T, K)``.

    Returns:
        The log marginal likelihood, shape particles.
    """
    log_alpha = log_emission[..., 0, :]
    for t in range(1, log_emission.shape[-2]):
        log_alpha = (
            torch.logsumexp(log_alpha[..., :, None] + log_theta, dim=-2) + log_emission[..., t, :]
        )
    return torch.logsumexp(log_alpha, dim=-1)


def _ordered_prior(value: Tensor) -> Tensor:
    """:math:`\\log\\mathcal{N}(x_1; 0, 1) + \\log\\mathcal{N}(x_2; 3, 1)`, Stan's ``target +=`` terms."""
    loc = value.new_tensor(_PRIOR_LOC)
    return dist.Normal(loc, torch.ones_like(loc)).log_prob(value).sum(-1)


def _log_emission(u: Tensor, v: Tensor, phi: Tensor, lambda_: Tensor) -> Tensor:
    """:math:`e_t(k)`, shape particles + ``(T, K)``."""
    return dist.Exponential(phi[..., None, :]).log_prob(u[:, None]) + dist.Exponential(
        lambda_[..., None, :]
    ).log_prob(v[:, None])


def model(K: int, N: int, u: Tensor, v: Tensor, alpha: Tensor) -> None:
    """The Stan program in Pyro; broadcasts over an outer particle plate (dim -1)."""
    theta1 = pyro.sample("theta1", dist.Dirichlet(alpha[0]))
    theta2 = pyro.sample("theta2", dist.Dirichlet(alpha[1]))
    ordered = dist.ImproperUniform(constraints.positive_ordered_vector, (), (K,))
    phi = pyro.sample("phi", ordered)
    lambda_ = pyro.sample("lambda", ordered)
    pyro.factor("phi_prior", _ordered_prior(phi))
    pyro.factor("lambda_prior", _ordered_prior(lambda_))
    log_theta = torch.stack([theta1, theta2], dim=-2).log()
    pyro.factor("forward", forward_log_marginal(log_theta, _log_emission(u, v, phi, lambda_)))


def data(json_data: Mapping[str, Any]) -> dict[str, Any]:
    """The Stan data as the model's keyword arguments; the program is written for ``K = 2``."""
    if int(json_data["K"]) != 2:
        raise ValueError(
            f"hmm_drive_0 hard-codes two states (theta1, theta2); got K={json_data['K']}"
        )
    return {
        "K": 2,
        "N": int(json_data["N"]),
        "u": real_tensor(json_data["u"]),
        "v": real_tensor(json_data["v"]),
        "alpha": real_tensor(json_data["alpha"]),
    }


def _dirichlet_logpdf(x: np.ndarray, a: np.ndarray) -> float:
    return float(gammaln(a.sum()) - gammaln(a).sum() + ((a - 1) * np.log(x)).sum())


def log_density(values: Mapping[str, np.ndarray], json_data: Mapping[str, Any]) -> float:
    """Stan's ``target`` in NumPy: Dirichlet and normal terms, then the forward algorithm."""
    alpha = np.asarray(json_data["alpha"], dtype=float)
    theta = np.stack([np.asarray(values["theta1"]), np.asarray(values["theta2"])])
    phi, lam = np.asarray(values["phi"], dtype=float), np.asarray(values["lambda"], dtype=float)
    u = np.asarray(json_data["u"], dtype=float)
    v = np.asarray(json_data["v"], dtype=float)
    target = sum(_dirichlet_logpdf(theta[k], alpha[k]) for k in range(2))
    target += norm.logpdf(phi, _PRIOR_LOC, 1.0).sum() + norm.logpdf(lam, _PRIOR_LOC, 1.0).sum()
    # exponential_lpdf(y | rate) = log(rate) - rate * y
    emission = np.log(phi) - np.outer(u, phi) + np.log(lam) - np.outer(v, lam)
    log_theta = np.log(theta)
    gamma = emission[0]
    for t in range(1, u.size):
        gamma = logsumexp(gamma[:, None] + log_theta, axis=0) + emission[t]
    return float(target + logsumexp(gamma))


def quantities(draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``theta1[1..2]``, ``theta2[1..2]``, ``phi[1..2]``, ``lambda[1..2]``."""
    return stan_names(draws, ["theta1", "theta2", "phi", "lambda"])


class HMMDrive(Model):
    """The native model: the whole sequence is one observation (``num_data = 1``).

    The forward algorithm couples all time points, so ``u`` and ``v`` are stored as one
    row of shape ``(1, T)`` and every batch is the full sequence.
    """

    def __init__(self, u: Tensor, v: Tensor, alpha: Tensor) -> None:
        super().__init__()
        self.add_param("theta1", (2,), constraints.simplex)
        self.add_param("theta2", (2,), constraints.simplex)
        self.add_param("phi", (2,), constraints.positive_ordered_vector)
        self.add_param("lambda", (2,), constraints.positive_ordered_vector)
        self.register_buffer("alpha", alpha)
        self.set_data(u=u[None], v=v[None])

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        return (
            dist.Dirichlet(self.alpha[0]).log_prob(params["theta1"])
            + dist.Dirichlet(self.alpha[1]).log_prob(params["theta2"])
            + _ordered_prior(params["phi"])
            + _ordered_prior(params["lambda"])
        )

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        log_theta = torch.stack([params["theta1"], params["theta2"]], dim=-2).log()
        emission = _log_emission(batch["u"][0], batch["v"][0], params["phi"], params["lambda"])
        return forward_log_marginal(log_theta, emission)

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """A replicated sequence: states from the chain (first state uniform, the Stan
        program's implicit initial weights), then exponential emissions; ``u``, ``v`` of
        shape particles + ``(1, T)``."""
        batch = self.data if batch is None else batch
        steps = batch["u"].shape[-1]
        theta = torch.stack([params["theta1"], params["theta2"]], dim=-2)
        shape = params["phi"].shape[:-1]
        state = torch.randint(0, 2, shape)
        states = []
        for _ in range(steps):
            states.append(state)
            row = theta.gather(-2, state[..., None, None].expand(*shape, 1, 2)).squeeze(-2)
            state = torch.distributions.Categorical(probs=row).sample()
        path = torch.stack(states, dim=-1)  # particles + (T,)
        rate_u = params["phi"].gather(-1, path)
        rate_v = params["lambda"].gather(-1, path)
        return {
            "u": dist.Exponential(rate_u).sample()[..., None, :],
            "v": dist.Exponential(rate_v).sample()[..., None, :],
        }


def native(json_data: Mapping[str, Any]) -> HMMDrive:
    """The native model on the full sequence."""
    kwargs = data(json_data)
    return HMMDrive(kwargs["u"], kwargs["v"], kwargs["alpha"])


POSTERIOR = Posterior(
    name="bball_drive_event_0-hmm_drive_0",
    pyro_model=model,
    pyro_data=data,
    stan_log_density=log_density,
    quantities=quantities,
    native=native,
    notes="2-state HMM, forward algorithm over 416 steps; simplex and positive_ordered "
    "parameters; a second mode ~62 nats lower leaves one state unused",
)
