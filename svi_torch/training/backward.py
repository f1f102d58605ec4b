"""Back-propagate a scalar loss without ``Tensor.backward``'s Python argument handling.

``loss.backward()`` runs ``torch.autograd.backward``: it normalises its arguments into
tuples, checks for ``__torch_function__`` overrides and functorch transforms, and builds
the seed gradient :math:`\\partial \\text{loss} / \\partial \\text{loss} = 1` through
``_make_grads`` -- all Python, every step -- before it calls autograd's engine. For the
trainer's loss (a plain scalar tensor that requires grad, no ``inputs``, the graph freed)
all of that reduces to that last call. Measured on one CPU thread of the 2-core machine:
a whole training step is 4-7% faster without it (logistic regression, N=1e4 D=10 B=100
and N=1e5 D=100 B=256, ``python benchmarks/step_overhead.py``).

:func:`backward` makes that call through :func:`svi_torch.compat.run_backward` (the
engine entry point ``torch.autograd.backward`` ends with, same arguments; the public
function where that entry point is missing) with a fresh seed of ones, so gradients,
hooks and errors are the engine's own. Anything else -- a tensor subclass, a non-scalar,
a loss without a graph -- goes through ``loss.backward()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import compat

__all__ = ["backward"]


def backward(loss: Tensor) -> None:
    """Accumulate :math:`\\nabla \\text{loss}` into the leaves' ``.grad``; frees the graph."""
    if type(loss) is not Tensor or loss.dim() != 0 or loss.grad_fn is None:
        loss.backward()
        return
    # A fresh seed each call (not a cached one): a custom autograd Function that edits its
    # incoming gradient in place must not corrupt the next step's seed.
    compat.run_backward((loss,), (torch.ones_like(loss),))
