"""Inference methods as values: ``SGD``, ``NGVI``, ``Auto`` and the registry.

``st.fit(model, family, method=...)`` takes a value or a registered name; a config's
``method:`` section names one with its options. See :mod:`svi_torch.methods.base`.
"""

from .auto import Auto
from .base import METHODS, LoopMethod, Method, register_method, resolve_method
from .ngvi import NGVI
from .sgd import SGD
from .starts import Initialization, MapEstimate, find_map, initialize, laplace_precision

__all__ = [
    "Auto",
    "NGVI",
    "SGD",
    "Method",
    "LoopMethod",
    "METHODS",
    "register_method",
    "resolve_method",
    "find_map",
    "initialize",
    "laplace_precision",
    "Initialization",
    "MapEstimate",
]
