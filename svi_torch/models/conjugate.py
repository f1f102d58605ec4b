"""Conjugate Gaussian models whose posterior and evidence are known in closed form.

Variational inference with a Gaussian family is exact on these models: the optimum of the
ELBO over full-rank Gaussians is the exact posterior and the bound is tight,
:math:`\\mathrm{ELBO}(q^*) = \\log p(D)`. They are the yardstick for every optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import HalfNormal, MultivariateNormal, Normal, constraints

from ..data import Batch, as_tensor, batch_length
from ..registry import MODELS
from .base import ConjugateModel

__all__ = ["NormalMean", "BayesianLinearRegression"]


@MODELS.register("normal_mean", "conjugate Normal mean, known noise (exact posterior)")
class NormalMean(ConjugateModel):
    """Normal mean with known noise: :math:`\\mu \\sim \\mathcal{N}(\\mu_0, s_0^2)`,
    :math:`x_i \\mid \\mu \\sim \\mathcal{N}(\\mu, \\sigma^2)`.

    Posterior: :math:`\\mathcal{N}(\\mu_N, s_N^2)` with
    :math:`s_N^{-2} = s_0^{-2} + N\\sigma^{-2}` and
    :math:`\\mu_N = s_N^2(\\mu_0 s_0^{-2} + \\sigma^{-2}\\sum_i x_i)`.

    Args:
        x: observations, shape ``(N,)``.
        noise_scale: :math:`\\sigma`.
        prior_loc: :math:`\\mu_0`.
        prior_scale: :math:`s_0`.
    """

    def __init__(
        self,
        x: object,
        noise_scale: float = 1.0,
        prior_loc: float = 0.0,
        prior_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _check_positive(noise_scale=noise_scale, prior_scale=prior_scale)
        self.noise_scale = float(noise_scale)
        self.prior_loc = float(prior_loc)
        self.prior_scale = float(prior_scale)
        self.add_param("mu")
        x = as_tensor(x, "x")
        if x.dim() != 1:
            raise ValueError(f"x must be a vector of shape (N,), got shape {tuple(x.shape)}")
        self.set_data(x=x)

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        return Normal(self.prior_loc, self.prior_scale).log_prob(params["mu"])

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log \\mathcal{N}(x_i; \\mu, \\sigma^2)` per point: shape ``S + (B,)``."""
        mu = params["mu"].unsqueeze(-1)
        return Normal(mu, self.noise_scale).log_prob(batch["x"])

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """:math:`x_i \\sim \\mathcal{N}(\\mu, \\sigma^2)`, one per row of ``batch`` (its ``x`` only
        gives the count): ``{"x": S + (B,)}``."""
        batch = self.data if batch is None else batch
        mu = params["mu"].unsqueeze(-1)
        shape = mu.shape[:-1] + (batch_length(batch),)
        return {"x": mu + self.noise_scale * torch.randn(shape, dtype=mu.dtype, device=mu.device)}

    def unconstrained_prior(self) -> MultivariateNormal:
        """:math:`\\mathcal{N}(\\mu_0, s_0^2)` over :math:`z = \\mu` (real-valued: no transform)."""
        loc = torch.full((1,), self.prior_loc, dtype=self.x.dtype, device=self.x.device)
        eye = torch.eye(1, dtype=self.x.dtype, device=self.x.device)
        return MultivariateNormal(loc, self.prior_scale**2 * eye)

    def exact_posterior_predictive(self) -> Normal:
        """:math:`p(\\tilde x \\mid D) = \\mathcal{N}(\\mu_N, s_N^2 + \\sigma^2)` for one new point."""
        posterior = self.exact_posterior()
        variance = posterior.covariance_matrix[0, 0] + self.noise_scale**2
        return Normal(posterior.mean[0], variance.sqrt())

    def exact_posterior(self) -> MultivariateNormal:
        x = self.x
        precision = 1 / self.prior_scale**2 + x.shape[0] / self.noise_scale**2
        mean = (self.prior_loc / self.prior_scale**2 + x.sum() / self.noise_scale**2) / precision
        return MultivariateNormal(mean.reshape(1), (1 / precision) * torch.eye(1, dtype=x.dtype))

    def log_evidence(self) -> Tensor:
        """:math:`\\log \\mathcal{N}(x; \\mu_0 \\mathbf{1}, \\sigma^2 I + s_0^2 \\mathbf{1}\\mathbf{1}^\\top)`,
        by the matrix determinant lemma and Sherman–Morrison in :math:`O(N)`."""
        r = self.x - self.prior_loc
        n, s2, t2 = r.shape[0], self.noise_scale**2, self.prior_scale**2
        quad = (r.square().sum() - t2 / (s2 + n * t2) * r.sum() ** 2) / s2
        log_det = n * math.log(s2) + math.log1p(n * t2 / s2)
        return -0.5 * (n * math.log(2 * math.pi) + log_det + quad)


