"""Small numerical helpers shared by families and models (imports nothing from svi_torch).

They live here, below both ``families`` and ``models`` in the layers
(``docs/architecture.md``), so that a model can use them without importing a family.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inverse_softplus"]


def inverse_softplus(x: Tensor | float) -> Tensor:
    """Inverse of :math:`\\mathrm{softplus}(u) = \\log(1 + e^u)`: :math:`u = x + \\log(-\\mathrm{expm1}(-x))`."""
    if not (isinstance(x, Tensor) and x.is_floating_point()):
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())  # float64 inputs keep float64
    if torch.any(x <= 0):
        raise ValueError(f"inverse_softplus needs positive values, got min {x.min().item()}")
    return x + torch.log(-torch.expm1(-x))
