"""Probabilistic PCA (Tipping and Bishop 1999): a local-latent model with an exact evidence.

.. math::

    z_i \\sim \\mathcal{N}(0, I_d), \\qquad x_i \\mid z_i \\sim \\mathcal{N}(W z_i + \\mu,
    \\sigma^2 I_p), \\qquad\\text{so}\\qquad x_i \\sim \\mathcal{N}(\\mu, C),\\; C = WW^\\top +
    \\sigma^2 I_p.

The marginal likelihood :math:`\\log p_\\theta(X) = \\sum_i \\log \\mathcal{N}(x_i; \\mu, C)` is
exact, so an amortized fit's ELBO can be checked against it (ELBO :math:`\\le \\log
p_\\theta(X)`, with equality iff :math:`q(z_i \\mid x_i)` is the exact posterior
:math:`\\mathcal{N}(M^{-1}W^\\top(x_i - \\mu), \\sigma^2 M^{-1})`, :math:`M = W^\\top W +
\\sigma^2 I`), and its maximum over :math:`\\theta` has a closed form
(:func:`ppca_maximum_likelihood`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal

from ..data import Batch, as_tensor
from ..numerics import inverse_softplus
from .latent import LocalLatentModel

__all__ = ["ProbabilisticPCA", "ppca_data", "ppca_maximum_likelihood"]


class ProbabilisticPCA(LocalLatentModel):
    """Probabilistic PCA with loadings :math:`W`, mean :math:`\\mu` and noise :math:`\\sigma`
    as model parameters (maximum marginal likelihood), and local latents :math:`z_i`.

    Args:
        x: data, shape ``(N, p)``.
        latent_dim: :math:`d < p`.
        seed: seeds the initial loadings (small random entries; zero is a saddle point).

    Example:
        >>> x, _ = ppca_data(500, 6, 2)
        >>> model = ProbabilisticPCA(x, latent_dim=2)
        >>> family = AmortizedGaussian(model.dim, context_dim=6)  # doctest: +SKIP
    """

    def __init__(self, x: Tensor, latent_dim: int, seed: int = 0) -> None:
        x = as_tensor(x, "x")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, p), got {tuple(x.shape)}")
        p = x.shape[1]
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int):
            raise TypeError(f"latent_dim must be an int, got {latent_dim!r}")
        if not 1 <= latent_dim < p:
            raise ValueError(f"latent_dim must be in [1, p={p}), got {latent_dim}")
        super().__init__(latent_dim)
        self.set_data(x=x)
        generator = torch.Generator().manual_seed(seed)
        self.loadings = nn.Parameter(0.1 * torch.randn(p, latent_dim, generator=generator).to(x))
        self.mean = nn.Parameter(x.mean(0).clone())
        self.raw_noise = nn.Parameter(inverse_softplus(x.std(0).mean().item()).to(x))

    @property
    def noise_scale(self) -> Tensor:
        """:math:`\\sigma = \\mathrm{softplus}(\\cdot)`."""
        return F.softplus(self.raw_noise)

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        mean = params["z"] @ self.loadings.mT + self.mean  # (S, B, p)
        return Normal(mean, self.noise_scale).log_prob(batch["x"]).sum(-1)

    def marginal(self) -> MultivariateNormal:
        """:math:`\\mathcal{N}(\\mu, WW^\\top + \\sigma^2 I)`, the distribution of one :math:`x_i`."""
        p = self.mean.shape[0]
        cov = self.loadings @ self.loadings.mT + self.noise_scale**2 * torch.eye(p).to(self.mean)
        return MultivariateNormal(self.mean, covariance_matrix=cov)

    def log_marginal_likelihood(self) -> Tensor:
        """Exact :math:`\\log p_\\theta(X) = \\sum_i \\log \\mathcal{N}(x_i; \\mu, C)` at the current
        :math:`\\theta`."""
        return self.marginal().log_prob(self.x).sum()


def ppca_maximum_likelihood(x: Tensor, latent_dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closed-form maximum likelihood (Tipping and Bishop 1999).

    With the sample covariance :math:`S = U\\Lambda U^\\top` (eigenvalues descending):
    :math:`\\hat\\mu = \\bar x`, :math:`\\hat\\sigma^2 = \\frac{1}{p-d}\\sum_{j>d}\\lambda_j`,
    :math:`\\hat W = U_d(\\Lambda_d - \\hat\\sigma^2 I)^{1/2}` (up to rotation).

    Returns:
        ``(W, mu, sigma, log p(X))`` at the maximum.
    """
    x = x.double()
    n, p = x.shape
    mu = x.mean(0)
    centred = x - mu
    cov = centred.mT @ centred / n
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    sigma2 = evals[latent_dim:].mean()
    W = evecs[:, :latent_dim] * (evals[:latent_dim] - sigma2).clamp_min(0).sqrt()
    marginal = MultivariateNormal(mu, W @ W.mT + sigma2 * torch.eye(p, dtype=x.dtype))
    return W, mu, sigma2.sqrt(), marginal.log_prob(x).sum()


def ppca_data(
    num_data: int = 1000,
    data_dim: int = 8,
    latent_dim: int = 2,
    noise_scale: float = 0.5,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(x, W)``: draws from probabilistic PCA with random loadings ``W`` (columns of norm
    about :math:`\\sqrt{p}`) and a random mean."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, generator=g)
    mu = torch.randn(data_dim, generator=g)
    z = torch.randn(num_data, latent_dim, generator=g)
    x = z @ W.mT + mu + noise_scale * torch.randn(num_data, data_dim, generator=g)
    return x, W
