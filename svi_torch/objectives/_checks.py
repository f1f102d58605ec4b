"""Argument checks shared by the objectives."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_num_particles", "total"]


def check_num_particles(value: object, name: str = "num_particles") -> None:
    """Raise a clear error unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def total(x: Tensor) -> Tensor:
    """Sum over any batch dimensions (amortized families give one term per data point)."""
    return x.sum() if x.dim() > 0 else x
