"""Seeded synthetic data for the built-in models.

Every generator takes a ``seed`` and uses its own ``torch.Generator``, so data are the same
across runs and never disturb the global random state.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["normal_mean_data", "regression_data", "logistic_data", "correlated_features"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def normal_mean_data(
    num_data: int = 1000, true_mean: float = 1.0, noise_scale: float = 1.0, seed: int = 0
) -> Tensor:
    """:math:`x_i \\sim \\mathcal{N}(\\text{true\\_mean}, \\text{noise\\_scale}^2)`, shape ``(N,)``."""
    g = _generator(seed)
    return true_mean + noise_scale * torch.randn(num_data, generator=g)


def correlated_features(
    num_data: int, dim: int, correlation: float = 0.0, seed: int = 0, offset: float = 0.0
) -> Tensor:
    """Features with equicorrelation ``correlation`` between columns, plus ``offset``.

    Rows are :math:`x_i = \\sqrt{1-\\rho}\\,\\epsilon_i + \\sqrt{\\rho}\\,\\eta_i \\mathbf{1} + c`,
    so :math:`\\mathrm{Corr}(x_{id}, x_{ie}) = \\rho`; an offset :math:`c \\neq 0` (uncentred
    predictors) makes the posterior ill-conditioned.
    """
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"correlation must be in [0, 1), got {correlation}")
    g = _generator(seed)
    eps = torch.randn(num_data, dim, generator=g)
    shared = torch.randn(num_data, 1, generator=g)
    return (1 - correlation) ** 0.5 * eps + correlation**0.5 * shared + offset


def regression_data(
    num_data: int = 1000,
    dim: int = 5,
    correlation: float = 0.5,
    noise_scale: float = 1.0,
    seed: int = 0,
    offset: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(X, y, beta)`` from :math:`y = X\\beta + \\sigma\\epsilon` with correlated features."""
    X = correlated_features(num_data, dim, correlation, seed, offset)
    g = _generator(seed + 1)
    beta = torch.randn(dim, generator=g)
    y = X @ beta + noise_scale * torch.randn(num_data, generator=g)
    return X, y, beta


def logistic_data(
    num_data: int = 1000, dim: int = 5, correlation: float = 0.0, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(X, y, beta)`` with :math:`y_i \\sim \\mathrm{Bernoulli}(\\sigma(x_i^\\top\\beta))`."""
    X = correlated_features(num_data, dim, correlation, seed)
    g = _generator(seed + 1)
    beta = torch.randn(dim, generator=g) / dim**0.5 * 2
    y = torch.bernoulli(torch.sigmoid(X @ beta), generator=g)
    return X, y, beta
