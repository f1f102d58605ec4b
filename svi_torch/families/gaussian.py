"""Gaussian variational families: mean-field, full-rank (Cholesky) and low-rank plus diagonal.

All three parameterise a Gaussian :math:`q(z) = \\mathcal{N}(\\mu, \\Sigma)` on
:math:`\\mathbb{R}^D` and keep every scale positive through softplus:

* :class:`MeanFieldGaussian`: :math:`\\Sigma = \\mathrm{diag}(\\sigma^2)`, :math:`2D` parameters.
* :class:`FullRankGaussian`: :math:`\\Sigma = LL^\\top` with lower-triangular :math:`L` whose
  diagonal is :math:`\\mathrm{softplus}(\\cdot) > 0`; :math:`D + D(D+1)/2` parameters.
* :class:`LowRankGaussian`: :math:`\\Sigma = WW^\\top + \\mathrm{diag}(d^2)`, :math:`W \\in
  \\mathbb{R}^{D \\times r}`; :math:`D(r + 2)` parameters, cost linear in :math:`D`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
)

from ..registry import FAMILIES
from .base import VariationalFamily, inverse_softplus

__all__ = ["GaussianFamily", "MeanFieldGaussian", "FullRankGaussian", "LowRankGaussian"]


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

# From this dimension on, full-rank sampling goes through _StrictLowerMatmul, whose backward
# writes the gradient of the D x D factor into one buffer instead of two; below it the
# custom Function's per-call Python cost outweighs the pass over D x D memory it saves
# (step time against plain autograd: 1.07-1.08x at D = 100, 0.99-1.00 at D = 300,
# 0.86-0.92 at D = 600; ``python benchmarks/step_overhead.py``).
FULL_RANK_FUNCTION_MIN_DIM = 512


class _StrictLowerMatmul(torch.autograd.Function):
    """:math:`\\epsilon T_{<}^\\top` for the strictly lower triangle :math:`T_{<}` of ``tril``.

    The gradient :math:`\\partial/\\partial T = \\mathrm{tril}_{-1}(G^\\top \\epsilon)` (``G``
    the incoming gradient, particles flattened) is formed in one :math:`D \\times D` buffer
    and masked in place, where autograd's ``tril(-1)`` would allocate a second one. The
    forward pass's :math:`T_{<}` is freed before the backward pass runs, so a step holds at
    most one :math:`D \\times D` temporary besides the gradient.
    """

    @staticmethod
    def forward(ctx, eps: Tensor, tril: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(eps)
        return eps @ tril.tril(-1).mT

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor | None]:  # type: ignore[override]
        if not ctx.needs_input_grad[1]:
            return None, None
        (eps,) = ctx.saved_tensors
        dim = eps.shape[-1]
        return None, (grad.reshape(-1, dim).mT @ eps.reshape(-1, dim)).tril_(-1)


def _standard_noise(loc: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
    """:math:`\\epsilon \\sim \\mathcal{N}(0, I)` of shape ``sample_shape + (D,)``.

    ``torch.randn`` is ``empty().normal_()`` inside ATen, which is how ``torch.distributions``
    draws, so a fused family consumes the random stream exactly as its distribution would
    (tested); one call instead of two costs less per step.
    """
    return torch.randn((*sample_shape, *loc.shape), dtype=loc.dtype, device=loc.device)


def _log_prob_from_noise(eps: Tensor, sum_log_scale: Tensor) -> Tensor:
    """:math:`\\log q(z)` of :math:`z = \\mu + L\\epsilon` from the noise it was made from.

    With lower-triangular :math:`L` (diagonal for mean-field),
    :math:`\\log q(z) = -\\tfrac12\\lVert\\epsilon\\rVert^2 - \\sum_d \\log L_{dd}
    - \\tfrac D2 \\log 2\\pi`. Its total derivative in the parameters equals that of
    ``log_prob(rsample())`` (:math:`\\epsilon` does not depend on them), without a
    triangular solve or a distribution object per step.
    """
    dim = eps.shape[-1]
    return -0.5 * eps.square().sum(-1) - (sum_log_scale + dim * _HALF_LOG_2PI)


def _entropy_from_log_scale(dim: int, sum_log_scale: Tensor) -> Tensor:
    """:math:`H[\\mathcal{N}(\\mu, LL^\\top)] = \\sum_d \\log L_{dd} + \\tfrac D2(1 + \\log 2\\pi)`."""
    return sum_log_scale + dim * (0.5 + _HALF_LOG_2PI)


def _overridden(family: nn.Module, base: type, *names: str) -> bool:
    """Whether a subclass of ``base`` overrides any of ``names``.

    The fused ``rsample_and_entropy`` computes the sample, the scale and the entropy itself;
    a subclass that changes one of them must get its own versions called instead.
    """
    cls = type(family)
    return cls is not base and any(getattr(cls, n) is not getattr(base, n) for n in names)


def _cholesky64(covariance: Tensor) -> Tensor:
    """Lower Cholesky factor of ``covariance`` computed in float64 (one-line error if not PD)."""
    chol, info = torch.linalg.cholesky_ex(covariance.double())
    if info.item() != 0:
        raise ValueError(
            "set_moments needs a symmetric positive-definite covariance; this one is not "
            "(its Cholesky factorisation fails even in float64)"
        )
    return chol


def _initial_loc(dim: int, init_loc: Tensor | float) -> Tensor:
    loc = torch.as_tensor(init_loc, dtype=torch.get_default_dtype())
    if loc.dim() == 0:
        loc = loc.expand(dim)
    if loc.shape != (dim,):
        raise ValueError(f"init_loc has shape {tuple(loc.shape)}; expected ({dim},) or a scalar")
    return loc.clone()


def _initial_scale(dim: int, init_scale: Tensor | float) -> Tensor:
    scale = torch.as_tensor(init_scale, dtype=torch.get_default_dtype())
    if scale.dim() == 0:
        scale = scale.expand(dim)
    if scale.shape != (dim,):
        raise ValueError(
            f"init_scale has shape {tuple(scale.shape)}; expected ({dim},) or a scalar"
        )
    if torch.any(scale <= 0) or not torch.all(torch.isfinite(scale)):
        raise ValueError("init_scale must be positive and finite")
    return scale.clone()


class GaussianFamily(VariationalFamily):
    """Common base of the Gaussian families: a location ``loc`` and a covariance.

    Subclasses expose :meth:`covariance` so that analytic KLs, natural-gradient methods and
    Laplace initialisation can work with any of them, and :meth:`set_moments` to place the
    family at a given mean and covariance (as closely as its structure allows).
    """

    loc: nn.Parameter

    def covariance(self) -> Tensor:
        """The full covariance matrix :math:`\\Sigma` (``dim x dim``)."""
        return self().covariance_matrix

    def set_moments(self, loc: Tensor, covariance: Tensor) -> None:
        """Set :math:`\\mu` and the closest :math:`\\Sigma` the family can represent."""
        raise NotImplementedError


@FAMILIES.register("meanfield", "fully factorised Gaussian, diag(sigma^2)")
class MeanFieldGaussian(GaussianFamily):
    """Fully factorised Gaussian :math:`q(z) = \\prod_d \\mathcal{N}(z_d; \\mu_d, \\sigma_d^2)`.

    Args:
        dim: dimension :math:`D`.
        init_loc: initial mean (scalar or ``(D,)``).
        init_scale: initial standard deviation (scalar or ``(D,)``), positive.

    Example:
        >>> q = MeanFieldGaussian(3, init_scale=0.1)
        >>> z, log_q = q.rsample_and_log_prob((8,))
        >>> z.shape, log_q.shape
        (torch.Size([8, 3]), torch.Size([8]))
    """

    def __init__(self, dim: int, init_loc: Tensor | float = 0.0, init_scale: Tensor | float = 0.1):
        super().__init__(dim)
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.raw_scale = nn.Parameter(inverse_softplus(_initial_scale(dim, init_scale)))

    @property
    def scale(self) -> Tensor:
        """:math:`\\sigma = \\mathrm{softplus}(\\text{raw\\_scale})`."""
        return F.softplus(self.raw_scale)

    def forward(self, context: Tensor | None = None) -> Independent:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fused :math:`z = \\mu + \\sigma \\odot \\epsilon` and :math:`\\log q(z)` from :math:`\\epsilon`."""
        scale = self.scale
        eps = _standard_noise(self.loc, tuple(sample_shape))
        return self.loc + eps * scale, _log_prob_from_noise(eps, scale.log().sum(-1))

    def rsample(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> Tensor:
        return self.loc + _standard_noise(self.loc, tuple(sample_shape)) * self.scale

    def rsample_and_entropy(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if _overridden(self, MeanFieldGaussian, "rsample", "entropy", "scale"):
            return super().rsample_and_entropy(sample_shape, context)
        scale = self.scale
        z = self.loc + _standard_noise(self.loc, tuple(sample_shape)) * scale
        return z, _entropy_from_log_scale(self.dim, scale.log().sum(-1))

    def entropy(self, context: Tensor | None = None) -> Tensor:
        """:math:`H[q] = \\sum_d \\log \\sigma_d + \\tfrac D2 (1 + \\log 2\\pi)`."""
        return _entropy_from_log_scale(self.dim, self.scale.log().sum(-1))

    def covariance(self) -> Tensor:
        return torch.diag_embed(self.scale**2)

    def set_moments(self, loc: Tensor, covariance: Tensor) -> None:
        """Mean-field projection: keep :math:`\\mu` and :math:`\\sigma_d^2 = 1/\\Lambda_{dd}`.

        :math:`1/\\Lambda_{dd}` (the inverse of the diagonal of the precision) is the
        mean-field optimum of :math:`\\mathrm{KL}(q\\|p)` for a Gaussian target, not the
        marginal variance :math:`\\Sigma_{dd}`.
        """
        with torch.no_grad():
            # In float64: an ill-conditioned float32 covariance can lose its definiteness.
            precision = torch.cholesky_inverse(_cholesky64(covariance))
            self.loc.copy_(loc)
            self.raw_scale.copy_(inverse_softplus(torch.diagonal(precision).rsqrt().to(self.loc)))


@FAMILIES.register("fullrank", "full-covariance Gaussian, Cholesky factor")
class FullRankGaussian(GaussianFamily):
    """Full-covariance Gaussian :math:`\\mathcal{N}(\\mu, LL^\\top)` with Cholesky factor :math:`L`.

    :math:`L` is lower triangular with strictly lower part ``tril`` (free) and diagonal
    :math:`\\mathrm{softplus}(\\text{raw\\_diag}) > 0`, so :math:`LL^\\top` is positive definite.

    Args:
        dim: dimension :math:`D`.
        init_loc: initial mean.
        init_scale: initial marginal standard deviation (the initial :math:`L` is diagonal).
    """

    def __init__(self, dim: int, init_loc: Tensor | float = 0.0, init_scale: Tensor | float = 0.1):
        super().__init__(dim)
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.raw_diag = nn.Parameter(inverse_softplus(_initial_scale(dim, init_scale)))
        # Only the strictly lower triangle of ``tril`` is used (``tril(-1)``), so the upper
        # triangle's gradient is zero and Adam never moves it.
        self.tril = nn.Parameter(torch.zeros(dim, dim))

    @property
    def scale_tril(self) -> Tensor:
        """Cholesky factor :math:`L` of the covariance."""
        return self.tril.tril(-1) + torch.diag_embed(F.softplus(self.raw_diag))

    def _sample_from_noise(self, eps: Tensor, diag: Tensor) -> Tensor:
        """:math:`z = \\mu + L\\epsilon = \\mu + d \\odot \\epsilon + T\\epsilon`, with
        :math:`d` the diagonal of :math:`L` and :math:`T` its strictly lower part.

        Split this way a step makes one :math:`D \\times D` tensor (``tril(-1)``) and one
        gradient of that size, instead of building :math:`L` (a masked copy, a diagonal
        embedding and their sum) and back-propagating through all three: at
        :math:`D = 601` (the BNN of ``benchmarks/speed.py``) that is 1.4 MB per tensor.
        From ``FULL_RANK_FUNCTION_MIN_DIM`` on, :class:`_StrictLowerMatmul` also makes its
        gradient in one buffer. A subclass that overrides ``scale_tril`` gets its own
        :math:`L` used.
        """
        if _overridden(self, FullRankGaussian, "scale_tril"):
            return self.loc + eps @ self.scale_tril.mT
        return self._split_sample(eps, diag)

    def _split_sample(self, eps: Tensor, diag: Tensor) -> Tensor:
        """:math:`\\mu + d \\odot \\epsilon + T\\epsilon` (callers have checked ``scale_tril``)."""
        if self.dim >= FULL_RANK_FUNCTION_MIN_DIM and not eps.requires_grad:
            return self.loc + eps * diag + _StrictLowerMatmul.apply(eps, self.tril)
        return self.loc + eps * diag + eps @ self.tril.tril(-1).mT

    def forward(self, context: Tensor | None = None) -> MultivariateNormal:
        return MultivariateNormal(self.loc, scale_tril=self.scale_tril, validate_args=False)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fused :math:`z = \\mu + L\\epsilon` and :math:`\\log q(z)` from :math:`\\epsilon` (no solve)."""
        eps = _standard_noise(self.loc, tuple(sample_shape))
        diag = F.softplus(self.raw_diag)
        return self._sample_from_noise(eps, diag), _log_prob_from_noise(eps, diag.log().sum(-1))

    def rsample(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> Tensor:
        eps = _standard_noise(self.loc, tuple(sample_shape))
        return self._sample_from_noise(eps, F.softplus(self.raw_diag))

    def rsample_and_entropy(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if _overridden(self, FullRankGaussian, "rsample", "entropy", "scale_tril"):
            return super().rsample_and_entropy(sample_shape, context)
        diag = F.softplus(self.raw_diag)
        # The override check above covered scale_tril: sample without repeating it.
        z = self._split_sample(_standard_noise(self.loc, tuple(sample_shape)), diag)
        return z, _entropy_from_log_scale(self.dim, diag.log().sum(-1))

    def entropy(self, context: Tensor | None = None) -> Tensor:
        """:math:`H[q] = \\sum_d \\log L_{dd} + \\tfrac D2 (1 + \\log 2\\pi)`."""
        return _entropy_from_log_scale(self.dim, F.softplus(self.raw_diag).log().sum(-1))

    def covariance(self) -> Tensor:
        L = self.scale_tril
        return L @ L.mT

    def set_moments(self, loc: Tensor, covariance: Tensor) -> None:
        with torch.no_grad():
            # Factorised in float64, then rounded: an ill-conditioned covariance that is
            # positive definite can fail a float32 Cholesky.
            L = _cholesky64(covariance).to(self.loc)
            self.loc.copy_(loc)
            self.raw_diag.copy_(inverse_softplus(torch.diagonal(L)))
            self.tril.copy_(L.tril(-1))


@FAMILIES.register("lowrank", "low-rank plus diagonal Gaussian")
class LowRankGaussian(GaussianFamily):
    """Low-rank plus diagonal Gaussian :math:`\\mathcal{N}(\\mu, WW^\\top + \\mathrm{diag}(d^2))`.

    Args:
        dim: dimension :math:`D`.
        rank: number of columns :math:`r` of the factor :math:`W` (``1 <= rank <= dim``).
        init_loc: initial mean.
        init_scale: initial diagonal standard deviation :math:`d`.
        init_factor_scale: entries of :math:`W` start at this scale times a fixed pseudo-random
            pattern (seed 0); exactly zero would be a saddle point of the ELBO.
    """

    def __init__(
        self,
        dim: int,
        rank: int = 2,
        init_loc: Tensor | float = 0.0,
        init_scale: Tensor | float = 0.1,
        init_factor_scale: float = 1e-2,
    ):
        super().__init__(dim)
        if not isinstance(rank, int) or not 1 <= rank <= dim:
            raise ValueError(f"rank must be an int in [1, dim={dim}], got {rank!r}")
        self.rank = rank
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.raw_diag = nn.Parameter(inverse_softplus(_initial_scale(dim, init_scale)))
        generator = torch.Generator().manual_seed(0)
        factor = torch.randn(dim, rank, generator=generator) * init_factor_scale
        self.cov_factor = nn.Parameter(factor.to(torch.get_default_dtype()))

    @property
    def diag_scale(self) -> Tensor:
        return F.softplus(self.raw_diag)

    def forward(self, context: Tensor | None = None) -> LowRankMultivariateNormal:
        return LowRankMultivariateNormal(
            self.loc, self.cov_factor, self.diag_scale**2, validate_args=False
        )

    def covariance(self) -> Tensor:
        return self.cov_factor @ self.cov_factor.mT + torch.diag_embed(self.diag_scale**2)

    def set_moments(self, loc: Tensor, covariance: Tensor) -> None:
        """Top-``rank`` eigenpairs for :math:`W`, the residual diagonal (floored) for :math:`d^2`."""
        with torch.no_grad():
            cov = covariance.to(self.loc)
            evals, evecs = torch.linalg.eigh(cov)
            top = evals[-self.rank :].clamp_min(0)
            W = evecs[:, -self.rank :] * top.sqrt()
            resid = (torch.diagonal(cov) - (W**2).sum(-1)).clamp_min(1e-3 * cov.diagonal().min())
            self.loc.copy_(loc)
            self.cov_factor.copy_(W)
            self.raw_diag.copy_(inverse_softplus(resid.sqrt()))

    def set_factors(self, loc: Tensor, factor: Tensor, diag_variance: Tensor) -> None:
        """Set :math:`\\mu`, :math:`W` and :math:`d^2` directly: :math:`\\Sigma = WW^\\top +
        \\mathrm{diag}(d^2)`, without forming the :math:`D \\times D` matrix.

        Args:
            loc: :math:`\\mu`, shape ``(D,)``.
            factor: :math:`W`, shape ``(D, rank)``.
            diag_variance: :math:`d^2`, shape ``(D,)``, positive.
        """
        if tuple(factor.shape) != (self.dim, self.rank):
            raise ValueError(
                f"factor must have shape ({self.dim}, {self.rank}), got {tuple(factor.shape)}"
            )
        if tuple(loc.shape) != (self.dim,) or tuple(diag_variance.shape) != (self.dim,):
            raise ValueError(
                f"loc and diag_variance must have shape ({self.dim},), got "
                f"{tuple(loc.shape)} and {tuple(diag_variance.shape)}"
            )
        if not bool((diag_variance > 0).all() & torch.isfinite(diag_variance).all()):
            raise ValueError("diag_variance must be positive and finite")
        with torch.no_grad():
            self.loc.copy_(loc)
            self.cov_factor.copy_(factor)
            self.raw_diag.copy_(inverse_softplus(diag_variance.sqrt().to(self.loc)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}"
