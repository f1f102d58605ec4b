"""Initialising a Gaussian family before training: the family as built, the MAP, or Laplace.

* ``"prior"``: the family as constructed (by default :math:`\\mathcal{N}(0, 0.1^2 I)` in
  the unconstrained space); no data are touched.
* ``"map"``: the mean moves to the maximum a posteriori point of the unconstrained log
  joint, :math:`\\hat z = \\arg\\max_z \\log p(z, D)` (L-BFGS on the full data, then
  Newton polishing where the Hessian is affordable); the scales stay as built.
* ``"laplace"``: :math:`q = \\mathcal{N}(\\hat z, (-\\nabla^2 \\log p(\\hat z, D))^{-1})`, placed
  with ``set_moments`` (mean-field keeps :math:`1/\\Lambda_{dd}`). On a conjugate Gaussian
  model this *is* the exact posterior.
* ``"auto"``: ``"laplace"`` for Gaussian families up to :data:`LAPLACE_MAX_DIM` dimensions,
  ``"map"`` above, ``"prior"`` for other families. ``fit(init="auto")`` (its default) uses
  this with natural-gradient VI and ``"prior"`` with Adam.

The full-data log joint is evaluated in chunks of rows with the likelihood unscaled, so the
Hessian costs :math:`O(N D^2)` time (``D`` gradient passes) and :math:`O(\\text{chunk}\\cdot D)`
memory; each L-BFGS iteration costs :math:`O(ND)`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .curvature import gradient_and_hessian
from .families.base import VariationalFamily
from .families.gaussian import GaussianFamily
from .models.base import Model

__all__ = ["initialize", "find_map", "laplace_precision", "Initialization", "INITS"]

INITS = ("auto", "prior", "map", "laplace")
#: Above this dimension ``init="auto"`` uses the MAP only (the Hessian costs O(N D^2)).
LAPLACE_MAX_DIM = 500


@dataclass
class Initialization:
    """What :func:`initialize` did: the method, the MAP, the Laplace precision, its cost."""

    method: str
    map: Tensor | None = None
    precision: Tensor | None = None
    seconds: float = 0.0


def initialize(model: Model, family: VariationalFamily, init: str = "auto") -> Initialization:
    """Place ``family`` according to ``init`` (see the module docstring); returns what was done.

    Example:
        >>> info = initialize(model, family, "laplace")  # doctest: +SKIP
        >>> info.map, info.precision  # doctest: +SKIP
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
    is_gaussian = isinstance(family, GaussianFamily)
    if init == "auto":
        if not is_gaussian:
            return Initialization("prior")
        chosen = "laplace" if family.dim <= LAPLACE_MAX_DIM else "map"
        saved = {k: v.detach().clone() for k, v in family.state_dict().items()}
        try:
            return initialize(model, family, chosen)
        except (ValueError, torch.linalg.LinAlgError) as err:
            # An automatic choice must not stop a run that could train: keep the family as
            # built and let the training loop report what is wrong with the model.
            family.load_state_dict(saved)
            warnings.warn(
                f"init='auto' could not place the family at the {chosen} ({err}); "
                "starting from the family as built",
                RuntimeWarning,
                stacklevel=2,
            )
            return Initialization("prior")
    if init == "prior":
        return Initialization("prior")
    if not is_gaussian:
        raise TypeError(
            f"init={init!r} needs a Gaussian family (it sets the mean and covariance); got "
            f"{type(family).__name__}. Use init='prior'"
        )
    start = time.perf_counter()
    with torch.no_grad():
        z0 = family.loc.detach().clone()
    z_map = find_map(model, z0, polish=init == "laplace")
    precision = laplace_precision(model, z_map) if init == "laplace" else None
    with torch.no_grad():
        if precision is None:
            family.loc.copy_(z_map)
        else:
            covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
            family.set_moments(z_map, 0.5 * (covariance + covariance.mT))
    return Initialization(init, z_map, precision, time.perf_counter() - start)


