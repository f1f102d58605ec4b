"""Gradients and Hessians of a model's log joint in the unconstrained space.

Natural-gradient VI and Laplace initialisation need, for particles :math:`z_k`,

.. math::

    g_k = \\nabla_z \\log p(z_k, D), \\qquad H_k = \\nabla_z^2 \\log p(z_k, D),

where :math:`\\log p(z, D)` is the unconstrained log joint (prior, log-Jacobian and the
likelihood scaled by :math:`N/B`). Two ways to get :math:`H_k`:

* exact, by automatic differentiation: :math:`D` reverse-mode passes of the gradient,
  i.e. :math:`O(D)` gradient evaluations, :math:`O(B D^2)` for a GLM on a batch of
  :math:`B` points;
* :func:`stein_hessian`: the first-order estimator from Stein's lemma / Price's theorem,
  :math:`\\mathbb{E}_q[\\nabla^2 \\log p] = \\Sigma^{-1}\\mathbb{E}_q[(z - m)\\nabla\\log p^\\top]`
  for :math:`q = \\mathcal{N}(m, \\Sigma)`, which needs gradients only (cost :math:`O(D)` per
  particle on top of the gradient), for large :math:`D`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .data import Batch
from .models.base import Model

__all__ = ["log_joint_fn", "gradient", "gradient_and_hessian", "stein_hessian"]

LogDensity = Callable[[Tensor], Tensor]


def log_joint_fn(model: Model, batch: Batch | None, likelihood_scale: float | None) -> LogDensity:
    """:math:`z \\mapsto \\log p(z, D)` (estimated from ``batch``) for ``z`` of shape ``S + (D,)``."""

    def log_density(z: Tensor) -> Tensor:
        return model.log_joint(z, batch, likelihood_scale).total

    return log_density


def gradient(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor]:
    """Values and gradients of ``log_density`` at particles ``z`` of shape ``(K, D)``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        values = log_density(z)
        (grad,) = torch.autograd.grad(values.sum(), z)
    return values.detach(), grad


def gradient_and_hessian(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Values ``(K,)``, gradients ``(K, D)`` and exact Hessians ``(K, D, D)`` at ``z``.

    One reverse pass for the gradients with ``create_graph``, then the :math:`D` rows of
    every Hessian from one batched reverse pass of the gradient
    (``torch.autograd.grad(..., is_grads_batched=True)``, which vectorises the :math:`D`
    vector-Jacobian products with ``vmap``): 1.0 / 1.2 / 1.8 ms at :math:`D` = 5 / 20 / 100
    on a minibatch of 64, where a Python loop of :math:`D` passes took 2.7 / 5.0 / 23 ms
    (``python benchmarks/step_overhead.py``). A backward pass that ``vmap`` cannot batch
    (an op with no batching rule in a user's model) falls back to that loop, same result.

    Args:
        log_density: maps ``(K, D)`` particles to ``(K,)`` log densities.
        z: particles, shape ``(K, D)``.
    """
    try:
        return _batched_hessian(log_density, z)
    except (RuntimeError, NotImplementedError):
        return _loop_hessian(log_density, z)


def _batched_hessian(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        values = log_density(z)
        (grad,) = torch.autograd.grad(values.sum(), z, create_graph=True)
        num, dim = z.shape
        if not grad.requires_grad:  # the log density is linear in z: zero curvature
            return values.detach(), grad.detach(), z.new_zeros(num, dim, dim)
        # Output d of the batch is e_d for every particle: d/dz of sum_k g_k[d], row d of
        # every H_k (particles are independent).
        basis = torch.eye(dim, dtype=z.dtype, device=z.device).unsqueeze(1).expand(dim, num, dim)
        (rows,) = torch.autograd.grad(
            grad, z, grad_outputs=basis, is_grads_batched=True, allow_unused=True
        )
    if rows is None:
        rows = torch.zeros(dim, num, dim, dtype=z.dtype, device=z.device)
    return values.detach(), grad.detach(), rows.movedim(0, -2).detach()


def _loop_hessian(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        values = log_density(z)
        (grad,) = torch.autograd.grad(values.sum(), z, create_graph=True)
        rows = []
        dim = z.shape[-1]
        # Particles are independent, so d/dz of sum_k g_k[d] gives row d of every H_k at once.
        for d in range(dim):
            (row,) = torch.autograd.grad(
                grad[:, d].sum(), z, retain_graph=d < dim - 1, allow_unused=True
            )
            rows.append(torch.zeros_like(z) if row is None else row)
    hess = torch.stack(rows, dim=-2)
    return values.detach(), grad.detach(), hess.detach()


def stein_hessian(z: Tensor, grad: Tensor, loc: Tensor, precision: Tensor) -> Tensor:
    """Expected Hessian from gradients only: :math:`\\Lambda\\,\\overline{(z-m)g^\\top}`, symmetrised.

    By Stein's lemma, for :math:`z \\sim \\mathcal{N}(m, \\Lambda^{-1})`,
    :math:`\\mathbb{E}[(z - m)\\,g(z)^\\top] = \\Lambda^{-1}\\mathbb{E}[\\nabla^2 \\log p(z)]`.
    ``precision`` may be a ``(D, D)`` matrix or a ``(D,)`` diagonal; with a diagonal the
    result is the ``(D,)`` diagonal estimate.
    """
    centred = z - loc
    if precision.dim() == 1:
        return precision * (centred * grad).mean(0)
    cross = centred.mT @ grad / z.shape[0]
    estimate = precision @ cross
    return 0.5 * (estimate + estimate.mT)
