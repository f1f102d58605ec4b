"""Variational families: ``nn.Module`` subclasses whose ``forward`` returns a distribution."""

from .base import VariationalFamily, inverse_softplus
from .gaussian import FullRankGaussian, GaussianFamily, LowRankGaussian, MeanFieldGaussian

__all__ = [
    "VariationalFamily",
    "GaussianFamily",
    "MeanFieldGaussian",
    "FullRankGaussian",
    "LowRankGaussian",
    "inverse_softplus",
]
