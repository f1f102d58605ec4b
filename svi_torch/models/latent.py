"""Models with one local latent variable per data point, fitted by amortized VI.

The joint is :math:`p_\\theta(X, Z) = \\prod_{i=1}^N p(z_i)\\, p_\\theta(x_i \\mid z_i)` with
global parameters :math:`\\theta` held as ``nn.Parameter``s of the model (point estimates:
maximum marginal likelihood / empirical Bayes, as for a VAE's decoder; ``fit`` optimises
them with the family). The variational family is amortized,
:math:`q_\\phi(z_i \\mid x_i)`, and the ELBO splits over data points:

.. math::

    \\mathrm{ELBO}(\\phi, \\theta) = \\sum_{i=1}^N \\mathbb{E}_{q_\\phi(z_i \\mid x_i)}
        \\bigl[\\log p_\\theta(x_i \\mid z_i) + \\log p(z_i) - \\log q_\\phi(z_i \\mid x_i)\\bigr]
        \\le \\sum_i \\log p_\\theta(x_i) = \\log p_\\theta(X),

estimated without bias from a minibatch :math:`\\mathcal{B}` by :math:`\\frac{N}{B}
\\sum_{i \\in \\mathcal{B}}[\\dots]`: every per-point term (likelihood, local prior,
log-Jacobian here, entropy in the ELBO) is scaled by :math:`N/B`.

How the pieces meet: the model declares the *local* latent ``z`` (shape ``(d,)``), so
``model.dim == d`` and the family is built as ``AmortizedGaussian(model.dim, context_dim)``;
the family sees ``batch["context"]`` (the data array named by :attr:`LocalLatentModel.context_name`,
added to every batch) and returns draws of shape ``(particles, B, d)``; ``log_prior`` and
``log_likelihood`` return one value **per particle and data point**, shape ``(particles, B)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..data import Batch, batch_length
from .base import LogJoint, Model

if TYPE_CHECKING:  # an annotation only: models do not import families
    from ..families.base import VariationalFamily

__all__ = ["LocalLatentModel", "estimate_local_elbo"]


class LocalLatentModel(Model):
    """Base class of models with a local latent :math:`z_i \\in \\mathbb{R}^d` per data point.

    Subclasses call ``super().__init__(latent_dim)``, ``set_data(...)`` and define
    :meth:`log_likelihood` (per point); :meth:`log_prior` defaults to
    :math:`z_i \\sim \\mathcal{N}(0, I)`. The data array named :attr:`context_name` is also
    passed to the family as ``batch["context"]``.

    Args:
        latent_dim: dimension :math:`d` of each :math:`z_i`.
    """

    context_name: str = "x"

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.add_param("z", shape=(latent_dim,))

    @property
    def latent_dim(self) -> int:
        return self.dim

    @property
    def data(self) -> Batch:
        return self._with_context(super().data)

    def index_data(self, indices: Tensor) -> Batch:
        return self._with_context(super().index_data(indices))

    def _with_context(self, batch: Batch) -> Batch:
        if batch and "context" not in batch:
            batch = dict(batch)
            batch["context"] = batch[self.context_name]
        return batch

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        """:math:`\\log \\mathcal{N}(z_i; 0, I)` per particle and data point."""
        z = params["z"]
        return -0.5 * (z.square().sum(-1) + z.shape[-1] * math.log(2 * math.pi))

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log p_\\theta(x_i \\mid z_i)`, shape ``(particles, B)`` (not summed over B)."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_likelihood")

    def log_joint(
        self, z: Tensor, batch: Batch | None = None, likelihood_scale: float | None = None
    ) -> LogJoint:
        """Per-point terms of :math:`\\log p(x_i, z_i)`, each scaled by :math:`N/B`.

        ``z`` has shape ``(particles, B, d)``: one latent per data point of ``batch`` (the
        full data if ``None``).
        """
        if batch is None:
            batch = self.data
        size = batch_length(batch)
        if z.dim() < 2 or z.shape[-2] != size:
            raise ValueError(
                f"z has shape {tuple(z.shape)}, but {type(self).__name__} has one latent per "
                f"data point: expected (particles, {size}, {self.dim}). Use an amortized "
                "family (e.g. AmortizedGaussian) that receives batch['context']"
            )
        params, log_det = self.constrain(z)
        scale = self.num_data / size if likelihood_scale is None else likelihood_scale
        return LogJoint(
            log_likelihood=self.log_likelihood(params, batch) * scale,
            log_prior=self.log_prior(params) * scale,
            log_det_jacobian=log_det * scale,
        )


def estimate_local_elbo(
    model: LocalLatentModel,
    family: VariationalFamily,
    num_particles: int = 100,
    chunk: int = 1000,
) -> tuple[float, float]:
    """Full-data ELBO of an amortized fit and its Monte Carlo standard error.

    :math:`\\widehat{\\mathrm{ELBO}} = \\sum_i \\frac1S \\sum_s [\\log p(x_i, z_{is}) -
    \\log q(z_{is} \\mid x_i)]`; the points are independent, so the variance is the sum of the
    per-point variances :math:`\\hat\\sigma_i^2 / S`.
    """
    data = model.data
    n = model.num_data
    total, variance = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, n, chunk):
            index = torch.arange(start, min(start + chunk, n), device=data["context"].device)
            batch = model.index_data(index)
            z, log_q = family.rsample_and_log_prob((num_particles,), batch["context"])
            terms = (model.log_joint(z, batch, likelihood_scale=1.0).total - log_q).double()
            total += terms.mean(0).sum().item()
            variance += (terms.var(0) / num_particles).sum().item()
    return total, math.sqrt(variance)
