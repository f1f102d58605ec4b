"""The training loop: minibatch stochastic gradients on a variational objective.

Each step draws a minibatch by indexing tensors already on the device (:math:`O(B)`),
evaluates the objective (particles vectorised), back-propagates, and updates the
variational parameters (and the model's own parameters, if it has any). Metrics stay on
the device and are read only every ``log_every`` steps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..data import MinibatchStream
from ..families.base import VariationalFamily
from ..initialization import initialize
from ..models.base import Model
from ..objectives.base import Objective, ObjectiveOutput
from ..objectives.elbo import ELBO
from .backward import backward
from .checkpoint import (
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_rotating,
)
from .convergence import ConvergenceMonitor
from .distributed import average_gradients, broadcast_parameters, current_context
from .fused_step import optimizer_step, optimizer_zero_grad
from .health import FiniteCheck, HealthGuard, NonFiniteLossError
from .history import thin_history
from .logging import Logger
from .preflight import check_run_settings, parse_device
from .result import FitResult
from .schedule import IterateAverage, LRSchedule
from .signals import GracefulInterrupt

__all__ = ["fit", "make_trainer", "Trainer", "TrainConfig", "Callback", "NonFiniteLossError"]

DEFAULT_STEPS = 5000
DEFAULT_LR = 1e-2


class Callback(Protocol):
    """Hooks into the loop. Every method is optional; implement those you need."""

    def on_log(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...


@dataclass
class TrainConfig:
    """Settings of a run; see :func:`fit` for their meaning."""

    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str = "auto"
    lr: float | None = None
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    lr_schedule: str | Callable[[int, int], float] = "auto"
    average_from: float = 0.5
    clip_grad_norm: float | None = None
    convergence: bool | ConvergenceMonitor = False
    seed: int = 0
    device: str | torch.device | None = None
    progress: bool | None = None
    log_every: int = 100
    checkpoint_path: str | Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    keep_checkpoints: int = 1
    max_bad_steps: int = 20
    init: str = "auto"
    max_recoveries: int = 3
    nan_lr_factor: float = 0.5
    snapshot_every: int = 100
    max_history: int = 10_000


def _optimizer_names() -> dict[str, str]:
    """Lower-case name -> class name of every ``torch.optim`` optimizer."""
    names = {}
    for name in dir(torch.optim):
        cls = getattr(torch.optim, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, torch.optim.Optimizer)
            and cls is not torch.optim.Optimizer
        ):
            names[name.lower()] = name
    return names


_OPTIMIZERS = _optimizer_names()
# Names torch has but this loop cannot drive: they would fail at the first step, not here.
_UNSUPPORTED = {
    "lbfgs": "needs a closure that re-evaluates the loss, which minibatch SVI does not have",
    "sparseadam": "needs sparse gradients; variational parameters have dense ones",
}


def make_optimizer(
    name: str, params: Sequence[nn.Parameter], lr: float, kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    """``torch.optim`` optimizer by case-insensitive name (``"adam"``, ``"SGD"``, ...)."""
    if not isinstance(name, str) or name.lower() not in _OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of {sorted(_OPTIMIZERS)}, or 'ngvi' "
            "(natural-gradient Gaussian VI)"
        )
    if name.lower() in _UNSUPPORTED:
        raise ValueError(f"optimizer {name!r} {_UNSUPPORTED[name.lower()]}; use 'adam' or 'sgd'")
    cls = getattr(torch.optim, _OPTIMIZERS[name.lower()])
    kwargs = {**_fast_defaults(cls, params, kwargs), **kwargs}
    try:
        return cls(params, lr=lr, **kwargs)
    except TypeError as err:
        raise TypeError(f"bad optimizer_kwargs for {cls.__name__}: {err}") from None


def _fast_defaults(
    cls: type[torch.optim.Optimizer], params: Sequence[nn.Parameter], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``fused=True`` for Adam/AdamW when the user chose no implementation and it applies.

    The fused kernel updates all parameters in one call; the default per-tensor loop on
    CPU launches about a dozen small ops per parameter tensor. Measured in
    ``benchmarks/speed.py``: it roughly halves the optimizer's share of a small step.
    """
    if cls not in (torch.optim.Adam, torch.optim.AdamW) or {"fused", "foreach"} & set(kwargs):
        return {}
    if params and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
        for p in params
    ):
        return {"fused": True}
    return {}


