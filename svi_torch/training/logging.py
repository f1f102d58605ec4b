"""Loggers: where training metrics go. The trainer only ever calls this protocol.

:class:`TensorBoardLogger` writes event files through ``torch.utils.tensorboard`` (imported
lazily, on first use). It knows nothing about VI: it receives names and numbers, and a
:class:`Dashboard` (given by whoever knows which curves matter, e.g. the
:class:`~svi_torch.training.monitoring.TrainingMonitor`) saying which charts a reader
should see first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Logger", "TensorBoardLogger", "MemoryLogger", "Chart", "Dashboard"]


@runtime_checkable
class Logger(Protocol):
    """What the trainer needs from a logger.

    ``log_text`` is newer than the rest: callers reach it through ``getattr``, so a logger
    written without it keeps working (its text is dropped).
    """

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_histograms(self, step: int, values: dict[str, Tensor]) -> None: ...

    def log_figure(self, step: int, tag: str, figure: Any) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def log_text(self, step: int, tag: str, text: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Chart:
    """One chart of TensorBoard's Custom Scalars tab.

    Attributes:
        title: the chart's title.
        tags: the scalar tags drawn together, one line each (matched exactly; a run
            without one of them simply has no such line).
        band: ``(lower, upper)`` tags: the chart is then TensorBoard's margin chart, the
            curve of ``tags[0]`` inside a shaded band from ``lower`` to ``upper``
            (``tags`` must then hold exactly one tag).

    Example:
        >>> Chart("loss", ("loss", "loss/smoothed")).tags
        ('loss', 'loss/smoothed')
    """

    title: str
    tags: tuple[str, ...]
    band: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.tags:
            raise ValueError(f"chart {self.title!r} has no tags")
        if self.band is not None and len(self.tags) != 1:
            raise ValueError(f"chart {self.title!r}: a band surrounds exactly one tag")

    def layout_entry(self) -> list[Any]:
        """The chart as ``torch.utils.tensorboard``'s ``add_custom_scalars`` spells it."""
        if self.band is not None:
            return ["Margin", [self.tags[0], *self.band]]
        # TensorBoard reads a multi-line chart's tags as regular expressions: anchor them
        # so that ``kl/prior`` does not also draw ``kl/prior_averaged`` twice.
        return ["Multiline", [f"^{re.escape(tag)}$" for tag in self.tags]]


@dataclass(frozen=True)
class Dashboard:
    """What a reader of a run should see first in TensorBoard.

    Two views of the same choice:

    * the Custom Scalars tab gets ``categories``, in order: titled sections of charts,
      written with the run, so ``tensorboard --logdir`` needs no set-up. TensorBoard draws
      a section's multi-line charts before its band (margin) charts whatever their order,
      so a band chart meant to come first needs a section of its own;
    * the Time Series tab, which opens first, lists tag groups (the part of a tag before
      its first ``/``) sorted by name and expands only the first two. Each scalar named
      in ``first`` is therefore also written as ``f"{group}/{first[tag]}"``: the default
      group, ``Overview``, starts with a capital letter and so sorts before every
      lower-case tag.

    Attributes:
        categories: ``{section title: charts}`` of the Custom Scalars tab.
        first: ``{tag: short name}`` of the scalars repeated in ``group``.
        group: the Time Series group that holds those copies.

    Example:
        >>> board = Dashboard({"fit": (Chart("loss", ("loss",)),)}, first={"loss": "loss"})
        >>> board.first_tag("loss")
        'Overview/loss'
    """

    categories: Mapping[str, Sequence[Chart]]
    first: Mapping[str, str] = field(default_factory=dict)
    group: str = "Overview"

    def first_tag(self, tag: str) -> str | None:
        """The copy of ``tag`` in the first group, or ``None`` when it has none."""
        name = self.first.get(tag)
        return None if name is None else f"{self.group}/{name}"

    def layout(self) -> dict[str, dict[str, list[Any]]]:
        """The Custom Scalars layout in ``add_custom_scalars``'s dictionary form."""
        return {
            title: {chart.title: chart.layout_entry() for chart in charts}
            for title, charts in self.categories.items()
        }


