"""Closed-form log densities for models' hot paths.

``torch.distributions.Normal(loc, scale).log_prob(x)`` builds a distribution object,
broadcasts its arguments and (by default) validates the sample on every call; in a
training step that runs thousands of times, that bookkeeping costs more than the maths.
These functions are the same formulas as plain tensor expressions.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["normal_log_prob"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    """Elementwise :math:`\\log \\mathcal{N}(x; \\mu, s^2) = -\\tfrac12 ((x-\\mu)/s)^2 - \\log s - \\tfrac12 \\log 2\\pi`.

    Args:
        x: values.
        loc: :math:`\\mu`, broadcastable to ``x``.
        scale: :math:`s > 0`, broadcastable to ``x`` (not validated: callers own it).

    Example:
        >>> import torch
        >>> normal_log_prob(torch.zeros(2), 0.0, 1.0)
        tensor([-0.9189, -0.9189])
    """
    if isinstance(scale, Tensor):
        return -0.5 * ((x - loc) / scale).square() - (scale.log() + _HALF_LOG_2PI)
    # Python-number scale: fold the constants, three tensor ops instead of six.
    centred = x if isinstance(loc, int | float) and loc == 0 else x - loc
    return centred.square() * (-0.5 / scale**2) - (math.log(scale) + _HALF_LOG_2PI)