@MODELS.register(
    "linear_regression",
    "Bayesian linear regression, conjugate with known noise (exact posterior)",
)
class BayesianLinearRegression(ConjugateModel):
    """Linear regression :math:`y_i \\sim \\mathcal{N}(x_i^\\top\\beta, \\sigma^2)`,
    :math:`\\beta \\sim \\mathcal{N}(0, s_0^2 I)`.

    With a known ``noise_scale`` the model is conjugate: the posterior is
    :math:`\\mathcal{N}(\\Lambda^{-1}X^\\top y/\\sigma^2, \\Lambda^{-1})` with precision
    :math:`\\Lambda = I/s_0^2 + X^\\top X/\\sigma^2`. With ``noise_scale=None`` the noise
    :math:`\\sigma \\sim \\mathrm{HalfNormal}(\\text{noise\\_prior\\_scale})` is a second,
    positive-constrained parameter ``sigma`` and the model is no longer conjugate.

    Args:
        X: design matrix ``(N, D)``.
        y: responses ``(N,)``.
        noise_scale: :math:`\\sigma`, or ``None`` to infer it.
        prior_scale: :math:`s_0`.
        noise_prior_scale: scale of the half-normal prior on :math:`\\sigma` when inferred.
    """

    def __init__(
        self,
        X: object,
        y: object,
        noise_scale: float | None = 1.0,
        prior_scale: float = 1.0,
        noise_prior_scale: float = 1.0,
    ) -> None:
        super().__init__()
        X, y = as_tensor(X, "X"), as_tensor(y, "y")
        if X.dim() != 2:
            raise ValueError(f"X must be a matrix of shape (N, D), got shape {tuple(X.shape)}")
        if y.dim() != 1:
            raise ValueError(f"y must be a vector of shape (N,), got shape {tuple(y.shape)}")
        if X.shape[0] != y.shape[0]:
            raise ValueError(
                f"X has {X.shape[0]} rows but y has {y.shape[0]} entries; they must match"
            )
        _check_positive(prior_scale=prior_scale, noise_prior_scale=noise_prior_scale)
        if noise_scale is not None:
            _check_positive(noise_scale=noise_scale)
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.prior_scale = float(prior_scale)
        self.noise_prior_scale = float(noise_prior_scale)
        self.add_param("beta", (X.shape[1],))
        if self.noise_scale is None:
            self.add_param("sigma", (), constraints.positive)
        self.set_data(X=X, y=y)

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        lp = Normal(0.0, self.prior_scale).log_prob(params["beta"]).sum(-1)
        if self.noise_scale is None:
            lp = lp + HalfNormal(self.noise_prior_scale).log_prob(params["sigma"])
        return lp

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return self.pointwise_log_likelihood(params, batch).sum(-1)

    def _mean_and_noise(
        self, params: Mapping[str, Tensor], X: Tensor
    ) -> tuple[Tensor, Tensor | float]:
        mean = params["beta"] @ X.mT  # (S, B)
        sigma = self.noise_scale if self.noise_scale is not None else params["sigma"][..., None]
        return mean, sigma

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log \\mathcal{N}(y_i; x_i^\\top\\beta, \\sigma^2)` per point: ``S + (B,)``."""
        mean, sigma = self._mean_and_noise(params, batch["X"])
        return Normal(mean, sigma).log_prob(batch["y"])

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """:math:`y_i \\sim \\mathcal{N}(x_i^\\top\\beta, \\sigma^2)` at the rows of ``batch["X"]``
        (the fitted design when ``None``): ``{"y": S + (B,)}``."""
        X = (self.data if batch is None else batch)["X"]
        mean, sigma = self._mean_and_noise(params, X)
        return {"y": mean + sigma * torch.randn_like(mean)}

    def unconstrained_prior(self) -> MultivariateNormal | None:
        """:math:`\\mathcal{N}(0, s_0^2 I)` over :math:`z = \\beta` with a known noise scale;
        ``None`` when :math:`\\sigma` is inferred (its half-normal prior is not Gaussian in z)."""
        if self.noise_scale is None:
            return None
        eye = torch.eye(self.dim, dtype=self.X.dtype, device=self.X.device)
        return MultivariateNormal(torch.zeros_like(eye[0]), eye * self.prior_scale**2)

    def _require_conjugate(self) -> float:
        if self.noise_scale is None:
            raise ValueError(
                "the exact posterior is only known for a fixed noise_scale; "
                "build the model with noise_scale=<float>"
            )
        return self.noise_scale

    def posterior_precision(self) -> Tensor:
        """:math:`\\Lambda = I/s_0^2 + X^\\top X/\\sigma^2`."""
        sigma = self._require_conjugate()
        eye = torch.eye(self.X.shape[1], dtype=self.X.dtype, device=self.X.device)
        return eye / self.prior_scale**2 + self.X.mT @ self.X / sigma**2

    def exact_posterior(self) -> MultivariateNormal:
        sigma = self._require_conjugate()
        precision = self.posterior_precision()
        mean = torch.cholesky_solve(
            (self.X.mT @ self.y / sigma**2).unsqueeze(-1), torch.linalg.cholesky(precision)
        ).squeeze(-1)
        return MultivariateNormal(mean, precision_matrix=precision)

    def exact_posterior_predictive(self, X_new: object | None = None) -> MultivariateNormal:
        """:math:`p(\\tilde y \\mid D) = \\mathcal{N}(\\tilde X m_N,\\ \\tilde X \\Lambda^{-1}
        \\tilde X^\\top + \\sigma^2 I)`, jointly over the rows of ``X_new`` (default: the fitted
        design), with :math:`m_N` and :math:`\\Lambda` the posterior mean and precision."""
        sigma = self._require_conjugate()
        X = self.X if X_new is None else as_tensor(X_new, "X_new").to(self.X)
        if X.dim() != 2 or X.shape[1] != self.X.shape[1]:
            raise ValueError(f"X_new must have shape (M, {self.X.shape[1]}), got {tuple(X.shape)}")
        posterior = self.exact_posterior()
        cov = X @ posterior.covariance_matrix @ X.mT
        cov = cov + sigma**2 * torch.eye(X.shape[0], dtype=X.dtype, device=X.device)
        return MultivariateNormal(X @ posterior.mean, cov)

    def log_evidence(self) -> Tensor:
        """:math:`\\log p(y) = \\log p(y\\mid\\beta) + \\log p(\\beta) - \\log p(\\beta\\mid y)`,
        exact at any :math:`\\beta` (here the posterior mean); :math:`O(N D^2)`."""
        posterior = self.exact_posterior()
        beta = posterior.mean
        joint = self.log_joint(beta.unsqueeze(0), likelihood_scale=1.0)
        return (joint.log_likelihood + joint.log_prior).squeeze(0) - posterior.log_prob(beta)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
