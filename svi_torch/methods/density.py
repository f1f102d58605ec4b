"""Log-density callables for the gradient-based Gaussian methods, and their scores.

Pathfinder and batch-and-match see a target only through a callable

.. math::

    \\texttt{log\\_density}: z \\in \\mathbb{R}^{S \\times D} \\mapsto \\log p(z_s, D) \\in \\mathbb{R}^S,

the unconstrained log joint (Jacobian included) of each row, and its score
:math:`\\nabla_z \\log p(z, D)` by autograd. :func:`model_log_density` gives the exact
full-data one (:meth:`~svi_torch.models.Model.full_log_joint`);
:func:`minibatch_log_density` an unbiased estimate from a fresh minibatch at every call,
with the likelihood scaled by :math:`N/B`. :func:`tolerate_numerical_failures` wraps
either so that a point where the model's own linear algebra fails (a Cholesky of a kernel
matrix that is not positive definite in floating point) has :math:`\\log p = -\\infty`
instead of stopping the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..data import MinibatchStream
from ..models.base import Model

__all__ = [
    "LogDensity",
    "model_log_density",
    "minibatch_log_density",
    "log_density_and_score",
    "is_numerical_failure",
    "tolerate_numerical_failures",
]

LogDensity = Callable[[Tensor], Tensor]


def model_log_density(model: Model) -> LogDensity:
    """The exact full-data :math:`\\log p(z, D)` of ``model`` (``model.full_log_joint``)."""
    return model.full_log_joint


def minibatch_log_density(model: Model, batch_size: int, seed: int = 0) -> LogDensity:
    """An unbiased minibatch estimate of :math:`\\log p(z, D)`, a new batch at every call.

    .. math::

        \\widehat{\\log p}(z) = \\log p(z) + \\log|\\det J_T(z)|
            + \\frac{N}{B}\\sum_{i \\in \\mathcal{B}} \\log p(x_i \\mid T(z)),

    with :math:`\\mathcal{B}` the next batch of a per-epoch shuffled
    :class:`~svi_torch.data.MinibatchStream` (each batch a uniform subset of size
    :math:`B`). All rows of one call share the batch; two calls use independent batches
    (within an epoch, disjoint ones).
    """
    if model.num_data == 0:
        raise ValueError(
            f"{type(model).__name__} has no data, so it has no minibatch estimate; "
            "use model_log_density(model)"
        )
    stream = MinibatchStream(model.num_data, batch_size, seed=seed)
    scale = model.num_data / batch_size

    def log_density(z: Tensor) -> Tensor:
        batch = model.index_data(stream.next_indices())
        return model.log_joint(z, batch, likelihood_scale=scale).total

    return log_density


def log_density_and_score(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`\\log p(z_s)` and :math:`\\nabla_z \\log p(z_s)` for each row of ``z`` (S, D).

    Both are detached. Rows are independent, so one backward pass of the sum gives every
    row's score.
    """
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = log_density(z)
        if value.shape != z.shape[:1]:
            raise ValueError(
                f"log_density must return one value per row: shape ({z.shape[0]},), "
                f"got {tuple(value.shape)}"
            )
        if not value.requires_grad:
            raise ValueError(
                "log_density returned a value that does not depend on z through autograd; "
                "compute it with torch operations on z (no .detach(), .item() or NumPy)"
            )
        (score,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), score.detach()


def is_numerical_failure(err: BaseException | None) -> bool:
    """Whether ``err`` is (or was raised from) a ``torch.linalg.LinAlgError``.

    The Pyro bridge re-raises a model's exception as a ``PyroModelError`` naming the site,
    ``from`` the original, so the chain of causes is followed.
    """
    while err is not None:
        if isinstance(err, torch.linalg.LinAlgError):
            return True
        err = err.__cause__
    return False


def tolerate_numerical_failures(log_density: LogDensity) -> LogDensity:
    """``log_density`` with :math:`-\\infty` for each row where the model's linear algebra fails.

    A model that factorises a matrix built from :math:`z` (a GP's kernel
    :math:`K = \\alpha^2 k_\\rho + \\sigma^2 I`) can fail at draws far in q's tail, where
    :math:`K` is singular in floating point: the density is then not computable there, and
    the methods treat it as zero density (L-BFGS backs off, the draw gets no importance
    weight) rather than stop. Only ``LinAlgError`` (also wrapped, see
    :func:`is_numerical_failure`) is tolerated; any other error is the model's and
    propagates. The batch is evaluated whole first, row by row only after a failure.
    """

    def evaluate(z: Tensor) -> Tensor:
        try:
            return log_density(z)
        except Exception as err:  # noqa: BLE001 - re-raised unless numerical
            if not is_numerical_failure(err):
                raise
        values = []
        for row in z.split(1):
            try:
                values.append(log_density(row))
            except Exception as err:  # noqa: BLE001 - re-raised unless numerical
                if not is_numerical_failure(err):
                    raise
                # -inf that still depends on z (zero gradient), as the callers' autograd needs.
                values.append(row.sum(-1) * 0.0 + (-math.inf))
        return torch.cat(values)

    return evaluate