def find_map(model: Model, z0: Tensor, polish: bool = True, max_iter: int = 200) -> Tensor:
    """:math:`\\arg\\max_z \\log p(z, D)` by L-BFGS from ``z0``, then Newton steps if ``polish``.

    The objective is divided by :math:`\\max(N, 1)` so that L-BFGS's tolerances mean the same
    at every data size. Newton polishing (at most 5 steps with backtracking) makes the MAP
    exact to floating point on quadratic log joints and where L-BFGS stalls on an
    ill-conditioned one.

    Raises:
        ValueError: if the log joint is not finite at ``z0`` or at the optimum.
    """
    norm = float(max(model.num_data, 1))
    z = z0.detach().clone().requires_grad_(True)
    with torch.no_grad():
        if not bool(torch.isfinite(model.full_log_joint(z.unsqueeze(0))).all()):
            raise ValueError(
                "the log joint is not finite at the family's initial mean; fix the model or "
                "pass init='prior'"
            )
    optimizer = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_change=1e-12
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = -model.full_log_joint(z.unsqueeze(0)).squeeze(0) / norm
        loss.backward()
        return loss

    optimizer.step(closure)
    z_map = z.detach()
    if polish:
        z_map = _newton_polish(model, z_map)
    if not bool(torch.isfinite(z_map).all()):
        raise ValueError("the MAP search diverged (non-finite z); pass init='prior'")
    return z_map


def _newton_polish(model: Model, z: Tensor, steps: int = 5) -> Tensor:
    def log_density(points: Tensor) -> Tensor:
        return model.full_log_joint(points)

    for _ in range(steps):
        value, grad, hess = gradient_and_hessian(log_density, z.unsqueeze(0))
        chol, info = torch.linalg.cholesky_ex(-hess[0])
        if info.item() != 0:
            return z  # not locally concave here: keep the L-BFGS point
        direction = torch.cholesky_solve(grad[0].unsqueeze(-1), chol).squeeze(-1)
        decrement = float(grad[0] @ direction)
        # Newton decrement g' Lambda^-1 g ~ 2 x (nats to the maximum): stop at rounding level.
        if decrement < 1e-2 * torch.finfo(z.dtype).eps * max(abs(value[0].item()), 1.0):
            return z
        size = 1.0
        for _ in range(20):
            candidate = z + size * direction
            with torch.no_grad():
                new_value = log_density(candidate.unsqueeze(0))[0]
            if bool(torch.isfinite(new_value)) and new_value >= value[0] - 1e-9 * abs(value[0]):
                z = candidate
                break
            size /= 2
        else:
            return z
    return z


def laplace_precision(model: Model, z_map: Tensor) -> Tensor:
    """:math:`\\Lambda = -\\nabla^2 \\log p(\\hat z, D)`, made positive definite if it is not.

    At a strict maximum :math:`\\Lambda` is positive definite. Where it is not (a saddle or
    an unconverged search), eigenvalues are replaced by their absolute values and floored at
    :math:`10^{-8}\\lambda_{\\max}`, with a warning.
    """

    def log_density(points: Tensor) -> Tensor:
        return model.full_log_joint(points)

    _, _, hess = gradient_and_hessian(log_density, z_map.unsqueeze(0))
    precision = -0.5 * (hess[0] + hess[0].mT)
    if torch.linalg.cholesky_ex(precision).info.item() == 0:
        return precision
    evals, evecs = torch.linalg.eigh(precision)
    floor = 1e-8 * evals.abs().max().clamp_min(1e-30)
    fixed = evals.abs().clamp_min(floor)
    warnings.warn(
        f"the log joint's Hessian at the MAP is not negative definite (smallest curvature "
        f"{evals.min().item():.3g}); the Laplace precision uses |eigenvalues|",
        RuntimeWarning,
        stacklevel=3,
    )
    return (evecs * fixed) @ evecs.mT
