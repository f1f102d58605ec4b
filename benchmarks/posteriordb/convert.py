"""Conversions shared by the posteriordb translations: Stan data to tensors, draws to Stan names.

Stan's ``real``, ``vector`` and ``matrix`` data are real whatever the JSON holds (posteriordb
writes ``earn = [50000, ...]`` as integers); :func:`real` gives them as float64 tensors, as
``torch.as_tensor`` gives JSON floats. :func:`one_based` names the columns of a vector of
draws as posteriordb does (``beta[1]``, ``beta[2]``, ...).

Example:
    >>> real([1, 2]).dtype
    torch.float64
    >>> sorted(one_based("beta", torch.zeros(3, 2)))
    ['beta[1]', 'beta[2]']
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["real", "one_based"]


def real(values: Any) -> Tensor:
    """Stan real data (scalar, vector, matrix) from JSON values: a float64 tensor."""
    return torch.as_tensor(values, dtype=torch.float64)


def one_based(name: str, values: Tensor) -> dict[str, Tensor]:
    """Columns of ``values`` (shape ``(draws, n)``) keyed ``name[1]`` .. ``name[n]``."""
    if values.dim() != 2:
        raise ValueError(f"draws of {name!r} must have shape (draws, n), got {tuple(values.shape)}")
    return {f"{name}[{j + 1}]": values[:, j] for j in range(values.shape[1])}
