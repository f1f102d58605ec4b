"""What importance weights say about a fitted ``q``, quantity by quantity, and how to use them.

Given draws :math:`z_s \\sim q` and their (Pareto-smoothed) log importance weights
:math:`\\log w_s = \\log p(z_s, D) - \\log q(z_s)`, with normalised weights
:math:`\\bar w_s = w_s / \\sum_t w_t`:

* **Effective sample size** of the weights, :math:`\\mathrm{ESS} = 1 / \\sum_s \\bar w_s^2`
  (Kong 1992): how many independent posterior draws the weighted set is worth.
* **Where q disagrees with its weights.** For every constrained scalar :math:`\\theta_j`
  (parameters and derived quantities) compare q's own mean and sd with the self-normalised
  importance estimates :math:`\\tilde m_j = \\sum_s \\bar w_s \\theta_{sj}`,
  :math:`\\tilde s_j^2 = \\sum_s \\bar w_s (\\theta_{sj} - \\tilde m_j)^2`:

  .. math::

      \\mathrm{shift}_j = \\frac{|\\tilde m_j - m_j|}{s_j}, \\qquad
      \\mathrm{ratio}_j = \\frac{\\tilde s_j}{s_j}.

  When q is the posterior the weights are constant and both read 0 and 1. A quantity whose
  weights pull its mean by more than :data:`SHIFT_DOUBT` of q's sd, or its sd outside
  :data:`RATIO_DOUBT`, is *doubtful*: q's marginal for it is not the posterior's. A
  Gaussian fitted by minimising :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q - \\log p]`
  (the reverse, mode-seeking KL) typically shows ratios above 1 on hierarchical scales:
  q is too narrow there.
* **Importance resampling** (Rubin's SIR with Pareto-smoothed weights): draws taken from
  the weighted set in proportion to :math:`\\bar w_s`, by systematic resampling (one
  uniform offset, so the counts are within one of :math:`S\\bar w_s`), then shuffled, so
  that any prefix of them is itself a fair subsample. Equally weighted draws that
  correct q towards the posterior as far as the weights can (reliable for
  :math:`\\hat k \\le 0.7`).

Example:
    >>> w = torch.zeros(1000, dtype=torch.float64)  # constant weights: q is the posterior
    >>> round(effective_sample_size(w))
    1000
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .models.base import Model
from .posterior.draws import constrained_draws, flat_draws

__all__ = [
    "SHIFT_DOUBT",
    "RATIO_DOUBT",
    "QuantityCheck",
    "effective_sample_size",
    "quantity_checks",
    "doubtful_quantities",
    "resample_indices",
]

#: A weighted mean this many of q's sds away from q's mean marks the quantity doubtful.
SHIFT_DOUBT = 0.1
#: A weighted sd over q's sd outside this range marks the quantity doubtful.
RATIO_DOUBT = (0.9, 1.1)


@dataclass(frozen=True)
class QuantityCheck:
    """q's marginal of one constrained scalar against its importance-weighted estimate.

    Attributes:
        name: the quantity, e.g. ``"tau"`` or ``"beta[2]"``.
        shift: :math:`|\\tilde m - m| / s` (weighted mean's distance in q's sds).
        ratio: :math:`\\tilde s / s` (weighted sd over q's sd).
    """

    name: str
    shift: float
    ratio: float

    @property
    def score(self) -> float:
        """How far from agreement: the larger of the shift and :math:`|\\log \\mathrm{ratio}|`."""
        return max(self.shift, abs(math.log(self.ratio)) if self.ratio > 0 else math.inf)

    @property
    def doubtful(self) -> bool:
        low, high = RATIO_DOUBT
        return self.shift > SHIFT_DOUBT or not low <= self.ratio <= high


def _normalised(log_weights: Tensor) -> Tensor:
    log_weights = torch.as_tensor(log_weights).detach().double()
    return torch.softmax(log_weights, 0)


def effective_sample_size(log_weights: Tensor) -> float:
    """:math:`1 / \\sum_s \\bar w_s^2` of the normalised weights (between 1 and :math:`S`)."""
    weights = _normalised(log_weights)
    return float(1.0 / (weights * weights).sum())


def quantity_checks(model: Model, z: Tensor, log_weights: Tensor) -> list[QuantityCheck]:
    """:class:`QuantityCheck` of every constrained scalar of ``model`` at the draws ``z``.

    Args:
        model: the model, which maps ``z`` to its named parameters and derived quantities.
        z: unconstrained draws from q, ``(S, D)``.
        log_weights: their (smoothed) log importance weights, ``(S,)``.

    Returns:
        The checks, in the order of the model's quantities. A quantity that q holds fixed
        (zero sd) is never doubtful.
    """
    weights = _normalised(log_weights)
    names, values = flat_draws(constrained_draws(model, z), z.shape[0])
    values = values.to(weights)
    # Both sds as weighted averages (uniform weights for q), so equal weights give ratio 1.
    mean, sd = values.mean(0), values.std(0, correction=0)
    weighted_mean = weights @ values
    weighted_sd = (weights @ (values - weighted_mean).square()).sqrt()
    checks = []
    for j, name in enumerate(names):
        if not float(sd[j]) > 0 or not math.isfinite(float(sd[j])):
            checks.append(QuantityCheck(name, 0.0, 1.0))
            continue
        shift = float((weighted_mean[j] - mean[j]).abs() / sd[j])
        checks.append(QuantityCheck(name, shift, float(weighted_sd[j] / sd[j])))
    return checks


def doubtful_quantities(checks: list[QuantityCheck]) -> tuple[str, ...]:
    """Names of the doubtful quantities, the most doubtful first."""
    doubtful = [c for c in checks if c.doubtful]
    return tuple(c.name for c in sorted(doubtful, key=lambda c: -c.score))


def resample_indices(
    log_weights: Tensor, num: int, generator: torch.Generator | None = None
) -> Tensor:
    """``num`` indices drawn in proportion to the weights (systematic), in random order.

    Systematic resampling: with one :math:`u \\sim U(0, 1)`, index :math:`s` is taken once
    for each :math:`(i + u)/n`, :math:`i = 0..n-1`, that falls in its cumulative weight
    interval; the expected count of :math:`s` is :math:`n \\bar w_s`, as in multinomial
    resampling, with far less spread.
    """
    weights = _normalised(log_weights)
    cumulative = torch.cumsum(weights, 0)
    cumulative[-1] = 1.0  # rounding: the last interval ends at one
    offset = torch.rand((), generator=generator, dtype=torch.float64)
    points = (torch.arange(num, dtype=torch.float64) + offset) / num
    chosen = torch.searchsorted(cumulative, points).clamp_max(weights.shape[0] - 1)
    return chosen[torch.randperm(num, generator=generator)]
