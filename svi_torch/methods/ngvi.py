"""Natural-gradient Gaussian VI as a method: :class:`NGVI` and its update rule.

The step is :class:`~svi_torch.methods.natural_gradient.NaturalGradientVI`'s (a Newton-like
update of the mean and precision from expected gradients and Hessians, module docstring
there); everything else — minibatches, the step-size schedule
(:math:`\\rho_t = \\rho_0 \\times` factor), stop rule, health, logs, checkpoints — is the
loop's. In the averaging phase the natural parameters :math:`(\\Lambda, \\Lambda m)` are
averaged, and the average is the result.

Example:
    >>> import svi_torch as st
    >>> st.methods.NGVI(step_size=0.5).summary
    'ngvi(step_size=0.5)'
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..data import Batch
from ..families.base import VariationalFamily
from ..families.gaussian import GaussianFamily
from ..models.base import Model
from ..objectives.base import Objective, ObjectiveOutput
from ..training.schedule import LRSchedule
from ..training.state import TrainState
from .base import (
    LoopMethod,
    check_init,
    check_positive_int,
    check_positive_number,
    refuse_objective,
    refuse_trainable,
    register_method,
)
from .natural_gradient import (
    CURVATURES,
    FULL_BATCH_PARTICLES,
    NaturalGradientVI,
    default_step_size,
)
from .sgd import SCHEDULES
from .starts import Initialization

__all__ = ["NGVI", "NaturalGradientRule"]


class NaturalGradientRule:
    """The update rule of :class:`NGVI`; ``step_size`` is :math:`\\rho_0`."""

    name = "ngvi"

    def __init__(
        self,
        step_size: float,
        num_particles: int = 2,
        curvature: str = "auto",
        schedule: str | Callable[[int, int], float] = "auto",
        average_from: float = 0.5,
    ) -> None:
        self.base_lr = float(step_size)
        self.num_particles = num_particles
        self.curvature = curvature
        self.schedule_kind = schedule
        self.average_from = average_from
        self._last_rho = self.base_lr
        self._last_grad_norm: Tensor | None = None

    def init(self, state: TrainState) -> None:
        self.ngvi = NaturalGradientVI(
            state.model, state.family, num_particles=self.num_particles, curvature=self.curvature
        )
        state.schedule = LRSchedule(self.schedule_kind, state.total_steps, self.average_from)
        # Cost of a step in full-data gradients: 2 * pairs points, each a gradient and,
        # with exact curvature, D more reverse passes for its Hessian.
        per_point = 1 + (state.model.dim if self.ngvi.curvature == "hessian" else 0)
        self._evals_per_step = 2 * self.ngvi.pairs * per_point

    def step(
        self, state: TrainState, batch: Batch | None, likelihood_scale: float
    ) -> tuple[ObjectiveOutput, bool]:
        assert state.schedule is not None
        rho = self.base_lr * state.step_size_factor * state.schedule.factor(state.step)
        self._last_rho = rho
        output = self.ngvi.step(batch, likelihood_scale, rho)
        state.grad_evals += self._evals_per_step * state.batch_fraction
        if output is None:
            return self._nonfinite_terms(), False
        if state.schedule.in_refine(state.step):
            self.ngvi.accumulate()
        self._last_grad_norm = output.metrics.pop("grad_norm")
        return output, True

    def _nonfinite_terms(self) -> ObjectiveOutput:
        """The log joint's terms from the failed step, so the error can name the bad one."""
        import torch

        terms = self.ngvi.last_terms
        nan = torch.tensor(float("nan"))
        total = sum(terms.values(), torch.zeros(())) if terms else nan
        if terms and bool(torch.isfinite(total)):
            # Finite terms and a failed step: the precision update was not positive
            # definite even at a quarter of the step.
            return ObjectiveOutput(loss=nan, metrics={"precision update": nan})
        return ObjectiveOutput(loss=-total, metrics=dict(terms) or {"log_joint": nan})

    def learning_rate(self, state: TrainState) -> float:
        return self._last_rho

    def grad_norm(self, state: TrainState) -> Tensor | None:
        return self._last_grad_norm

    def finalize(self, state: TrainState) -> None:
        self.ngvi.apply_average()

    def averaged_family(self, state: TrainState) -> VariationalFamily | None:
        """A copy of the family at the averaged natural parameters (``None`` before)."""
        if self.ngvi.count == 0:
            return None
        iterate = (self.ngvi.loc, self.ngvi.precision)
        saved = {k: v.clone() for k, v in state.family.state_dict().items()}
        self.ngvi.apply_average()  # writes the family; undone below, bit for bit
        averaged = copy.deepcopy(state.family)
        self.ngvi.loc, self.ngvi.precision = iterate
        state.family.load_state_dict(saved)
        return averaged

    def state_dict(self) -> dict[str, Any]:
        return {
            "ngvi": self.ngvi.state_dict(),
            "base_lr": self.base_lr,
            "last_rho": self._last_rho,
            "last_grad_norm": self._last_grad_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ngvi.load_state_dict(state["ngvi"])
        self.ngvi.write_family()
        self.base_lr = float(state["base_lr"])
        self._last_rho = float(state["last_rho"])
        self._last_grad_norm = state.get("last_grad_norm")


@register_method
@dataclass(frozen=True)
class NGVI(LoopMethod):
    """Natural-gradient Gaussian VI (Khan & Lin 2017; Khan et al. 2018).

    For Gaussian families (mean-field, full-rank, low-rank) on models without trainable
    parameters of their own; it maximises the ELBO itself, so the objective must be left
    unset or be an :class:`~svi_torch.objectives.ELBO`.

    Args:
        step_size: :math:`\\rho_0` in (0, 1]; default
            :func:`~svi_torch.methods.natural_gradient.default_step_size` (1 with full
            batches; :math:`B/(N\\max(16, 4\\sqrt D))` from a Laplace start; larger from a
            start far from the posterior).
        num_particles: draws per step (antithetic pairs); default 8 with full batches
            (and density targets), where a step is cheap and a few more draws steady the
            curvature estimate, 2 with minibatches.
        curvature: ``"auto"``, ``"hessian"`` (exact) or ``"stein"`` (gradients only).
        schedule: as for :class:`~svi_torch.methods.sgd.SGD`, applied to :math:`\\rho`.
        average_from: start of the averaging phase of ``"auto"``.
        init: ``"auto"`` (Laplace up to 500 dimensions, MAP above), ``"laplace"``,
            ``"map"``, ``"pathfinder"`` (Pathfinder's best Gaussian: no MAP or Hessian
            needed) or ``"prior"``.
        step_scale: multiplies the default step size (the automatic method's smaller-step
            fallback uses 0.25); ignored when ``step_size`` is given.
    """

    name: ClassVar[str] = "ngvi"
    step_size: float | None = None
    num_particles: int | None = None
    curvature: str = "auto"
    schedule: str | Callable[[int, int], float] = "auto"
    average_from: float = 0.5
    init: str = "auto"
    step_scale: float = 1.0

    def __post_init__(self) -> None:
        check_positive_number(self.step_size, "NGVI step_size", allow_none=True)
        if self.step_size is not None and self.step_size > 1:
            raise ValueError(
                f"NGVI step_size is the natural-gradient step rho_0 and must be in (0, 1], "
                f"got {self.step_size}"
            )
        if self.num_particles is not None:
            check_positive_int(self.num_particles, "NGVI num_particles")
        if self.curvature not in CURVATURES:
            raise ValueError(f"NGVI curvature must be one of {CURVATURES}, got {self.curvature!r}")
        if not callable(self.schedule) and self.schedule not in SCHEDULES:
            raise ValueError(
                f"NGVI schedule must be one of {list(SCHEDULES)} or a function, got "
                f"{self.schedule!r}"
            )
        if not (isinstance(self.average_from, int | float) and 0 <= self.average_from < 1):
            raise ValueError(f"NGVI average_from must be in [0, 1), got {self.average_from!r}")
        check_init(self.init, "NGVI init")
        check_positive_number(self.step_scale, "NGVI step_scale")

    def check(self, model: Model, family: VariationalFamily, objective: Objective | None) -> None:
        refuse_objective(objective, "ngvi", "maximises the ELBO itself")
        if not isinstance(family, GaussianFamily):
            raise TypeError(
                f"method='ngvi' needs a Gaussian family (MeanFieldGaussian, FullRankGaussian, "
                f"LowRankGaussian), whose curvature it updates; got {type(family).__name__}. "
                "Use method='sgd' for other families"
            )
        refuse_trainable(model, "ngvi", "only the variational Gaussian")

    def make_rule(self, state: TrainState, start: Initialization | None) -> NaturalGradientRule:
        if state.dist.active:
            raise ValueError(
                "method='ngvi' runs in one process; use method='sgd' for data-parallel "
                "(torchrun) training"
            )
        step_size = self.step_size
        if step_size is None:
            batch_size = state.stream.batch_size if state.stream is not None else None
            near = start is None or start.method == "laplace"  # None: resuming
            step_size = self.step_scale * default_step_size(
                state.model.num_data, batch_size, near, state.family.dim
            )
            step_size = min(step_size, 1.0)
        particles = self.num_particles
        if particles is None:
            full = state.stream is None or state.stream.batch_size >= state.model.num_data
            particles = FULL_BATCH_PARTICLES if full else 2
        return NaturalGradientRule(
            step_size, particles, self.curvature, self.schedule, self.average_from
        )
