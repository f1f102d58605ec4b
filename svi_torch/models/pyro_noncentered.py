"""Non-centring a Pyro model's hierarchical location-scale sites, the way a Stan user would.

A site :math:`\\theta \\sim \\mathcal N(\\mu, \\tau)` whose scale :math:`\\tau` is itself a
latent variable makes a funnel: as :math:`\\tau \\to 0` the posterior of :math:`\\theta`
narrows, and no Gaussian over :math:`(\\log\\tau, \\theta)` follows it. A Gaussian fitted by
minimising :math:`\\mathrm{KL}(q\\|p)` (reverse KL, mode-seeking) then misses the funnel's
neck and reports :math:`\\tau` far too narrow (centred eight schools: sd ratio 0.4 against
NUTS). The non-centred form draws :math:`\\tilde\\theta \\sim \\mathcal N(0, 1)` and sets
:math:`\\theta = \\mu + \\tau\\tilde\\theta`: the same posterior (the evidence :math:`p(D)` is
unchanged, so ELBOs of the two forms compare) on a geometry a Gaussian fits.

:func:`centred_sites` finds the sites to change: latent sites of a location-scale family
(Normal, Student-t, Cauchy, Laplace) whose scale depends on another latent site, outside
the data plate. It runs the model once at the feasible point with every latent value
tracking gradients and reads which scales do. :func:`noncentred` wraps the model with
Pyro's ``LocScaleReparam(centered=0)`` on them; the original sites become
``pyro.deterministic`` ones, so the fit still reports them under their own names.

Example:
    >>> import pyro, pyro.distributions as dist
    >>> def schools(y, sigma):
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    ...     tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    ...     with pyro.plate("schools", len(y)):
    ...         theta = pyro.sample("theta", dist.Normal(mu, tau))
    ...         pyro.sample("obs", dist.Normal(theta, sigma), obs=y)
    >>> centred_sites(schools, (torch.zeros(8), torch.ones(8)), {})
    ('theta',)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible
from pyro.infer.reparam import LocScaleReparam
from pyro.poutine.messenger import Messenger

__all__ = ["LOC_SCALE_FAMILIES", "centred_sites", "noncentred"]

#: Families ``LocScaleReparam`` non-centres: ``x = loc + scale * standard draw``.
LOC_SCALE_FAMILIES = (dist.Normal, dist.StudentT, dist.Cauchy, dist.Laplace)


def _base(fn: Any) -> Any:
    """The distribution under Pyro's wrappers (``to_event``, ``mask``, ``expand``)."""
    while isinstance(fn, dist.Independent | dist.MaskedDistribution | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn


def centred_sites(
    model_fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    data_plate: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[str, ...]:
    """Names of the latent location-scale sites whose scale depends on another latent site.

    Sites inside ``data_plate`` are left alone (the bridge fits global latents only), and
    so are sites already observed or deterministic. A model that cannot run at the
    feasible point (an improper or unusual site) has none. ``dtype``: the model's (the
    feasible values are made in it, so they meet the model's data).
    """
    dtype = dtype or torch.get_default_dtype()

    def tracking_feasible(site: Mapping[str, Any]) -> torch.Tensor:
        return init_to_feasible(site).detach().to(dtype).requires_grad_()

    try:
        with torch.enable_grad(), poutine.block():
            trace = poutine.trace(InitMessenger(tracking_feasible)(model_fn)).get_trace(
                *args, **kwargs
            )
    except Exception:  # noqa: BLE001 - a probe only: any failure means "nothing to change"
        return ()
    names = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site["infer"].get("_deterministic"):
            continue
        if data_plate is not None and any(f.name == data_plate for f in site["cond_indep_stack"]):
            continue
        base = _base(site["fn"])
        scale = getattr(base, "scale", None)
        depends = isinstance(scale, torch.Tensor) and scale.requires_grad
        if isinstance(base, LOC_SCALE_FAMILIES) and depends:
            names.append(name)
    return tuple(names)


class _MarkDeterministic(Messenger):
    """Marks the reparameterised sites as ``pyro.deterministic`` ones (runs after the reparam)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = frozenset(names)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] in self.names and msg["is_observed"]:
            msg["infer"] = {**msg["infer"], "_deterministic": True}


def noncentred(model_fn: Callable[..., Any], names: Sequence[str]) -> Callable[..., Any]:
    """``model_fn`` with the sites ``names`` non-centred (``<name>_decentered`` latent,
    ``<name>`` deterministic)."""
    config = {name: LocScaleReparam(centered=0.0) for name in names}

    def model(*args: Any, **kwargs: Any) -> Any:
        # The marker is entered first, so it sees each site after the reparam handler
        # (inner handlers process a site first).
        with _MarkDeterministic(names), poutine.reparam(config=config):
            return model_fn(*args, **kwargs)

    model.__qualname__ = f"noncentred({getattr(model_fn, '__qualname__', 'model')})"
    return model
