"""The training loop with natural-gradient Gaussian VI in place of a ``torch.optim`` step.

Everything but the step is the :class:`~svi_torch.training.trainer.Trainer`'s: minibatch
stream, step-size schedule (:math:`\\rho_t = \\rho_0 \\times` factor), stop rule, logging,
checkpoints. Iterate averaging acts on the natural parameters :math:`(\\Lambda, \\Lambda m)`.
"""

from __future__ import annotations

import torch

from ..families.base import VariationalFamily
from ..families.gaussian import GaussianFamily
from ..models.base import Model
from ..objectives.base import Objective, ObjectiveOutput
from ..objectives.elbo import ELBO
from .distributed import current_context
from .natural_gradient import NaturalGradientVI, default_step_size
from .trainer import TrainConfig, Trainer

__all__ = ["NaturalGradientTrainer", "use_natural_gradient"]

_KWARGS = ("num_particles", "curvature")


def use_natural_gradient(
    config: TrainConfig, model: Model, family: VariationalFamily, objective: Objective | None
) -> bool:
    """Whether ``fit`` runs NGVI: ``optimizer="ngvi"``, or ``"auto"`` on a plain Gaussian fit.

    ``"auto"`` means NGVI when the family is Gaussian, the model has no trainable
    parameters of its own, and the user chose neither an objective nor a learning rate (both
    are Adam settings; giving them keeps the Adam path).
    """
    name = config.optimizer.lower() if isinstance(config.optimizer, str) else config.optimizer
    distributed = current_context().active
    if name == "ngvi":
        if distributed:
            raise ValueError(
                "optimizer='ngvi' runs in one process; use optimizer='adam' for "
                "data-parallel (torchrun) training"
            )
        return True
    if name != "auto" or distributed:  # data-parallel 'auto' is Adam
        return False
    trainable = any(p.requires_grad for p in model.parameters())
    return (
        isinstance(family, GaussianFamily)
        and not trainable
        and objective is None
        and config.lr is None
        and not config.optimizer_kwargs
    )


class NaturalGradientTrainer(Trainer):
    """:class:`Trainer` whose step is :meth:`NaturalGradientVI.step`; see ``fit(optimizer="ngvi")``."""

    optimizer: NaturalGradientVI

    def _default_lr(self) -> float:
        batch_size = self.stream.batch_size if self.stream is not None else None
        near = self.init_info is None or self.init_info.method == "laplace"
        return default_step_size(self.model.num_data, batch_size, near, self.family.dim)

    def _auto_init(self) -> str:
        return "auto"  # Laplace (MAP only above LAPLACE_MAX_DIM dimensions)

    def _build_optimizer(self) -> NaturalGradientVI:
        if type(self.objective) is not ELBO:
            raise ValueError(
                f"optimizer='ngvi' maximises the ELBO itself and cannot use the objective "
                f"{type(self.objective).__name__}; leave objective unset or use optimizer='adam'"
            )
        kwargs = dict(self.config.optimizer_kwargs)
        unknown = set(kwargs) - set(_KWARGS)
        if unknown:
            raise TypeError(
                f"optimizer='ngvi' got unknown optimizer_kwargs {sorted(unknown)}; valid: "
                f"{list(_KWARGS)}"
            )
        if self.base_lr > 1:
            raise ValueError(
                f"for optimizer='ngvi', lr is the natural-gradient step size rho_0 and must be "
                f"in (0, 1], got {self.base_lr}"
            )
        return NaturalGradientVI(self.model, self.family, **kwargs)

    def _current_lr(self) -> float:
        return self.base_lr * self.schedule.factor(max(self.step - 1, 0))

    def _apply_average(self) -> None:
        self.optimizer.apply_average()

    def train_step(self) -> ObjectiveOutput | None:
        if self.stream is None:
            batch, scale = None, 1.0
        else:
            indices = self.stream.next_indices()
            batch = self.model.index_data(indices)
            scale = self.model.num_data / indices.shape[0]
        rho = self.base_lr * self.schedule.factor(self.step)
        output = self.optimizer.step(batch, scale, rho)
        if output is None:
            self._bad_step(self._nonfinite_terms())
            return None
        self.bad_in_a_row = 0
        if self.schedule.in_refine(self.step):
            self.optimizer.accumulate()
        elbo = output.metrics["elbo"]
        self.elbo_ema = elbo if self.elbo_ema is None else self.elbo_ema.lerp(elbo, 0.05)
        self.last_output = output
        self.last_grad_norm = output.metrics.pop("grad_norm")
        return output

    def _nonfinite_terms(self) -> ObjectiveOutput:
        """The log joint's terms from the failed step, so the error can name the bad one."""
        terms = self.optimizer.last_terms
        nan = torch.tensor(float("nan"))
        total = sum(terms.values(), torch.zeros(())) if terms else nan
        return ObjectiveOutput(loss=-total, metrics=dict(terms) or {"log_joint": nan})
