"""The hierarchical set's posteriors: every module in this package defines ``POSTERIOR``.

They share :class:`benchmarks.posteriordb.spec.Posterior` with the posteriordb suite and are
found by :func:`benchmarks.posteriordb.posteriors.load_posteriors` with it, so the runner
scores them with no special case. Each model is written the way a user writes Pyro: the
data as the arguments, full-data ``X @ beta``, centred group effects, the observations in
``pyro.plate("data", N)`` (never subsampled, so ``data_plate`` is ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...posteriordb.convert import int_tensor, real_tensor

__all__ = ["model_data"]


def model_data(data: Mapping[str, Any], indices: tuple[str, ...] = ("group",)) -> dict[str, Any]:
    """JSON data -> model arguments: sizes stay ints, ``indices`` become int64 tensors, other
    arrays (counts and 0/1 outcomes included, as Pyro's Binomial and Bernoulli take them)
    float64 tensors."""
    return {
        key: int(value)
        if isinstance(value, int)
        else (int_tensor(value) if key in indices else real_tensor(value))
        for key, value in data.items()
    }
