"""L-BFGS that survives non-finite values, and keeps its path.

``torch.optim.LBFGS`` is made for training loops: its strong-Wolfe line search interpolates
with whatever values it gets, so one NaN or infinite loss (a step past the support of a
log density, an overflow) poisons the iterate, and it does not expose the iterates and
gradients along the path. The automatic method's MAP search and Pathfinder need both, so
this module has its own minimiser of :math:`f(x)` with

* the two-loop recursion over the last ``history`` pairs :math:`s_k = x_{k+1} - x_k`,
  :math:`y_k = \\nabla f_{k+1} - \\nabla f_k` (Nocedal & Wright 2006, Alg. 7.4), the initial
  inverse Hessian :math:`\\gamma_k I` with :math:`\\gamma_k = s_k^\\top y_k / y_k^\\top y_k`;
  pairs with :math:`s^\\top y \\le \\epsilon\\, \\|y\\|^2` (no positive curvature) are skipped;
* a backtracking line search on the Armijo condition
  :math:`f(x + t d) \\le f(x) + c_1 t\\, \\nabla f^\\top d`, in which a non-finite value, or
  a non-finite gradient, counts as "too far": the step is halved (quadratic interpolation
  where the values are finite), never accepted;
* stopping when the relative change of :math:`f` falls below ``rel_tol`` (twice in a row)
  or the gradient's largest entry below ``grad_tol``.

Example:
    >>> import torch
    >>> def fun(x):
    ...     return (x**2).sum(), 2 * x
    >>> minimize_lbfgs(fun, torch.ones(3)).x.abs().max() < 1e-6
    tensor(True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LBFGSResult", "minimize_lbfgs", "value_and_grad"]

Objective = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class LBFGSResult:
    """The outcome and the path of :func:`minimize_lbfgs`.

    Attributes:
        x: the last accepted iterate.
        value: :math:`f(x)`.
        grad: :math:`\\nabla f(x)`.
        converged: whether a stopping tolerance was met (not the iteration budget, not a
            failed line search).
        message: why it stopped.
        iterations: accepted steps.
        evaluations: calls of ``fun``.
        path: the accepted iterates, starting with ``x0`` (only when ``keep_path``).
        path_grads: their gradients.
        path_values: their values.
    """

    x: Tensor
    value: float
    grad: Tensor
    converged: bool
    message: str
    iterations: int = 0
    evaluations: int = 0
    path: list[Tensor] = field(default_factory=list)
    path_grads: list[Tensor] = field(default_factory=list)
    path_values: list[float] = field(default_factory=list)


def value_and_grad(fn: Callable[[Tensor], Tensor]) -> Objective:
    """``x -> (fn(x), grad fn(x))`` by autograd, for a scalar ``fn`` of a vector ``x``."""

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            value = fn(point)
            if not bool(torch.isfinite(value)):
                return value.detach(), torch.full_like(point, math.nan)
            (grad,) = torch.autograd.grad(value, point)
        return value.detach(), grad.detach()

    return evaluate


def _finite(value: Tensor, grad: Tensor) -> bool:
    return bool(torch.isfinite(value)) and bool(torch.isfinite(grad).all())


def _direction(grad: Tensor, pairs: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """:math:`-H_k \\nabla f` by the two-loop recursion; ``pairs`` holds ``(s, y, 1/s'y)``."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * (s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q *= (s @ y) / (y @ y)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        beta = rho * (y @ q)
        q += (alpha - beta) * s
    return -q


def minimize_lbfgs(
    fun: Objective,
    x0: Tensor,
    *,
    history: int = 10,
    max_iter: int = 1000,
    max_evals: int | None = None,
    rel_tol: float = 1e-12,
    grad_tol: float = 1e-9,
    keep_path: bool = False,
    c1: float = 1e-4,
) -> LBFGSResult:
    """Minimise ``fun`` (``x -> (f(x), grad f(x))``) from ``x0``; see the module docstring.

    Args:
        fun: value and gradient; non-finite values are allowed anywhere but at ``x0``.
        x0: the start, a 1-D tensor.
        history: pairs kept for the inverse-Hessian approximation.
        max_iter: accepted steps at most.
        max_evals: calls of ``fun`` at most (default ``20 * max_iter``).
        rel_tol: stop when :math:`|f_{k} - f_{k+1}| \\le` ``rel_tol`` :math:`\\max(|f_k|, 1)`
            on two steps in a row.
        grad_tol: stop when :math:`\\|\\nabla f\\|_\\infty \\le` ``grad_tol``.
        keep_path: keep every accepted iterate and its gradient (Pathfinder needs them).
        c1: the Armijo constant.

    Raises:
        ValueError: if ``f`` or its gradient is not finite at ``x0``.
    """
    max_evals = 20 * max_iter if max_evals is None else max_evals
    x = x0.detach().clone()
    value, grad = fun(x)
    evaluations = 1
    if not _finite(value, grad):
        raise ValueError("the objective or its gradient is not finite at the starting point")
    result = LBFGSResult(x, float(value), grad, False, "", 0, 0)
    if keep_path:
        result.path, result.path_grads, result.path_values = [x.clone()], [grad], [float(value)]
    pairs: list[tuple[Tensor, Tensor, Tensor]] = []
    small_changes = 0
    eps = torch.finfo(x.dtype).eps
    message = f"reached max_iter={max_iter}"
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 (used after the loop)
        if float(grad.abs().max()) <= grad_tol:
            converged, message = True, "gradient below grad_tol"
            iteration -= 1
            break
        direction = _direction(grad, pairs)
        slope = float(grad @ direction)
        if not slope < 0:  # not a descent direction (rounding): restart from steepest descent
            pairs.clear()
            direction, slope = -grad, -float(grad @ grad)
        # First step of a fresh memory: a unit step along -g can be absurd on badly scaled
        # problems, so it is bounded to a move of 1 in the largest coordinate.
        step = 1.0 if pairs else min(1.0, 1.0 / max(float(direction.abs().max()), 1e-300))
        accepted = False
        while evaluations < max_evals:
            candidate = x + step * direction
            new_value, new_grad = fun(candidate)
            evaluations += 1
            if (
                _finite(new_value, new_grad)
                and float(new_value) <= float(value) + c1 * step * slope
            ):
                accepted = True
                break
            if _finite(new_value, new_grad):
                # Minimiser of the quadratic through f(x), f'(x; d) and f(x + t d), kept in
                # [0.1 t, 0.5 t] so that the search neither stalls nor overshoots.
                denom = 2.0 * (float(new_value) - float(value) - slope * step)
                trial = -slope * step * step / denom if denom > 0 else 0.5 * step
                step = min(max(trial, 0.1 * step), 0.5 * step)
            else:
                step *= 0.5
            if step * float(direction.abs().max()) <= eps * max(float(x.abs().max()), 1.0):
                break
        if not accepted:
            message = (
                "line search found no decrease (at a minimum to rounding, or the objective "
                "is not finite near the iterate)"
            )
            converged = float(grad.abs().max()) <= math.sqrt(grad_tol) or small_changes > 0
            iteration -= 1
            break
        s, y = candidate - x, new_grad - grad
        sy = float(s @ y)
        if sy > eps * float(y @ y):
            pairs.append((s, y, torch.as_tensor(1.0 / sy, dtype=x.dtype)))
            if len(pairs) > history:
                pairs.pop(0)
        change = abs(float(value) - float(new_value))
        x, value, grad = candidate, new_value, new_grad
        if keep_path:
            result.path.append(x.clone())
            result.path_grads.append(grad)
            result.path_values.append(float(value))
        small_changes = small_changes + 1 if change <= rel_tol * max(abs(float(value)), 1.0) else 0
        if small_changes >= 2:
            converged, message = True, "relative change of the objective below rel_tol"
            break
        if evaluations >= max_evals:
            message = f"reached max_evals={max_evals}"
            break
    result.x, result.value, result.grad = x, float(value), grad
    result.converged, result.message = converged, message
    result.iterations, result.evaluations = iteration, evaluations
    return result
