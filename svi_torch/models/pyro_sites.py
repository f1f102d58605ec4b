"""Site discovery for the Pyro bridge: the model's sites from shapes and supports, no prior draw.

:func:`discover_sites` runs a Pyro model once under Pyro's ``InitMessenger`` with
:func:`feasible_init`, which gives every latent site the point
:math:`\\theta_s = T_s(0)`, :math:`T_s =` ``biject_to(support)``: the image of the
unconstrained zero. Only the site's shape (``batch_shape + event_shape``) and support are
read, so improper priors (``dist.ImproperUniform``, Stan's flat priors) need no sampler. The
trace then says which sites are latent, observed, ``pyro.factor`` or ``pyro.deterministic``,
their shapes, plates and the batch dimensions the model uses.

:func:`with_fallback` wraps a user's Pyro ``init_loc_fn`` (``init_to_median``,
``init_to_value(values=...)``, ...) so that a site it cannot initialise (an improper prior
has no sampler) falls back to the feasible point, and every value comes in the model's
dtype and device.

:func:`tensor_dtype` and :func:`map_tensors` read and convert the floating tensors among a
model's arguments (nested tuples, lists and dicts).

Example:
    >>> import pyro, pyro.distributions as dist
    >>> def flat(y):
    ...     mu = pyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> sites, _ = discover_sites(flat, (torch.zeros(3),), {}, torch.float64, torch.device("cpu"))
    >>> sites.latent[0].name, sites.latent[0].shape
    ('mu', ())
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to, constraints
from torch.distributions.constraints import Constraint

__all__ = [
    "PARTICLE_PLATE",
    "LatentSite",
    "ObservedSite",
    "DerivedSite",
    "ModelSites",
    "PyroModelError",
    "discover_sites",
    "find_data_plate",
    "feasible_init",
    "with_fallback",
    "tensor_dtype",
    "map_tensors",
    "tensor_device",
    "is_deterministic",
    "is_factor",
    "model_error",
    "message",
]


#: The name of the bridge's particle plate.
PARTICLE_PLATE = "_svi_torch_particles"

Message = dict[str, Any]


class PyroModelError(ValueError):
    """The Pyro model raised, or cannot be fitted by the bridge; the message names the site."""


@dataclass(frozen=True)
class LatentSite:
    """A latent sample site: constrained shape, support, and how many dims are batch dims."""

    name: str
    shape: tuple[int, ...]
    support: Constraint
    batch_ndim: int
    plates: tuple[str, ...]


@dataclass(frozen=True)
class ObservedSite:
    """An observed sample site or a ``pyro.factor``, with the batch dims of its plates.

    ``points`` says where a site outside any data plate keeps independent points:
    ``"batch"`` (one batch dim, e.g. ``Normal(mu, s)`` with ``obs`` of shape ``(N,)``),
    ``"event"`` (no batch dim, one reinterpreted dim: ``Normal(mu, s).to_event(1)``) or
    ``None``.
    """

    name: str
    shape: tuple[int, ...]
    batch_ndim: int
    is_factor: bool
    plates: tuple[str, ...]
    plate_dims: Mapping[str, int]
    points: str | None


@dataclass(frozen=True)
class DerivedSite:
    """A ``pyro.deterministic`` site: its shape at discovery and its plates."""

    name: str
    shape: tuple[int, ...]
    plates: tuple[str, ...]


@dataclass(frozen=True)
class ModelSites:
    """Everything discovery learns about a model's sites, in the model's order."""

    latent: tuple[LatentSite, ...]
    observed: tuple[ObservedSite, ...]
    derived: tuple[DerivedSite, ...]
    plate_sizes: Mapping[str, int]
    plate_subsample_sizes: Mapping[str, int]
    max_plate_nesting: int
    observed_numel: int


def is_deterministic(site: Mapping[str, Any]) -> bool:
    """A ``pyro.deterministic`` site (a masked ``Delta``; no density)."""
    return bool(site["infer"].get("_deterministic"))


def is_factor(site: Mapping[str, Any]) -> bool:
    """A ``pyro.factor`` site (a ``Unit`` distribution whose log-density is the factor)."""
    return type(site["fn"]).__name__ == "Unit"


def check_latent_support(name: str, fn: Any) -> Any:
    """``biject_to(fn.support)``, or a :class:`PyroModelError` saying why the site cannot be fitted."""
    support = fn.support
    if constraints.is_dependent(support):
        raise PyroModelError(
            f"latent site {name!r} has a support ({support}) that depends on other values, "
            "which biject_to cannot map to the real line; give it a distribution with a "
            "fixed support (real, positive, an interval, simplex, ...)"
        )
    if getattr(fn, "has_enumerate_support", False) or support.is_discrete:
        raise PyroModelError(
            f"latent site {name!r} is discrete ({type(fn).__name__}, support {support}); the "
            "bridge fits continuous latents with reparameterized families: marginalise it out "
            "(sum over its values) or observe it"
        )
    try:
        return biject_to(support)
    except NotImplementedError:
        raise PyroModelError(
            f"latent site {name!r} has support {support}, which "
            "torch.distributions.biject_to cannot map to the real line; reparameterize it "
            "with a distribution whose support is real, positive, an interval, simplex, ..."
        ) from None


def feasible_init(
    dtype: torch.dtype, device: torch.device
) -> Callable[[Mapping[str, Any]], Tensor]:
    """An ``init_loc_fn`` giving each site :math:`T(0)`, from its shape and support alone.

    Unlike Pyro's ``init_to_feasible``, which draws a prior sample to learn the shape, this
    never samples, so improper priors are fine; the value is in ``dtype`` on ``device``.
    """

    def init(site: Mapping[str, Any]) -> Tensor:
        fn = site["fn"]
        transform = check_latent_support(site["name"], fn)
        shape = transform.inverse_shape(fn.batch_shape + fn.event_shape)
        return transform(torch.zeros(shape, dtype=dtype, device=device))

    return init


def with_fallback(
    init_loc_fn: Callable[[Mapping[str, Any]], Any], dtype: torch.dtype, device: torch.device
) -> Callable[[Mapping[str, Any]], Tensor]:
    """``init_loc_fn`` with the feasible point for sites it cannot initialise.

    Pyro's sampling strategies (``init_to_median``, ``init_to_sample``, ``init_to_uniform``)
    draw from the prior; an improper prior has no sampler and raises ``NotImplementedError``:
    such a site gets :math:`T(0)` instead. Values come in ``dtype`` on ``device`` and must
    have the site's shape.
    """
    feasible = feasible_init(dtype, device)

    def init(site: Mapping[str, Any]) -> Tensor:
        fallback = feasible(site)  # also checks the support
        try:
            value = init_loc_fn(site)
        except NotImplementedError:
            return fallback
        value = torch.as_tensor(value).detach().to(dtype=dtype, device=device)
        if value.shape != fallback.shape:
            raise PyroModelError(
                f"init_loc_fn gave site {site['name']!r} a value of shape {tuple(value.shape)}; "
                f"the site has shape {tuple(fallback.shape)}"
            )
        return value

    return init


def tensor_dtype(tree: Any) -> torch.dtype | None:
    """The promoted floating dtype of the tensors in ``tree`` (None if there are none)."""
    found: list[torch.dtype] = []
    map_tensors(lambda t: found.append(t.dtype) or t, tree)
    floating = [d for d in found if d.is_floating_point]
    if not floating:
        return None
    dtype = floating[0]
    for other in floating[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def tensor_device(tree: Any) -> torch.device | None:
    """The device of the first tensor in ``tree`` (None if there is none)."""
    found: list[torch.device] = []
    map_tensors(lambda t: found.append(t.device) or t, tree)
    return found[0] if found else None


def map_tensors(fn: Callable[[Any], Any], tree: Any, leaf: type = Tensor) -> Any:
    """``tree`` with ``fn`` applied to every ``leaf`` (a tensor) inside tuples, lists and dicts.

    Named tuples keep their type; other objects are left as they are.
    """
    if isinstance(tree, leaf):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_tensors(fn, v, leaf) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(map_tensors(fn, v, leaf) for v in tree)
    if isinstance(tree, dict):
        return type(tree)((k, map_tensors(fn, v, leaf)) for k, v in tree.items())
    return tree


def model_error(
    model_name: str, doing: str, err: BaseException, sites: Sequence[Message]
) -> PyroModelError:
    """The error for a model that raised: the model, what was done, the last site reached."""
    if isinstance(err, PyroModelError):
        return err
    reached = [
        m["name"]
        for m in sites
        if m.get("type", "sample") == "sample"
        and type(m.get("fn")).__name__ != "_Subsample"
        and m["name"] != PARTICLE_PLATE
    ]
    where = f"after site {reached[-1]!r}" if reached else "before its first sample site"
    return PyroModelError(
        f"the Pyro model {model_name!r} raised {type(err).__name__} while {doing} ({where}): "
        f"{message(err)}"
    )


def message(err: BaseException) -> str:
    """The error's own message, without the trace-shape table Pyro appends to it."""
    return str(err).split("\nTrace Shapes:")[0].strip()


