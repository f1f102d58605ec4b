"""Numerical health of a run: skip non-finite steps, roll back, and give up loudly.

A stochastic-gradient step whose loss or any gradient entry is NaN/Inf never reaches the
parameters: it is skipped and counted (``health/skipped_steps``). Isolated bad steps
(one unlucky particle in a steep tail) need nothing more. A *streak* of
``max_bad_steps`` bad steps means the iterate itself sits somewhere the log density
breaks (an earlier, too-large step walked into it), so the guard

1. restores the *last good state* -- family and model parameters, optimizer moments and
   the iterate average from an in-memory snapshot,
2. multiplies the learning rate by ``lr_factor`` (a smaller step is the usual cure for a
   walk into a bad region), and
3. continues, up to ``max_recoveries`` times.

After that it restores the last good state once more, writes it as a checkpoint (when
the run has a ``checkpoint_path``) and raises :class:`NonFiniteLossError` naming the step
and the terms of the objective (``log_likelihood``, ``log_prior``, ``log_det_jacobian``,
``entropy``) that were not finite.

*Good* is checked, not assumed: a snapshot of the state after step :math:`t` is only
promoted to the last good state once the objective evaluated *at* that state (step
:math:`t+1`) was finite. Snapshots are taken every ``snapshot_every`` healthy steps, so
their cost (one copy of the parameters and optimizer state) is amortised.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import compat
from ..objectives.base import ObjectiveOutput

__all__ = ["NonFiniteLossError", "HealthGuard", "FiniteCheck", "non_finite_terms"]

# The objective's terms a user can act on, in the order the error lists them.
TERM_NAMES = {
    "log_likelihood": "log-likelihood",
    "log_prior": "log prior",
    "log_det_jacobian": "Jacobian (log |det J| of the constraining transform)",
    "entropy": "entropy of the family",
}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient too many steps in a row.

    Attributes:
        step: the step at which the run gave up.
        terms: names of the metrics that were not finite (``["gradient"]`` when only the
            gradient was).
        checkpoint: where the last good state was written, or None.
    """

    def __init__(
        self, message: str, step: int, terms: list[str], checkpoint: str | None = None
    ) -> None:
        super().__init__(message)
        self.step, self.terms, self.checkpoint = step, terms, checkpoint


def non_finite_terms(metrics: Mapping[str, Tensor]) -> list[str]:
    """Names of the non-finite metrics, the objective's own terms first.

    ``elbo`` (their sum) is listed only when no term explains it; ``["gradient"]`` when every
    metric is finite, i.e. only the backward pass overflowed.
    """
    bad = [k for k, v in metrics.items() if not bool(torch.isfinite(v).all())]
    terms = [k for k in bad if k in TERM_NAMES]
    if terms:
        return terms
    return bad or ["gradient"]


class FiniteCheck:
    """Whether a loss and its gradients are all finite, in one fused op and one host read.

    One fused kernel scans every tensor and raises a flag (:func:`svi_torch.compat.all_finite`,
    the kernel behind ``torch.amp.GradScaler`` at a scale of exactly 1, which leaves the
    values unchanged). A gradient norm would do the same job in four ops; this matters
    because the check runs every step. Falls back to ``torch.isfinite`` on tensors the
    kernel rejects (mixed devices).
    """

    def __init__(self) -> None:
        # Per device: the flag the kernel raises, and the scale 1 it multiplies by.
        self._flags: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, loss: Tensor, grads: list[Tensor]) -> bool:
        device = loss.device
        if device not in self._flags:
            self._flags[device] = (
                torch.zeros((), device=device),
                torch.ones((), device=device),
            )
        found, one = self._flags[device]
        return compat.all_finite([loss, *grads], found, one)


def _describe(terms: list[str]) -> str:
    return ", ".join(f"{t} ({TERM_NAMES[t]})" if t in TERM_NAMES else t for t in terms)


def _clone(tree: Any) -> Any:
    """Deep copy of nested dicts/lists of tensors (a snapshot must not alias live state)."""
    if isinstance(tree, Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_clone(v) for v in tree)
    return tree


