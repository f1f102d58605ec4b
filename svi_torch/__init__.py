"""svi_torch: stochastic variational inference in PyTorch.

>>> import svi_torch as st
>>> X, y, _ = st.models.regression_data(1000, 3)
>>> model = st.models.BayesianLinearRegression(X, y)
>>> family = st.families.FullRankGaussian(model.dim)
>>> result = st.fit(model, family, steps=1000)  # doctest: +SKIP
"""

from . import data, diagnostics, divergences, families, methods, models, objectives, training
from .fitting import fit
from .training import FitResult

__all__ = [
    "fit",
    "FitResult",
    "families",
    "models",
    "objectives",
    "methods",
    "training",
    "data",
    "divergences",
    "diagnostics",
]
__version__ = "0.1.0"
