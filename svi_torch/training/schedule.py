"""Step-size schedule and iterate (Polyak–Ruppert) averaging.

Constant-step stochastic optimisation stalls at a noise floor set by the step size. The
default ``"auto"`` schedule runs in two phases:

1. *explore*: constant learning rate :math:`\\eta` until ``average_from`` of the step
   budget has passed, or the stop rule sees a plateau;
2. *refine*: the rate decays along a half cosine from :math:`\\eta` to
   :math:`\\eta \\cdot \\text{final\\_factor}` while the iterates are averaged,
   :math:`\\bar\\phi_n = \\frac1n\\sum_{t} \\phi_t` (Polyak & Juditsky 1992; Dhaka et al.
   2020 for VI). The averaged parameters are the result.

Averaging cancels the zero-mean gradient noise that a constant step leaves behind, which
is what lets minibatch VI reach a conjugate posterior to within hundredths of a nat.

A run resumed with a larger budget :math:`T' > T` re-plans the schedule
(:meth:`LRSchedule.extend`): still exploring, the refine phase starts at
``average_from`` :math:`\\cdot T'` (the plan of a fresh run of :math:`T'` steps, so the
resumed run ends where that run would); already refining or finished, the refine phase
keeps its start and its cosine decay is stretched to end at :math:`T'`, the average
going on over the old and the new iterates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import compat

__all__ = ["LRSchedule", "IterateAverage"]

ScheduleFn = Callable[[int, int], float]


@dataclass
class LRSchedule:
    """Learning-rate factor as a function of the step, with an explore and a refine phase.

    Args:
        kind: ``"auto"`` (constant then cosine decay with averaging), ``"constant"``,
            ``"cosine"`` (decay over the whole budget), or a callable
            ``(step, total_steps) -> factor``.
        total_steps: the step budget :math:`T`.
        average_from: fraction of :math:`T` at which the refine phase starts (``"auto"``).
        final_factor: the rate at the end of the decay, relative to the initial rate.
    """

    kind: str | ScheduleFn = "auto"
    total_steps: int = 1000
    average_from: float = 0.5
    final_factor: float = 0.01
    refine_start: int | None = None
    refine_end: int | None = None

    def __post_init__(self) -> None:
        if not callable(self.kind) and self.kind not in ("auto", "constant", "cosine"):
            raise ValueError(
                f"unknown lr_schedule {self.kind!r}; choose 'auto', 'constant', 'cosine' "
                "or pass a function (step, total_steps) -> factor"
            )
        if not 0.0 <= self.average_from < 1.0:
            raise ValueError(f"average_from must be in [0, 1), got {self.average_from}")
        if self.kind == "auto" and self.refine_start is None:
            self.refine_start = int(self.average_from * self.total_steps)
            self.refine_end = self.total_steps

    @property
    def averaging(self) -> bool:
        return self.kind == "auto"

    def refine_now(self, step: int, length: int) -> None:
        """Start the refine phase at ``step`` for ``length`` steps (the stop rule fired)."""
        if self.kind == "auto" and self.refine_start is not None and step < self.refine_start:
            self.refine_start, self.refine_end = step, step + max(length, 1)

    def extend(self, total_steps: int, step: int) -> None:
        """Re-plan for a new budget ``total_steps`` at ``step`` (a resumed, longer run).

        In the explore phase the refine phase moves to ``average_from * total_steps`` (not
        before ``step``): the plan a fresh run of that length has. In the refine phase (or
        after it) the start stays and the decay ends at ``total_steps``.
        """
        if total_steps == self.total_steps:
            return
        self.total_steps = total_steps
        if self.kind != "auto" or self.refine_start is None:
            return
        if step < self.refine_start:
            self.refine_start = max(int(self.average_from * total_steps), step)
        self.refine_end = total_steps

    def in_refine(self, step: int) -> bool:
        return self.averaging and self.refine_start is not None and step >= self.refine_start

    def finished(self, step: int) -> bool:
        return self.refine_end is not None and step >= self.refine_end

    def factor(self, step: int) -> float:
        if callable(self.kind):
            return float(self.kind(step, self.total_steps))
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            return self._cosine(step / max(self.total_steps, 1))
        assert self.refine_start is not None and self.refine_end is not None
        if step < self.refine_start:
            return 1.0
        span = max(self.refine_end - self.refine_start, 1)
        return self._cosine((step - self.refine_start) / span)

    def _cosine(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        return self.final_factor + (1 - self.final_factor) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )

    def state_dict(self) -> dict[str, int | None]:
        return {
            "refine_start": self.refine_start,
            "refine_end": self.refine_end,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, int | None]) -> None:
        """Restore the plan; a checkpoint of another budget is re-planned (:meth:`extend`)."""
        self.refine_start, self.refine_end = state["refine_start"], state["refine_end"]


@dataclass
class IterateAverage:
    """Running mean of parameters, :math:`\\bar\\phi_n = \\bar\\phi_{n-1} + (\\phi_n - \\bar\\phi_{n-1})/n`."""

    count: int = 0
    averages: list[Tensor] = field(default_factory=list)

    def update(self, params: Iterable[nn.Parameter]) -> None:
        params = [p.detach() for p in params]
        with torch.no_grad():
            if self.count == 0:
                self.averages = [p.clone() for p in params]
            else:
                compat.foreach_lerp_(self.averages, params, 1.0 / (self.count + 1))
        self.count += 1

    def copy_to(self, params: Iterable[nn.Parameter]) -> None:
        if self.count == 0:
            return
        with torch.no_grad():
            for p, avg in zip(params, self.averages, strict=True):
                p.copy_(avg)

    def state_dict(self) -> dict[str, object]:
        return {"count": self.count, "averages": list(self.averages)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.count = int(state["count"])  # type: ignore[arg-type]
        self.averages = [t.clone() for t in state["averages"]]  # type: ignore[union-attr]
