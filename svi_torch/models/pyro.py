"""The Pyro bridge: fit a Pyro model (a function with ``pyro.sample`` sites) as a :class:`Model`.

:class:`PyroModel` runs the Pyro model once with every latent site at a feasible point
(:func:`~svi_torch.models.pyro_sites.discover_sites`: :math:`T_s(0)` with
:math:`T_s =` ``biject_to(support)``, so flat and other improper priors need no sampler) to
find its latent sample sites, their shapes and supports, and declares each as a parameter
of the same name. The log joint then comes from Pyro's own densities: the model is replayed
at the constrained values :math:`\\theta = T(z)` (what ``poutine.condition`` does) and the
scaled and masked site log-densities are summed (what ``Trace.log_prob_sum`` does),

.. math::

    \\log p(z, D) = \\sum_{s\\,\\text{latent}} \\log p(\\theta_s \\mid \\cdot)
        + \\sum_{s\\,\\text{observed}} c_s\\, m_s \\log p(x_s \\mid \\cdot)
        + \\log\\lvert\\det J_T(z)\\rvert,

where :math:`c_s` is the scale Pyro attaches to a site (e.g. :math:`N/B` inside a
subsampled plate, or a user's ``poutine.scale``), :math:`m_s` its ``poutine.mask``;
``pyro.factor`` terms count as observed sites, ``pyro.deterministic`` sites add nothing.

**The data plate.** The plate over the data points is found from the sites: the plate the
observed sites (and ``pyro.factor`` terms) lie in, holding no latent site and not subsampled
by the model itself, the outermost where plates nest; found when exactly one such plate
holds them (:func:`~svi_torch.models.pyro_sites.find_data_plate`). Its size is
:math:`N`, ``num_data``. ``data_plate="name"`` names it instead, ``data_plate=None`` turns
discovery off (the model is then a density-only target, evaluated whole every step).

**Minibatches.** With a data plate the bridge supplies that plate's subsample indices itself, from the batch that :func:`~svi_torch.fit`
draws (an :math:`O(B)` slice of a per-epoch permutation), instead of letting Pyro draw a
``randperm(N)`` every step. Inside the plate Pyro scales every site by :math:`N/B`; the
bridge rescales those sites to ``likelihood_scale`` (which the trainer sets to
:math:`N/B`, so in training the two agree and nothing is scaled twice). The model must
index its data with the plate's indices, the usual Pyro idiom::

    with pyro.plate("data", len(x)) as idx:
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=x[idx])

A model that computes over all :math:`N` points outside the plate and uses them unindexed
inside it (``logits = X @ beta`` then ``obs=y``) cannot run on a subsample. Construction
runs the model once on a subsample of the plate; if that fails, the model is evaluated on
the full data every step (``supports_minibatches`` is False, ``fit`` takes full batches),
with one warning saying why and how to index the data. Slicing such a model's arrays for it
would save nothing: ``X @ beta`` over all rows is the cost minibatches avoid.

**Full-data passes.** :meth:`PyroModel.full_log_joint` (the MAP and Laplace starts, the
final ELBO, diagnostics) evaluates the data plate in chunks of indices
:math:`I_1, \\dots, I_C`: the latent sites and the sites outside the data plate are counted
once, the plate's sites summed over the chunks with Pyro's :math:`N/|I_c|` undone, so the
result equals ``Trace.log_prob_sum()`` of the conditioned model (plus the Jacobian) at
bounded memory. Without a data plate it is one run of the whole model.

**Particles.** The :math:`K` particles of a step are evaluated along the first path that
matches a particle-by-particle loop at construction (values and gradients): one run with
the particles as a leading batch dim, left of the model's plates, as in
``Trace_ELBO(vectorize_particles=True)`` (a model that broadcasts over leading batch
dimensions), else ``torch.func.vmap`` over the draws (a model written for one draw:
``X @ beta``, loops over time steps), else the loop itself, with a warning that says why
the first two failed (see :mod:`~svi_torch.models.pyro_replay`).

**Dtype and device** follow the model's arguments: the floating tensors among them (nested
tuples, lists and dicts too) give the dtype (or pass ``dtype=``, which converts them), and
they are kept as buffers, so ``model.to(device)`` and ``model.double()`` move them with the
model. Discovery values and every evaluation use that dtype.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible
from torch import Tensor, nn

from .. import compat
from ..data import Batch
from .base import LogJoint, Model
from .pyro_noncentered import centred_sites, noncentred
from .pyro_replay import (
    PATHS,
    ParticleRunner,
    Replay,
    event_point_log_prob,
    per_particle_value,
    per_point,
    site_log_prob,
    site_log_prob_sum,
)
from .pyro_sites import (
    PARTICLE_PLATE,
    Message,
    ModelSites,
    ObservedSite,
    PyroModelError,
    discover_sites,
    find_data_plate,
    map_tensors,
    message,
    tensor_device,
    tensor_dtype,
    with_fallback,
)

__all__ = ["PyroModel", "PyroModelError", "FIND_DATA_PLATE"]

# Site kinds, as indices into the (latent, observed in the data plate, other observed) sums.
_LATENT, _IN_PLATE, _OTHER, _DERIVED, _SKIP = range(5)
_TERMS = ("latent", "in_plate", "other")
# Elements of one full-data run, as in Model.full_data_chunk_rows.
_PASS_ELEMENTS = 1 << 22


class _Find(Enum):
    """``data_plate``'s default, distinct from ``None`` (which turns discovery off)."""

    DATA_PLATE = "find"

    def __repr__(self) -> str:
        return "FIND_DATA_PLATE"


#: ``PyroModel(data_plate=FIND_DATA_PLATE)``, the default: find the data plate from the sites.
FIND_DATA_PLATE = _Find.DATA_PLATE


