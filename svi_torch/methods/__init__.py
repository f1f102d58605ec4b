"""Inference methods as values: ``SGD``, ``NGVI``, ``BaM``, ``Pathfinder``, ``Auto``, the registry.

``st.fit(model, family, method=...)`` takes a value or a registered name; a config's
``method:`` section names one with its options. See :mod:`svi_torch.methods.base`.
"""

from .auto import Auto
from .bam_method import BaM
from .base import METHODS, LoopMethod, Method, register_method, resolve_method
from .ngvi import NGVI
from .pathfinder_method import Pathfinder
from .sgd import SGD
from .starts import (
    Initialization,
    MapEstimate,
    find_map,
    initialize,
    laplace_precision,
    pathfinder_start,
)

__all__ = [
    "Auto",
    "BaM",
    "NGVI",
    "Pathfinder",
    "SGD",
    "Method",
    "LoopMethod",
    "METHODS",
    "register_method",
    "resolve_method",
    "find_map",
    "initialize",
    "laplace_precision",
    "pathfinder_start",
    "Initialization",
    "MapEstimate",
]
