"""Where training starts: the family as built, the MAP, or the Laplace approximation.

* ``"prior"``: the family as constructed (by default :math:`\\mathcal{N}(0, 0.1^2 I)` in
  the unconstrained space); no data are touched.
* ``"map"``: the mean moves to :math:`\\hat z = \\arg\\max_z \\log p(z, D)`, the maximum of the
  unconstrained log joint (log-Jacobian included), found by :func:`find_map`; the scales
  stay as built.
* ``"laplace"``: :math:`q = \\mathcal{N}(\\hat z, \\Lambda^{-1})` with
  :math:`\\Lambda = -\\nabla^2 \\log p(\\hat z, D)` (:func:`laplace_precision`), placed with
  ``set_moments`` (mean-field keeps :math:`1/\\Lambda_{dd}`). On a conjugate Gaussian model
  this *is* the exact posterior.
* ``"pathfinder"``: :math:`q` = the best path's Gaussian of a multi-path Pathfinder run
  (:mod:`svi_torch.methods.pathfinder_method`, its defaults with 250 draws a path: only the
  Gaussian is used, the draws give its :math:`\\hat k`), placed with ``set_moments``. No
  Hessian and no MAP: it works where the log density has no maximum (a hierarchical scale
  running to zero) and costs :math:`O(D)` memory per L-BFGS pair at any :math:`D`.
* ``"auto"``: ``"laplace"`` for Gaussian families up to :data:`LAPLACE_MAX_DIM` dimensions,
  ``"map"`` above, ``"prior"`` for other families.

**The MAP search is guarded.** Users' models have regions where the log density is
:math:`-\\infty` or NaN, flat priors, scales from :math:`10^{-3}` to :math:`10^4`, and
sometimes no maximum at all. :func:`find_map` therefore

1. evaluates the *full-data* log joint (:meth:`~svi_torch.models.Model.full_log_joint`,
   in row chunks), divided by :math:`\\max(N, 1)` so that tolerances mean the same at every
   data size;
2. starts from the model's :meth:`~svi_torch.models.Model.initial_point` (or the given
   point), and from ``restarts`` dispersed points drawn uniformly in :math:`[-2, 2]^D` (Stan's
   default initialisation); a start where the log density or its gradient is not finite is
   redrawn, in shrinking boxes;
3. runs an L-BFGS whose line search backs off non-finite values
   (:func:`~svi_torch.methods.lbfgs.lbfgs`, the one Pathfinder runs) from each, and keeps
   the best;
4. polishes it with damped Newton steps (:math:`D \\le` :data:`LAPLACE_MAX_DIM`): the exact
   Hessian with its eigenvalues floored (a descent direction even where the log joint is not
   concave) and a backtracking line search, which L-BFGS needs on posteriors whose scales
   differ by orders of magnitude;
5. accepts the point as a MAP only if the Newton decrement
   :math:`\\lambda^2 = g^\\top \\Lambda^{-1} g` (twice the log density still to gain by a
   Newton step) is below rounding level and :math:`\\Lambda` is positive definite; for
   larger :math:`D`, only if L-BFGS met its tolerances. Otherwise the result says why
   (``converged=False``, ``reason``), so that no point is used as a MAP silently — a
   search that ran off to :math:`10^{48}` because the density has no maximum is reported
   as such.

Cost: each L-BFGS evaluation is one full-data gradient, :math:`O(ND)`; a Hessian is
:math:`D` of them. ``evaluations`` counts both in full-data gradient evaluations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..curvature import gradient_and_hessian
from ..families.base import VariationalFamily
from ..families.gaussian import GaussianFamily
from ..models.base import Model
from .lbfgs import lbfgs

__all__ = [
    "INITS",
    "LAPLACE_MAX_DIM",
    "MapEstimate",
    "Initialization",
    "find_map",
    "laplace_precision",
    "initialize",
    "dispersed_points",
    "start_point",
    "pathfinder_start",
]

INITS = ("auto", "prior", "map", "laplace", "pathfinder")
#: Above this dimension ``init="auto"`` uses the MAP only (the Hessian costs O(N D^2)).
LAPLACE_MAX_DIM = 500
#: Dispersed restarts when one full-data pass is cheap (N * D at most this).
CHEAP_PASS = 10**6


@dataclass
class MapEstimate:
    """What :func:`find_map` found.

    Attributes:
        z: the best point found (unconstrained), shape ``(D,)``.
        log_joint: :math:`\\log p(z, D)` there (full data).
        converged: whether ``z`` passed the MAP checks (module docstring, step 5).
        reason: one line on how it was accepted, or why it was not.
        precision: :math:`-\\nabla^2 \\log p(z, D)` when it was computed (``D`` up to
            :data:`LAPLACE_MAX_DIM`), else None.
        decrement: the Newton decrement :math:`g^\\top \\Lambda^{-1} g` (None without Hessian).
        evaluations: full-data gradient evaluations spent (a Hessian counts ``D``).
        starts: L-BFGS runs made.
        seconds: wall time.
    """

    z: Tensor
    log_joint: float
    converged: bool
    reason: str
    precision: Tensor | None = None
    decrement: float | None = None
    evaluations: int = 0
    starts: int = 0
    seconds: float = 0.0


@dataclass
class Initialization:
    """What :func:`initialize` did.

    Attributes:
        method: ``"prior"``, ``"map"``, ``"laplace"`` or ``"pathfinder"``.
        map: the MAP search's result (None for ``"prior"`` and ``"pathfinder"``).
        precision: the Laplace precision placed in the family (None unless ``"laplace"``).
        repaired: how a precision that was not positive definite was repaired, or None.
        seconds: wall time.
        pathfinder: the :class:`~svi_torch.methods.pathfinder.PathfinderResult` of a
            ``"pathfinder"`` start (its per-path diagnostics, :math:`\\hat k`, warnings).
        reason: one line on why this start was chosen, when a method chose it.
    """

    method: str
    map: MapEstimate | None = None
    precision: Tensor | None = None
    repaired: str | None = None
    seconds: float = 0.0
    pathfinder: Any = None
    reason: str | None = None

    @property
    def evaluations(self) -> int:
        """Full-data gradient evaluations of the start (0 for ``"prior"``)."""
        found = self.map.evaluations if self.map else 0
        return found + (self.pathfinder.num_grad_evals if self.pathfinder is not None else 0)


def dispersed_points(
    dim: int,
    count: int,
    generator: torch.Generator,
    radius: float = 2.0,
    like: Tensor | None = None,
) -> Tensor:
    """``count`` points uniform in :math:`[-r, r]^D` (Stan's default initialisation, r = 2)."""
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    points = (torch.rand(count, dim, generator=generator, dtype=torch.float64) * 2 - 1) * radius
    points = points.to(dtype)
    return points.to(like.device) if like is not None else points


def _full_log_density(model: Model):  # noqa: ANN202 (a closure)
    def log_density(z: Tensor) -> Tensor:
        return model.full_log_joint(z)

    return log_density


def _objective(model: Model, scale: float) -> Callable[[Tensor], tuple[float, Tensor]]:
    """``x -> (-log p(x, D) / scale, its gradient)`` in float64, the model in its own dtype."""
    dtype = model.dtype

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        with torch.enable_grad():
            point = x.detach().to(dtype).requires_grad_(True)
            value = -model.full_log_joint(point.unsqueeze(0))[0] / scale
            if not bool(torch.isfinite(value)):
                return math.nan, torch.full_like(x, math.nan)
            (grad,) = torch.autograd.grad(value, point)
        return float(value.detach()), grad.detach().to(x)

    return evaluate


def _feasible(model: Model, z: Tensor) -> bool:
    """Whether the log joint and its gradient are finite at ``z``."""
    value, grad = _objective(model, 1.0)(z.double())
    return math.isfinite(value) and bool(torch.isfinite(grad).all())


def _feasible_start(
    model: Model, generator: torch.Generator, like: Tensor, tries: int = 30
) -> tuple[Tensor | None, int]:
    """A dispersed start where the log density is finite, redrawn in shrinking boxes."""
    radius, evaluations = 2.0, 0
    for attempt in range(tries):
        z = dispersed_points(model.dim, 1, generator, radius, like)[0]
        evaluations += 1
        if _feasible(model, z):
            return z, evaluations
        if attempt % 5 == 4:
            radius /= 4  # e.g. a scale parameter that overflows beyond exp(2)
    return None, evaluations


def find_map(
    model: Model,
    start: Tensor | None = None,
    *,
    restarts: int | None = None,
    seed: int = 0,
    max_iter: int = 1000,
    newton: bool | None = None,
) -> MapEstimate:
    """:math:`\\arg\\max_z \\log p(z, D)`, guarded; see the module docstring.

    Args:
        model: the model; its full-data log joint is maximised.
        start: the first start (default: ``model.initial_point()``, else zero).
        restarts: dispersed starts besides ``start`` (default: 3 when one full-data pass
            is cheap, ``N D`` at most :data:`CHEAP_PASS`, else 0); more are drawn when no
            start gives a finite log density.
        seed: seeds the dispersed starts.
        max_iter: L-BFGS iterations per start.
        newton: Newton polishing and the decrement check (default: ``D`` at most
            :data:`LAPLACE_MAX_DIM`).

    Raises:
        ValueError: if no start with a finite log density and gradient was found: the
            model's log density is not finite anywhere tried, which is an invalid model.
    """
    began = time.perf_counter()
    dim = model.dim
    newton = dim <= LAPLACE_MAX_DIM if newton is None else newton
    if restarts is None:
        restarts = 3 if max(model.num_data, 1) * dim <= CHEAP_PASS else 0
    generator = torch.Generator().manual_seed(seed)
    like = _reference_tensor(model)
    if start is None:
        start = model.initial_point()
    if start is None:
        start = torch.zeros(dim, dtype=like.dtype, device=like.device)
    start = start.detach().to(like)
    norm = float(max(model.num_data, 1))
    objective = _objective(model, norm)
    evaluations, runs = 0, 0
    candidates = []
    starts: list[Tensor] = [start] if _feasible(model, start) else []
    evaluations += 1
    wanted = 1 + restarts
    while len(starts) < wanted:
        point, used = _feasible_start(model, generator, like)
        evaluations += used
        if point is None:
            break
        starts.append(point)
    if not starts:
        raise _no_finite_point(model)
    for point in starts:
        try:
            result = lbfgs(objective, point.double(), history_size=10, max_iters=max_iter)
        except ValueError:
            continue  # not finite at the start after all (a density that changes, NaN rows)
        evaluations += result.num_evals
        runs += 1
        candidates.append(result)
    if not candidates:
        raise _no_finite_point(model)
    best = min(candidates, key=lambda r: _finite_or_inf(r.iterate.value))
    z = best.iterate.x.to(like)
    if not newton:
        value = -best.iterate.value * norm
        converged = best.stop_reason in ("tol_rel_obj", "tol_rel_grad")
        reason = (
            f"L-BFGS: {best.stop_reason}"
            if converged
            else f"not a MAP: L-BFGS stopped without meeting its tolerances ({best.stop_reason})"
        )
        return MapEstimate(
            z, value, converged, reason, None, None, evaluations, runs,
            time.perf_counter() - began,
        )  # fmt: skip
    z, value, precision, decrement, newton_evals, message = _newton_polish(model, z)
    evaluations += newton_evals
    scale = max(abs(value), 1.0)
    tolerance = max(1e-6, 100 * torch.finfo(z.dtype).eps * scale)
    positive = precision is not None and torch.linalg.cholesky_ex(precision).info.item() == 0
    converged = (
        positive and decrement is not None and math.isfinite(decrement) and decrement <= tolerance
    )
    if converged:
        reason = (
            f"MAP found: Newton decrement {decrement:.2g} nats, curvature positive definite, "
            f"best of {runs} start(s)"
        )
    elif not positive:
        reason = (
            "not a MAP: the Hessian of the log joint at the best point found is not "
            f"negative definite ({message})"
        )
    else:
        reason = (
            f"not a MAP: a Newton step would still gain {0.5 * (decrement or math.nan):.3g} "
            f"nats ({message}); the log density may have no maximum (e.g. a flat prior on "
            "a scale, or a density that grows without bound at a boundary)"
        )
    return MapEstimate(
        z, value, converged, reason, precision, decrement, evaluations, runs,
        time.perf_counter() - began,
    )  # fmt: skip


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _no_finite_point(model: Model) -> ValueError:
    return ValueError(
        f"the log density of {type(model).__name__} (or its gradient) is not finite at any "
        "point tried (the start and dispersed points in [-2, 2]^D): check the model for "
        "invalid parameter values, e.g. a scale that can be zero or a log of a negative number"
    )


def _reference_tensor(model: Model) -> Tensor:
    """A zero-size tensor with the model's dtype and device."""
    buffer = next((b for b in model.buffers() if b.is_floating_point()), None)
    device = buffer.device if buffer is not None else torch.device("cpu")
    return torch.empty(0, dtype=model.dtype, device=device)


def _newton_polish(
    model: Model, z: Tensor, max_steps: int = 50
) -> tuple[Tensor, float, Tensor | None, float | None, int, str]:
    """Damped Newton on :math:`\\log p` with floored eigenvalues; returns
    ``(z, log p, precision at z, decrement, evaluations, message)``."""
    log_density = _full_log_density(model)
    dim = z.shape[0]
    evaluations = 0
    message = f"{max_steps} Newton steps"
    value_t, grad_t, hess = gradient_and_hessian(log_density, z.unsqueeze(0))
    evaluations += dim + 1
    for _ in range(max_steps):
        value, grad = float(value_t[0]), grad_t[0]
        precision = -0.5 * (hess[0] + hess[0].mT)
        if not (math.isfinite(value) and bool(torch.isfinite(grad).all())):
            return z, value, None, None, evaluations, "non-finite log density at the point"
        if not bool(torch.isfinite(precision).all()):
            return z, value, None, None, evaluations, "non-finite Hessian at the point"
        evals, evecs = torch.linalg.eigh(precision)
        top = float(evals.abs().max())
        floor = max(1e-10 * top, 1e-300)
        floored = evals.clamp_min(floor)
        direction = evecs @ ((evecs.mT @ grad) / floored)
        decrement = float(grad @ direction)
        # Newton decrement ~ 2 x (nats to the maximum): stop at rounding level.
        tolerance = 1e-2 * torch.finfo(z.dtype).eps * max(abs(value), 1.0)
        if decrement <= tolerance:
            return z, value, precision, decrement, evaluations, "Newton decrement below rounding"
        size, accepted = 1.0, False
        for _ in range(40):
            candidate = z + size * direction
            with torch.no_grad():
                new_value = float(log_density(candidate.unsqueeze(0))[0])
            evaluations += 1
            if math.isfinite(new_value) and new_value >= value + 1e-4 * size * decrement:
                accepted = True
                break
            size *= 0.5
        if not accepted:
            # No ascent along the Newton direction: at the maximum to rounding (the
            # decrement is then tiny relative to |log p|), or a ridge/boundary.
            return z, value, precision, decrement, evaluations, "Newton line search stalled"
        z = candidate
        value_t, grad_t, hess = gradient_and_hessian(log_density, z.unsqueeze(0))
        evaluations += dim + 1
    value, grad = float(value_t[0]), grad_t[0]
    precision = -0.5 * (hess[0] + hess[0].mT)
    decrement = math.nan
    if bool(torch.isfinite(precision).all()) and torch.linalg.cholesky_ex(precision).info == 0:
        decrement = float(grad @ torch.linalg.solve(precision, grad))
    return z, value, precision, decrement, evaluations, message


def laplace_precision(
    model: Model, z: Tensor, precision: Tensor | None = None
) -> tuple[Tensor, str | None]:
    """:math:`\\Lambda = -\\nabla^2 \\log p(z, D)`, repaired when not positive definite.

    At a strict maximum :math:`\\Lambda` is positive definite. Where it is not (a saddle,
    a ridge, a point that is not a MAP), each eigenvalue :math:`\\lambda_i` is replaced by
    :math:`\\max(|\\lambda_i|, \\epsilon)` with :math:`\\epsilon = 10^{-3}` times the median
    :math:`|\\lambda|` (a floor relative to the problem's own curvature, so that a flat
    direction gets a wide but not absurd variance). Returns ``(precision, repair)`` where
    ``repair`` describes the change (None when none was needed).

    Args:
        model: the model.
        z: the point, shape ``(D,)``.
        precision: a precision already computed at ``z`` (e.g. by :func:`find_map`).
    """
    if precision is None:
        _, _, hess = gradient_and_hessian(_full_log_density(model), z.unsqueeze(0))
        precision = -0.5 * (hess[0] + hess[0].mT)
    if not bool(torch.isfinite(precision).all()):
        raise ValueError("the Hessian of the log joint is not finite at the point")
    if torch.linalg.cholesky_ex(precision).info.item() == 0:
        return precision, None
    evals, evecs = torch.linalg.eigh(precision)
    floor = max(1e-3 * float(evals.abs().median()), 1e-12 * float(evals.abs().max()), 1e-300)
    fixed = evals.abs().clamp_min(floor)
    repair = (
        f"the Hessian was not negative definite (smallest curvature {float(evals.min()):.3g}); "
        f"eigenvalues replaced by max(|lambda|, {floor:.3g})"
    )
    repaired = (evecs * fixed) @ evecs.mT
    return 0.5 * (repaired + repaired.mT), repair


def start_point(model: Model, family: VariationalFamily) -> Tensor | None:
    """Where the MAP search starts: the model's ``initial_point``, else the family's mean
    when the user moved it from zero (a user who placed the family chose the start)."""
    start = model.initial_point()
    loc = getattr(family, "loc", None)
    if start is None and isinstance(loc, Tensor):
        with torch.no_grad():
            if bool(loc.abs().max() > 0):
                start = loc.detach().clone()
    return start


def initialize(
    model: Model,
    family: VariationalFamily,
    init: str = "auto",
    *,
    seed: int = 0,
    map_estimate: MapEstimate | None = None,
) -> Initialization:
    """Place ``family`` according to ``init`` (see the module docstring); returns what was done.

    Args:
        model: the model.
        family: the family, moved in place.
        init: ``"auto"``, ``"prior"``, ``"map"``, ``"laplace"`` or ``"pathfinder"``.
        seed: seeds the MAP search's dispersed restarts (Pathfinder's starts and draws).
        map_estimate: a MAP search already made (the automatic method shares one).

    Raises:
        TypeError: ``"map"``/``"laplace"``/``"pathfinder"`` with a family that is not
            Gaussian.
        ValueError: no finite log density found, or ``"laplace"`` at a point whose
            Hessian is not finite.
        RuntimeError: ``"pathfinder"`` when every path failed (the message says why).

    Example:
        >>> info = initialize(model, family, "laplace")  # doctest: +SKIP
        >>> info.map.reason  # doctest: +SKIP
        'MAP found: Newton decrement 1.2e-15 nats, ...'
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    is_gaussian = isinstance(family, GaussianFamily)
    if init == "auto":
        if not is_gaussian:
            return Initialization("prior")
        init = "laplace" if family.dim <= LAPLACE_MAX_DIM else "map"
    if init == "prior":
        return Initialization("prior")
    if not is_gaussian:
        raise TypeError(
            f"init={init!r} needs a Gaussian family (it sets the mean and covariance); got "
            f"{type(family).__name__}. Use init='prior'"
        )
    began = time.perf_counter()
    if init == "pathfinder":
        return pathfinder_start(model, family, seed=seed)
    if map_estimate is None:
        map_estimate = find_map(
            model, start_point(model, family), seed=seed, newton=init == "laplace" or None
        )
    z = map_estimate.z.to(family.loc)
    if init == "map":
        with torch.no_grad():
            family.loc.copy_(z)
        return Initialization("map", map_estimate, seconds=time.perf_counter() - began)
    precision, repaired = laplace_precision(model, z, map_estimate.precision)
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    with torch.no_grad():
        family.set_moments(z, 0.5 * (covariance + covariance.mT))
    return Initialization(
        "laplace", map_estimate, precision, repaired, seconds=time.perf_counter() - began
    )


#: Draws a path of a Pathfinder start (only its Gaussian is used; the draws give k-hat).
START_DRAWS_PER_PATH = 250


def pathfinder_start(
    model: Model, family: VariationalFamily, *, seed: int = 0, method: Any = None
) -> Initialization:
    """Place ``family`` at the best Gaussian of a Pathfinder run (``init="pathfinder"``).

    Args:
        model: the model (its full-data log density).
        family: a Gaussian family, moved in place.
        seed: seeds the starts and draws.
        method: a :class:`~svi_torch.methods.pathfinder_method.Pathfinder` value whose
            settings to use (default: its defaults with :data:`START_DRAWS_PER_PATH` draws a
            path and as many resampled draws).
    """
    from .pathfinder_method import run_pathfinder  # deferred: it imports the method base

    if not isinstance(family, GaussianFamily):
        raise TypeError(
            "init='pathfinder' needs a Gaussian family (it sets the mean and covariance); "
            f"got {type(family).__name__}. Use init='prior'"
        )
    began = time.perf_counter()
    changes = {}
    if method is None:
        changes = {"draws_per_path": START_DRAWS_PER_PATH, "num_draws": START_DRAWS_PER_PATH}
    result = run_pathfinder(model, method, seed=seed, warn=False, **changes)
    result.set_family(family)
    return Initialization("pathfinder", seconds=time.perf_counter() - began, pathfinder=result)
