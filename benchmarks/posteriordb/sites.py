"""The latent sites of a suite's Pyro model, found without sampling from its priors.

The translations use flat priors (``ImproperUniform``), which have no ``sample``, so
Pyro's own initialisation (``init_to_uniform`` samples first to learn the shape) and a
plain ``poutine.trace`` both fail on them. :func:`init_to_unconstrained_uniform` is the
same strategy without the draw from the prior: it takes the site's shape from
``fn.shape()`` and draws :math:`u \\sim \\mathcal{U}(-r, r)` in the unconstrained space of
the support, returning :math:`T(u)` with :math:`T =` ``biject_to(support)`` (Stan's
default initialisation, :math:`r = 2`). :func:`latent_sites` traces the model once under
an initialisation strategy and lists each latent site's name, shape and support.

Example:
    >>> import pyro, pyro.distributions as dist
    >>> from torch.distributions import constraints
    >>> def model():
    ...     pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    >>> [(s.name, s.shape) for s in latent_sites(model, {})]
    [('sigma', ())]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.constraints import Constraint

__all__ = ["LatentSite", "init_to_unconstrained_uniform", "latent_sites", "trace_model"]


@dataclass(frozen=True)
class LatentSite:
    """A latent sample site: its name, constrained shape and support."""

    name: str
    shape: tuple[int, ...]
    support: Constraint


def init_to_unconstrained_uniform(
    site: Mapping[str, Any] | None = None, radius: float = 2.0
) -> Tensor | Callable[..., Tensor]:
    """:math:`T(u)`, :math:`u \\sim \\mathcal{U}(-r, r)` in the support's unconstrained space.

    Called without ``site``, returns the strategy with ``radius`` bound (Pyro's idiom).
    """
    if site is None:
        return functools.partial(init_to_unconstrained_uniform, radius=radius)
    fn = site["fn"]
    transform = biject_to(fn.support)
    shape = transform.inverse_shape(fn.shape())
    u = (2 * torch.rand(shape, dtype=torch.get_default_dtype()) - 1) * radius
    return transform(u)


def trace_model(
    model: Callable[..., Any],
    kwargs: Mapping[str, Any],
    init_fn: Callable[[Mapping[str, Any]], Tensor] = init_to_unconstrained_uniform,
) -> Any:
    """One Pyro trace of ``model(**kwargs)`` with every latent site set by ``init_fn``."""
    return poutine.trace(InitMessenger(init_fn)(model)).get_trace(**kwargs)


def latent_sites(
    model: Callable[..., Any],
    kwargs: Mapping[str, Any],
    init_fn: Callable[[Mapping[str, Any]], Tensor] = init_to_unconstrained_uniform,
) -> list[LatentSite]:
    """The latent sample sites of ``model(**kwargs)`` in the order the model reaches them."""
    trace = trace_model(model, kwargs, init_fn)
    return [
        LatentSite(name, tuple(site["value"].shape), site["fn"].support)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]
