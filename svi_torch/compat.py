"""Every private torch entry point svi_torch uses, in one place, each with a public fallback.

The training step calls a few of torch's private functions because the public API around
them costs more than the work itself on the small tensors of a VI step (the measurements
are in each function's docstring). Private names can change or vanish in any torch
release, so each one is probed once, when this module is imported: it must exist and give
the public API's answer on a small example. One that fails is never called; its public
fallback is, and the result is the same (bit for bit, as the tests check), only slower.

Nothing else in the package names a private torch attribute (a test greps for it), and
this module imports nothing from svi_torch, so any module may use it.

Forcing the fallbacks (to test them, or to rule these calls out when chasing a bug):
set ``SVI_TORCH_COMPAT_FALLBACK=1`` before the import, or run under
:func:`force_fallbacks`. :data:`fallback_counts` counts each use of a fallback.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "all_finite",
    "available",
    "fallback_counts",
    "fallbacks_forced",
    "force_fallbacks",
    "foreach_lerp_",
    "module_buffers",
    "optimizer_has_step_hooks",
    "run_backward",
    "total_norm",
]

# Counts of fallback uses, by public function name; reset it freely (tests do).
fallback_counts: Counter[str] = Counter()

_forced = os.environ.get("SVI_TORCH_COMPAT_FALLBACK", "").strip() not in ("", "0")


def fallbacks_forced() -> bool:
    """Whether every function here takes its public fallback (env var or context)."""
    return _forced


@contextlib.contextmanager
def force_fallbacks(forced: bool = True) -> Iterator[None]:
    """Within the block, every function here uses its public fallback (process-wide)."""
    global _forced
    before, _forced = _forced, forced
    try:
        yield
    finally:
        _forced = before


def _probe(check: Callable[[], Any]) -> Any:
    """``check()``'s result, or ``None`` when it raises (a missing or changed entry point)."""
    try:
        return check()
    except Exception:  # noqa: BLE001 - any failure means "do not use it"
        return None


# --- autograd: the engine call that torch.autograd.backward ends with -------------------


def _probe_engine() -> Callable[..., Any] | None:
    from torch.autograd.graph import _engine_run_backward as engine

    active = torch._C._are_functorch_transforms_active
    if active() is not False:
        return None
    with torch.enable_grad():
        x = torch.zeros(2, requires_grad=True)
        y = (x * 3.0).sum()
        engine(
            (y,),
            (torch.ones_like(y),),
            False,
            False,
            (),
            allow_unreachable=True,
            accumulate_grad=True,
        )
    if not torch.equal(x.grad, torch.full((2,), 3.0)):
        return None

    def run(tensors: tuple[Tensor, ...], grad_tensors: tuple[Tensor, ...]) -> bool:
        # torch.autograd.backward refuses to run inside a functorch transform, and the
        # fallback says so with torch's own error.
        if active():
            return False
        engine(
            tensors, grad_tensors, False, False, (), allow_unreachable=True, accumulate_grad=True
        )
        return True

    return run


_engine = _probe(_probe_engine)


def run_backward(tensors: tuple[Tensor, ...], grad_tensors: tuple[Tensor, ...]) -> None:
    """``torch.autograd.backward(tensors, grad_tensors)``: accumulate into ``.grad``, free the graph.

    ``torch.autograd.backward`` normalises its arguments into tuples, checks for
    ``__torch_function__`` overrides and functorch transforms and builds the seed
    gradients in Python before it calls ``torch.autograd.graph._engine_run_backward``
    (private; present since torch 2.3). For a plain scalar loss with its seed given, all of
    that reduces to the last call, so this makes it directly, with the same arguments:
    gradients, hooks and errors are the engine's own. Measured on one CPU thread: a whole
    training step is 4-7% faster (logistic regression, N=1e4 D=10 B=100 and N=1e5 D=100
    B=256, ``python benchmarks/step_overhead.py``). Inside a functorch transform (probed
    with ``torch._C._are_functorch_transforms_active``), or when the entry point is
    missing, the public function runs.
    """
    if _engine is not None and not _forced and _engine(tensors, grad_tensors):
        return
    fallback_counts["run_backward"] += 1
    torch.autograd.backward(tensors, grad_tensors)


