"""The explicit state of a training run, and the protocol of the rules that step it.

:class:`TrainState` is everything a step, a health check, a monitor or a checkpoint reads:
the model, the family, the objective, the settings, the minibatch stream, the schedule,
the step counter, the metrics of the last step. The loop owns one; an
:class:`UpdateRule` (a ``torch.optim`` optimizer, natural-gradient VI, batch-and-match)
moves the family one step at a time and keeps its own state for checkpoints. Nothing
outside the rule reads the rule's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..data import Batch, MinibatchStream
from ..families.base import VariationalFamily
from ..models.base import Model
from ..objectives.base import Objective, ObjectiveOutput
from .convergence import ConvergenceMonitor
from .distributed import DistributedContext
from .schedule import LRSchedule

__all__ = ["TrainConfig", "TrainState", "UpdateRule", "DEFAULT_STEPS"]

DEFAULT_STEPS = 5000


@dataclass
class TrainConfig:
    """Settings of the loop (how long, on what, what is logged and checkpointed).

    How the family is moved — optimizer, learning rate, schedule, initialisation — belongs
    to the method (:mod:`svi_torch.methods`), not here. See :func:`svi_torch.fit` for the
    meaning of each field.
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    convergence: bool | ConvergenceMonitor | None = None
    seed: int = 0
    device: str | torch.device | None = None
    progress: bool | None = None
    log_every: int = 100
    checkpoint_path: str | Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    keep_checkpoints: int = 1
    max_bad_steps: int = 20
    max_recoveries: int = 3
    nan_lr_factor: float = 0.5
    snapshot_every: int = 100
    max_history: int = 10_000


@dataclass
class TrainState:
    """What a run is, at a step boundary.

    Attributes:
        model, family, objective, settings: what is trained and how the loop runs.
        stream: the minibatch stream (None for a density-only target).
        total_steps: the step budget.
        params: the trainable parameters (family first, then the model's own).
        dist: the data-parallel context (rank, world size).
        schedule: the step-size schedule (set by the rule's ``init``).
        step: steps taken.
        skipped_steps: steps skipped because the loss or a gradient was not finite.
        step_size_factor: product of the health guard's roll-back factors (every rule
            multiplies its step size by it).
        grad_evals: gradient evaluations of the log joint, in full-data units: a
            minibatch gradient at one point counts :math:`B/N`, a Hessian :math:`D`.
        elbo_ema: exponential moving average of the ELBO estimates.
        elbo_emvar: exponentially weighted variance of the ELBO estimates around
            ``elbo_ema`` (same weight): the Monte Carlo noise of one step's estimate, plus
            the drift of the curve while it climbs.
        last_output: the last finite step's objective output.
        context: the last batch's context (amortized families report a variance per point).
        history: metrics at each logging step.
        loggers: the run's loggers (callbacks that write histograms or figures use them).
        wall_time: seconds in the loop.
        stop_reason: why the loop stopped.
        rule: the update rule stepping this state (monitors ask it for the averaged
            iterate, :meth:`UpdateRule.averaged_family`).
    """

    model: Model
    family: VariationalFamily
    objective: Objective
    settings: TrainConfig
    stream: MinibatchStream | None
    total_steps: int
    params: list[nn.Parameter]
    dist: DistributedContext
    schedule: LRSchedule | None = None
    monitor: ConvergenceMonitor | None = None
    step: int = 0
    skipped_steps: int = 0
    step_size_factor: float = 1.0
    grad_evals: float = 0.0
    elbo_ema: Tensor | None = None
    elbo_emvar: Tensor | None = None
    last_output: ObjectiveOutput | None = None
    context: Tensor | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    loggers: list[Any] = field(default_factory=list)
    wall_time: float = 0.0
    stop_reason: str = "max_steps"
    rule: Any = None

    @property
    def config(self) -> TrainConfig:
        """Alias of :attr:`settings` (callbacks written for the former trainer read it)."""
        return self.settings

    @property
    def batch_fraction(self) -> float:
        """:math:`B/N` of one step (1 without data): what one point's gradient costs."""
        if self.stream is None or self.model.num_data == 0:
            return 1.0
        return self.stream.batch_size / self.model.num_data

    def next_batch(self) -> tuple[Batch | None, float]:
        """The next minibatch and its likelihood scale :math:`N/B` (``(None, 1)`` without data)."""
        if self.stream is None:
            self.context = None
            return None, 1.0
        indices = self.stream.next_indices()
        batch = self.model.index_data(indices)
        # Amortized families need the batch's context to report a posterior variance.
        self.context = batch.get("context")
        return batch, self.model.num_data / indices.shape[0]


class UpdateRule(Protocol):
    """One optimisation step of the family; what the loop needs from an inference rule.

    A rule is built by a method (:mod:`svi_torch.methods`) with its own settings; the
    loop calls :meth:`init` once (or :meth:`load_state_dict` when resuming), then
    :meth:`step` every step, then :meth:`finalize`. Adding a rule never touches the loop.
    """

    name: str

    def init(self, state: TrainState) -> None:
        """Build the rule's state for ``state`` and set ``state.schedule``."""

    def step(
        self, state: TrainState, batch: Batch | None, likelihood_scale: float
    ) -> tuple[ObjectiveOutput, bool]:
        """One step at ``state.step``; returns ``(output, finite)``.

        A non-finite step must leave the family unchanged; ``output.metrics`` then holds
        the terms of the log joint so that the error can name the non-finite one.
        """

    def learning_rate(self, state: TrainState) -> float:
        """The step size used by the last step (for the logs)."""

    def grad_norm(self, state: TrainState) -> Tensor | None:
        """Norm of the last step's gradient, computed on demand (for the logs)."""

    def finalize(self, state: TrainState) -> None:
        """Write the result (e.g. the iterate average) into the family at the end."""

    def averaged_family(self, state: TrainState) -> VariationalFamily | None:
        """Optional: a copy of the family at the averaged iterate, the result so far.

        ``None`` before averaging starts. Monitors log its KL and variance beside the raw
        iterate's; the family being trained is left untouched.
        """

    def state_dict(self) -> dict[str, Any]:
        """The rule's state as tensors and plain values (checkpoints, health snapshots)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (copies: it must not alias the input)."""