class MemoryLogger:
    """Keeps every scalar in memory: ``logger.scalars[tag] == [(step, value), ...]``.

    Texts, hyperparameters and the last dashboard are kept too (``texts[tag]``,
    ``hparams``, ``dashboard``), so that code written against a logger can be tested
    without event files.
    """

    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}
        self.texts: dict[str, list[tuple[int, str]]] = {}
        self.hparams: list[tuple[dict[str, Any], dict[str, float]]] = []
        self.dashboard: Dashboard | None = None

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.scalars.setdefault(tag, []).append((step, float(value)))

    def log_histograms(self, step: int, values: dict[str, Tensor]) -> None:
        pass

    def log_figure(self, step: int, tag: str, figure: Any) -> None:
        pass

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self.hparams.append((dict(hparams), dict(metrics)))

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.texts.setdefault(tag, []).append((step, text))

    def set_dashboard(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Writes scalars, histograms, figures, text and hparams to event files in ``logdir``.

    TensorBoard names a run by its directory relative to the ``--logdir`` it was given, so
    give each run its own directory and point TensorBoard at their parent
    (``TensorBoardLogger("runs/eight_schools_fullrank")``, then ``tensorboard --logdir
    runs``); events written straight into the ``--logdir`` form a run named ``.``. The
    directory is used exactly as given.

    ``purge_step`` (set when resuming) makes TensorBoard discard events at or after that
    step left by the interrupted run, so curves have no duplicated points.
    :meth:`set_dashboard` (or ``dashboard=``) writes a :class:`Dashboard` with the run.

    Example:
        >>> logger = TensorBoardLogger("runs/my_fit")
        >>> # st.fit(model, family, loggers=[logger], callbacks=[TrainingMonitor()])
    """

    def __init__(
        self,
        logdir: str | Path,
        purge_step: int | None = None,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.logdir = Path(logdir)
        self.purge_step = purge_step
        self.dashboard = dashboard
        self._writer: Any = None
        self._layout_written = False

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.logdir), purge_step=self.purge_step)
            self._layout_written = False
        if self.dashboard is not None and not self._layout_written:
            # TensorBoard reads the first layout a run holds: write it once per writer.
            self._layout_written = True
            self._writer.add_custom_scalars(self.dashboard.layout())
        return self._writer

    def set_dashboard(self, dashboard: Dashboard) -> None:
        """Use ``dashboard`` from now on (a callback that knows the run's curves calls it).

        Set it before the first scalars: the copies in the first Time Series group start
        when it is set, and TensorBoard shows the first layout a run holds (a later
        dashboard changes the copies, not the Custom Scalars tab of an open writer).
        """
        self.dashboard = dashboard

    def resume_at(self, step: int) -> None:
        """A resumed run continues after ``step``: drop the old run's events after it."""
        if self._writer is None and self.purge_step is None:
            self.purge_step = step + 1

    def flush(self) -> None:
        """Write pending events to disk (the trainer calls this before each checkpoint)."""
        if self._writer is not None:
            self._writer.flush()

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        writer = self.writer
        for tag, value in scalars.items():
            writer.add_scalar(tag, float(value), step)
            copy = self.dashboard.first_tag(tag) if self.dashboard is not None else None
            if copy is not None:
                writer.add_scalar(copy, float(value), step)

    def log_histograms(self, step: int, values: dict[str, Tensor]) -> None:
        for tag, tensor in values.items():
            self.writer.add_histogram(tag, tensor.detach().cpu(), step)

    def log_figure(self, step: int, tag: str, figure: Any) -> None:
        self.writer.add_figure(tag, figure, step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Markdown ``text`` in TensorBoard's Text tab (stored under ``tag/text_summary``)."""
        self.writer.add_text(tag, text, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's settings and final ``metrics`` (as ``hparam/<name>``) in the HParams tab.

        TensorBoard's HParams tab reads each metric as a scalar of the run, so each is
        also a one-point chart in the (collapsed) ``hparam`` group of the Time Series tab.
        """
        clean = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()
        }
        # run_name="." keeps the session in this run's own directory (torch's default
        # would add a timestamped sub-run).
        self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
