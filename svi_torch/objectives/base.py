"""What every objective returns, and the interface objectives share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from torch import Tensor

from ..data import Batch
from ..families.base import VariationalFamily
from ..models.base import Model

__all__ = ["ObjectiveOutput", "Objective", "LazyMetrics"]


@dataclass
class ObjectiveOutput:
    """``loss`` is minimised (the negative bound); ``metrics`` are detached tensors to log.

    Metrics stay tensors (no ``.item()``) so that a training step never waits on the
    device; the trainer reads them only when it logs.
    """

    loss: Tensor
    metrics: Mapping[str, Tensor] = field(default_factory=dict)


class LazyMetrics(Mapping[str, Tensor]):
    """Detached metrics computed when first read, except those given ready.

    The trainer reads the ELBO estimate every step (its moving average, the stop rule) but
    the other terms only every ``log_every`` steps; computing those each step would add
    tensor ops to every step for nothing. ``compute`` returns the remaining metrics.
    """

    def __init__(self, compute: Callable[[], dict[str, Tensor]], **ready: Tensor) -> None:
        self._ready = ready
        self._compute: Callable[[], dict[str, Tensor]] | None = compute

    def _everything(self) -> dict[str, Tensor]:
        if self._compute is not None:
            self._ready = {**self._ready, **self._compute()}
            self._compute = None
        return self._ready

    def __getitem__(self, key: str) -> Tensor:
        if key in self._ready:
            return self._ready[key]
        return self._everything()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())

    def __repr__(self) -> str:
        return f"LazyMetrics({self._everything()!r})"

    def __reduce__(self) -> tuple[type, tuple[dict[str, Tensor]]]:
        # Saved (checkpoints, snapshots) as the plain dict of values; the closure is not.
        return (dict, (dict(self._everything()),))


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
