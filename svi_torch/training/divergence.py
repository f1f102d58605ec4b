"""Divergence: the ELBO falls far below its best, beyond its own Monte Carlo noise.

A run that is working raises the ELBO on average; one whose steps are too large for the
posterior (a natural-gradient step from a poor start, a learning rate an order of
magnitude too big) lets it fall. Every ``window`` steps the check compares the window's
mean ELBO :math:`\\bar m_k` with the best window mean so far :math:`\\bar m^*`; a window has
*fallen* when

.. math::

    \\bar m^* - \\bar m_k > \\max\\bigl(z \\sqrt{s_*^2/W + s_k^2/W},\\; \\text{rtol}\\,|\\bar m^*|,
        \\; \\text{atol}\\bigr),

and after ``patience`` fallen windows in a row the run has diverged. Values are kept on
the device and read once per window, as the stop rule does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["DivergenceCheck"]


@dataclass
class DivergenceCheck:
    """Detects a falling ELBO; see the module docstring.

    Args:
        window: steps per window :math:`W`.
        patience: fallen windows in a row before the run counts as diverged.
        z: noise multiple.
        rtol: relative fall that is never noise.
        atol: absolute fall in nats below which nothing counts.
    """

    window: int = 50
    patience: int = 3
    z: float = 10.0
    rtol: float = 1e-3
    atol: float = 1.0
    best_mean: float | None = None
    best_var: float = 0.0
    fallen: int = 0
    reason: str | None = None
    _buffer: list[Tensor] = field(default_factory=list, repr=False)

    def update(self, elbo: Tensor) -> bool:
        """Record one ELBO estimate; True once the run has diverged."""
        self._buffer.append(elbo.detach())
        if len(self._buffer) < self.window:
            return False
        values = torch.stack(self._buffer).double().cpu()
        self._buffer.clear()
        finite = values[torch.isfinite(values)]
        if finite.numel() < 2:
            return False
        mean, var = finite.mean().item(), finite.var().item()
        if self.best_mean is None or mean > self.best_mean:
            self.best_mean, self.best_var, self.fallen = mean, var, 0
            return False
        noise = self.z * math.sqrt((var + self.best_var) / self.window)
        threshold = max(noise, self.rtol * abs(self.best_mean), self.atol)
        self.fallen = self.fallen + 1 if self.best_mean - mean > threshold else 0
        if self.fallen >= self.patience:
            self.reason = (
                f"diverged: the ELBO fell from {self.best_mean:.6g} to {mean:.6g} (more than "
                f"{threshold:.3g} nats, {self.z:g} s.e. of its noise) for {self.patience} "
                f"windows of {self.window} steps"
            )
            return True
        return False

    def state_dict(self) -> dict[str, object]:
        return {
            "best_mean": self.best_mean,
            "best_var": self.best_var,
            "fallen": self.fallen,
            "reason": self.reason,
            "buffer": [float(v) for v in self._buffer],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.best_mean = state["best_mean"]  # type: ignore[assignment]
        self.best_var = float(state["best_var"])  # type: ignore[arg-type]
        self.fallen = int(state["fallen"])  # type: ignore[arg-type]
        self.reason = state["reason"]  # type: ignore[assignment]
        self._buffer = [torch.tensor(v, dtype=torch.float64) for v in state["buffer"]]  # type: ignore[union-attr]
