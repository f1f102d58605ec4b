"""The one training loop: minibatches, an update rule, health, stop rule, logs, checkpoints.

Each step draws a minibatch by indexing tensors already on the device (:math:`O(B)`),
hands it to the :class:`~svi_torch.training.state.UpdateRule` (which evaluates the
objective and moves the family), and records the outcome in the
:class:`~svi_torch.training.state.TrainState`. Everything around the step — skipping and
rolling back non-finite steps, the stop rule, divergence detection, logging, callbacks,
checkpoints, interruption — reads the state and the rule's protocol only, so a new rule
(Adam, natural-gradient VI, batch-and-match) needs no change here. Metrics stay on the
device and are read only every ``log_every`` steps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ..data import MinibatchStream
from ..families.base import VariationalFamily
from ..models.base import Model
from ..objectives.base import Objective, ObjectiveOutput
from ..objectives.elbo import ELBO
from .checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_rotating,
)
from .convergence import ConvergenceMonitor
from .distributed import broadcast_parameters, current_context
from .divergence import DivergenceCheck
from .health import HealthGuard, NonFiniteLossError
from .history import thin_history
from .logging import Logger
from .preflight import check_run_settings, parse_device
from .result import FitResult
from .signals import GracefulInterrupt
from .state import DEFAULT_STEPS, TrainConfig, TrainState, UpdateRule

__all__ = [
    "Callback",
    "TrainingLoop",
    "prepare_state",
    "NonFiniteLossError",
    "exponential_moments",
]

#: Weight of each new ELBO estimate in ``elbo/smoothed`` and in its noise band (an
#: average over about the last 20 steps).
ELBO_EMA_WEIGHT = 0.05


def exponential_moments(
    mean: Tensor | None,
    variance: Tensor | None,
    value: Tensor,
    weight: float = ELBO_EMA_WEIGHT,
) -> tuple[Tensor, Tensor]:
    r"""Exponentially weighted mean and variance after one more ``value`` (West 1979).

    With :math:`\delta = x - m`: :math:`m \leftarrow m + w\delta`,
    :math:`v \leftarrow (1 - w)(v + w\delta^2)`; stable in float32, where
    :math:`E[x^2] - E[x]^2` of ELBOs in the thousands is not. For independent values of
    variance :math:`\sigma^2` the steady state is :math:`E[v] = 2(1-w)\sigma^2/(2-w)`
    (0.974 :math:`\sigma^2` at :math:`w = 0.05`). Out of place: checkpoints and health
    snapshots may hold the previous tensors. ``mean=None`` starts at ``value``, variance 0.

    Example:
        >>> m, v = exponential_moments(None, None, torch.tensor(1.0))
        >>> exponential_moments(m, v, torch.tensor(3.0), weight=0.5)
        (tensor(2.), tensor(1.))
    """
    if mean is None:
        return value, torch.zeros_like(value)
    delta = value - mean
    previous = variance if variance is not None else torch.zeros_like(delta)
    # Four small kernels on the hot path (addcmul fuses the square, scale and sum); the
    # in-place scale acts on addcmul's fresh result.
    return mean.lerp(value, weight), torch.addcmul(previous, delta, delta, value=weight).mul_(
        1 - weight
    )


class Callback(Protocol):
    """Hooks into the loop. Every method is optional; implement those you need."""

    def on_log(self, state: TrainState, step: int, metrics: dict[str, float]) -> None: ...


def prepare_state(
    model: Model,
    family: VariationalFamily,
    objective: Objective | None,
    settings: TrainConfig,
) -> TrainState:
    """Check the inputs and build the state of a fresh run (step 0).

    The family follows the model: it is moved to the model's dtype
    (:attr:`~svi_torch.models.Model.dtype`) and device, so float64 data train in float64
    without the user converting anything; ``settings.device`` moves both.

    Raises:
        TypeError, ValueError: one-line messages naming the bad input and the fix.
    """
    _check_compatible(model, family)
    check_run_settings(settings)
    # The health guard's settings, checked here so that a method that runs work before the
    # loop (a MAP search) refuses them first.
    HealthGuard(
        settings.max_bad_steps,
        settings.max_recoveries,
        settings.nan_lr_factor,
        settings.snapshot_every,
    )
    device = parse_device(settings.device)
    if device is not None:
        model.to(device)
    data_device = _data_device(model)
    family.to(device=device if device is not None else data_device, dtype=model.dtype)
    dist = current_context()
    n = model.num_data
    batch_size = settings.batch_size
    if n == 0:
        # A density-only target: no data, the log joint is the whole unnormalised density.
        if batch_size is not None:
            raise ValueError(f"{type(model).__name__} has no data; leave batch_size unset")
        stream, steps_per_epoch = None, 1
    else:
        if batch_size is None:
            # A model that reads all its data on every call gains nothing from a batch.
            batch_size = n if n <= 256 or not model.supports_minibatches else 128
        stream = MinibatchStream(
            n,
            batch_size,
            seed=settings.seed,
            device=_data_device(model),
            rank=dist.rank,
            world_size=dist.world_size,
        )
        steps_per_epoch = stream.steps_per_epoch
    params = [p for p in [*family.parameters(), *model.parameters()] if p.requires_grad]
    state = TrainState(
        model=model,
        family=family,
        objective=objective if objective is not None else ELBO(),
        settings=settings,
        stream=stream,
        total_steps=_total_steps(settings, steps_per_epoch),
        params=params,
        dist=dist,
    )
    if isinstance(settings.convergence, ConvergenceMonitor):
        state.monitor = settings.convergence
    elif settings.convergence:
        state.monitor = ConvergenceMonitor(window=max(50, min(500, state.total_steps // 20)))
    return state


class TrainingLoop:
    """Runs an :class:`UpdateRule` over a :class:`TrainState`; see the module docstring.

    Args:
        state: from :func:`prepare_state` (the family already initialised).
        rule: the update rule; its ``init`` is called here, or its state restored from
            the checkpoint when ``settings.resume`` finds one.
        loggers: :class:`~svi_torch.training.logging.Logger` objects.
        callbacks: objects with an ``on_log(state, step, metrics)`` method.
        divergence: a :class:`DivergenceCheck` that stops the run when the ELBO falls
            (the automatic method passes one, to fall back to a safer rule).
        method: a plain description of the method (name and settings), stored in
            checkpoints so that a resume with another method is refused.
        extra_state: plain values a method keeps in the checkpoint (read back as
            :attr:`resumed_extra`).
    """

    def __init__(
        self,
        state: TrainState,
        rule: UpdateRule,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
        divergence: DivergenceCheck | None = None,
        method: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> None:
        self.state, self.rule = state, rule
        state.rule = rule  # monitors read the averaged iterate through it
        self.loggers = list(loggers)
        state.loggers = self.loggers  # the same list: a logger added later is seen too
        self.callbacks = list(callbacks)
        self.divergence = divergence
        self.method = dict(method or {"name": rule.name})
        self.extra_state = dict(extra_state or {})
        self.resumed_extra: dict[str, Any] | None = None
        settings = state.settings
        self.health = HealthGuard(
            settings.max_bad_steps,
            settings.max_recoveries,
            settings.nan_lr_factor,
            settings.snapshot_every,
        )
        self._interrupt: GracefulInterrupt | None = None
        if state.dist.active:
            broadcast_parameters(state.params)
        rule.init(state)
        if settings.resume:
            self._resume()

    # -- the loop --------------------------------------------------------------------------
    @property
    def interrupted_by(self) -> int | None:
        """The signal (``signal.SIGINT``/``SIGTERM``) that paused the last run, or None.

        A command line exits with ``128 + interrupted_by`` after such a pause.
        """
        return self._interrupt.signum if self._interrupt is not None else None

    def run(self, stop_at: int | None = None) -> FitResult:
        """Train until the step budget is spent, the stop rule fires, or the run diverges.

        ``stop_at`` pauses the run after that step, as an interruption would: the
        checkpoint (if any) is written and the rule's result (the iterate average) is
        *not* applied, so a later ``resume`` continues exactly where this left off.
        SIGINT (Ctrl-C) and SIGTERM do the same at the end of the current step, and the
        result's ``stop_reason`` starts with ``"interrupted"``; a second signal raises
        ``KeyboardInterrupt`` at once.
        """
        # Handlers live only while this run does; the caller's are restored afterwards.
        # Under torchrun they stay off: ranks would see a signal at different steps and one
        # could wait for ever in an all-reduce; torchrun's agent stops all workers instead,
        # and the periodic checkpoints are what a resumed job continues from.
        with GracefulInterrupt(enabled=not self.state.dist.active) as self._interrupt:
            return self._run(stop_at)

    def _run(self, stop_at: int | None) -> FitResult:
        state, settings, rule = self.state, self.state.settings, self.rule
        interrupt = self._interrupt
        assert interrupt is not None and state.schedule is not None
        if state.step == 0:
            torch.manual_seed(settings.seed)
            self.health.start(self)
        bar = _progress_bar(
            settings.progress if state.dist.is_main else False, state.total_steps, state.step
        )
        start = time.perf_counter()
        last_log_time, last_log_step = start, state.step
        diverged = False
        try:
            while state.step < state.total_steps and not state.schedule.finished(state.step):
                if (stop_at is not None and state.step >= stop_at) or interrupt.signum:
                    break
                output = self.train_step()
                if bar is not None:
                    bar.update(1)
                elbo = None
                if output is not None:
                    elbo = output.metrics.get("elbo")
                    elbo = -output.loss.detach() if elbo is None else elbo
                if elbo is not None and state.monitor is not None and state.monitor.update(elbo):
                    self._on_converged()
                if (
                    elbo is not None
                    and self.divergence is not None
                    and self.divergence.update(elbo)
                ):
                    diverged = True
                if state.step % settings.log_every == 0 or state.step == state.total_steps:
                    now = time.perf_counter()
                    rate = (state.step - last_log_step) / max(now - last_log_time, 1e-9)
                    self._log(rate, bar)
                    # Throughput measures training steps, not the logging/monitoring above.
                    last_log_time, last_log_step = time.perf_counter(), state.step
                if diverged:
                    break
                if (
                    settings.checkpoint_path
                    and settings.checkpoint_every
                    and (state.step % settings.checkpoint_every == 0)
                ):
                    state.wall_time += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        state.wall_time += time.perf_counter() - start
        if diverged:
            assert self.divergence is not None and self.divergence.reason is not None
            state.stop_reason = self.divergence.reason
            return self.result()  # no average, no checkpoint: the caller falls back
        finished = state.step >= state.total_steps or state.schedule.finished(state.step)
        if interrupt.signum is not None and not finished:
            state.stop_reason = f"interrupted by {interrupt.name} at step {state.step}"
            if settings.checkpoint_path:
                state.stop_reason += f"; continue with resume=True from {settings.checkpoint_path}"
        if not finished and (interrupt.signum is not None or stop_at is not None):
            if settings.checkpoint_path:
                self.save_checkpoint()
            return self.result()
        if (
            state.monitor is not None
            and state.monitor.reason
            and state.schedule.finished(state.step)
        ):
            state.stop_reason = state.monitor.reason
        rule.finalize(state)
        if settings.checkpoint_path:
            self.save_checkpoint()
        return self.result()

    def train_step(self) -> ObjectiveOutput | None:
        """One step: a minibatch, the rule's update, the health guard; None if skipped.

        What :meth:`run` does each step before its logging and checkpoints (the hot path
        that ``benchmarks/speed.py`` times).
        """
        state = self.state
        batch, scale = state.next_batch()
        output, finite = self.rule.step(state, batch, scale)
        if not finite:
            # Skipped; after max_bad_steps in a row the guard rolls back or raises.
            state.skipped_steps += 1
            self.health.record_bad(self, output)
            state.step += 1
            return None
        state.step += 1
        elbo = output.metrics.get("elbo")
        if elbo is None:
            elbo = -output.loss.detach()
        state.elbo_ema, state.elbo_emvar = exponential_moments(
            state.elbo_ema, state.elbo_emvar, elbo
        )
        state.last_output = output
        self.health.record_good(self)
        return output

    def _on_converged(self) -> None:
        state = self.state
        assert state.schedule is not None and state.monitor is not None
        if state.schedule.averaging:
            if not state.schedule.in_refine(state.step):
                # Plateau reached early: refine (decay + average) for a quarter of the run so far.
                window = state.monitor.window
                state.schedule.refine_now(state.step, max(2 * window, state.step // 4))
        else:
            state.schedule.refine_end = state.step
        state.monitor.flat_windows = -(10**9)  # report once, then let the refine phase finish

    def _log(self, rate: float, bar: Any) -> None:
        state = self.state
        if state.last_output is None:
            return
        metrics = {k: v.item() for k, v in state.last_output.metrics.items()}
        metrics["loss"] = state.last_output.loss.item()
        if state.elbo_ema is not None:
            metrics["elbo/smoothed"] = state.elbo_ema.item()
        if state.elbo_ema is not None and state.elbo_emvar is not None:
            sd = state.elbo_emvar.sqrt()
            lower, upper = torch.stack([state.elbo_ema - sd, state.elbo_ema + sd]).tolist()
            metrics["elbo/band_lower"], metrics["elbo/band_upper"] = lower, upper
        grad_norm = self.rule.grad_norm(state)
        if grad_norm is not None:
            metrics["grad/norm"] = grad_norm.item()
        metrics["lr"] = self.rule.learning_rate(state)
        metrics["throughput/samples_per_s"] = rate * (
            state.stream.batch_size if state.stream else 1
        )
        metrics["throughput/steps_per_s"] = rate
        metrics["health/skipped_steps"] = float(state.skipped_steps)
        metrics["health/recoveries"] = float(self.health.recoveries)
        metrics["grad/evals"] = state.grad_evals
        metrics.update(_variance_metrics(state))
        for callback in self.callbacks:
            hook = getattr(callback, "on_log", None)
            if hook is not None:
                hook(state, state.step, metrics)
        state.history.setdefault("step", []).append(float(state.step))
        for key, value in metrics.items():
            state.history.setdefault(key, []).append(value)
        thin_history(state.history, state.settings.max_history)
        if state.dist.is_main:
            for logger in self.loggers:
                logger.log_scalars(state.step, metrics)
        if bar is not None:
            bar.set_postfix(elbo=f"{metrics.get('elbo/smoothed', math.nan):.4g}", refresh=False)

    def result(self) -> FitResult:
        """The :class:`FitResult` of the run so far."""
        state = self.state
        return FitResult(
            family=state.family,
            model=state.model,
            history=state.history,
            steps=state.step,
            stop_reason=state.stop_reason,
            wall_time=state.wall_time,
            skipped_steps=state.skipped_steps,
            method=self.rule.name,
            grad_evals=state.grad_evals,
            interrupted_by=self.interrupted_by,
        )

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole run as tensors and plain values (``torch.load(weights_only=True)`` reads it)."""
        state = self.state
        assert state.schedule is not None
        last = state.last_output
        return {
            "step": state.step,
            "method": self.method,
            "family": state.family.state_dict(),
            "model_params": {k: v.detach() for k, v in state.model.named_parameters()},
            "rule": self.rule.state_dict(),
            "schedule": state.schedule.state_dict(),
            "monitor": state.monitor.state_dict() if state.monitor else None,
            "divergence": self.divergence.state_dict() if self.divergence else None,
            "stream": state.stream.state_dict() if state.stream else None,
            "rng": capture_rng_state(),
            "skipped_steps": state.skipped_steps,
            "step_size_factor": state.step_size_factor,
            "grad_evals": state.grad_evals,
            "elbo_ema": state.elbo_ema,
            "elbo_emvar": state.elbo_emvar,
            "history": state.history,
            "wall_time": state.wall_time,
            "health": self.health.state_dict(),
            "last_output": None
            if last is None
            else {"loss": last.loss.detach(), "metrics": dict(last.metrics)},
            "extra": self.extra_state,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the state atomically to ``path`` (default: the run's, keeping the last K)."""
        for logger in self.loggers:
            # Events up to this step must be on disk before the checkpoint says they are.
            flush = getattr(logger, "flush", None)
            if flush is not None:
                flush()
        settings = self.state.settings
        if path is not None:
            return save_rotating(path, self.state_dict(), self.state.step)
        if settings.checkpoint_path is None:
            raise ValueError("no checkpoint_path given")
        if not self.state.dist.is_main:
            return Path(settings.checkpoint_path)  # rank 0 alone writes; ranks agree
        return save_rotating(
            settings.checkpoint_path, self.state_dict(), self.state.step, settings.keep_checkpoints
        )

    def _resume(self) -> None:
        state, path = self.state, self.state.settings.checkpoint_path
        if path is None:
            raise ValueError("resume=True needs checkpoint_path")
        remove_stale_temporaries(path)  # half-written files of a killed run
        if not Path(path).exists():
            return  # nothing to resume: a fresh run
        saved = load_checkpoint(path)
        written_by = saved.get("method", {}).get("name")
        if written_by != self.method["name"]:
            raise CheckpointError(
                f"the checkpoint {path} was written by method {written_by!r}, not "
                f"{self.method['name']!r}; resume with the method that wrote it, or start a "
                "new run"
            )
        try:
            state.family.load_state_dict(saved["family"])
        except RuntimeError as err:
            raise CheckpointError(
                f"the checkpoint {path} holds another family's parameters "
                f"({' '.join(str(err).split())[:160]}); resume with the family that wrote it"
            ) from None
        with torch.no_grad():
            for name, p in state.model.named_parameters():
                p.copy_(saved["model_params"][name])
        self.rule.load_state_dict(saved["rule"])
        assert state.schedule is not None
        budget = state.schedule.total_steps  # this run's steps, perhaps more than the saved
        state.schedule.load_state_dict(saved["schedule"])
        saved_total = saved["schedule"].get("total_steps")
        if state.monitor is not None and saved["monitor"] is not None:
            state.monitor.load_state_dict(saved["monitor"])
        if self.divergence is not None and saved.get("divergence") is not None:
            self.divergence.load_state_dict(saved["divergence"])
        if state.stream is not None:
            state.stream.load_state_dict(saved["stream"])
        restore_rng_state(saved["rng"])
        state.step = int(saved["step"])
        if saved_total is not None:
            state.schedule.total_steps = int(saved_total)
            state.schedule.extend(budget, state.step)  # a longer budget: re-plan the refine phase
        state.skipped_steps = int(saved["skipped_steps"])
        state.step_size_factor = float(saved["step_size_factor"])
        state.grad_evals = float(saved["grad_evals"])
        state.elbo_ema = saved["elbo_ema"]
        state.elbo_emvar = saved.get("elbo_emvar")  # absent from older checkpoints
        state.history = {k: list(v) for k, v in saved["history"].items()}
        state.wall_time = float(saved["wall_time"])
        self.health.load_state_dict(saved["health"])
        last = saved.get("last_output")
        if last is not None:
            state.last_output = ObjectiveOutput(loss=last["loss"], metrics=dict(last["metrics"]))
        self.resumed_extra = dict(saved.get("extra") or {})
        for logger in self.loggers:
            # TensorBoard: drop events the interrupted run wrote after this checkpoint.
            resume_at = getattr(logger, "resume_at", None)
            if resume_at is not None:
                resume_at(state.step)


def _variance_metrics(state: TrainState) -> dict[str, float]:
    """``posterior/variance_{mean,min,max}`` of the family's marginal variances."""
    with torch.no_grad():
        variance = state.family.variance(state.context)
    if variance.dim() == 2:
        variance = variance.mean(0)  # local latents: average over the batch's data points
    if variance.dim() != 1:
        return {}
    return {
        "posterior/variance_mean": variance.mean().item(),
        "posterior/variance_min": variance.min().item(),
        "posterior/variance_max": variance.max().item(),
    }


def _check_compatible(model: Model, family: VariationalFamily) -> None:
    if not isinstance(model, Model):
        raise TypeError(f"model must be an svi_torch Model, got {type(model).__name__}")
    if not isinstance(family, VariationalFamily):
        raise TypeError(
            f"family must be an svi_torch VariationalFamily, got {type(family).__name__}"
        )
    if model.dim == 0:
        raise ValueError(f"{type(model).__name__} declares no parameters; call add_param")
    if family.dim != model.dim:
        raise ValueError(
            f"family has dim={family.dim} but the model has dim={model.dim} unconstrained "
            f"coordinates; build it as {type(family).__name__}(model.dim)"
        )


def _data_device(model: Model) -> torch.device:
    buffer = next(iter(model.buffers()), None)
    return buffer.device if buffer is not None else torch.device("cpu")


def _total_steps(settings: TrainConfig, steps_per_epoch: int) -> int:
    if settings.steps is not None and settings.epochs is not None:
        raise ValueError("give steps or epochs, not both")
    if settings.epochs is not None:
        epochs = settings.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        return epochs * steps_per_epoch
    steps = DEFAULT_STEPS if settings.steps is None else settings.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return steps


def _progress_bar(progress: bool | None, total: int, initial: int) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