@dataclass
class HealthGuard:
    """Skip, roll back, lower the learning rate, give up; see the module docstring.

    Args:
        max_bad_steps: non-finite steps in a row before a roll-back.
        max_recoveries: roll-backs allowed before the run stops with an error.
        lr_factor: learning-rate multiplier applied at each roll-back (1.0 keeps it).
        snapshot_every: healthy steps between snapshots of the state.
    """

    max_bad_steps: int = 20
    max_recoveries: int = 3
    lr_factor: float = 0.5
    snapshot_every: int = 100

    def __post_init__(self) -> None:
        for name in ("max_bad_steps", "snapshot_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if (
            isinstance(self.max_recoveries, bool)
            or not isinstance(self.max_recoveries, int)
            or self.max_recoveries < 0
        ):
            raise ValueError(f"max_recoveries must be an int >= 0, got {self.max_recoveries!r}")
        if not (isinstance(self.lr_factor, int | float) and 0 < self.lr_factor <= 1) or isinstance(
            self.lr_factor, bool
        ):
            raise ValueError(f"nan_lr_factor must be in (0, 1], got {self.lr_factor!r}")
        self.bad_in_a_row = 0
        self.recoveries = 0
        self.streak_start: int | None = None
        self.streak_terms: list[str] = []
        self._good: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None
        self._snapshot_step: int | None = None

    # -- called by the loop ------------------------------------------------------------------
    def start(self, loop: Any) -> None:
        """At step 0: the initial state is the first candidate for a good state."""
        if self._good is None and self._pending is None:
            self._pending = _snapshot(loop)
            self._snapshot_step = loop.state.step

    def record_good(self, loop: Any) -> None:
        """After a finite step (``loop.state.step`` already counts it)."""
        self.bad_in_a_row = 0
        self.streak_start = None
        if self._pending is not None:
            # The objective was finite at the pending state: it is now known to be good.
            self._good, self._pending = self._pending, None
        step = loop.state.step
        if self._snapshot_step is None or step - self._snapshot_step >= self.snapshot_every:
            self._pending = _snapshot(loop)
            self._snapshot_step = step

    def record_bad(self, loop: Any, output: ObjectiveOutput) -> None:
        """After a skipped step (``loop.state.step`` does not count it yet); may raise."""
        state = loop.state
        step = state.step + 1
        self.bad_in_a_row += 1
        self._pending = None  # never validated: the objective was not finite there
        if self.streak_start is None:
            self.streak_start = step
            self.streak_terms = non_finite_terms(output.metrics)
        if self.bad_in_a_row < self.max_bad_steps:
            return
        terms = non_finite_terms(output.metrics)
        if self._good is not None and self.recoveries < self.max_recoveries:
            _restore(loop, self._good)
            self.recoveries += 1
            state.step_size_factor *= self.lr_factor
            warnings.warn(
                f"step {step}: {self.bad_in_a_row} non-finite steps in a row "
                f"({_describe(terms)}); restored the state of step {self._good['step']} and "
                f"set lr to {state.step_size_factor:.3g} times its scheduled value (recovery "
                f"{self.recoveries} of {self.max_recoveries})",
                RuntimeWarning,
                stacklevel=2,
            )
            self.bad_in_a_row = 0
            self.streak_start = None
            return
        self._give_up(loop, step, terms)

    def _give_up(self, loop: Any, step: int, terms: list[str]) -> None:
        checkpoint = None
        if self._good is not None:
            _restore(loop, self._good)
            where = f"restored the last good state (step {self._good['step']})"
        else:
            where = "no finite step was ever taken, so the parameters are the initial ones"
        if loop.state.settings.checkpoint_path:
            checkpoint = str(loop.save_checkpoint())
            where += f" and wrote it to {checkpoint}"
        first = self.streak_start if self.streak_start is not None else step
        raise NonFiniteLossError(
            f"training stopped at step {step}: the loss or its gradient was NaN/Inf for "
            f"{self.bad_in_a_row} steps in a row (since step {first}; non-finite: "
            f"{_describe(self.streak_terms)}; at the last step: {_describe(terms)}) after "
            f"{self.recoveries} recover{'y' if self.recoveries == 1 else 'ies'}; {where}. "
            "Lower lr, check the model's log density for invalid parameter values, or set "
            "clip_grad_norm",
            step=step,
            terms=terms,
            checkpoint=checkpoint,
        )

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "bad_in_a_row": self.bad_in_a_row,
            "recoveries": self.recoveries,
            "streak_start": self.streak_start,
            "streak_terms": list(self.streak_terms),
            "good": self._good,
            "pending": self._pending,
            "snapshot_step": self._snapshot_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bad_in_a_row = int(state["bad_in_a_row"])
        self.recoveries = int(state["recoveries"])
        self.streak_start = state["streak_start"]
        self.streak_terms = list(state["streak_terms"])
        self._good = _clone(state["good"])
        self._pending = _clone(state["pending"])
        self._snapshot_step = state["snapshot_step"]


def _snapshot(loop: Any) -> dict[str, Any]:
    state = loop.state
    return {
        "step": state.step,
        "family": _clone(state.family.state_dict()),
        "model_params": {k: _clone(v) for k, v in state.model.named_parameters()},
        "rule": _clone(loop.rule.state_dict()),
    }


def _restore(loop: Any, snapshot: Mapping[str, Any]) -> None:
    state = loop.state
    state.family.load_state_dict(snapshot["family"])
    with torch.no_grad():
        for name, p in state.model.named_parameters():
            p.copy_(snapshot["model_params"][name])
    # load_state_dict copies into the live rule; the snapshot stays intact.
    loop.rule.load_state_dict(_clone(snapshot["rule"]))
    for p in state.params:
        p.grad = None
