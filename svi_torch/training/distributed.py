"""Data-parallel training on ``torch.distributed`` (launched by ``torchrun``).

Every rank holds the whole model and family. Each global minibatch of :math:`B` indices is
split into one contiguous shard per rank (:class:`~svi_torch.data.MinibatchStream` with
``rank``/``world_size``); rank :math:`r` scales its shard's likelihood by
:math:`N/B_r` and all ranks draw the *same* particles (same seed), so the average of the
rank losses equals the single-process loss on the global batch:

.. math::

    \\frac1R \\sum_r \\Big[\\log p(z) + \\frac{N}{B_r}\\sum_{i\\in\\mathcal{B}_r}
    \\log p(x_i\\mid z)\\Big] = \\log p(z) + \\frac{N}{B}\\sum_{i\\in\\mathcal{B}}
    \\log p(x_i\\mid z) \\quad (B_r = B/R).

Gradients are averaged with one all-reduce of a flat buffer per step (explicit, rather than
``DistributedDataParallel``, so parameters unused in a step — e.g. mixture components
or a model's own parameters — need no special handling). Rank 0 alone writes logs,
``metrics.json`` and checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistributedContext",
    "current_context",
    "init_from_environment",
    "broadcast_parameters",
    "average_gradients",
    "average_metrics",
    "shared_value",
    "COLLECTIVE_TIMEOUT",
]

#: A rank that dies is noticed by the others' next collective within this time.
COLLECTIVE_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current_context() -> DistributedContext:
    """The running process group's rank and size, or a single-process context."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size())
    return DistributedContext()


def init_from_environment(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1).

    Uses NCCL for CUDA devices and gloo otherwise. Without torchrun's variables it does
    nothing and returns a single-process context.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current_context()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    use_cuda = device is not None and torch.device(device).type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return current_context()


def broadcast_parameters(params: Sequence[Tensor], src: int = 0) -> None:
    """Make every rank start from rank ``src``'s parameters."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src)


def average_gradients(
    params: Sequence[Tensor], world_size: int, metrics: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Average ``p.grad`` (and the scalar ``metrics``) over ranks in one all-reduce.

    Gradients and metrics travel in one flat buffer, so the ELBO every rank's stop rule
    sees is the global one at no extra communication. A parameter without a gradient on
    this rank contributes zeros, so ranks always agree on the buffer layout. A NaN on any
    rank makes the averaged gradient NaN everywhere, so all ranks skip that step together.
    """
    metrics = metrics or {}
    keys = sorted(metrics)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    pieces = [g.reshape(-1) for g in grads]
    if keys:
        dtype = pieces[0].dtype if pieces else torch.float64
        pieces.append(torch.stack([metrics[k].detach().reshape(()).to(dtype) for k in keys]))
    flat = torch.cat(pieces)
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return {k: flat[offset + i] for i, k in enumerate(keys)}


def average_metrics(metrics: dict[str, Tensor], world_size: int) -> dict[str, Tensor]:
    """Mean of each scalar metric over ranks (one all-reduce)."""
    if not metrics:
        return metrics
    keys = sorted(metrics)
    stacked = torch.stack([metrics[k].detach().reshape(()).double() for k in keys])
    dist.all_reduce(stacked)
    stacked /= world_size
    return {k: stacked[i] for i, k in enumerate(keys)}


def shared_value(value: object, src: int = 0) -> object:
    """Rank ``src``'s ``value`` on every rank (e.g. a run directory name); as is alone."""
    if not current_context().active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src)
    return box[0]
