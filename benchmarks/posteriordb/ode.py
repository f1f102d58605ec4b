"""ODE solutions at observation times, batched over particles and differentiable.

Stan's ``integrate_ode_rk45`` / ``integrate_ode_bdf`` return the solution of
:math:`\\dot y = f(t, y)`, :math:`y(t_0) = y_0` at the measurement times
:math:`t_1 < \\dots < t_T`. :func:`solve_at` gives the same with ``torchdiffeq``'s adaptive
Runge-Kutta solvers, for a batch of parameter vectors at once (the state carries the
particle dimensions in front), with gradients by direct backpropagation through the solver's
steps.

Two choices differ from ``torchdiffeq``'s defaults, both for batches:

- the error norm is the maximum over every element of the scaled error, not its root mean
  square, so each particle's solution meets the tolerances on its own (an RMS over a batch
  lets one particle's error grow with the batch size);
- the first step is fixed (``first_step``), since ``torchdiffeq`` otherwise picks it from
  :math:`y_0` and :math:`f(t_0, y_0)` with gradients attached, which puts the step size, and
  every later time point, into the autograd graph.

Each model solves at tolerances chosen for speed, accurate to far below its posterior sd;
inside :func:`tight_tolerances` every solve runs at near machine precision instead
(``dopri8`` stepping onto each output time, no interpolation), which the tests use to
check that a model's density *is* the Stan program's, to rounding, against SciPy.

Where the solver fails (more than ``max_num_steps`` steps between two output times, a step
size that underflows, a non-finite state: a stiff or exploding region far in the tails),
Stan rejects the draw; :func:`solve_at` returns NaN there, which samplers read as a
rejection, instead of raising mid-run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

__all__ = ["solve_at", "max_norm", "tight_tolerances"]

#: (rtol, atol) of every solve inside :func:`tight_tolerances`, else None.
_TIGHT: ContextVar[tuple[float, float] | None] = ContextVar("tight_tolerances", default=None)


@contextmanager
def tight_tolerances(rtol: float = 1e-11, atol: float = 1e-11) -> Iterator[None]:
    """Solve every ODE inside the block with ``dopri8`` at ``rtol``/``atol``, stepping onto
    each output time (slow; for tests of the density against a reference solver).

    Example:
        >>> with tight_tolerances():
        ...     pass  # models' log densities here are exact to ~1e-10 relative
    """
    token = _TIGHT.set((rtol, atol))
    try:
        yield
    finally:
        _TIGHT.reset(token)


def max_norm(scaled_error: Tensor) -> Tensor:
    """:math:`\\max_i |e_i|` of the solver's scaled error estimate: every particle meets the tolerance."""
    return scaled_error.abs().max()


def solve_at(
    rhs: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    times: Tensor,
    t0: float = 0.0,
    *,
    rtol: float,
    atol: float,
    method: str = "dopri5",
    first_step: float = 1e-3,
    max_num_steps: int = 1000,
) -> Tensor:
    """The solution :math:`y(t_n)` of :math:`\\dot y = f(t, y)`, :math:`y(t_0) = y_0`.

    Args:
        rhs: :math:`f(t, y)`, mapping a scalar time and a state of shape ``batch + (m,)`` to
            the derivative of the same shape; parameters enter through its closure and may
            carry the batch dimensions.
        y0: initial state, shape ``batch + (m,)``.
        times: measurement times, 1-D, strictly increasing and after ``t0``.
        t0: initial time.
        rtol: relative tolerance of the adaptive step.
        atol: absolute tolerance of the adaptive step.
        method: a ``torchdiffeq`` adaptive Runge-Kutta method (``"dopri5"``, ``"dopri8"``).
        first_step: the first step size (see the module docstring).
        max_num_steps: the most steps between two output times, as Stan's argument of that
            name.

    Returns:
        The solution at ``times``, shape ``batch + (T, m)`` (Stan's ``array[T, m]``); NaN
        where the solver fails (see the module docstring).

    Example:
        >>> k = torch.tensor([1.0, 2.0], dtype=torch.float64)  # two particles
        >>> y = solve_at(lambda t, y: -k[:, None] * y, torch.ones(2, 1, dtype=torch.float64),
        ...              torch.tensor([1.0], dtype=torch.float64), rtol=1e-8, atol=1e-10)
        >>> torch.allclose(y[:, 0, 0], torch.exp(-k))
        True
    """
    try:
        from torchdiffeq import odeint
    except ImportError:
        raise ImportError(
            "the ODE posteriors need torchdiffeq: pip install -e '.[posteriordb]'"
        ) from None

    times = torch.as_tensor(times, dtype=y0.dtype)
    if times.dim() != 1 or times.numel() == 0:
        raise ValueError(f"times must be a non-empty 1-D tensor, got shape {tuple(times.shape)}")
    grid = torch.cat([times.new_tensor([t0]), times])
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError(
            f"times must be strictly increasing and after t0={t0}; sort them and drop t0"
        )
    options = {"norm": max_norm, "first_step": first_step, "max_num_steps": max_num_steps}
    tight = _TIGHT.get()
    if tight is not None:
        rtol, atol = tight
        method = "dopri8"
        # Step onto the output times: torchdiffeq's dense output between steps is of lower
        # order than dopri8 and would dominate the error.
        options["step_t"] = grid
        options["max_num_steps"] = 100 * max_num_steps
    try:
        solution = odeint(rhs, y0, grid, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError:  # torchdiffeq's failures: too many steps, dt underflow, inf/NaN
        failed = y0.unsqueeze(-2).expand(*y0.shape[:-1], times.numel(), y0.shape[-1])
        return failed * float("nan")
    # odeint stacks the time points first: (T + 1,) + batch + (m,).
    return solution[1:].movedim(0, -2)