def _points(fn: Any, batch_ndim: int) -> str | None:
    """Where an observed site keeps independent points (see :class:`ObservedSite`)."""
    if batch_ndim == 1:
        return "batch"
    if (
        batch_ndim == 0
        and isinstance(fn, torch.distributions.Independent)
        and fn.reinterpreted_batch_ndims == 1
        and len(fn.base_dist.batch_shape) == 1
        and fn.base_dist.event_shape == ()
    ):
        return "event"
    return None


def discover_sites(
    model_fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    model_name: str = "model",
) -> tuple[ModelSites, Any]:
    """Trace ``model_fn`` once with every latent site at its feasible point.

    Returns the sites and the Pyro trace (for the caller's checks).

    Raises:
        PyroModelError: naming an unfittable latent site, or the model's own error with
            the last site reached (chained as ``__cause__``).
    """
    init = InitMessenger(feasible_init(dtype, device))
    tracer = poutine.trace(poutine.seed(init(model_fn), rng_seed=seed))
    try:
        with pyro.validation_enabled(True):
            trace = tracer.get_trace(*args, **kwargs)
    except PyroModelError as err:
        raise PyroModelError(f"the Pyro model {model_name!r}: {err}") from None
    except Exception as err:
        reached = list(tracer.msngr.trace.nodes.values())
        doing = "running it once to find its sample sites"
        error = model_error(model_name, doing, err, reached)
        if "dtype" in str(err) or "Double" in str(err) or "Float" in str(err):
            error = PyroModelError(
                f"{error}. Discovery ran in {dtype}; if the model makes tensors of another "
                "dtype itself (e.g. from NumPy), pass dtype= or give it tensor arguments"
            )
        raise error from err
    latent, observed, derived = [], [], []
    plate_sizes: dict[str, int] = {}
    subsample_sizes: dict[str, int] = {}
    nesting = 0
    observed_numel = 0
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site_is_subsample(site):
            plate_sizes[name] = site["fn"].size
            subsample = site["fn"].subsample_size
            subsample_sizes[name] = site["fn"].size if subsample is None else subsample
            continue
        fn = site["fn"]
        frames = site["cond_indep_stack"]
        plates = tuple(f.name for f in frames)
        batch_ndim = len(getattr(fn, "batch_shape", ()))
        nesting = max(nesting, batch_ndim, *(-f.dim for f in frames if f.dim is not None))
        shape = tuple(site["value"].shape) if isinstance(site["value"], Tensor) else ()
        if is_deterministic(site):
            derived.append(DerivedSite(name, shape, plates))
        elif site["is_observed"]:
            dims = {f.name: f.dim for f in frames if f.dim is not None}
            observed.append(
                ObservedSite(
                    name, shape, batch_ndim, is_factor(site), plates, dims, _points(fn, batch_ndim)
                )
            )
            observed_numel += max(1, int(torch.Size(shape).numel()))
        else:
            latent.append(LatentSite(name, shape, fn.support, batch_ndim, plates))
    sites = ModelSites(
        tuple(latent),
        tuple(observed),
        tuple(derived),
        plate_sizes,
        subsample_sizes,
        nesting,
        observed_numel,
    )
    return sites, trace