# --- optimizers: whether step() would run hooks ------------------------------------------


def _probe_step_hooks() -> Callable[[torch.optim.Optimizer], bool] | None:
    from torch.optim import optimizer as optimizer_module

    global_pre = optimizer_module._global_optimizer_pre_hooks
    global_post = optimizer_module._global_optimizer_post_hooks
    if not (isinstance(global_pre, dict) and isinstance(global_post, dict)):
        return None

    def has_hooks(opt: torch.optim.Optimizer) -> bool:
        return bool(
            opt._optimizer_step_pre_hooks
            or opt._optimizer_step_post_hooks
            or global_pre
            or global_post
        )

    # Each private dict must see a hook registered through the public API, and lose it.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for register, name in (
        (opt.register_step_pre_hook, "_optimizer_step_pre_hooks"),
        (opt.register_step_post_hook, "_optimizer_step_post_hooks"),
    ):
        if getattr(opt, name):
            return None
        handle = register(lambda *args: None)
        seen = len(getattr(opt, name)) == 1
        handle.remove()
        if not seen or getattr(opt, name):
            return None
    return has_hooks


_step_hooks = _probe(_probe_step_hooks)


def optimizer_has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` would call a step hook (its own or a global one).

    torch has no public query for it: the hooks live in the private dicts
    ``Optimizer._optimizer_step_pre_hooks``/``_optimizer_step_post_hooks`` and
    ``torch.optim.optimizer._global_optimizer_pre_hooks``/``_post_hooks`` (torch 2.0 on).
    :class:`~svi_torch.training.fused_step.FusedAdamStep` asks it every step, to skip
    ``step()``'s wrapper (about 45 µs a call, 6% of a 0.7 ms VI step) only when nothing
    would notice. The fallback answers ``True``: always the real ``step()``, same result.
    """
    if _step_hooks is not None and not _forced:
        return _step_hooks(optimizer)
    fallback_counts["optimizer_has_step_hooks"] += 1
    return True


# --- the non-finite check: one fused kernel over the loss and every gradient -------------


def _probe_amp_check() -> Callable[[list[Tensor], Tensor, Tensor], None] | None:
    kernel = torch._amp_foreach_non_finite_check_and_unscale_
    found, one = torch.zeros(()), torch.ones(())
    tensors = [torch.tensor([1.5, float("nan")]), torch.tensor([-2.0, 1e-30])]
    kernel(tensors, found, one)
    if float(found) != 1.0 or not torch.equal(tensors[1], torch.tensor([-2.0, 1e-30])):
        return None
    found.zero_()
    kernel([torch.tensor([0.25, -3.0])], found, one)
    return kernel if float(found) == 0.0 else None


_amp_check = _probe(_probe_amp_check)


def all_finite(tensors: list[Tensor], found_inf: Tensor, one: Tensor) -> bool:
    """Whether every element of every tensor is finite, read back to the host once.

    ``found_inf`` and ``one``: float scalars 0 and 1 on the tensors' device, kept by the
    caller across calls; ``found_inf`` is 0 again on return. The private
    ``torch._amp_foreach_non_finite_check_and_unscale_`` (the kernel behind
    ``torch.amp.GradScaler``, on CPU too from torch 2.3 on) scans every tensor in one
    call and raises the flag; with a scale of exactly 1 it leaves the values unchanged
    (x times 1 is x for every float). The check runs every step, and the public way
    (``torch.isfinite`` per tensor, one host read each) is the fallback, also used for
    tensors the kernel rejects (mixed devices).
    """
    if _amp_check is not None and not _forced:
        try:
            _amp_check(tensors, found_inf, one)
        except RuntimeError:  # mixed devices
            pass
        else:
            if bool(found_inf):
                found_inf.zero_()  # the kernel only ever sets the flag
                return False
            return True
    fallback_counts["all_finite"] += 1
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# --- foreach kernels ----------------------------------------------------------------------


def _probe_lerp() -> Callable[..., None] | None:
    lerp = torch._foreach_lerp_
    ends = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    got = [torch.tensor([0.5, 0.25]), torch.tensor([[-1.0]])]
    want = [g.clone().lerp_(e, 1.0 / 3) for g, e in zip(got, ends, strict=True)]
    lerp(got, ends, 1.0 / 3)
    return lerp if all(torch.equal(g, w) for g, w in zip(got, want, strict=True)) else None


_lerp = _probe(_probe_lerp)


def foreach_lerp_(starts: list[Tensor], ends: list[Tensor], weight: float) -> None:
    """``start.lerp_(end, weight)`` for each pair: :math:`s \\leftarrow s + w (e - s)`.

    ``torch._foreach_lerp_`` (private, the kernel ``torch.optim`` uses) does every pair
    in one call; the fallback is the per-tensor loop, which is what that kernel runs on
    CPU, so the values are the same.
    """
    if _lerp is not None and not _forced:
        _lerp(starts, ends, weight)
        return
    fallback_counts["foreach_lerp_"] += 1
    for start, end in zip(starts, ends, strict=True):
        start.lerp_(end, weight)


def _probe_norm() -> Callable[[list[Tensor]], list[Tensor]] | None:
    norm = torch._foreach_norm
    tensors = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, -2.0], [2.0, 0.5]])]
    got = torch.linalg.vector_norm(torch.stack(norm(tensors)))
    return norm if torch.equal(got, torch.nn.utils.get_total_norm(tensors)) else None


_norm = _probe(_probe_norm)


def total_norm(tensors: Sequence[Tensor]) -> Tensor:
    """:math:`\\sqrt{\\sum_i \\|t_i\\|_2^2}`, exactly as ``torch.nn.utils.get_total_norm``.

    ``get_total_norm`` first groups the tensors by device and dtype in Python, which
    costs more than the norm itself for the handful of small tensors a family has; when
    they share one device and dtype (the usual case) one private ``torch._foreach_norm``
    (what ``get_total_norm`` calls per group) does it. Otherwise, or as the fallback,
    ``get_total_norm`` itself.
    """
    if _norm is None or _forced:
        fallback_counts["total_norm"] += 1
    else:
        first = tensors[0]
        if all(t.device == first.device and t.dtype == first.dtype for t in tensors):
            return torch.linalg.vector_norm(torch.stack(_norm(list(tensors))))
    return torch.nn.utils.get_total_norm(tensors)


# --- nn.Module: the buffer dict ------------------------------------------------------------


def _probe_buffers() -> Callable[[nn.Module], dict[str, Tensor]] | None:
    module = nn.Module()
    value = torch.zeros(2)
    module.register_buffer("probe", value)
    buffers = module._buffers
    if not isinstance(buffers, dict) or buffers.get("probe") is not value:
        return None
    return lambda m: m._buffers  # type: ignore[return-value]


_buffers = _probe(_probe_buffers)


def module_buffers(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s own buffers by name (not its children's); read it, never write it.

    Reading a buffer as ``module.name`` goes through ``nn.Module.__getattr__``, which
    costs more than the row gather of a minibatch; the private dict ``Module._buffers``
    (in every torch 2.x) holds them directly. The fallback builds the same mapping from
    the public ``named_buffers(recurse=False)`` each call.
    """
    if _buffers is not None and not _forced:
        return _buffers(module)
    fallback_counts["module_buffers"] += 1
    return dict(module.named_buffers(recurse=False))


def available() -> dict[str, bool]:
    """Which private entry points passed their probe at import (forcing aside)."""
    return {
        "run_backward": _engine is not None,
        "optimizer_has_step_hooks": _step_hooks is not None,
        "all_finite": _amp_check is not None,
        "foreach_lerp_": _lerp is not None,
        "total_norm": _norm is not None,
        "module_buffers": _buffers is not None,
    }
