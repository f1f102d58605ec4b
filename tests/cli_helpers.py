"""Helpers shared by the command-line tests."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from svi_torch.training import monitoring


@contextlib.contextmanager
def stopped_at(step: int, *, ctrl_c: bool = False) -> Iterator[None]:
    """Runs inside the block stop at logging step ``step``.

    ``ctrl_c=False``: a ``KeyboardInterrupt`` at once, as a kill would (no checkpoint at
    that step: a resume starts from the last periodic one). ``ctrl_c=True``: the SIGINT
    that Ctrl-C sends, after the step's logs; the run stops at the step boundary.
    """
    original = monitoring.TrainingMonitor.on_log

    def on_log(self, state, at, metrics):  # type: ignore[no-untyped-def]
        if at == step and not ctrl_c:
            raise KeyboardInterrupt
        original(self, state, at, metrics)
        if at == step and ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)

    monitoring.TrainingMonitor.on_log = on_log  # type: ignore[method-assign]
    try:
        yield
    finally:
        monitoring.TrainingMonitor.on_log = original  # type: ignore[method-assign]
