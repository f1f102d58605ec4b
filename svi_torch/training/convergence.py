"""Stop rule: the smoothed ELBO has stopped improving beyond its own Monte Carlo noise.

Every ``window`` steps the monitor compares the mean ELBO of the last window,
:math:`\\bar m_k`, with the previous one. A window is *flat* when the improvement
:math:`\\bar m_k - \\bar m_{k-1}` is below both ``z`` standard errors of that difference,
:math:`z\\sqrt{s_k^2/W + s_{k-1}^2/W}`, and ``rtol`` relative change
(:math:`\\rtol\\,|\\bar m_k|`) — whichever is larger. After ``patience`` flat windows in a
row the run has converged. ELBO values are kept in a device tensor and read once per
window, so the rule costs no synchronisation inside a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ConvergenceMonitor"]


@dataclass
class ConvergenceMonitor:
    """Detects a plateau of the ELBO; see the module docstring for the rule.

    Args:
        window: steps per window :math:`W`.
        patience: flat windows in a row before stopping.
        rtol: relative-change threshold.
        z: noise multiple; a change smaller than ``z`` standard errors is noise.
    """

    window: int = 200
    patience: int = 3
    rtol: float = 1e-4
    z: float = 2.0
    flat_windows: int = 0
    previous_mean: float | None = None
    previous_var: float | None = None
    smoothed: float = math.nan
    reason: str | None = None
    _buffer: list[Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.window < 2 or self.patience < 1:
            raise ValueError("convergence window must be >= 2 and patience >= 1")

    def update(self, elbo: Tensor) -> bool:
        """Record one ELBO value (a detached tensor); return True once converged."""
        self._buffer.append(elbo.detach().double())
        if len(self._buffer) < self.window:
            return False
        values = torch.stack(self._buffer).double().cpu()  # one read per window
        self._buffer.clear()
        mean, var = values.mean().item(), values.var().item()
        self.smoothed = mean
        if not (math.isfinite(mean) and math.isfinite(var)):
            self.flat_windows = 0
        elif self.previous_mean is not None and self.previous_var is not None:
            improvement = mean - self.previous_mean
            noise = self.z * math.sqrt((var + self.previous_var) / self.window)
            threshold = max(noise, self.rtol * abs(mean))
            self.flat_windows = self.flat_windows + 1 if improvement < threshold else 0
        self.previous_mean, self.previous_var = mean, var
        if self.flat_windows >= self.patience:
            self.reason = (
                f"converged: ELBO improved by less than its Monte Carlo noise "
                f"({self.z:g} s.e.) and {self.rtol:g} relative over {self.patience} "
                f"windows of {self.window} steps"
            )
            return True
        return False

    def state_dict(self) -> dict[str, object]:
        return {
            "flat_windows": self.flat_windows,
            "previous_mean": self.previous_mean,
            "previous_var": self.previous_var,
            "smoothed": self.smoothed,
            "buffer": [float(v) for v in self._buffer],
            "reason": self.reason,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.flat_windows = int(state["flat_windows"])  # type: ignore[arg-type]
        self.previous_mean = state["previous_mean"]  # type: ignore[assignment]
        self.previous_var = state["previous_var"]  # type: ignore[assignment]
        self.smoothed = float(state["smoothed"])  # type: ignore[arg-type]
        self._buffer = [torch.tensor(v, dtype=torch.float64) for v in state["buffer"]]  # type: ignore[union-attr]
        self.reason = state.get("reason")  # type: ignore[assignment]
