"""Seeded draws from a fitted family, mapped to the constrained space with derived quantities.

Every after-fit computation (``sample``, the summaries, the predictive, the per-point log
likelihood, the ArviZ export) draws :math:`z_s \\sim q` through :func:`draw_latents`, so
that one seed gives the same draws everywhere: ``result.posterior_summary(seed=s)`` and
``result.to_arviz(seed=s)`` summarise the very same :math:`z_1, \\dots, z_S`.

Seeds: an ``int`` runs the draws under a forked RNG seeded with it (the global stream is
restored afterwards, so after-fit calls never change a training run that follows them);
``None`` draws from the global RNG and advances it, like any torch sampling call.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Mapping
from itertools import product

import torch
from torch import Tensor, nn

from ..families.base import VariationalFamily
from ..models.base import Model

__all__ = [
    "DEFAULT_SEED",
    "seeded",
    "check_num_samples",
    "draw_latents",
    "constrained_draws",
    "flat_draws",
    "element_names",
]

#: The seed every after-fit method uses unless told otherwise: the same call gives the
#: same figures. Pass ``seed=None`` for fresh draws from the global RNG.
DEFAULT_SEED = 0


@contextlib.contextmanager
def seeded(seed: int | None, *modules: nn.Module) -> Iterator[None]:
    """Run the block under a forked RNG seeded with ``seed`` (``None``: the global RNG).

    The CUDA devices of ``modules`` are forked too, so their streams are restored as well.
    """
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    devices = sorted(
        {
            t.device.index or 0
            for m in modules
            for t in (*m.parameters(), *m.buffers())
            if t.device.type == "cuda"
        }
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def check_num_samples(num_samples: object, minimum: int = 1) -> int:
    """``num_samples`` as an int, or a one-line error saying what is expected."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"num_samples must be an int, got {num_samples!r}")
    if num_samples < minimum:
        raise ValueError(f"num_samples must be >= {minimum}, got {num_samples}")
    return num_samples


def draw_latents(
    family: VariationalFamily, num_samples: int, seed: int | None = DEFAULT_SEED
) -> tuple[Tensor, Tensor]:
    """``(z, log q(z))`` for :math:`S` = ``num_samples`` draws :math:`z_s \\sim q`: shapes
    ``(S, D)`` and ``(S,)``, without gradients.

    The one sampling path of the after-fit tools (see the module docstring).
    """
    check_num_samples(num_samples)
    with torch.no_grad(), seeded(seed, family):
        z, log_q = family.rsample_and_log_prob((num_samples,))
    if z.dim() != 2:
        raise ValueError(
            f"{type(family).__name__} drew z of shape {tuple(z.shape)}, not (num_samples, dim): "
            "a family conditioned on a context (amortized, one q per data point) has no single "
            "posterior over z to summarise"
        )
    return z.detach(), log_q.detach()


def constrained_draws(model: Model, z: Tensor, derived: bool = True) -> dict[str, Tensor]:
    """The constrained parameters :math:`\\theta = T(z)` and (``derived``) the model's derived
    quantities, each of shape ``z.shape[:-1] + shape``."""
    with torch.no_grad():
        params, _ = model.constrain(z)
        params = dict(params)
        if not derived:
            return params
        extra = model.derived(params)
    clash = sorted(set(extra) & set(params))
    if clash:
        raise ValueError(
            f"{type(model).__name__}.derived returns {clash}, which are parameter names; "
            "give derived quantities names of their own"
        )
    lead = z.shape[:-1]
    for name, value in extra.items():
        if not isinstance(value, Tensor) or tuple(value.shape[: len(lead)]) != tuple(lead):
            raise ValueError(
                f"{type(model).__name__}.derived()[{name!r}] must be a tensor with the draws' "
                f"leading shape {tuple(lead)}, got "
                f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}"
            )
    return {**params, **{k: v.detach() for k, v in extra.items()}}


def element_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """``["beta[0]", "beta[1]"]`` for a vector, ``["mu"]`` for a scalar, ``"W[0,1]"`` beyond."""
    if shape == ():
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in product(*(range(s) for s in shape))]


def flat_draws(draws: Mapping[str, Tensor], num_samples: int) -> tuple[list[str], Tensor]:
    """Every scalar of ``draws`` as a column: ``(names, float64 matrix (S, P))``."""
    names: list[str] = []
    columns = []
    for name, value in draws.items():
        names += element_names(name, tuple(value.shape[1:]))
        columns.append(value.reshape(num_samples, -1).double())
    return names, torch.cat(columns, -1)
