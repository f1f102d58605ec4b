"""Adam's update without ``Optimizer.step``'s per-call bookkeeping.

``torch.optim.Adam.step`` wraps the update in a profiler range, grad-mode switches, hook
dispatch and a rebuild of the per-group tensor lists: about 45 µs per call on one CPU
thread (``python benchmarks/step_overhead.py``: 82-93 µs for ``step()`` against 43-49 µs
for this class, on a 10-dimensional full-rank Gaussian), 6% of a 0.7 ms VI step. For the trainer's
fused Adam/AdamW with one parameter group, :class:`FusedAdamStep` calls that same
functional update, ``torch.optim.adam.adam(..., fused=True)``, on the optimizer's own state
tensors. The kernel and its inputs are the same, so the result is bit for bit that of
``optimizer.step()`` (tested), and ``state_dict``/``load_state_dict``, checkpoints, roll-backs
and learning-rate changes (read from ``param_groups`` every call) behave as before.

Whenever the shortcut would not be exactly ``step()`` -- the first step (Adam creates its
state there), a parameter without a gradient, complex parameters, hooks registered on the
optimizer or globally, AMP's ``grad_scale``/``found_inf`` -- it calls ``optimizer.step()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import adam as _adam

from .. import compat

__all__ = ["FusedAdamStep", "optimizer_step", "optimizer_zero_grad"]


class FusedAdamStep:
    """``optimizer.step()`` for a fused, single-group Adam/AdamW, minus the wrapper."""

    def __init__(self, optimizer: torch.optim.Adam) -> None:
        self.optimizer = optimizer

    @staticmethod
    def applies(optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` is one this shortcut reproduces exactly."""
        if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
            return False
        if len(optimizer.param_groups) != 1:
            return False
        group = optimizer.param_groups[0]
        return (
            bool(group.get("fused"))
            # The group key (and the functional adam's argument) of torch 2.7 on, where
            # AdamW became Adam with decoupled weight decay; older torch keeps step().
            and "decoupled_weight_decay" in group
            and not group.get("capturable")
            and not group.get("differentiable")
            and not any(torch.is_complex(p) for p in group["params"])
        )

    def _plain(self) -> bool:
        """No hooks and no AMP attributes: nothing ``step()`` would do beyond the update."""
        opt = self.optimizer
        return not (
            compat.optimizer_has_step_hooks(opt)
            or getattr(opt, "grad_scale", None) is not None
            or getattr(opt, "found_inf", None) is not None
        )

    def __call__(self) -> None:
        opt = self.optimizer
        group = opt.param_groups[0]
        params = group["params"]
        state = opt.state
        grads = [p.grad for p in params]
        if len(state) != len(params) or any(g is None for g in grads) or not self._plain():
            opt.step()
            return
        states = [state[p] for p in params]
        amsgrad = group["amsgrad"]
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            _adam.adam(
                params,
                grads,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                [s["step"] for s in states],
                fused=True,
                has_complex=False,
                decoupled_weight_decay=group["decoupled_weight_decay"],
                amsgrad=amsgrad,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )


def optimizer_step(optimizer: object) -> Callable[[], object]:
    """The cheapest exact way to step ``optimizer``: :class:`FusedAdamStep` or ``step``."""
    if isinstance(optimizer, torch.optim.Optimizer) and FusedAdamStep.applies(optimizer):
        return FusedAdamStep(optimizer)  # type: ignore[arg-type]
    return optimizer.step  # type: ignore[attr-defined]


def optimizer_zero_grad(optimizer: object) -> Callable[[], object]:
    """The cheapest exact way to call ``optimizer.zero_grad(set_to_none=True)``.

    ``Optimizer.zero_grad`` opens a profiler range and walks its groups through Python
    helpers: 12-19 µs per call on one CPU thread, against under 1 µs for setting each
    parameter's ``grad`` to ``None`` directly, which is all it does with
    ``set_to_none=True`` (``python benchmarks/step_overhead.py``). An optimizer that
    overrides ``zero_grad`` (or is not a torch optimizer) keeps its own method.
    """
    if isinstance(optimizer, torch.optim.Optimizer) and (
        type(optimizer).zero_grad is torch.optim.Optimizer.zero_grad
    ):

        def zero_grad() -> None:
            # Groups read every call: load_state_dict replaces the list.
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

        return zero_grad
    return lambda: optimizer.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