class Trainer:
    """Runs the minibatch loop for one (model, family, objective); see :func:`fit`."""

    def __init__(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None = None,
        config: TrainConfig | None = None,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.config = config = config or TrainConfig()
        self.objective = objective if objective is not None else ELBO()
        self.loggers = list(loggers)
        self.callbacks = list(callbacks)
        _check_compatible(model, family)
        check_run_settings(config)
        self.device = parse_device(config.device)
        if self.device is not None:
            model.to(self.device)
            family.to(self.device)
        self.model, self.family = model, family
        # Under torchrun each rank takes its shard of every global batch.
        self.dist = current_context()
        n = model.num_data
        batch_size = config.batch_size
        if n == 0:
            # A density-only target: no data, the log joint is the whole unnormalised density.
            if batch_size is not None:
                raise ValueError(f"{type(model).__name__} has no data; leave batch_size unset")
            self.stream: MinibatchStream | None = None
            steps_per_epoch = 1
        else:
            if batch_size is None:
                batch_size = n if n <= 256 else 128
            self.stream = MinibatchStream(
                n,
                batch_size,
                seed=config.seed,
                device=_data_device(model),
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
            steps_per_epoch = self.stream.steps_per_epoch
        self.total_steps = _total_steps(config, steps_per_epoch)
        self.params = [p for p in [*family.parameters(), *model.parameters()] if p.requires_grad]
        self.init_info = None
        if not (config.resume and config.checkpoint_path and Path(config.checkpoint_path).exists()):
            init = self._auto_init() if config.init == "auto" else config.init
            self.init_info = initialize(model, family, init)
        if self.dist.active:
            broadcast_parameters(self.params)
        lr = self._default_lr() if config.lr is None else config.lr
        if not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.base_lr = float(lr)
        self.optimizer: Any = self._build_optimizer()
        # optimizer.step() itself, or the same fused Adam update without its wrapper.
        self._optimizer_step = optimizer_step(self.optimizer)
        self._zero_grad = optimizer_zero_grad(self.optimizer)
        self.schedule = LRSchedule(config.lr_schedule, self.total_steps, config.average_from)
        self.average = IterateAverage()
        if isinstance(config.convergence, ConvergenceMonitor):
            self.monitor: ConvergenceMonitor | None = config.convergence
        elif config.convergence:
            self.monitor = ConvergenceMonitor(window=max(50, min(500, self.total_steps // 20)))
        else:
            self.monitor = None
        self.step = 0
        self.skipped_steps = 0
        self.health = HealthGuard(
            config.max_bad_steps, config.max_recoveries, config.nan_lr_factor, config.snapshot_every
        )
        self.stop_reason = "max_steps"
        self.history: dict[str, list[float]] = {}
        self.elbo_ema: Tensor | None = None
        self.last_output: ObjectiveOutput | None = None
        self.last_grad_norm = None
        self._all_finite = FiniteCheck()
        self._last_context: Tensor | None = None
        self._wall_time = 0.0
        if config.resume:
            self._resume()

    def _default_lr(self) -> float:
        return DEFAULT_LR

    def _auto_init(self) -> str:
        # Adam keeps the family as built: from a Laplace start its first, noise-driven steps
        # (about lr per coordinate whatever the posterior scale) leave the optimum, and
        # measured KLs were no better (see the README's convergence section).
        return "prior"

    def _build_optimizer(self) -> Any:
        name = "adam" if self.config.optimizer == "auto" else self.config.optimizer
        if isinstance(name, str) and name.lower() == "ngvi":
            raise ValueError(
                "optimizer='ngvi' runs in training.ngvi_trainer.NaturalGradientTrainer; "
                "call fit(...) or build that trainer instead of Trainer"
            )
        return make_optimizer(name, self.params, self.base_lr, dict(self.config.optimizer_kwargs))

    def _current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _apply_average(self) -> None:
        self.average.copy_to(self.params)

    # -- one step --------------------------------------------------------------------
    def train_step(self) -> ObjectiveOutput | None:
        """One stochastic-gradient step; returns None when the step was skipped."""
        if self.stream is None:
            batch, scale = None, 1.0
        else:
            indices = self.stream.next_indices()
            batch = self.model.index_data(indices)
            scale = self.model.num_data / indices.shape[0]
        # Amortized families need the batch's context to report a posterior variance.
        self._last_context = batch.get("context") if batch else None
        self._zero_grad()
        output = self.objective(self.family, self.model, batch, likelihood_scale=scale)
        backward(output.loss)  # loss.backward() minus its per-call Python wrapper
        if self.dist.active:
            # Gradients, loss and metrics averaged over ranks in one all-reduce.
            averaged = average_gradients(
                self.params, self.dist.world_size, {**output.metrics, "_loss": output.loss}
            )
            output = ObjectiveOutput(loss=averaged.pop("_loss"), metrics=averaged)
        grads = [p.grad for p in self.params if p.grad is not None]
        # One host read per step: a NaN step must never reach the parameters. One fused op
        # checks the loss and every gradient (the gradient norm is only computed when
        # clipping needs it, or when it is logged).
        if not self._all_finite(output.loss.detach(), grads):
            self._bad_step(output)
            return None
        self.bad_in_a_row = 0
        self._last_grad_norm = None  # computed on demand from the gradients
        if self.config.clip_grad_norm is not None and grads:
            grad_norm = _grad_norm(grads)
            torch.nn.utils.clip_grads_with_norm_(grads, self.config.clip_grad_norm, grad_norm)
            self._last_grad_norm = grad_norm.detach()
        lr = self.base_lr * self.schedule.factor(self.step)
        if self.optimizer.param_groups[0]["lr"] != lr:  # constant in the explore phase
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self._optimizer_step()
        if self.schedule.in_refine(self.step):
            self.average.update(self.params)
        elbo = output.metrics.get("elbo")
        if elbo is None:
            elbo = -output.loss.detach()
        self.elbo_ema = elbo if self.elbo_ema is None else self.elbo_ema.lerp(elbo, 0.05)
        self.last_output = output
        return output

    @property
    def last_grad_norm(self) -> Tensor | None:
        """Total 2-norm of the last step's gradients (computed on demand, for logging)."""
        if self._last_grad_norm is not None:
            return self._last_grad_norm
        grads = [p.grad for p in self.params if p.grad is not None]
        return _grad_norm(grads).detach() if grads else None

    @last_grad_norm.setter
    def last_grad_norm(self, value: Tensor | None) -> None:
        self._last_grad_norm = value

    @property
    def bad_in_a_row(self) -> int:
        """Non-finite steps in a row (kept by :class:`~svi_torch.training.health.HealthGuard`)."""
        return self.health.bad_in_a_row

    @bad_in_a_row.setter
    def bad_in_a_row(self, value: int) -> None:
        self.health.bad_in_a_row = value

    def _bad_step(self, output: ObjectiveOutput) -> None:
        self.skipped_steps += 1
        if isinstance(self.optimizer, torch.optim.Optimizer):
            self.optimizer.zero_grad(set_to_none=True)
        # Skip; after max_bad_steps in a row roll back (and lower lr), or raise.
        self.health.record_bad(self, output)

    # -- the loop --------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> FitResult:
        """Train until the step budget is spent or the stop rule fires.

        ``stop_at`` pauses the run after that step, as an interruption would: the
        checkpoint (if any) is written and the iterate average is *not* applied, so a
        later ``resume`` continues exactly where this left off. SIGINT (Ctrl-C) and SIGTERM
        do the same at the end of the current step, and the result's ``stop_reason``
        starts with ``"interrupted"``; a second signal raises ``KeyboardInterrupt`` at once.
        """
        # Handlers live only while this run does; the caller's are restored afterwards.
        # Under torchrun they stay off: ranks would see a signal at different steps and one
        # could wait for ever in an all-reduce; torchrun's agent stops all workers instead,
        # and the periodic checkpoints are what a resumed job continues from.
        with GracefulInterrupt(enabled=not self.dist.active) as self._interrupt:
            return self._run(stop_at)

    @property
    def interrupted_by(self) -> int | None:
        """The signal (``signal.SIGINT``/``SIGTERM``) that paused the last run, or None.

        A command line exits with ``128 + interrupted_by`` after such a pause.
        """
        interrupt = getattr(self, "_interrupt", None)
        return interrupt.signum if interrupt is not None else None

    def _run(self, stop_at: int | None) -> FitResult:
        config, interrupt = self.config, self._interrupt
        if self.step == 0:
            torch.manual_seed(config.seed)
            self.health.start(self)
        bar = _progress_bar(
            config.progress if self.dist.is_main else False, self.total_steps, self.step
        )
        start = time.perf_counter()
        last_log_time, last_log_step = start, self.step
        try:
            while self.step < self.total_steps and not self.schedule.finished(self.step):
                if (stop_at is not None and self.step >= stop_at) or interrupt.signum:
                    break
                output = self.train_step()
                self.step += 1
                if output is not None:
                    self.health.record_good(self)
                if bar is not None:
                    bar.update(1)
                if (
                    output is not None
                    and self.monitor is not None
                    and self.monitor.update(output.metrics.get("elbo", -output.loss.detach()))
                ):
                    self._on_converged()
                if self.step % config.log_every == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    rate = (self.step - last_log_step) / max(now - last_log_time, 1e-9)
                    self._log(rate, bar)
                    # Throughput measures training steps, not the logging/monitoring above.
                    last_log_time, last_log_step = time.perf_counter(), self.step
                if (
                    config.checkpoint_path
                    and config.checkpoint_every
                    and (self.step % config.checkpoint_every == 0)
                ):
                    self._wall_time += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        self._wall_time += time.perf_counter() - start
        finished = self.step >= self.total_steps or self.schedule.finished(self.step)
        if interrupt.signum is not None and not finished:
            self.stop_reason = f"interrupted by {interrupt.name} at step {self.step}"
            if config.checkpoint_path:
                self.stop_reason += f"; continue with resume=True from {config.checkpoint_path}"
        if not finished and (interrupt.signum is not None or stop_at is not None):
            if config.checkpoint_path:
                self.save_checkpoint()
            return self.result()
        if self.monitor is not None and self.monitor.reason and self.schedule.finished(self.step):
            self.stop_reason = self.monitor.reason
        self._apply_average()
        if config.checkpoint_path:
            self.save_checkpoint()
        return self.result()

    def _on_converged(self) -> None:
        if self.schedule.averaging:
            if not self.schedule.in_refine(self.step):
                # Plateau reached early: refine (decay + average) for a quarter of the run so far.
                window = self.monitor.window if self.monitor else 100
                self.schedule.refine_now(self.step, max(2 * window, self.step // 4))
        else:
            self.schedule.refine_end = self.step
        assert self.monitor is not None
        self.monitor.flat_windows = -(10**9)  # report once, then let the refine phase finish

    def _log(self, rate: float, bar: Any) -> None:
        if self.last_output is None:
            return
        metrics = {k: v.item() for k, v in self.last_output.metrics.items()}
        metrics["loss"] = self.last_output.loss.item()
        if self.elbo_ema is not None:
            metrics["elbo/smoothed"] = self.elbo_ema.item()
        if self.last_grad_norm is not None:
            metrics["grad/norm"] = self.last_grad_norm.item()
        metrics["lr"] = self._current_lr()
        metrics["throughput/samples_per_s"] = rate * (self.stream.batch_size if self.stream else 1)
        metrics["throughput/steps_per_s"] = rate
        metrics["health/skipped_steps"] = float(self.skipped_steps)
        metrics["health/recoveries"] = float(self.health.recoveries)
        with torch.no_grad():
            variance = self.family.variance(self._last_context)
        if variance.dim() == 2:
            variance = variance.mean(0)  # local latents: average over the batch's data points
        if variance.dim() == 1:
            metrics["posterior/variance_mean"] = variance.mean().item()
            metrics["posterior/variance_min"] = variance.min().item()
            metrics["posterior/variance_max"] = variance.max().item()
        for callback in self.callbacks:
            hook = getattr(callback, "on_log", None)
            if hook is not None:
                hook(self, self.step, metrics)
        self.history.setdefault("step", []).append(float(self.step))
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)
        thin_history(self.history, self.config.max_history)
        if self.dist.is_main:
            for logger in self.loggers:
                logger.log_scalars(self.step, metrics)
        if bar is not None:
            bar.set_postfix(elbo=f"{metrics.get('elbo/smoothed', math.nan):.4g}", refresh=False)

    def result(self) -> FitResult:
        return FitResult(
            family=self.family,
            model=self.model,
            history=self.history,
            steps=self.step,
            stop_reason=self.stop_reason,
            wall_time=self._wall_time,
            skipped_steps=self.skipped_steps,
        )

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "family": self.family.state_dict(),
            "model_params": {k: v.detach() for k, v in self.model.named_parameters()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "average": self.average.state_dict(),
            "monitor": self.monitor.state_dict() if self.monitor else None,
            "stream": self.stream.state_dict() if self.stream else None,
            "rng": capture_rng_state(),
            "skipped_steps": self.skipped_steps,
            "elbo_ema": self.elbo_ema,
            "history": self.history,
            "wall_time": self._wall_time,
            "base_lr": self.base_lr,
            "health": self.health.state_dict(),
            "last_output": None
            if self.last_output is None
            else {
                "loss": self.last_output.loss.detach(),
                "metrics": dict(self.last_output.metrics),
            },
            "last_grad_norm": self.last_grad_norm,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the state atomically to ``path`` (default: the run's, keeping the last K)."""
        for logger in self.loggers:
            # Events up to this step must be on disk before the checkpoint says they are.
            flush = getattr(logger, "flush", None)
            if flush is not None:
                flush()
        if path is not None:
            return save_rotating(path, self.state_dict(), self.step)
        if self.config.checkpoint_path is None:
            raise ValueError("no checkpoint_path given")
        if not self.dist.is_main:
            return Path(self.config.checkpoint_path)  # rank 0 alone writes; ranks agree
        return save_rotating(
            self.config.checkpoint_path, self.state_dict(), self.step, self.config.keep_checkpoints
        )

    def _resume(self) -> None:
        path = self.config.checkpoint_path
        if path is None:
            raise ValueError("resume=True needs checkpoint_path")
        remove_stale_temporaries(path)  # half-written files of a killed run
        if not Path(path).exists():
            return  # nothing to resume: a fresh run
        state = load_checkpoint(path)
        self.family.load_state_dict(state["family"])
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(state["model_params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.average.load_state_dict(state["average"])
        if self.monitor is not None and state["monitor"] is not None:
            self.monitor.load_state_dict(state["monitor"])
        if self.stream is not None:
            self.stream.load_state_dict(state["stream"])
        restore_rng_state(state["rng"])
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.elbo_ema = state["elbo_ema"]
        self.history = {k: list(v) for k, v in state["history"].items()}
        self._wall_time = float(state["wall_time"])
        self.base_lr = float(state.get("base_lr", self.base_lr))
        if "health" in state:
            self.health.load_state_dict(state["health"])
        last = state.get("last_output")
        if last is not None:
            self.last_output = ObjectiveOutput(loss=last["loss"], metrics=dict(last["metrics"]))
        self.last_grad_norm = state.get("last_grad_norm")
        for logger in self.loggers:
            # TensorBoard: drop events the interrupted run wrote after this checkpoint.
            resume_at = getattr(logger, "resume_at", None)
            if resume_at is not None:
                resume_at(self.step)


def fit(
    model: Model,
    family: VariationalFamily,
    objective: Objective | None = None,
    *,
    loggers: Sequence[Logger] = (),
    callbacks: Sequence[Any] = (),
    **settings: Any,
) -> FitResult:
    """Fit ``family`` to the posterior of ``model`` by minibatch stochastic gradients.

    Maximises the objective (by default the reparameterized :class:`~svi_torch.objectives.ELBO`,
    i.e. minimises the reverse :math:`\\mathrm{KL}(q\\|p)`), with the likelihood of each
    minibatch scaled by :math:`N/B`.

    Args:
        model: the :class:`~svi_torch.models.Model`.
        family: the :class:`~svi_torch.families.VariationalFamily` (trained in place).
        objective: default ``ELBO()``.
        steps: optimisation steps (default 5000 unless ``epochs`` is given).
        epochs: passes over the data, an alternative to ``steps``.
        batch_size: :math:`B` (default all data up to 256 points, else 128).
        optimizer: ``"auto"`` (default), ``"ngvi"`` or a ``torch.optim`` optimizer name
            (``"adam"``, ...). ``"ngvi"`` is natural-gradient Gaussian VI
            (:mod:`~svi_torch.training.natural_gradient`) for Gaussian families: ``lr`` is
            its initial step size :math:`\\rho_0` and ``optimizer_kwargs`` may set
            ``num_particles`` and ``curvature``. ``"auto"`` picks ``"ngvi"`` when the family
            is Gaussian, the model has no trainable parameters and neither ``objective`` nor
            ``lr`` is given; otherwise Adam.
        lr: learning rate (default 1e-2; for ``"ngvi"`` see ``default_step_size``).
        optimizer_kwargs: extra optimizer arguments.
        init: ``"auto"`` (with ``ngvi``: Laplace for Gaussian families; with Adam and
            other optimizers: the family as built),
            ``"prior"`` (the family as built), ``"map"`` or ``"laplace"``; see
            :func:`~svi_torch.initialization.initialize`.
        lr_schedule: ``"auto"`` (constant, then cosine decay with iterate averaging over the
            last ``1 - average_from`` of the run), ``"constant"``, ``"cosine"``, or a function
            ``(step, total) -> factor``.
        average_from: where the averaging phase starts, as a fraction of the steps.
        clip_grad_norm: clip the gradient norm to this value.
        convergence: ``True`` (default stop rule), ``False``, or a ``ConvergenceMonitor``.
        seed: seeds particles and data order; same seed, same result on CPU.
        device: e.g. ``"cuda"``; model data and family are moved once.
        progress: tqdm bar (default: only on a terminal).
        log_every: steps between metric reads, logs and history entries.
        checkpoint_path, checkpoint_every, resume: atomic checkpoints and resuming.
        keep_checkpoints: keep the last K checkpoints as step-numbered files beside
            ``checkpoint_path`` (which always holds the newest); default 1.
        max_bad_steps: consecutive non-finite steps before rolling back to the last good
            state (see :mod:`svi_torch.training.health`).
        max_recoveries: roll-backs before the run stops with ``NonFiniteLossError``.
        nan_lr_factor: learning-rate multiplier at each roll-back (1.0 keeps it).
        snapshot_every: healthy steps between in-memory snapshots of the state.
        max_history: entries kept in ``FitResult.history`` (thinned by halves beyond).
        loggers: :class:`~svi_torch.training.logging.Logger` objects.
        callbacks: objects with an ``on_log(trainer, step, metrics)`` method.

    Returns:
        A :class:`FitResult`.

    Example:
        >>> import svi_torch as st
        >>> X, y, _ = st.models.regression_data(2000, 3)
        >>> model = st.models.BayesianLinearRegression(X, y)
        >>> result = st.fit(model, st.families.FullRankGaussian(model.dim), steps=2000)
    """
    unknown = set(settings) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(
            f"fit() got unknown setting(s) {sorted(unknown)}; valid: "
            f"{sorted(TrainConfig.__dataclass_fields__)}"
        )
    config = TrainConfig(**settings)
    return make_trainer(model, family, objective, config, loggers, callbacks).run()


def make_trainer(
    model: Model,
    family: VariationalFamily,
    objective: Objective | None = None,
    config: TrainConfig | None = None,
    loggers: Sequence[Logger] = (),
    callbacks: Sequence[Any] = (),
) -> Trainer:
    """The trainer ``fit`` would use: natural-gradient VI when ``optimizer`` resolves to
    ``"ngvi"`` (see :func:`fit`), the stochastic-gradient :class:`Trainer` otherwise."""
    from .ngvi_trainer import NaturalGradientTrainer, use_natural_gradient

    config = config or TrainConfig()
    trainer_class = Trainer
    if use_natural_gradient(config, model, family, objective):
        trainer_class = NaturalGradientTrainer
    return trainer_class(model, family, objective, config, loggers, callbacks)


def _grad_norm(grads: list[Tensor]) -> Tensor:
    """Total 2-norm of ``grads``, as ``torch.nn.utils.get_total_norm`` computes it.

    ``get_total_norm`` first groups the tensors by device and dtype in Python, which costs
    more than the norm itself for the handful of small tensors a family has; when they
    share one device and dtype (the usual case) one ``_foreach_norm`` does it.
    """
    first = grads[0]
    if len(grads) == 1:
        return torch.linalg.vector_norm(first)
    if all(g.device == first.device and g.dtype == first.dtype for g in grads):
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return torch.nn.utils.get_total_norm(grads)


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
    data_dtype = next((b.dtype for b in model.buffers() if b.is_floating_point()), None)
    fam_dtype = next((p.dtype for p in family.parameters()), None)
    if data_dtype is not None and fam_dtype is not None and data_dtype != fam_dtype:
        raise TypeError(
            f"the family's parameters are {fam_dtype} but the model's data are {data_dtype}; "
            f"convert one, e.g. family.to({data_dtype})"
        )


def _data_device(model: Model) -> torch.device:
    buffer = next(iter(model.buffers()), None)
    return buffer.device if buffer is not None else torch.device("cpu")


def _total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    if config.steps is not None and config.epochs is not None:
        raise ValueError("give steps or epochs, not both")
    if config.epochs is not None:
        if (
            isinstance(config.epochs, bool)
            or not isinstance(config.epochs, int)
            or config.epochs < 1
        ):
            raise ValueError(f"epochs must be a positive int, got {config.epochs!r}")
        return config.epochs * steps_per_epoch
    steps = DEFAULT_STEPS if config.steps is None else config.steps
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