def find_data_plate(sites: ModelSites) -> tuple[str | None, str]:
    """The plate over the data points, read off the sites: ``(name or None, why)``.

    A candidate holds at least one observed site (sample or ``pyro.factor``), no latent
    site (a latent per point is a local latent, not data: eight schools' ``theta``) and is
    not subsampled by the model itself. Of the candidates an observed site sits in, the
    outermost counts (``data`` in ``plate("data") > plate("features")``: a point is a row).
    The data plate is found when every observed site in some candidate points to the same
    one; ``why`` says what was found, or why none was (for messages).
    """
    latent_plates = {p for s in sites.latent for p in s.plates}
    candidates = {
        name
        for name, size in sites.plate_sizes.items()
        if name not in latent_plates and sites.plate_subsample_sizes[name] == size
    }
    outermost = {
        next(p for p in s.plates if p in candidates)
        for s in sites.observed
        if any(p in candidates for p in s.plates)
    }
    if len(outermost) == 1:
        (name,) = outermost
        return name, f"the plate of the observed sites, {sites.plate_sizes[name]} points"
    if outermost:
        return None, f"the observed sites lie in {len(outermost)} plates, {sorted(outermost)}"
    if not sites.observed:
        return None, "the model has no observed site"
    holding = sorted({p for s in sites.observed for p in s.plates})
    if not holding:
        return None, "no observed site lies inside a plate"
    local = [p for p in holding if p in latent_plates]
    why = [f"plate {p!r} holds latent sites too" for p in local]
    why += [f"plate {p!r} subsamples itself" for p in holding if p not in local]
    return None, "; ".join(why)
