"""Variational families: ``nn.Module`` subclasses whose ``forward`` returns a distribution."""

from .amortized import AmortizedGaussian
from .base import VariationalFamily, inverse_softplus
from .delta import Delta
from .flows import FlowLayers, NormalizingFlow
from .gaussian import FullRankGaussian, GaussianFamily, LowRankGaussian, MeanFieldGaussian
from .mixture import GaussianMixture

__all__ = [
    "VariationalFamily",
    "GaussianFamily",
    "MeanFieldGaussian",
    "FullRankGaussian",
    "LowRankGaussian",
    "GaussianMixture",
    "NormalizingFlow",
    "FlowLayers",
    "AmortizedGaussian",
    "Delta",
    "inverse_softplus",
]
