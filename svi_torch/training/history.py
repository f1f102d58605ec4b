"""Bounded training history: memory stays flat however long the run.

The trainer appends one entry per logging step. Once there are more than ``max_entries``
the history is thinned by keeping every other entry (always keeping the newest), so a run
of :math:`T` steps logged every :math:`L` steps holds at most ``max_entries`` points,
spaced uniformly over each halving epoch of the run and denser towards its end. Full
resolution belongs in the loggers (TensorBoard streams to disk).
"""

from __future__ import annotations

__all__ = ["thin_history"]


def thin_history(history: dict[str, list[float]], max_entries: int) -> None:
    """Halve every series of ``history`` in place when ``history["step"]`` is too long."""
    steps = history.get("step")
    if steps is None or len(steps) <= max_entries:
        return
    for key, values in history.items():
        # Count from the newest entry so the latest point always survives.
        history[key] = values[(len(values) - 1) % 2 :: 2]
