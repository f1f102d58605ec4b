"""Loggers: where training metrics go. The trainer only ever calls this protocol.

:class:`TensorBoardLogger` writes event files through ``torch.utils.tensorboard`` (imported
lazily, on first use). It knows nothing about VI: it receives names and numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Logger", "TensorBoardLogger", "MemoryLogger"]


@runtime_checkable
class Logger(Protocol):
    """What the trainer needs from a logger."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_histograms(self, step: int, values: dict[str, Tensor]) -> None: ...

    def log_figure(self, step: int, tag: str, figure: Any) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class MemoryLogger:
    """Keeps every scalar in memory: ``logger.scalars[tag] == [(step, value), ...]``."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.scalars.setdefault(tag, []).append((step, float(value)))

    def log_histograms(self, step: int, values: dict[str, Tensor]) -> None:
        pass

    def log_figure(self, step: int, tag: str, figure: Any) -> None:
        pass

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Writes scalars, histograms, figures and hparams to TensorBoard event files in ``logdir``.

    ``purge_step`` (set when resuming) makes TensorBoard discard events at or after that
    step left by the interrupted run, so curves have no duplicated points.
    """

    def __init__(self, logdir: str | Path, purge_step: int | None = None) -> None:
        self.logdir = Path(logdir)
        self.purge_step = purge_step
        self._writer: Any = None

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.logdir), purge_step=self.purge_step)
        return self._writer

    def resume_at(self, step: int) -> None:
        """A resumed run continues after ``step``: drop the old run's events after it."""
        if self._writer is None and self.purge_step is None:
            self.purge_step = step + 1

    def flush(self) -> None:
        """Write pending events to disk (the trainer calls this before each checkpoint)."""
        if self._writer is not None:
            self._writer.flush()

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)

    def log_histograms(self, step: int, values: dict[str, Tensor]) -> None:
        for tag, tensor in values.items():
            self.writer.add_histogram(tag, tensor.detach().cpu(), step)

    def log_figure(self, step: int, tag: str, figure: Any) -> None:
        self.writer.add_figure(tag, figure, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        clean = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()
        }
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
