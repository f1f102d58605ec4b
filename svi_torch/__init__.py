"""svi_torch: stochastic variational inference in PyTorch.

>>> import svi_torch as st
>>> X, y, _ = st.models.regression_data(1000, 3)
>>> model = st.models.BayesianLinearRegression(X, y)
>>> family = st.families.FullRankGaussian(model.dim)
>>> result = st.fit(model, family, steps=1000)  # doctest: +SKIP
"""

from . import (
    data,
    diagnostics,
    divergences,
    families,
    methods,
    models,
    objectives,
    posterior,
    training,
)
from .fitting import fit
from .posterior import load_result, load_run
from .training import FitResult

__all__ = [
    "fit",
    "FitResult",
    "load_result",
    "load_run",
    "families",
    "models",
    "objectives",
    "methods",
    "training",
    "data",
    "divergences",
    "diagnostics",
    "posterior",
]
__version__ = "0.1.0"
