"""What every objective returns, and the interface objectives share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import Tensor

from ..data import Batch
from ..families.base import VariationalFamily
from ..models.base import Model

__all__ = ["ObjectiveOutput", "Objective"]


@dataclass
class ObjectiveOutput:
    """``loss`` is minimised (the negative bound); ``metrics`` are detached tensors to log.

    Metrics stay tensors (no ``.item()``) so that a training step never waits on the
    device; the trainer reads them only when it logs.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Objective(ABC):
    """A variational objective: ``objective(family, model, batch) -> ObjectiveOutput``.

    Objectives are small frozen dataclasses configured at construction, so they can be
    compared, printed and written into configs.
    """

    @abstractmethod
    def __call__(
        self,
        family: VariationalFamily,
        model: Model,
        batch: Batch | None,
        likelihood_scale: float | None = None,
    ) -> ObjectiveOutput:
        """Estimate the objective on one minibatch (``None`` = full data)."""
