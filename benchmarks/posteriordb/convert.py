"""Conversions at the suite's boundary: JSON data to tensors, posterior draws to posteriordb names.

posteriordb stores data as JSON lists and names each scalar of a reference quantity in
Stan's 1-based indexing (``beta[1]``, ``theta[2]``). The Pyro models take float64 tensors
(what ``torch.as_tensor`` gives for a float64 array) and their sites carry whole vectors.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["real_tensor", "int_tensor", "stan_names"]


def real_tensor(value: Any) -> Tensor:
    """A JSON number or (nested) list as a float64 tensor (Stan's ``real``/``vector``/``matrix``)."""
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def int_tensor(value: Any) -> Tensor:
    """A JSON integer list as an int64 tensor (Stan's ``array[] int``)."""
    return torch.as_tensor(np.asarray(value, dtype=np.int64))


def stan_names(draws: Mapping[str, Tensor], sites: Sequence[str]) -> dict[str, Tensor]:
    """Split each site's draws into posteriordb's scalar quantities, named 1-based.

    Args:
        draws: site name -> draws with a leading draw dimension, shape ``(S,) + site shape``.
        sites: the sites to report, in order.

    Returns:
        ``{"sigma": (S,), "beta[1]": (S,), "beta[2]": (S,), ...}``; a matrix site ``m`` gives
        ``m[1,1]``, ``m[1,2]``, ... in row-major order.

    Example:
        >>> out = stan_names({"beta": torch.zeros(5, 2), "sigma": torch.ones(5)}, ["beta", "sigma"])
        >>> list(out)
        ['beta[1]', 'beta[2]', 'sigma']
    """
    missing = [site for site in sites if site not in draws]
    if missing:
        raise KeyError(f"draws lack the site(s) {missing}; they have {sorted(draws)}")
    out: dict[str, Tensor] = {}
    for site in sites:
        value = torch.as_tensor(draws[site])
        shape = value.shape[1:]
        if not shape:
            out[site] = value
            continue
        for index in itertools.product(*(range(n) for n in shape)):
            label = ",".join(str(i + 1) for i in index)
            out[f"{site}[{label}]"] = value[(slice(None), *index)]
    return out
