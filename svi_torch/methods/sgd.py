"""Stochastic-gradient VI with a ``torch.optim`` optimizer: the :class:`SGD` method.

Each step evaluates the objective (by default the reparameterized ELBO, minibatch
likelihood scaled by :math:`N/B`), back-propagates, checks the loss and every gradient for
NaN/Inf in one fused op, optionally clips the gradient norm, and takes the optimizer's
step at the scheduled learning rate. The ``"auto"`` schedule is constant, then a cosine
decay while the iterates are averaged (Polyak–Ruppert); the average is the result.

Example:
    >>> import svi_torch as st
    >>> method = st.methods.SGD(optimizer="adam", lr=3e-2)
    >>> method.summary
    "sgd(lr=0.03)"
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import compat
from ..data import Batch
from ..families.base import VariationalFamily
from ..objectives.base import ObjectiveOutput
from ..training.backward import backward
from ..training.distributed import average_gradients
from ..training.fused_step import optimizer_step, optimizer_zero_grad
from ..training.health import FiniteCheck
from ..training.schedule import IterateAverage, LRSchedule
from ..training.state import TrainState
from .base import (
    LoopMethod,
    check_init,
    check_positive_number,
    register_method,
)
from .starts import Initialization

__all__ = ["SGD", "TorchOptimizerRule", "make_optimizer", "OPTIMIZERS"]

SCHEDULES = ("auto", "constant", "cosine")


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


OPTIMIZERS = _optimizer_names()
# Names torch has but this loop cannot drive: they would fail at the first step, not here.
_UNSUPPORTED = {
    "lbfgs": "needs a closure that re-evaluates the loss, which minibatch SVI does not have",
    "sparseadam": "needs sparse gradients; variational parameters have dense ones",
}


def check_optimizer_name(name: Any) -> None:
    """One-line error for an optimizer name this loop cannot build."""
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)} (or use "
            "method='ngvi' for natural-gradient Gaussian VI)"
        )
    if name.lower() in _UNSUPPORTED:
        raise ValueError(f"optimizer {name!r} {_UNSUPPORTED[name.lower()]}; use 'adam' or 'sgd'")


def make_optimizer(
    name: str, params: Sequence[nn.Parameter], lr: float, kwargs: dict[str, Any]
) -> torch.optim.Optimizer:
    """``torch.optim`` optimizer by case-insensitive name (``"adam"``, ``"SGD"``, ...)."""
    check_optimizer_name(name)
    cls = getattr(torch.optim, OPTIMIZERS[name.lower()])
    kwargs = {**_fast_defaults(cls, params, kwargs), **kwargs}
    try:
        return cls(params, lr=lr, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"bad optimizer_kwargs for {cls.__name__}: {' '.join(str(err).split())}"
        ) from None


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


def grad_norm(grads: list[Tensor]) -> Tensor:
    """Total 2-norm of ``grads``, as ``torch.nn.utils.get_total_norm`` computes it.

    One tensor's norm directly; several through :func:`svi_torch.compat.total_norm`
    (one fused kernel when they share a device and dtype, the usual case).
    """
    if len(grads) == 1:
        return torch.linalg.vector_norm(grads[0])
    return compat.total_norm(grads)


class TorchOptimizerRule:
    """The update rule of :class:`SGD`: one ``torch.optim`` step on the objective's loss.

    Args:
        optimizer: a ``torch.optim`` name.
        lr: the initial learning rate; the schedule multiplies it.
        optimizer_kwargs: extra arguments of the optimizer.
        schedule: ``"auto"``, ``"constant"``, ``"cosine"`` or ``(step, total) -> factor``.
        average_from: start of the averaging phase of ``"auto"``, as a fraction of the run.
        clip_grad_norm: clip the total gradient norm to this value.
    """

    name = "sgd"

    def __init__(
        self,
        optimizer: str = "adam",
        lr: float = 1e-2,
        optimizer_kwargs: dict[str, Any] | None = None,
        schedule: str | Callable[[int, int], float] = "auto",
        average_from: float = 0.5,
        clip_grad_norm: float | None = None,
    ) -> None:
        self.optimizer_name = optimizer
        self.base_lr = float(lr)
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.schedule_kind = schedule
        self.average_from = average_from
        self.clip_grad_norm = clip_grad_norm
        self.average = IterateAverage()
        self._all_finite = FiniteCheck()
        self._last_grad_norm: Tensor | None = None

    def init(self, state: TrainState) -> None:
        self.params = state.params
        self.optimizer = make_optimizer(
            self.optimizer_name, self.params, self.base_lr, self.optimizer_kwargs
        )
        # optimizer.step() itself, or the same fused Adam update without its wrapper.
        self._optimizer_step = optimizer_step(self.optimizer)
        self._zero_grad = optimizer_zero_grad(self.optimizer)
        state.schedule = LRSchedule(self.schedule_kind, state.total_steps, self.average_from)
        self._particles = float(getattr(state.objective, "num_particles", 1))

    def step(
        self, state: TrainState, batch: Batch | None, likelihood_scale: float
    ) -> tuple[ObjectiveOutput, bool]:
        self._zero_grad()
        output = state.objective(
            state.family, state.model, batch, likelihood_scale=likelihood_scale
        )
        backward(output.loss)  # loss.backward() minus its per-call Python wrapper
        state.grad_evals += self._particles * state.batch_fraction
        if state.dist.active:
            # Gradients, loss and metrics averaged over ranks in one all-reduce.
            averaged = average_gradients(
                self.params, state.dist.world_size, {**output.metrics, "_loss": output.loss}
            )
            output = ObjectiveOutput(loss=averaged.pop("_loss"), metrics=averaged)
        grads = [p.grad for p in self.params if p.grad is not None]
        # One host read per step: a NaN step must never reach the parameters. One fused op
        # checks the loss and every gradient (the gradient norm is only computed when
        # clipping needs it, or when it is logged).
        if not self._all_finite(output.loss.detach(), grads):
            self.optimizer.zero_grad(set_to_none=True)
            return output, False
        self._last_grad_norm = None
        if self.clip_grad_norm is not None and grads:
            norm = grad_norm(grads)
            torch.nn.utils.clip_grads_with_norm_(grads, self.clip_grad_norm, norm)
            self._last_grad_norm = norm.detach()
        assert state.schedule is not None
        lr = self.base_lr * state.step_size_factor * state.schedule.factor(state.step)
        if self.optimizer.param_groups[0]["lr"] != lr:  # constant in the explore phase
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self._optimizer_step()
        if state.schedule.in_refine(state.step):
            self.average.update(self.params)
        return output, True

    def learning_rate(self, state: TrainState) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def grad_norm(self, state: TrainState) -> Tensor | None:
        if self._last_grad_norm is not None:
            return self._last_grad_norm
        grads = [p.grad for p in self.params if p.grad is not None]
        return grad_norm(grads).detach() if grads else None

    def finalize(self, state: TrainState) -> None:
        self.average.copy_to(self.params)

    def averaged_family(self, state: TrainState) -> VariationalFamily | None:
        """A copy of the family at the iterate average (``None`` before averaging starts)."""
        if self.average.count == 0:
            return None
        averaged = copy.deepcopy(state.family)
        trained = [p for p in averaged.parameters() if p.requires_grad]
        # The family's parameters come first in state.params, so in the average too.
        with torch.no_grad():
            for p, mean in zip(trained, self.average.averages[: len(trained)], strict=True):
                p.copy_(mean)
        return averaged

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "average": self.average.state_dict(),
            "last_grad_norm": self._last_grad_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.average.load_state_dict(state["average"])
        self._last_grad_norm = state.get("last_grad_norm")


@register_method
@dataclass(frozen=True)
class SGD(LoopMethod):
    """Stochastic-gradient VI: a torch.optim optimizer on the objective's loss, any family.

    Works with every family, every objective, and models with trainable parameters of
    their own (fitted jointly, e.g. a VAE's decoder).

    Args:
        optimizer: a ``torch.optim`` optimizer by name (``"adam"``, ``"sgd"``, ``"adamw"``, ...).
        lr: initial learning rate.
        optimizer_kwargs: extra optimizer arguments (``betas``, ``momentum``, ...).
        schedule: ``"auto"`` (constant, then cosine decay with iterate averaging over the
            last ``1 - average_from`` of the run), ``"constant"``, ``"cosine"``, or a
            function ``(step, total) -> factor``.
        average_from: where the averaging phase starts, as a fraction of the steps.
        clip_grad_norm: clip the gradient norm to this value.
        init: ``"prior"`` (the family as built), ``"map"``, ``"laplace"``,
            ``"pathfinder"`` or ``"auto"``; see :mod:`svi_torch.methods.starts`.

    Example:
        >>> st.fit(model, family, st.objectives.ELBO(num_particles=16),
        ...        method=st.methods.SGD(lr=3e-2), steps=3000)  # doctest: +SKIP
    """

    name: ClassVar[str] = "sgd"
    optimizer: str = "adam"
    lr: float = 1e-2
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    schedule: str | Callable[[int, int], float] = "auto"
    average_from: float = 0.5
    clip_grad_norm: float | None = None
    init: str = "prior"

    def __post_init__(self) -> None:
        check_optimizer_name(self.optimizer)
        check_positive_number(self.lr, "SGD lr")
        if not isinstance(self.optimizer_kwargs, dict):
            raise TypeError(
                f"SGD optimizer_kwargs must be a dict, got {type(self.optimizer_kwargs).__name__}"
            )
        if not callable(self.schedule) and self.schedule not in SCHEDULES:
            raise ValueError(
                f"SGD schedule must be one of {list(SCHEDULES)} or a function "
                f"(step, total_steps) -> factor, got {self.schedule!r}"
            )
        if not (isinstance(self.average_from, int | float) and 0 <= self.average_from < 1):
            raise ValueError(f"SGD average_from must be in [0, 1), got {self.average_from!r}")
        check_positive_number(self.clip_grad_norm, "SGD clip_grad_norm", allow_none=True)
        check_init(self.init, "SGD init")
        # Build the optimizer once over a stand-in parameter, so that a bad optimizer_kwargs
        # is refused here, when the method is written, not at the first step.
        make_optimizer(
            self.optimizer,
            [nn.Parameter(torch.zeros(1))],
            self.lr,
            {"fused": False, **self.optimizer_kwargs}
            if self.optimizer.lower() in ("adam", "adamw")
            and "foreach" not in self.optimizer_kwargs
            else dict(self.optimizer_kwargs),
        )

    def make_rule(self, state: TrainState, start: Initialization | None) -> TorchOptimizerRule:
        return TorchOptimizerRule(
            self.optimizer,
            self.lr,
            self.optimizer_kwargs,
            self.schedule,
            self.average_from,
            self.clip_grad_norm,
        )
