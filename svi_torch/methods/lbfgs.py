"""L-BFGS that exposes its curvature history and backs off non-finite values.

Minimises :math:`f(x)` (Pathfinder: :math:`f = -\\log p`) with the limited-memory BFGS
direction :math:`d = -H g` and a strong-Wolfe line search. :math:`H` is the inverse-Hessian
estimate from the last :math:`J` accepted pairs :math:`s_k = x_{k+1} - x_k`,
:math:`y_k = \\nabla f(x_{k+1}) - \\nabla f(x_k)` over the diagonal :math:`\\mathrm{diag}(\\alpha)`
that Pathfinder also uses (Zhang et al. 2022, Algorithm 4), so the Gaussians Pathfinder builds
at each iterate are made of the same :math:`H` that chose the steps.

Why not ``torch.optim.LBFGS``: it keeps its history private, it has no diagonal estimate,
and a NaN or infinite objective inside its line search propagates into the iterate. Here:

* a trial point whose value or gradient is not finite counts as "too far": the line search
  shrinks the step towards the last good point (and counts the back-off);
* a pair with :math:`s^\\top y \\le \\varepsilon \\lVert y \\rVert^2` (curvature condition broken,
  :math:`\\varepsilon = 2.2\\times10^{-16}` as in the paper) is not added to the history;
* the run stops on a relative decrease of the objective
  :math:`|f_k - f_{k+1}| / \\max(|f_k|, |f_{k+1}|, 1) <` ``tol_rel_obj``, on a relative
  gradient :math:`\\lVert g_{k+1} \\rVert_\\infty / \\max(|f_{k+1}|, 1) <` ``tol_rel_grad``, when
  the line search finds no decrease (the objective is flat to its precision), or after
  ``max_iters`` iterations; the reason is reported.

The state is kept in float64 whatever the dtype ``fun`` computes in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LBFGSIterate", "LBFGSResult", "lbfgs", "two_loop_direction", "update_diagonal"]

# The curvature threshold of Zhang et al. (2022): keep a pair only if s'y > eps |y|^2.
CURVATURE_EPS = 2.2e-16
# Strong Wolfe sufficient-decrease constant (Nocedal & Wright, ch. 3).
WOLFE_C1 = 1e-4

Objective = Callable[[Tensor], tuple[float, Tensor]]


@dataclass
class LBFGSIterate:
    """One accepted iterate and the curvature information in use there.

    Attributes:
        index: iteration number (0 is the start).
        x: the point, ``(D,)`` float64.
        value: :math:`f(x)`.
        grad: :math:`\\nabla f(x)`, ``(D,)``.
        s: accepted steps, ``(D, m)`` (oldest first, :math:`m \\le J`).
        y: their gradient differences, ``(D, m)``.
        alpha: the diagonal inverse-Hessian estimate, ``(D,)``, positive.
    """

    index: int
    x: Tensor
    value: float
    grad: Tensor
    s: Tensor
    y: Tensor
    alpha: Tensor


@dataclass
class LBFGSResult:
    """Outcome of :func:`lbfgs`.

    Attributes:
        iterate: the last accepted iterate.
        num_iters: accepted iterations.
        num_evals: evaluations of ``fun`` (value and gradient), the start included unless
            it was passed as ``initial``.
        num_backoffs: trial points whose value or gradient was not finite.
        num_skipped_pairs: pairs left out for breaking the curvature condition.
        stop_reason: ``"tol_rel_obj"``, ``"tol_rel_grad"``, ``"no_decrease"``,
            ``"max_iters"``, or ``"callback"`` (the callback asked to stop).
    """

    iterate: LBFGSIterate
    num_iters: int
    num_evals: int
    num_backoffs: int
    num_skipped_pairs: int
    stop_reason: str
    values: list[float] = field(default_factory=list)


def update_diagonal(alpha: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """Pathfinder's diagonal inverse-Hessian update (Zhang et al. 2022, Algorithm 4).

    The diagonal of the BFGS update of the Hessian estimate :math:`B = \\mathrm{diag}(1/\\alpha)`
    after the Oren-Luenberger scaling by :math:`a/b`, inverted:

    .. math::

        \\frac{1}{\\alpha_i'} = \\frac{a}{b\\,\\alpha_i} + \\frac{y_i^2}{b}
            - \\frac{a\\, s_i^2}{b\\, c\\, \\alpha_i^2},\\qquad
        a = y^\\top \\mathrm{diag}(\\alpha) y,\\; b = y^\\top s,\\;
        c = s^\\top \\mathrm{diag}(\\alpha)^{-1} s.

    Each term is positive when :math:`b > 0` (:math:`c \\ge s_i^2/\\alpha_i`); a component
    that rounds to zero or overflows keeps its old value.
    """
    a = (y * alpha * y).sum()
    b = (y * s).sum()
    c = (s * s / alpha).sum()
    inverse = a / (b * alpha) + y * y / b - a * s * s / (b * c * alpha * alpha)
    new = 1.0 / inverse
    ok = torch.isfinite(new) & (new > 0)
    return torch.where(ok, new, alpha)


def two_loop_direction(grad: Tensor, s: Tensor, y: Tensor, alpha: Tensor) -> Tensor:
    """:math:`H g` by the two-loop recursion with :math:`H_0 = \\mathrm{diag}(\\alpha)`.

    ``s``, ``y``: ``(D, m)``, oldest pair first (Nocedal & Wright, Algorithm 7.4).
    """
    m = s.shape[1]
    rho = 1.0 / (s * y).sum(0)
    q = grad.clone()
    coef = torch.empty(m, dtype=grad.dtype, device=grad.device)
    for i in range(m - 1, -1, -1):
        coef[i] = rho[i] * (s[:, i] @ q)
        q -= coef[i] * y[:, i]
    r = alpha * q
    for i in range(m):
        beta = rho[i] * (y[:, i] @ r)
        r += s[:, i] * (coef[i] - beta)
    return r


def _finite(value: float, grad: Tensor) -> bool:
    return math.isfinite(value) and bool(torch.isfinite(grad).all())


@dataclass
class _LineSearch:
    """Strong-Wolfe search along ``direction`` (Nocedal & Wright, Algorithms 3.5 and 3.6).

    Non-finite trial points shrink the bracket, as an overshoot would.
    """

    fun: Objective
    x: Tensor
    value: float
    grad: Tensor
    direction: Tensor
    max_evals: int
    c2: float
    num_evals: int = 0
    num_backoffs: int = 0

    def _eval(self, t: float) -> tuple[float, Tensor, float]:
        self.num_evals += 1
        value, grad = self.fun(self.x + t * self.direction)
        if not _finite(value, grad):
            self.num_backoffs += 1
            return math.nan, grad, math.nan
        return value, grad, float(grad @ self.direction)

    def run(self, t: float) -> tuple[float, float, Tensor] | None:
        """``(t, f, g)`` of a point meeting the strong Wolfe conditions (or, failing that,
        the best point with sufficient decrease), or ``None`` when none decreases ``f``."""
        f0, slope0 = self.value, float(self.grad @ self.direction)
        best: tuple[float, float, Tensor] | None = None
        t_prev, f_prev, slope_prev = 0.0, f0, slope0
        while self.num_evals < self.max_evals:
            f, g, slope = self._eval(t)
            if math.isnan(f) or f > f0 + WOLFE_C1 * t * slope0 or (t_prev > 0 and f >= f_prev):
                # Overshoot (or a non-finite point: back off towards the last good one).
                return self._zoom((t_prev, f_prev, slope_prev), (t, f), best, f0, slope0)
            best = (t, f, g)
            if abs(slope) <= -self.c2 * slope0:
                return best
            if slope >= 0:
                return self._zoom((t, f, slope), (t_prev, f_prev), best, f0, slope0)
            t_prev, f_prev, slope_prev = t, f, slope
            t *= 2.0
        return best

    def _zoom(
        self,
        lo: tuple[float, float, float],
        hi: tuple[float, float],
        best: tuple[float, float, Tensor] | None,
        f0: float,
        slope0: float,
    ) -> tuple[float, float, Tensor] | None:
        """Shrink the bracket ``[lo, hi]`` (``lo`` = (t, f, slope) with sufficient decrease,
        ``hi`` = (t, f), ``f`` NaN where it was not finite) to a strong-Wolfe point."""
        (t_lo, f_lo, slope_lo), (t_hi, f_hi) = lo, hi
        while self.num_evals < self.max_evals:
            width = t_hi - t_lo
            if abs(width) <= 1e-12 * max(abs(t_lo), abs(t_hi)):
                break
            # Minimiser of the quadratic through (t_lo, f_lo, slope_lo) and (t_hi, f_hi),
            # kept inside the middle 80% of the bracket; bisection when f_hi is not finite.
            t = t_lo + 0.5 * width
            if math.isfinite(f_hi):
                curvature = 2.0 * (f_hi - f_lo - slope_lo * width)
                if curvature > 0:
                    t = t_lo - slope_lo * width * width / curvature
            edge_a, edge_b = sorted((t_lo + 0.1 * width, t_hi - 0.1 * width))
            t = min(max(t, edge_a), edge_b)
            f, g, slope = self._eval(t)
            if math.isnan(f) or f > f0 + WOLFE_C1 * t * slope0 or f >= f_lo:
                t_hi, f_hi = t, f
                continue
            best = (t, f, g)
            if abs(slope) <= -self.c2 * slope0:
                return best
            if slope * (t_hi - t_lo) >= 0:
                t_hi, f_hi = t_lo, f_lo
            t_lo, f_lo, slope_lo = t, f, slope
        return best if best is not None and best[1] < f0 else None


def lbfgs(
    fun: Objective,
    x0: Tensor,
    *,
    history_size: int = 5,
    max_iters: int = 1000,
    tol_rel_obj: float = 1e-12,
    tol_rel_grad: float = 1e-8,
    max_line_search: int = 30,
    wolfe_c2: float = 0.9,
    initial: tuple[float, Tensor] | None = None,
    callback: Callable[[LBFGSIterate], bool | None] | None = None,
) -> LBFGSResult:
    """Minimise ``fun`` from ``x0`` by L-BFGS; see the module docstring.

    Args:
        fun: ``x (D,) float64 -> (f(x), grad f(x))``; non-finite values are allowed
            anywhere except at ``x0``.
        x0: start, ``(D,)``.
        history_size: :math:`J`, the pairs kept.
        max_iters: iterations at most.
        tol_rel_obj, tol_rel_grad: stopping tolerances (see the module docstring).
        max_line_search: evaluations per line search at most.
        wolfe_c2: curvature constant of the strong Wolfe conditions,
            :math:`|\\nabla f(x + td)^\\top d| \\le c_2 |\\nabla f(x)^\\top d|`: 0.9 (the usual
            quasi-Newton choice) accepts most unit steps; smaller values search closer to the
            minimum along :math:`d`, at more evaluations per iteration.
        initial: ``fun(x0)`` if the caller has it already (saves one evaluation).
        callback: called with every accepted iterate, the start included; a ``True``
            return stops the run (``stop_reason="callback"``).

    Returns:
        :class:`LBFGSResult`.

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 10.0], dtype=torch.float64))
        >>> res = lbfgs(lambda x: (float(x @ A @ x / 2), A @ x), torch.ones(2))
        >>> bool(res.iterate.x.abs().max() < 1e-5)
        True
    """
    if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
        raise ValueError(f"history_size must be a positive int, got {history_size!r}")
    if not WOLFE_C1 < wolfe_c2 < 1:
        raise ValueError(f"wolfe_c2 must lie in ({WOLFE_C1}, 1), got {wolfe_c2!r}")
    x = x0.detach().to(torch.float64).clone()
    value, grad = fun(x) if initial is None else (float(initial[0]), initial[1].to(x))
    if not _finite(value, grad):
        raise ValueError(
            "the objective or its gradient is not finite at the start; choose a start where "
            "log p is finite"
        )
    dim = x.shape[0]
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    alpha = torch.ones(dim, dtype=torch.float64, device=x.device)
    num_evals, num_backoffs, num_skipped = int(initial is None), 0, 0
    values = [value]

    def iterate(index: int) -> LBFGSIterate:
        empty = x.new_zeros(dim, 0)
        s = torch.stack(s_hist, 1) if s_hist else empty
        y = torch.stack(y_hist, 1) if y_hist else empty
        return LBFGSIterate(index, x.clone(), value, grad.clone(), s, y, alpha.clone())

    current = iterate(0)
    if callback is not None and callback(current):
        return LBFGSResult(current, 0, num_evals, 0, 0, "callback", values)
    stop = "max_iters"
    if float(grad.abs().max()) / max(abs(value), 1.0) < tol_rel_grad:
        return LBFGSResult(current, 0, num_evals, 0, 0, "tol_rel_grad", values)
    for k in range(1, max_iters + 1):
        if s_hist:
            direction = -two_loop_direction(grad, current.s, current.y, alpha)
            t0 = 1.0
        else:
            direction = -grad
            # First step: a unit-length move, as in Nocedal & Wright's L-BFGS.
            t0 = 1.0 / max(float(grad.norm()), 1e-300)
        if float(grad @ direction) >= 0:  # H lost positive definiteness to rounding
            s_hist.clear()
            y_hist.clear()
            direction, t0 = -grad, 1.0 / max(float(grad.norm()), 1e-300)
        search = _LineSearch(fun, x, value, grad, direction, max_line_search, wolfe_c2)
        found = search.run(t0)
        num_evals += search.num_evals
        num_backoffs += search.num_backoffs
        if found is None:
            stop = "no_decrease"
            break
        t, new_value, new_grad = found
        s, y = t * direction, new_grad - grad
        if float(s @ y) > CURVATURE_EPS * float(y @ y):
            s_hist.append(s)
            y_hist.append(y)
            if len(s_hist) > history_size:
                s_hist.pop(0)
                y_hist.pop(0)
            alpha = update_diagonal(alpha, s, y)
        else:
            num_skipped += 1
        old_value = value
        x, value, grad = x + s, new_value, new_grad
        values.append(value)
        current = iterate(k)
        if callback is not None and callback(current):
            stop = "callback"
            break
        if abs(old_value - value) / max(abs(old_value), abs(value), 1.0) < tol_rel_obj:
            stop = "tol_rel_obj"
            break
        if float(grad.abs().max()) / max(abs(value), 1.0) < tol_rel_grad:
            stop = "tol_rel_grad"
            break
    return LBFGSResult(current, current.index, num_evals, num_backoffs, num_skipped, stop, values)
