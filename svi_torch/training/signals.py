"""Graceful interruption: SIGINT (Ctrl-C) and SIGTERM end the run at a step boundary.

Inside :class:`GracefulInterrupt` the first SIGINT/SIGTERM only sets a flag; the training
loop finishes the step it is in, writes a checkpoint and returns. A second signal raises
:class:`KeyboardInterrupt` at once, for a user who does not want to wait. The previous
handlers are restored on exit, so the library never leaves its handlers installed in the
caller's process. Handlers can only be installed from the main thread; elsewhere the
guard does nothing and signals keep their usual meaning.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["GracefulInterrupt"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulInterrupt:
    """Context manager that turns SIGINT/SIGTERM into a flag, :attr:`signum`.

    Example:
        >>> with GracefulInterrupt() as interrupt:
        ...     while not done and interrupt.signum is None:
        ...         step()
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        """``"SIGINT"`` or ``"SIGTERM"`` once a signal arrived, else None."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now")
        self.signum = signum

    def __enter__(self) -> GracefulInterrupt:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