class _Slot:
    """A placeholder for a model argument kept as the buffer ``name``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class PyroModel(Model):
    """A Pyro model function as an svi_torch :class:`Model`; parameters = latent sites.

    Args:
        model_fn: the Pyro model, a callable with ``pyro.sample`` statements; it is
            called as ``model_fn(*args, **kwargs)``.
        *args: positional arguments of ``model_fn`` (typically the data).
        data_plate: name of the ``pyro.plate`` over data points to subsample from the
            trainer's minibatches. Default :data:`FIND_DATA_PLATE`: the plate the observed
            sites lie in, where there is exactly one (see the module docstring);
            ``None`` turns that off and evaluates the whole model every step (no
            minibatching by the trainer; a plate with ``subsample_size`` is then
            subsampled by Pyro itself).
        observed: names of sites that must be observed; one whose ``obs`` is ``None``
            raises (a common slip: calling the model with ``y=None``).
        vectorize_particles: ``None`` (default) tries the particle plate, then
            ``torch.func.vmap``, then falls back to a loop with a warning; ``True`` raises
            instead of falling back; ``False`` loops; ``"plate"``, ``"vmap"`` or
            ``"loop"`` asks for that path (checked against the loop, raising if it fails).
        init_loc_fn: a Pyro initialisation strategy (``init_to_median``,
            ``init_to_value(values=...)``, ``init_to_mean``, ...) for :meth:`initial_point`,
            where the automatic method's MAP search starts. ``None`` or
            ``init_to_feasible``: the feasible point :math:`T(0)`. A site the strategy
            cannot initialise (an improper prior has no sampler) gets the feasible point.
        dtype: the floating dtype to compute in; the floating tensors among the arguments
            are converted to it. Default: theirs (promoted), else torch's default dtype.
        seed: seed of the discovery run and of ``init_loc_fn``.
        **kwargs: keyword arguments of ``model_fn``.

    Attributes:
        data_plate: the data plate's name (given or found), or ``None``.
        data_plate_found: whether the bridge found it (``data_plate`` was not given).
        data_plate_note: what discovery found, or why it found no data plate.
        supports_minibatches: False when the model cannot run on a subsample of its data
            plate (it computes over all points outside the plate): every evaluation then
            uses the full data.
        particle_path: ``"plate"``, ``"vmap"`` or ``"loop"``: how particles are evaluated.
        vectorize_particles: whether that path is vectorised (not ``"loop"``).
        derived_shapes: the ``pyro.deterministic`` sites outside the data plate that
            :meth:`derived` returns, name to shape (e.g. eight schools' ``theta``: ``(8,)``).
        observed_shapes: the observed sample sites (not factors) that :meth:`simulate`
            draws, name to shape at discovery (the data plate's dim is ``N`` there and
            ``B`` for a batch).

    Raises:
        PyroModelError: for a discrete latent site, a support ``biject_to`` cannot map,
            an observed value that is missing or not finite, a latent site inside the data
            plate, a ``pyro.param`` site, or a model that raises; the message names the
            site and the fix.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def normal_mean(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)) as idx:
        ...         pyro.sample("obs", dist.Normal(mu, 2.0), obs=x[idx])
        >>> model = PyroModel(normal_mean, torch.randn(1000))
        >>> model.data_plate, model.dim, model.num_data, model.particle_path
        ('data', 1, 1000, 'plate')
    """

    def __init__(
        self,
        model_fn: Callable[..., Any],
        *args: Any,
        data_plate: str | None | _Find = FIND_DATA_PLATE,
        observed: Sequence[str] = (),
        vectorize_particles: bool | str | None = None,
        init_loc_fn: Callable[..., Any] | None = None,
        dtype: torch.dtype | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not callable(model_fn):
            raise TypeError(
                f"model_fn must be a callable Pyro model, got {type(model_fn).__name__}"
            )
        if vectorize_particles not in (None, True, False, *PATHS):
            raise TypeError(
                "vectorize_particles must be None, a bool or one of "
                f"{PATHS}, got {vectorize_particles!r}"
            )
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if init_loc_fn is not None and not callable(init_loc_fn):
            raise TypeError(
                "init_loc_fn must be a Pyro init strategy (e.g. init_to_median), got "
                f"{type(init_loc_fn).__name__}"
            )
        if not (data_plate is None or data_plate is FIND_DATA_PLATE or isinstance(data_plate, str)):
            raise TypeError(
                "data_plate must be the name of the plate over the data points, None (no data "
                f"plate) or left out (found from the sites), got {data_plate!r}"
            )
        self.model_fn = model_fn
        # What rebuilds this model on another parameterisation (reparameterized()).
        self._options = {"observed": tuple(observed), "vectorize_particles": vectorize_particles}
        self.data_plate: str | None = data_plate if isinstance(data_plate, str) else None
        self.data_plate_found = False
        self.data_plate_note = "given" if self.data_plate else "data_plate=None"
        self._find_plate = data_plate is FIND_DATA_PLATE
        self.model_name = getattr(model_fn, "__qualname__", None) or type(model_fn).__name__
        self._keep_arguments(args, kwargs, dtype)
        sites = self._discover(seed, tuple(observed))
        self._sites = sites
        self._latent = sites.latent
        self._kinds = self._site_kinds(sites)
        self.derived_shapes = {
            d.name: d.shape for d in sites.derived if self.data_plate not in d.plates
        }
        self.observed_shapes = {o.name: o.shape for o in sites.observed if not o.is_factor}
        self._replay = Replay(self.data_plate)
        self._runner = ParticleRunner(
            self._call, self._replay, self._latent, sites.max_plate_nesting, self.model_name
        )
        self.particle_path = "loop"  # until the check below picks one
        self.supports_minibatches = self._check_subsample()
        self.particle_path = self._choose_path(vectorize_particles)
        self._init_point(init_loc_fn, seed)

    # -- arguments, dtype and device -----------------------------------------------------
    def _keep_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype | None
    ) -> None:
        """Keep the model's tensor arguments as buffers, so that ``.to()`` moves them."""
        tree = (tuple(args), dict(kwargs))
        if dtype is None:
            dtype = tensor_dtype(tree) or torch.get_default_dtype()
        device = tensor_device(tree) or torch.device("cpu")
        # The probe carries the model's dtype and device through .to() / .double().
        self.register_buffer("_dtype_probe", torch.zeros((), dtype=dtype, device=device), False)
        names: list[str] = []

        def keep(tensor: Tensor) -> Any:
            if isinstance(tensor, nn.Parameter) or tensor.requires_grad:
                return tensor  # a trainable input stays the caller's
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            name = f"_arg{len(names)}"
            self.register_buffer(name, tensor, persistent=False)
            names.append(name)
            return _Slot(name)

        self._arg_template = map_tensors(keep, tree)
        self._arg_names = tuple(names)
        self._arg_cache: tuple[tuple[int, ...], tuple[Any, ...], dict[str, Any]] | None = None

    @property
    def model_args(self) -> tuple[Any, ...]:
        """The model's positional arguments (on the model's device, in its dtype)."""
        return self._arguments()[0]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The model's keyword arguments."""
        return self._arguments()[1]

    def _arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        buffers = compat.module_buffers(self)
        key = tuple(id(buffers[n]) for n in self._arg_names)
        cache = self._arg_cache
        if cache is None or cache[0] != key:
            args, kwargs = map_tensors(lambda s: buffers[s.name], self._arg_template, _Slot)
            self._arg_cache = cache = (key, args, kwargs)
        return cache[1], cache[2]

    def _call(self) -> Any:
        args, kwargs = self._arguments()
        return self.model_fn(*args, **kwargs)

    def reparameterizable_sites(self) -> tuple[str, ...]:
        """The latent location-scale sites whose scale is another latent site (centred)."""
        args, kwargs = self._arguments()
        return centred_sites(self.model_fn, args, kwargs, self.data_plate, self.dtype)

    def reparameterized(self, sites: Sequence[str] | None = None) -> PyroModel | None:
        """This model with hierarchical location-scale sites non-centred, or ``None``.

        See :mod:`svi_torch.models.pyro_noncentered`: each of ``sites`` (default: every
        :meth:`reparameterizable_sites`) becomes a ``<name>_decentered`` latent, and
        ``<name>`` a deterministic site that :meth:`derived` reports, so draws keep the
        model's own names.
        """
        found = self.reparameterizable_sites()
        names = found if sites is None else tuple(s for s in sites if s in found)
        if not names:
            return None
        args, kwargs = self._arguments()
        return PyroModel(
            noncentred(self.model_fn, names),
            *args,
            data_plate=self.data_plate,
            dtype=self.dtype,
            **self._options,
            **kwargs,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype the model computes in (its arguments', or ``dtype=``)."""
        return self._dtype_probe.dtype

    @property
    def device(self) -> torch.device:
        """The device of the model's arguments."""
        return self._dtype_probe.device

    @property
    def max_plate_nesting(self) -> int:
        """Batch dimensions the model uses (plates and batched sites); particles go left of them."""
        return self._sites.max_plate_nesting

    # -- discovery ---------------------------------------------------------------------
    def _discover(self, seed: int, observed: tuple[str, ...]) -> ModelSites:
        """One run at the feasible point: declare the latent sites, check the model."""
        args, kwargs = self._arguments()
        sites, trace = discover_sites(
            self.model_fn, args, kwargs, self.dtype, self.device, seed, self.model_name
        )
        if self._find_plate:
            self.data_plate, self.data_plate_note = find_data_plate(sites)
            self.data_plate_found = self.data_plate is not None
        for name, site in trace.nodes.items():
            if site["type"] == "param":
                raise PyroModelError(
                    f"the Pyro model {self.model_name!r} has a pyro.param site {name!r}; the "
                    "bridge fits latent sample sites only: give it a prior with pyro.sample, "
                    "or pass it in as a fixed argument"
                )
        for site in sites.observed:
            value = trace.nodes[site.name]["value"]
            if not site.is_factor and isinstance(value, Tensor) and value.is_floating_point():
                bad = int((~torch.isfinite(value)).sum())
                if bad:
                    raise PyroModelError(
                        f"observed site {site.name!r} of the Pyro model {self.model_name!r} "
                        f"has {bad} NaN/Inf value(s): an observed value is missing. Remove or "
                        "impute them before fitting"
                    )
        for site in sites.latent:
            if site.name in observed:
                raise PyroModelError(
                    f"site {site.name!r} of the Pyro model {self.model_name!r} should be "
                    "observed, but its obs is None: the observed value is missing. Pass the "
                    f"data for {site.name!r} to the model"
                )
            if self.data_plate is not None and self.data_plate in site.plates:
                raise PyroModelError(
                    f"latent site {site.name!r} lies inside the data plate "
                    f"{self.data_plate!r}. If it is data, its observed value is missing: pass "
                    "obs=. The bridge subsamples the data plate, so it fits global latent "
                    "sites only; marginalise local latents out or leave data_plate=None"
                )
            self.add_param(site.name, site.shape, site.support)
        for plate, size in sites.plate_sizes.items():
            subsample = sites.plate_subsample_sizes[plate]
            if plate != self.data_plate and subsample < size:
                warnings.warn(
                    f"plate {plate!r} of the Pyro model {self.model_name!r} subsamples "
                    f"{subsample} of {size} by itself, so every evaluation, full-data passes "
                    "(MAP, Laplace, final ELBO) included, sees a random subsample: an "
                    "unbiased estimate, not the exact log joint. Drop subsample_size and pass "
                    f"data_plate={plate!r} to minibatch it exactly",
                    stacklevel=3,
                )
        known = [s.name for s in (*sites.latent, *sites.observed, *sites.derived)]
        missing = [n for n in observed if n not in known]
        if missing:
            raise PyroModelError(
                f"site(s) {missing} were declared observed but the Pyro model "
                f"{self.model_name!r} has no such sample site; its sites are {known}"
            )
        if not sites.latent:
            raise PyroModelError(
                f"the Pyro model {self.model_name!r} has no latent sample site; there is "
                "nothing to fit"
            )
        if self.data_plate is not None:
            if self.data_plate not in sites.plate_sizes:
                raise PyroModelError(
                    f"data_plate={self.data_plate!r}, but the Pyro model {self.model_name!r} "
                    f"has no plate of that name; its plates are {sorted(sites.plate_sizes)}"
                )
            if sites.plate_subsample_sizes[self.data_plate] != sites.plate_sizes[self.data_plate]:
                raise PyroModelError(
                    f"the data plate {self.data_plate!r} of the Pyro model "
                    f"{self.model_name!r} has subsample_size="
                    f"{sites.plate_subsample_sizes[self.data_plate]}; the bridge draws the "
                    "minibatches itself: declare the plate with its full size and no "
                    "subsample_size (and set batch_size in fit)"
                )
            self.num_data = int(sites.plate_sizes[self.data_plate])
            # The index buffer gives the trainer a data length and a device; batches are
            # slices of it, so a step costs O(B).
            self.register_buffer(
                "_plate_index", torch.arange(self.num_data, device=self.device), persistent=False
            )
        self._keep_observed(sites, trace)
        return sites

    def _keep_observed(self, sites: ModelSites, trace: Any) -> None:
        """Keep the observed sample sites' ``obs`` (buffers): what the predictive checks
        compare replicated data with."""
        names = []
        for site in sites.observed:
            value = trace.nodes[site.name]["value"]
            if site.is_factor or not isinstance(value, Tensor):
                continue
            buffer = f"_obs{len(names)}"
            self.register_buffer(buffer, value.detach(), persistent=False)
            names.append((site.name, buffer))
        self._observed_buffers = tuple(names)

    def _check_subsample(self) -> bool:
        """Whether the model runs on a subsample of its data plate; warns once if not.

        Discovery ran on the full data, so a failure on the same point with fewer indices
        comes from subsampling: the model computes over all points outside the plate.
        """
        num = self.num_data
        if self.data_plate is None or num < 3:
            return True  # with 2 points a batch of 1 would broadcast silently: not a check
        indices = self._plate_index[: min(num - 1, 64)]
        z = torch.zeros(1, self.dim, dtype=self.dtype, device=self.device)
        self._runner.seed = 0
        try:
            with torch.no_grad():
                self._terms(self.constrain(z)[0], indices, "loop")
        except Exception as err:  # the model's error, or a log-density of the wrong shape
            cause = err.__cause__ if isinstance(err, PyroModelError) else None
            why = _first_line(cause or err)
        else:
            return True
        finally:
            self._runner.seed = None
        plate = self.data_plate
        warnings.warn(
            f"the Pyro model {self.model_name!r} does not run on a subsample of its data "
            f"plate {plate!r} ({why}), so every step evaluates all {num} points, without "
            "minibatches: it uses arrays over all points inside the plate (X @ beta computed "
            "outside it, or obs=y not indexed). To minibatch, index the data by the plate's "
            f"indices: with pyro.plate({plate!r}, {num}) as idx: ... X[idx] ... obs=y[idx]",
            stacklevel=3,
        )
        return False

    def _site_kinds(self, sites: ModelSites) -> dict[str, int]:
        kinds = {s.name: _LATENT for s in sites.latent}
        for s in sites.observed:
            kinds[s.name] = _IN_PLATE if self.data_plate in s.plates else _OTHER
        kinds.update({s.name: _DERIVED for s in sites.derived})
        kinds.update({name: _SKIP for name in sites.plate_sizes})
        kinds[PARTICLE_PLATE] = _SKIP
        return kinds

    def _init_point(self, init_loc_fn: Callable[..., Any] | None, seed: int) -> None:
        """The unconstrained point of ``init_loc_fn`` (a buffer), or none for the default."""
        self._has_init_point = not (init_loc_fn is None or init_loc_fn is init_to_feasible)
        if not self._has_init_point:
            return
        assert init_loc_fn is not None
        init = InitMessenger(with_fallback(init_loc_fn, self.dtype, self.device))
        args, kwargs = self._arguments()
        try:
            with pyro.validation_enabled(False):
                trace = poutine.trace(poutine.seed(init(self.model_fn), rng_seed=seed)).get_trace(
                    *args, **kwargs
                )
        except PyroModelError as err:
            raise PyroModelError(f"the Pyro model {self.model_name!r}: {err}") from None
        except Exception as err:
            raise PyroModelError(
                f"init_loc_fn failed on the Pyro model {self.model_name!r}: "
                f"{type(err).__name__}: {message(err)}"
            ) from err
        values = {s.name: trace.nodes[s.name]["value"] for s in self._latent}
        point = self.unconstrain(values)
        bad = [
            spec.name
            for spec in self.param_specs.values()
            if not bool(torch.isfinite(point[spec.offset : spec.offset + spec.size]).all())
        ]
        if bad:
            raise PyroModelError(
                f"init_loc_fn gave site(s) {bad} of the Pyro model {self.model_name!r} a value "
                "outside the support; give values inside it"
            )
        self.register_buffer("_initial_point", point.detach(), persistent=False)

    def initial_point(self) -> Tensor | None:
        """The unconstrained point of ``init_loc_fn``, shape ``(D,)``; ``None`` for the default.

        ``None`` means the unconstrained zero, which is what ``init_to_feasible`` gives.
        """
        return self._initial_point if self._has_init_point else None

    # -- evaluation ----------------------------------------------------------------------
    def _flat_values(
        self, params: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], tuple[int, ...]]:
        """Latent values flattened to ``(num, *site shape)`` in the model's dtype."""
        first = self._latent[0]
        value = params[first.name]
        sample_shape = tuple(value.shape[: value.dim() - len(first.shape)])
        num = math.prod(sample_shape)
        dtype = self._dtype_probe.dtype
        flat = {}
        for site in self._latent:
            value = params[site.name]
            if value.dtype != dtype:
                value = value.to(dtype)
            flat[site.name] = (
                value if len(sample_shape) == 1 else value.reshape((num,) + site.shape)
            )
        return flat, sample_shape

    def _evaluate(
        self,
        values: Mapping[str, Tensor],
        indices: Tensor | None,
        collect: Callable[[Sequence[Message], int | None], dict[str, Tensor]],
        doing: str,
        path: str | None = None,
        resample: bool = False,
    ) -> dict[str, Tensor]:
        # Discovery ran with Pyro's validation; in the hot loop it only costs time.
        with pyro.validation_enabled(False):
            return self._runner.evaluate(
                path or self.particle_path, values, indices, collect, doing, resample
            )

    def _collect_terms(self, sites: Sequence[Message], particles: int | None) -> dict[str, Tensor]:
        """Per-particle sums of the latent, data-plate and other observed log-densities."""
        kinds = self._kinds
        nesting = self._sites.max_plate_nesting
        sums: list[Tensor | None] = [None, None, None]
        latent_seen = 0
        for msg in sites:
            kind = kinds.get(msg["name"], -1)
            if kind >= _DERIVED:
                continue
            if kind < 0:
                self._structure_error(sites)
            if kind == _LATENT:
                latent_seen += 1
            term = site_log_prob_sum(msg, particles, nesting)
            total = sums[kind]
            sums[kind] = term if total is None else total + term
        if latent_seen != len(self._latent):
            self._structure_error(sites)
        ref = sums[_LATENT]
        assert ref is not None
        return {
            name: ref.new_zeros(ref.shape) if value is None else value
            for name, value in zip(_TERMS, sums, strict=True)
        }

    def _structure_error(self, sites: Sequence[Message]) -> None:
        names = [m["name"] for m in sites if self._kinds.get(m["name"], -1) in (-1, _LATENT)]
        declared = [s.name for s in self._latent]
        new = sorted(set(names) - set(declared))
        gone = sorted(set(declared) - set(names))
        twice = sorted({n for n in names if names.count(n) > 1})
        raise PyroModelError(
            f"the Pyro model {self.model_name!r} changed its sample sites between runs "
            f"(new: {new}, missing: {gone}, repeated: {twice}); the bridge needs a fixed set of "
            "sample sites (no stochastic control flow over which sites exist)"
        )

    def _terms(
        self, params: Mapping[str, Tensor], indices: Tensor | None, path: str | None = None
    ) -> dict[str, Tensor]:
        """Log-density terms of one run over ``indices``, each of the particle shape."""
        values, sample_shape = self._flat_values(params)
        terms = self._evaluate(
            values, indices, self._collect_terms, "evaluating its log joint", path
        )
        if len(sample_shape) == 1:
            return terms
        return {k: v.reshape(sample_shape) for k, v in terms.items()}

    @property
    def _subsampled(self) -> bool:
        """Whether runs take subsample indices of the data plate (else the plate runs whole)."""
        return self.data_plate is not None and self.supports_minibatches

    def _one_point(self) -> Tensor | None:
        """Indices of a run whose data-plate sites are not needed (the prior, derived sites):
        one point, or the whole plate for a model that cannot subsample."""
        return self._plate_index[:1] if self._subsampled else None

    def _chunks(self, rows: int) -> Iterator[Tensor]:
        index = self._plate_index
        for start in range(0, self.num_data, rows):
            yield index[start : start + rows]

    def _full_terms(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unscaled full-data terms: the data plate in chunks, everything else counted once."""
        values, sample_shape = self._flat_values(params)
        num = next(iter(values.values())).shape[0]
        if not self._subsampled:
            # One run over everything; the data plate, if any, runs whole (scale 1).
            parts = [
                self._evaluate(part, None, self._collect_terms, "evaluating its log joint")
                for part in _split(values, self._particles_per_pass(num))
            ]
            terms = {k: torch.cat([p[k] for p in parts]) for k in _TERMS}
        else:
            terms = {}
            for chunk in self._chunks(self.full_data_chunk_rows(num)):
                part = self._evaluate(
                    values, chunk, self._collect_terms, "evaluating its log joint"
                )
                # Pyro scaled the plate's sites by N / |chunk|; the full data count them once.
                in_plate = part["in_plate"] * (chunk.shape[0] / self.num_data)
                if not terms:
                    terms = {**part, "in_plate": in_plate}
                else:
                    terms["in_plate"] = terms["in_plate"] + in_plate
        return {k: v.reshape(sample_shape) for k, v in terms.items()}

    def _particles_per_pass(self, num: int) -> int:
        """Particles per run of a model without a data plate: about 2^22 observed elements."""
        return max(1, min(num, _PASS_ELEMENTS // max(self._sites.observed_numel, 1)))

    def _indices(self, batch: Batch | None) -> Tensor | None:
        if self.data_plate is None:
            if batch:
                raise ValueError(
                    f"{type(self).__name__} has no data plate ({self.data_plate_note}), so it takes no "
                    "minibatches; pass batch=None"
                )
            return None
        if batch is None:
            return self._plate_index
        if "subsample" not in batch:
            raise ValueError(
                "a PyroModel batch holds the data plate's indices under 'subsample'; build "
                "it with model.index_data(indices)"
            )
        return batch["subsample"]

    # -- the Model interface -------------------------------------------------------------
    @property
    def data(self) -> Batch:
        """All indices of the data plate (the full data), or nothing without a data plate."""
        return {"subsample": self._plate_index} if self.data_plate is not None else {}

    def index_data(self, indices: Tensor) -> Batch:
        """The minibatch ``indices`` of the data plate, as Pyro subsample indices."""
        if self.data_plate is None:
            raise ValueError(
                f"{type(self).__name__} has no data plate ({self.data_plate_note}), so it has no "
                "data to index; pass data_plate='<name of the plate over the data points>'"
            )
        if indices.dim() == 1 and indices.dtype in (torch.int64, torch.int32):
            return {"subsample": self._plate_index.index_select(0, indices)}
        return {"subsample": self._plate_index[indices]}

    def log_joint(
        self, z: Tensor, batch: Batch | None = None, likelihood_scale: float | None = None
    ) -> LogJoint:
        """Terms of :math:`\\log p(z, D)` from the Pyro model (particles vectorised).

        ``log_prior`` sums the latent sites, ``log_likelihood`` the observed ones (and
        ``pyro.factor`` terms): those in the data plate scaled by ``likelihood_scale``
        (default :math:`N/B`), the others with Pyro's own scale. ``batch=None`` is the
        full data, evaluated in chunks of the data plate (see :meth:`full_log_joint`).
        """
        params, log_det = self.constrain(z)
        if batch is None or not self._subsampled:
            indices = self._indices(batch)  # no data plate: a batch is an error
            terms = self._full_terms(params)
            # The full data stand in for a batch of B points: its expected share B/N of
            # them, then the caller's N/B, so the estimate is exact.
            share = 1.0 if batch is None or indices is None else indices.shape[0] / self.num_data
            factor = 1.0 if likelihood_scale is None else likelihood_scale * share
        else:
            indices = self._indices(batch)
            assert indices is not None
            terms = self._terms(params, indices)
            pyro_scale = self.num_data / indices.shape[0]
            factor = 1.0 if likelihood_scale is None else likelihood_scale / pyro_scale
        log_lik = terms["other"]
        if self.data_plate is not None:
            log_lik = log_lik + terms["in_plate"] * factor
        return LogJoint(log_likelihood=log_lik, log_prior=terms["latent"], log_det_jacobian=log_det)

    def full_log_joint(self, z: Tensor) -> Tensor:
        """Exact full-data :math:`\\log p(z, D)`, Jacobian included, in bounded memory.

        .. math::

            \\log p(z, D) = \\sum_{s\\,\\notin\\,\\text{plate}} \\ell_s
                + \\sum_{c=1}^{C} \\frac{|I_c|}{N} \\sum_{s\\,\\in\\,\\text{plate}} \\ell_s(I_c)
                + \\log\\lvert\\det J_T(z)\\rvert,

        over chunks :math:`I_c` of the data plate's indices (:meth:`full_data_chunk_rows`
        rows each), where :math:`\\ell_s(I_c)` is site :math:`s`'s scaled, masked
        log-density in the run over :math:`I_c` (scaled by :math:`N/|I_c|` there). Equal to
        Pyro's ``Trace.log_prob_sum()`` of the model conditioned on :math:`T(z)`, plus the
        Jacobian. Without a data plate: one run per group of particles. ``z`` has shape
        ``S + (D,)``; returns shape ``S``.
        """
        return self.log_joint(z, None, None).total

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        """Sum of the latent sites' log-densities."""
        return self._terms(params, self._one_point())["latent"]

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Unscaled :math:`\\sum_{i \\in \\text{batch}}` of the data plate's observed sites,
        plus the observed sites outside it."""
        if not self._subsampled:
            indices = self._indices(batch)
            terms = self._full_terms(params)
            if indices is None:
                return terms["other"]
            # A model that cannot subsample: the batch's expected share B/N of the full data.
            return terms["other"] + terms["in_plate"] * (indices.shape[0] / self.num_data)
        indices = self._indices(batch)
        assert indices is not None
        terms = self._terms(params, indices)
        return terms["other"] + terms["in_plate"] * (indices.shape[0] / self.num_data)

    def derived(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The ``pyro.deterministic`` sites outside the data plate, per particle.

        Returns ``{name: tensor of shape S + shape}`` for each site of
        :attr:`derived_shapes` (e.g. eight schools' ``theta`` or a GP's latent ``f``),
        computed by the model itself from the constrained ``params``. Deterministic sites
        inside the data plate (one value per data point) are left out.
        """
        if not self.derived_shapes:
            return {}
        values, sample_shape = self._flat_values(params)
        shapes = self.derived_shapes
        indices = self._one_point()

        def collect(sites: Sequence[Message], particles: int | None) -> dict[str, Tensor]:
            return {
                m["name"]: per_particle_value(m["name"], m["value"], shapes[m["name"]], particles)
                for m in sites
                if m["name"] in shapes
            }

        num = next(iter(values.values())).shape[0]
        per_pass = _PASS_ELEMENTS // max(
            sum(math.prod(s) for s in shapes.values())
            + (0 if self._subsampled else self._sites.observed_numel),
            1,
        )
        parts = [
            self._evaluate(part, indices, collect, "computing its deterministic sites")
            for part in _split(values, max(1, min(num, per_pass)))
        ]
        return {
            name: torch.cat([p[name] for p in parts]).reshape(sample_shape + tuple(shape))
            for name, shape in shapes.items()
        }

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """Draw the observed sites afresh from the model at the latent values ``params``.

        The model is replayed with every latent site at its constrained value and each
        observed sample site (not ``pyro.factor``) drawn from its distribution instead of
        conditioned on the data, as ``poutine.uncondition`` does. Later sites see the draws
        where the model uses a site's return value, and the data where it reads them
        directly. Returns ``{site: tensor of shape S + site shape}`` keyed by site name;
        a data-plate model simulates the batch's indices (``None``: all ``N``).
        """
        indices = self._indices(batch)
        select = None
        if not self._subsampled and indices is not None:
            # A model that cannot subsample simulates everything; the batch is picked after.
            select, indices = (None if batch is None else indices), None
        values, sample_shape = self._flat_values(params)
        names = self.observed_shapes
        if not names:
            return {}

        def collect(sites: Sequence[Message], particles: int | None) -> dict[str, Tensor]:
            out = {}
            for m in sites:
                if m["name"] in names:
                    shape = tuple(torch.as_tensor(m["infer"]["obs"]).shape)
                    out[m["name"]] = per_particle_value(m["name"], m["value"], shape, particles)
            return out

        num = next(iter(values.values())).shape[0]
        parts = []
        for part in _split(values, self._particles_per_pass(num)):
            path = self.particle_path
            try:
                out = self._evaluate(part, indices, collect, "simulating", path, resample=True)
            except PyroModelError:
                if path != "vmap":
                    raise
                # Not every sampler has a vmap rule for independent draws: loop instead.
                out = self._evaluate(part, indices, collect, "simulating", "loop", resample=True)
            parts.append(out)
        drawn = {name: torch.cat([p[name] for p in parts]) for name in names}
        if select is not None:
            drawn = {name: self._select_points(name, v, select) for name, v in drawn.items()}
        return {name: v.reshape(sample_shape + tuple(v.shape[1:])) for name, v in drawn.items()}

    def _select_points(self, name: str, drawn: Tensor, indices: Tensor) -> Tensor:
        """The points ``indices`` of a site's draws ``(num, *site shape)`` along its data dim."""
        site = next(s for s in self._sites.observed if s.name == name)
        dim = site.plate_dims.get(self.data_plate) if self.data_plate else None
        if dim is None:
            return drawn  # outside the data plate: not per point
        return drawn.index_select(1 + site.batch_ndim + dim, indices)

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch | None) -> Tensor:
        """:math:`\\log p(x_i \\mid \\theta)` for each point of ``batch``: shape ``S + (B,)``.

        With a data plate, point :math:`i` is one index of that plate: the sum over its
        observed sites and ``pyro.factor`` terms (other plates nested in it summed; Pyro's
        :math:`N/B` undone, masks and ``poutine.scale`` kept). ``batch=None`` is all
        :math:`N` points. Summed over the points it equals :meth:`log_likelihood` of the
        data plate's sites.

        Without a data plate no per-point structure is declared, so one rule applies: the
        model must have exactly one observed sample site (``pyro.factor`` and
        ``pyro.deterministic`` sites are not data and are left out) with exactly one batch
        dimension, whose entries are the points; anything else raises. Pass
        ``data_plate=`` to say which plate holds the points.
        """
        values, sample_shape = self._flat_values(params)
        nesting = self._sites.max_plate_nesting
        select: Tensor | None = None
        if self.data_plate is None:
            self._indices(batch)
            site = self._pointwise_site()
            dims = {site.name: -1}
            by_event = site.points == "event"
            chunks: list[Tensor | None] = [None]
        else:
            dims = {
                s.name: s.plate_dims[self.data_plate]
                for s in self._sites.observed
                if self.data_plate in s.plates
            }
            by_event = False
            if not self.supports_minibatches:
                chunks = [None]  # one run over all points, the batch picked after
                select = None if batch is None else self._indices(batch)
            elif batch is None:
                chunks = list(self._chunks(self.full_data_chunk_rows(_values_num(values))))
            else:
                chunks = [self._indices(batch)]

        def collect(sites: Sequence[Message], particles: int | None) -> dict[str, Tensor]:
            total = None
            for m in sites:
                dim = dims.get(m["name"])
                if dim is None:
                    continue
                log_p = event_point_log_prob(m) if by_event else site_log_prob(m)
                term = per_point(m["name"], log_p, dim, particles, nesting)
                total = term if total is None else total + term
            assert total is not None
            return {"pointwise": total}

        pieces = []
        for chunk in chunks:
            point = self._evaluate(values, chunk, collect, "computing its pointwise log likelihood")
            scale = 1.0 if chunk is None else chunk.shape[0] / self.num_data
            pieces.append(point["pointwise"] * scale)
        out = torch.cat(pieces, -1)
        if select is not None:
            out = out.index_select(-1, select)
        return out.reshape(sample_shape + (out.shape[-1],))

    def _pointwise_site(self) -> ObservedSite:
        data = [s for s in self._sites.observed if not s.is_factor]
        if len(data) != 1 or data[0].points is None:
            found = {s.name: s.shape for s in data}
            raise PyroModelError(
                f"the Pyro model {self.model_name!r} has no data plate ({self.data_plate_note}), "
                "so the bridge does not know which entries are data points; without one it "
                "needs exactly one "
                "observed site with one dimension of points (one batch dim, or a "
                "Normal(...).to_event(1)-style site over one dim), and the model has "
                f"{found or 'none'}. Pass data_plate='<plate over the data points>'"
            )
        return data[0]

    # -- choosing how particles are evaluated ---------------------------------------------
    def _choose_path(self, requested: bool | str | None) -> str:
        """The first vectorised path that matches the loop, or the loop (see the class doc)."""
        if requested is False or requested == "loop":
            return "loop"
        candidates = ("plate", "vmap") if requested in (None, True) else (str(requested),)
        reference = self._probe("loop")  # a model error here is the model's: it raises
        failures = []
        for path in candidates:
            problem = self._path_problem(path, reference)
            if problem is None:
                return path
            failures.append(f"{path}: {problem.rstrip('.')}")
        why = "; ".join(failures)
        if requested is None:
            warnings.warn(
                f"the Pyro model {self.model_name!r} does not vectorise over particles "
                f"({why}); evaluating particles one by one, which is slower. Remove "
                "data-dependent Python control flow (if/while on tensor values), or pass "
                "vectorize_particles=False to silence this",
                stacklevel=3,
            )
            return "loop"
        raise PyroModelError(
            f"the Pyro model {self.model_name!r} does not vectorise over particles: {why}. "
            "Make it broadcast over leading batch dimensions or remove data-dependent "
            "control flow, or pass vectorize_particles=False"
        )

    def _probe(self, path: str) -> tuple[dict[str, Tensor], Tensor]:
        """Log-density terms and the gradient of their sum at 3 fixed particles, by ``path``."""
        generator = torch.Generator().manual_seed(12345)
        z = 0.5 * torch.randn(3, self.dim, generator=generator)
        z = z.to(dtype=self.dtype, device=self.device).requires_grad_(True)
        indices = None
        if self._subsampled:
            indices = self._plate_index[: min(self.num_data, 64)]
        # The same random draws (e.g. a plate Pyro subsamples itself) along every path.
        self._runner.seed = 0
        try:
            params, _ = self.constrain(z)
            terms = self._terms(params, indices, path)
            (grad,) = torch.autograd.grad(sum(terms.values()).sum(), z, allow_unused=True)
        finally:
            self._runner.seed = None
        grad = torch.zeros_like(z) if grad is None else grad
        return {k: v.detach() for k, v in terms.items()}, grad

    def _path_problem(self, path: str, reference: tuple[dict[str, Tensor], Tensor]) -> str | None:
        """Why ``path`` does not reproduce the loop's ``reference`` (values, gradients), or None."""
        try:
            terms, grad = self._probe(path)
        except PyroModelError as err:
            return _first_line(err.__cause__ or err)
        except Exception as err:  # vmap's own errors, shape errors outside the model
            return _first_line(err)
        loop_terms, loop_grad = reference
        for name in _TERMS:
            if not _close(terms[name], loop_terms[name]):
                return (
                    f"its {name} log-densities differ from the loop's: "
                    f"{_rounded(terms[name])} vs {_rounded(loop_terms[name])}"
                )
        if not _close(grad, loop_grad):
            return "its gradients differ from the loop's"
        return None

    @property
    def vectorize_particles(self) -> bool:
        """Whether particles are evaluated vectorised (the plate or the vmap path)."""
        return self.particle_path != "loop"

    def observed_values(self) -> dict[str, Tensor]:
        """The observed sample sites' ``obs=`` arrays (not factors), keyed by site name:
        what :meth:`simulate` replicates, for the predictive checks and the export."""
        buffers = compat.module_buffers(self)
        return {name: buffers[buffer] for name, buffer in self._observed_buffers}

    @property
    def data_summary(self) -> str:
        """``num_data=N`` with the data plate, how it was chosen and whether it minibatches."""
        if self.data_plate is None:
            return f"num_data=0: no data plate ({self.data_plate_note})"
        how = "found" if self.data_plate_found else "given"
        full = "" if self.supports_minibatches else ", full data each step"
        return f"num_data={self.num_data} in plate {self.data_plate!r} ({how}{full})"

    @property
    def no_data_reason(self) -> str:
        return (
            f"a density-only target: no data plate, {self.data_plate_note}; pass "
            "data_plate='<name of the plate over the data points>'"
        )

    def extra_repr(self) -> str:
        plate = ""
        if self.data_plate:
            how = "found" if self.data_plate_found else "given"
            full = "" if self.supports_minibatches else ", full data"
            plate = f", data_plate={self.data_plate!r} ({how}{full})"
        return (
            f"{self.model_name}{plate}, particles={self.particle_path!r}, dtype={self.dtype}, "
            + super().extra_repr()
        )


def _values_num(values: Mapping[str, Tensor]) -> int:
    """The number of particles in flattened latent values."""
    return next(iter(values.values())).shape[0]


def _split(values: Mapping[str, Tensor], size: int) -> Iterator[dict[str, Tensor]]:
    """Flattened latent values in groups of at most ``size`` particles."""
    num = _values_num(values)
    if size >= num:
        yield dict(values)
        return
    for start in range(0, num, size):
        yield {k: v[start : start + size] for k, v in values.items()}


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal up to float32 rounding of a sum of many terms (NaN equal to NaN)."""
    if a.shape != b.shape:
        return False
    scale = 1.0 + float(b.abs().nan_to_num(0.0, 0.0, 0.0).max()) if b.numel() else 1.0
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale, equal_nan=True))


def _rounded(x: Tensor) -> list[float]:
    return [round(float(v), 4) for v in x.reshape(-1)]


def _first_line(err: BaseException) -> str:
    """``Type: first sentence`` of an error, for a one-line warning."""
    lines = message(err).splitlines()
    text = lines[0] if lines else ""
    if len(text) > 120 and ". " in text:
        text = text[: text.index(". ") + 1]
    return f"{type(err).__name__}: {text}"
