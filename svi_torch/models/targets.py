"""Density-only targets: known distributions to fit, with no data.

A target is a :class:`~svi_torch.models.Model` with one real parameter vector ``z`` and no
data (``num_data == 0``): its :meth:`log_prior` is the whole (here normalised) log density
and its likelihood is zero, so ``fit`` maximises :math:`\\mathbb{E}_q[\\log p(z)] + H[q]`,
i.e. minimises the reverse :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q - \\log p]`.
Because they can be sampled (:meth:`sample`), they also support the forward-KL fit
(:class:`~svi_torch.objectives.ForwardKL`), which minimises
:math:`\\mathrm{KL}(p\\|q) = \\mathbb{E}_p[\\log p - \\log q]`. They are the demonstrations of
mode-seeking versus mass-covering behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from ..data import Batch
from ..registry import MODELS
from .base import Model

__all__ = ["DensityTarget", "GaussianMixtureTarget", "CorrelatedGaussianTarget"]


class DensityTarget(Model):
    """A model made of one known distribution over ``z`` in :math:`\\mathbb{R}^D`.

    Subclasses build :meth:`distribution`; the log density, sampling and moments follow.

    Args:
        dim: :math:`D`.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.add_param("z", (dim,))

    def distribution(self) -> Distribution:
        """The target :math:`p(z)` as a torch distribution with event shape ``(dim,)``."""
        raise NotImplementedError

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        return self.distribution().log_prob(params["z"])

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return torch.zeros_like(params["z"][..., 0])

    def log_prob(self, z: Tensor) -> Tensor:
        """Normalised :math:`\\log p(z)`."""
        return self.distribution().log_prob(z)

    def sample(self, num_samples: int) -> Tensor:
        """``num_samples`` exact draws of :math:`z`, shape ``(num_samples, dim)``."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        with torch.no_grad():
            return self.distribution().sample((num_samples,))

    @property
    def mean(self) -> Tensor:
        """:math:`\\mathbb{E}_p[z]`."""
        return self.distribution().mean

    @property
    def covariance(self) -> Tensor:
        """:math:`\\mathrm{Cov}_p[z]`."""
        raise NotImplementedError


def _as_matrix(x: object, name: str, num_components: int | None = None) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.get_default_dtype())
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    if t.dim() != 2 or (num_components is not None and t.shape[0] != num_components):
        want = (
            "(M,) or (M, D)"
            if num_components is None
            else f"({num_components},) or ({num_components}, D)"
        )
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not torch.all(torch.isfinite(t)):
        raise ValueError(f"{name} must be finite")
    return t


@MODELS.register("mixture_target", "Gaussian mixture density (no data)")
class GaussianMixtureTarget(DensityTarget):
    """A mixture of diagonal Gaussians :math:`p(z) = \\sum_m \\pi_m \\mathcal{N}(z; \\mu_m, \\mathrm{diag}(s_m^2))`.

    The default is the bimodal 1-D target of the KL-asymmetry study:
    :math:`0.5\\,\\mathcal{N}(-3, 1) + 0.5\\,\\mathcal{N}(3, 1)`, with mean 0 and variance 10.
    A single Gaussian fitted by reverse KL locks onto one mode (variance about 1); by
    forward KL it matches the mixture's mean and variance (10), spanning both modes.

    Args:
        locs: component means, ``(M,)`` (1-D) or ``(M, D)``.
        scales: component standard deviations, positive, same shape as ``locs`` or ``(M,)``.
        weights: mixture weights :math:`\\pi`, ``(M,)``, positive; normalised here.
    """

    def __init__(
        self,
        locs: Sequence[float] | Tensor = (-3.0, 3.0),
        scales: Sequence[float] | Tensor = (1.0, 1.0),
        weights: Sequence[float] | Tensor = (0.5, 0.5),
    ) -> None:
        locs_t = _as_matrix(locs, "locs")
        num_components, dim = locs_t.shape
        scales_t = _as_matrix(scales, "scales", num_components).expand(num_components, dim)
        if torch.any(scales_t <= 0):
            raise ValueError("scales must be positive")
        weights_t = torch.as_tensor(weights, dtype=torch.get_default_dtype())
        if weights_t.shape != (num_components,) or torch.any(weights_t <= 0):
            raise ValueError(
                f"weights must be {num_components} positive numbers (one per component), "
                f"got {weights_t.tolist()}"
            )
        super().__init__(dim)
        self.register_buffer("locs", locs_t.clone())
        self.register_buffer("scales", scales_t.clone())
        self.register_buffer("weights", weights_t / weights_t.sum())

    def distribution(self) -> MixtureSameFamily:
        return MixtureSameFamily(
            Categorical(probs=self.weights),
            Independent(Normal(self.locs, self.scales), 1),
            validate_args=False,
        )

    @property
    def covariance(self) -> Tensor:
        """:math:`\\sum_m \\pi_m(\\mathrm{diag}(s_m^2) + \\mu_m\\mu_m^\\top) - \\bar\\mu\\bar\\mu^\\top`."""
        mean = self.mean
        second = torch.diag_embed(self.scales**2) + self.locs.unsqueeze(-1) * self.locs.unsqueeze(
            -2
        )
        return (self.weights[:, None, None] * second).sum(0) - torch.outer(mean, mean)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, components={self.weights.shape[0]}"


@MODELS.register("correlated_gaussian", "2-D Gaussian density with correlation rho (no data)")
class CorrelatedGaussianTarget(DensityTarget):
    """A 2-D Gaussian with correlation :math:`\\rho`: :math:`\\mathcal{N}(0, \\sigma^2[[1, \\rho], [\\rho, 1]])`.

    The best mean-field Gaussian under the reverse :math:`\\mathrm{KL}(q\\|p)` has variances
    :math:`1/\\Lambda_{dd} = (1 - \\rho^2)\\sigma^2` (the conditional variance, not the
    marginal :math:`\\sigma^2`), so it underestimates the spread as :math:`\\rho \\to 1`; at
    that optimum :math:`\\mathrm{KL}(q\\|p) = -\\tfrac12\\log(1 - \\rho^2)`. A full-rank Gaussian is
    exact.

    Args:
        rho: correlation, :math:`-1 < \\rho < 1`.
        sigma: marginal standard deviation :math:`\\sigma > 0`.
    """

    def __init__(self, rho: float = 0.9, sigma: float = 1.0) -> None:
        if not isinstance(rho, int | float) or not -1 < rho < 1:
            raise ValueError(f"rho must be a number strictly between -1 and 1, got {rho!r}")
        if not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        super().__init__(2)
        self.rho, self.sigma = float(rho), float(sigma)
        cov = self.sigma**2 * torch.tensor([[1.0, self.rho], [self.rho, 1.0]])
        self.register_buffer("loc", torch.zeros(2))
        self.register_buffer("cov", cov)

    def distribution(self) -> MultivariateNormal:
        return MultivariateNormal(self.loc, self.cov, validate_args=False)

    @property
    def covariance(self) -> Tensor:
        return self.cov

    def meanfield_variance(self) -> float:
        """:math:`(1 - \\rho^2)\\sigma^2`, the variance of the reverse-KL mean-field optimum."""
        return (1 - self.rho**2) * self.sigma**2

    def meanfield_kl(self) -> float:
        """:math:`\\mathrm{KL}(q^*\\|p) = -\\tfrac12\\log(1 - \\rho^2)` at the mean-field optimum."""
        return -0.5 * math.log1p(-(self.rho**2))

    def extra_repr(self) -> str:
        return f"rho={self.rho}, sigma={self.sigma}"
