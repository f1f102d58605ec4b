"""The Pyro bridge: fit a Pyro model (a function with ``pyro.sample`` sites) as a :class:`Model`.

:class:`PyroModel` traces the Pyro model once to find its latent sample sites, their
shapes and supports, and declares each as a parameter of the same name, mapped to the
real line with ``biject_to(site.support)``. The log joint then comes from Pyro's own trace
machinery: the model is conditioned on the constrained values :math:`\\theta = T(z)`
(``poutine.condition``), traced, and the scaled and masked site log-densities
(``Trace.compute_log_prob``) are summed,

.. math::

    \\log p(z, D) = \\sum_{s\\,\\text{latent}} \\log p(\\theta_s \\mid \\cdot)
        + \\sum_{s\\,\\text{observed}} c_s \\log p(x_s \\mid \\cdot)
        + \\log\\lvert\\det J_T(z)\\rvert,

where :math:`c_s` is the scale Pyro attaches to a site (e.g. :math:`N/B` inside a
subsampled plate, or a user's ``poutine.scale``).

**Minibatches.** Name the plate over the data points with ``data_plate=``. The bridge then
supplies that plate's subsample indices itself, from the batch that :func:`~svi_torch.fit`
draws (an :math:`O(B)` slice of a per-epoch permutation), instead of letting Pyro draw a
``randperm(N)`` every step. Inside the plate Pyro scales every site by :math:`N/B`; the
bridge rescales those sites to ``likelihood_scale`` (which the trainer sets to
:math:`N/B`, so in training the two agree and nothing is scaled twice). The model must
index its data with the plate's indices, the usual Pyro idiom::

    with pyro.plate("data", len(x)) as idx:
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=x[idx])

**Particles.** The :math:`K` particles of a step are evaluated in one trace under an extra
outermost ``pyro.plate`` of size :math:`K`, the same vectorisation Pyro's
``Trace_ELBO(vectorize_particles=True)`` uses; it requires the model to broadcast over
leading batch dimensions (write ``(X * beta).sum(-1)``, not ``X @ beta``). At construction
the bridge checks the vectorised log joint against a particle-by-particle loop; if the
model does not vectorise, it falls back to the loop with a warning
(``vectorize_particles=None``, the default), or raises (``True``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to, constraints

from ..data import Batch
from .base import LogJoint, Model

__all__ = ["PyroModel", "PyroModelError"]

_PARTICLE_PLATE = "_svi_torch_particles"


class PyroModelError(ValueError):
    """The Pyro model raised, or cannot be fitted by the bridge; the message names the site."""


@dataclass(frozen=True)
class _Site:
    """A latent sample site: its constrained shape and how many of its dims are batch dims."""

    name: str
    shape: tuple[int, ...]
    batch_ndim: int


@dataclass
class _Terms:
    """Per-particle sums of the traced log-densities, each of shape ``(K,)``."""

    latent: Tensor
    observed_in_plate: Tensor
    observed_other: Tensor


class PyroModel(Model):
    """A Pyro model function as an svi_torch :class:`Model`; parameters = latent sites.

    Args:
        model_fn: the Pyro model, a callable with ``pyro.sample`` statements; it is
            called as ``model_fn(*args, **kwargs)``.
        *args: positional arguments of ``model_fn`` (typically the data).
        data_plate: name of the ``pyro.plate`` over data points to subsample from the
            trainer's minibatches; ``None`` evaluates the whole model every step (no
            minibatching by the trainer; a plate with ``subsample_size`` is then
            subsampled by Pyro itself).
        observed: names of sites that must be observed; one whose ``obs`` is ``None``
            raises (a common slip: calling the model with ``y=None``).
        vectorize_particles: evaluate particles in one trace (``True``), in a Python
            loop (``False``), or check at construction and pick (``None``).
        seed: seed of the one tracing run that discovers the sites.
        **kwargs: keyword arguments of ``model_fn``.

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
        >>> model = PyroModel(normal_mean, torch.randn(1000), data_plate="data")
        >>> model.dim, model.num_data
        (1, 1000)
    """

    def __init__(
        self,
        model_fn: Callable[..., Any],
        *args: Any,
        data_plate: str | None = None,
        observed: Sequence[str] = (),
        vectorize_particles: bool | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not callable(model_fn):
            raise TypeError(
                f"model_fn must be a callable Pyro model, got {type(model_fn).__name__}"
            )
        if vectorize_particles not in (None, True, False):
            raise TypeError(
                f"vectorize_particles must be a bool or None, got {vectorize_particles!r}"
            )
        self.model_fn = model_fn
        self.model_args = args
        self.model_kwargs = kwargs
        self.data_plate = data_plate
        self.model_name = getattr(model_fn, "__qualname__", None) or type(model_fn).__name__
        self._sites: list[_Site] = []
        self._observed_names: list[str] = []
        self._max_plate_nesting = 0
        self._fixed_seed: int | None = None
        self._discover(seed, tuple(observed))
        if vectorize_particles is None:
            problem = self._vectorization_problem()
            self.vectorize_particles = problem is None
            if problem is not None:
                warnings.warn(
                    f"the Pyro model {self.model_name!r} does not vectorise over particles "
                    f"({problem}); evaluating particles one by one, which is slower. Write "
                    "the model to broadcast over leading batch dimensions (e.g. "
                    "(X * beta).sum(-1) instead of X @ beta), or pass "
                    "vectorize_particles=False to silence this",
                    stacklevel=2,
                )
        elif vectorize_particles:
            problem = self._vectorization_problem()
            if problem is not None:
                raise PyroModelError(
                    f"the Pyro model {self.model_name!r} does not vectorise over particles: "
                    f"{problem}. Make it broadcast over leading batch dimensions, or pass "
                    "vectorize_particles=False"
                )
            self.vectorize_particles = True
        else:
            self.vectorize_particles = False

    @property
    def max_plate_nesting(self) -> int:
        """Batch dimensions the model uses (plates and batched sites); particles go left of them."""
        return self._max_plate_nesting

    # -- discovery ---------------------------------------------------------------------
    def _discover(self, seed: int, observed: tuple[str, ...]) -> None:
        """Trace once to declare the latent sites and check the model can be fitted."""
        seeded = poutine.seed(self.model_fn, rng_seed=seed)
        trace = self._run_traced(seeded, "tracing it once to find its sample sites")
        plate_sizes: dict[str, int] = {}
        for name, site in trace.nodes.items():
            if site["type"] == "param":
                raise PyroModelError(
                    f"the Pyro model {self.model_name!r} has a pyro.param site {name!r}; the "
                    "bridge fits latent sample sites only: give it a prior with pyro.sample, "
                    "or pass it in as a fixed argument"
                )
            if site_is_subsample(site):
                plate_sizes[name] = site["fn"].size
                continue
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            nesting = len(getattr(fn, "batch_shape", ()))
            for frame in site["cond_indep_stack"]:
                if frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
            self._max_plate_nesting = max(self._max_plate_nesting, nesting)
            if site["is_observed"]:
                self._check_observed(name, site)
                self._observed_names.append(name)
            else:
                self._declare_latent(name, site, observed)
        missing = [n for n in observed if n not in trace.nodes]
        if missing:
            raise PyroModelError(
                f"site(s) {missing} were declared observed but the Pyro model "
                f"{self.model_name!r} has no such sample site; its sites are "
                f"{[s.name for s in self._sites] + self._observed_names}"
            )
        if not self._sites:
            raise PyroModelError(
                f"the Pyro model {self.model_name!r} has no latent sample site; there is "
                "nothing to fit"
            )
        if self.data_plate is not None:
            if self.data_plate not in plate_sizes:
                raise PyroModelError(
                    f"data_plate={self.data_plate!r}, but the Pyro model {self.model_name!r} "
                    f"has no plate of that name; its plates are {sorted(plate_sizes)}"
                )
            self.num_data = int(plate_sizes[self.data_plate])
            # The index buffer gives the trainer a data length and a device; batches are
            # slices of it, so a step costs O(B).
            self.register_buffer("_plate_index", torch.arange(self.num_data), persistent=False)

    def _check_observed(self, name: str, site: Mapping[str, Any]) -> None:
        value = site["value"]
        if site["infer"].get("_deterministic") or type(site["fn"]).__name__ == "Unit":
            return  # pyro.deterministic / pyro.factor: not data
        if isinstance(value, Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise PyroModelError(
                    f"observed site {name!r} of the Pyro model {self.model_name!r} has {bad} "
                    "NaN/Inf value(s): an observed value is missing. Remove or impute them "
                    "before fitting"
                )

    def _declare_latent(
        self, name: str, site: Mapping[str, Any], observed: tuple[str, ...]
    ) -> None:
        fn = site["fn"]
        if name in observed:
            raise PyroModelError(
                f"site {name!r} of the Pyro model {self.model_name!r} should be observed, "
                "but its obs is None: the observed value is missing. Pass the data for "
                f"{name!r} to the model"
            )
        if self.data_plate is not None and any(
            frame.name == self.data_plate for frame in site["cond_indep_stack"]
        ):
            raise PyroModelError(
                f"latent site {name!r} lies inside the data plate {self.data_plate!r}. If it "
                "is data, its observed value is missing: pass obs=. The bridge subsamples "
                "the data plate, so it fits global latent sites only; marginalise local "
                "latents out or leave data_plate=None"
            )
        support = fn.support
        if isinstance(support, constraints._Dependent):
            raise PyroModelError(
                f"latent site {name!r} of the Pyro model {self.model_name!r} has a support "
                f"({support}) that depends on other values, which biject_to cannot map to the "
                "real line; give it a distribution with a fixed support (real, positive, an "
                "interval, simplex, ...)"
            )
        if getattr(fn, "has_enumerate_support", False) or support.is_discrete:
            raise PyroModelError(
                f"latent site {name!r} of the Pyro model {self.model_name!r} is discrete "
                f"({type(fn).__name__}, support {support}); the bridge fits continuous "
                "latents with reparameterized families: marginalise it out (sum over its "
                "values) or observe it"
            )
        try:
            biject_to(support)
        except NotImplementedError:
            raise PyroModelError(
                f"latent site {name!r} of the Pyro model {self.model_name!r} has support "
                f"{support}, which torch.distributions.biject_to cannot map to the real "
                "line; reparameterize it with a distribution whose support is real, "
                "positive, an interval, simplex, ..."
            ) from None
        value = site["value"]
        shape = tuple(value.shape)
        self.add_param(name, shape, support)
        self._sites.append(_Site(name, shape, len(fn.batch_shape)))

    def _run_traced(self, fn: Callable[..., Any], doing: str) -> Any:
        """Trace ``fn``; a model error is re-raised naming the model and the last site."""
        tracer = poutine.trace(fn)
        try:
            tracer(*self.model_args, **self.model_kwargs)
        except PyroModelError:
            raise
        except Exception as err:
            reached = [
                n
                for n, s in tracer.msngr.trace.nodes.items()
                if s["type"] == "sample" and not site_is_subsample(s) and n != _PARTICLE_PLATE
            ]
            where = f"after site {reached[-1]!r}" if reached else "before its first sample site"
            raise PyroModelError(
                f"the Pyro model {self.model_name!r} raised {type(err).__name__} while "
                f"{doing} ({where}): {_message(err)}"
            ) from err
        return tracer.msngr.trace

    # -- evaluation ----------------------------------------------------------------------
    def _conditioned(
        self, values: dict[str, Tensor], indices: Tensor | None, particles: int | None
    ) -> Callable[..., Any]:
        data = dict(values)
        if indices is not None:
            assert self.data_plate is not None
            # Conditioning the plate's subsample site fixes its indices: Pyro then draws no
            # randperm and scales the plate's sites by N / len(indices).
            data[self.data_plate] = indices
        fn = self.model_fn
        if self._fixed_seed is not None:
            # Construction check only: the same random draws (e.g. a plate Pyro subsamples
            # itself) in the vectorised trace and in each traced particle of the loop.
            fn = poutine.seed(fn, rng_seed=self._fixed_seed)
        if particles is not None:
            fn = _in_particle_plate(fn, particles, -(self._max_plate_nesting + 1))
        return poutine.condition(fn, data=data)

    def _trace_terms(
        self, values: dict[str, Tensor], indices: Tensor | None, particles: int | None
    ) -> _Terms:
        # The discovery trace ran with Pyro's validation; in the hot loop it only costs time.
        with pyro.validation_enabled(False):
            trace = self._run_traced(
                self._conditioned(values, indices, particles), "evaluating its log joint"
            )
            self._check_structure(trace)
            try:
                trace.compute_log_prob(lambda _, site: not site_is_subsample(site))
            except Exception as err:
                raise PyroModelError(
                    f"the Pyro model {self.model_name!r} failed to evaluate a log-density: "
                    f"{_message(err)}"
                ) from err
        latent_names = self.param_specs
        num = 1 if particles is None else particles
        ref = next(iter(values.values()))
        latent = ref.new_zeros(num)
        in_plate = ref.new_zeros(num)
        other = ref.new_zeros(num)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or name == _PARTICLE_PLATE:
                continue
            per_particle = self._per_particle(name, site["log_prob"], particles)
            if name in latent_names:
                latent = latent + per_particle
            elif self.data_plate is not None and any(
                frame.name == self.data_plate for frame in site["cond_indep_stack"]
            ):
                in_plate = in_plate + per_particle
            else:
                other = other + per_particle
        return _Terms(latent, in_plate, other)

    def _per_particle(self, name: str, log_prob: Tensor, particles: int | None) -> Tensor:
        """Sum a site's log-density over everything but the particle dimension."""
        if particles is None:
            return log_prob.sum().reshape(1)
        rest = self._max_plate_nesting
        if log_prob.dim() <= rest:
            # The site does not vary across particles (no particle dimension).
            return log_prob.sum().expand(particles)
        lead = log_prob.shape[: log_prob.dim() - rest]
        if len(lead) != 1 or lead[0] not in (1, particles):
            raise PyroModelError(
                f"site {name!r} has log-density shape {tuple(log_prob.shape)} under "
                f"{particles} vectorised particles; expected ({particles}, ...) with "
                f"{rest} batch dims after the particle dim"
            )
        return log_prob.reshape(lead[0], -1).sum(-1).expand(particles)

    def _check_structure(self, trace: Any) -> None:
        """The latent sites must be the ones declared: no new, vanished or renamed sites."""
        names = {
            n
            for n, s in trace.nodes.items()
            if s["type"] == "sample"
            and not site_is_subsample(s)
            and n != _PARTICLE_PLATE
            and n not in self._observed_names
        }
        declared = set(self.param_specs)
        if names != declared:
            new, gone = sorted(names - declared), sorted(declared - names)
            raise PyroModelError(
                f"the Pyro model {self.model_name!r} changed its sample sites between runs "
                f"(new: {new}, missing: {gone}); the bridge needs a fixed set of latent "
                "sites (no stochastic control flow over which sites exist)"
            )

    def _terms(self, params: Mapping[str, Tensor], indices: Tensor | None) -> _Terms:
        """Traced log-density terms, each of shape = particle shape of ``params``."""
        first = self._sites[0]
        sample_shape = params[first.name].shape[: params[first.name].dim() - len(first.shape)]
        num = math.prod(sample_shape)
        if self.vectorize_particles:
            rest = self._max_plate_nesting
            values = {
                s.name: params[s.name].reshape((num,) + (1,) * (rest - s.batch_ndim) + s.shape)
                for s in self._sites
            }
            terms = self._trace_terms(values, indices, num)
        else:
            flat = {s.name: params[s.name].reshape((num,) + s.shape) for s in self._sites}
            parts = [
                self._trace_terms({k: v[i] for k, v in flat.items()}, indices, None)
                for i in range(num)
            ]
            terms = _Terms(
                *(torch.cat([getattr(p, f) for p in parts]) for f in _Terms.__dataclass_fields__)
            )
        return _Terms(
            *(getattr(terms, f).reshape(sample_shape) for f in _Terms.__dataclass_fields__)
        )

    def _indices(self, batch: Batch | None) -> Tensor | None:
        if self.data_plate is None:
            if batch:
                raise ValueError(
                    f"{type(self).__name__} was built without data_plate, so it takes no "
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
            raise ValueError(f"{type(self).__name__} without data_plate has no data to index")
        return {"subsample": self._plate_index[indices]}

    def log_joint(
        self, z: Tensor, batch: Batch | None = None, likelihood_scale: float | None = None
    ) -> LogJoint:
        """Terms of :math:`\\log p(z, D)` from one Pyro trace (particles vectorised).

        ``log_prior`` sums the latent sites, ``log_likelihood`` the observed ones: those
        in the data plate scaled by ``likelihood_scale`` (default :math:`N/B`), the others
        with Pyro's own scale.
        """
        params, log_det = self.constrain(z)
        indices = self._indices(batch)
        terms = self._terms(params, indices)
        log_lik = terms.observed_other
        if self.data_plate is not None:
            assert indices is not None
            pyro_scale = self.num_data / indices.shape[0]
            factor = 1.0 if likelihood_scale is None else likelihood_scale / pyro_scale
            log_lik = log_lik + terms.observed_in_plate * factor
        return LogJoint(log_likelihood=log_lik, log_prior=terms.latent, log_det_jacobian=log_det)

    def full_log_joint(self, z: Tensor) -> Tensor:
        """Exact full-data :math:`\\log p(z, D)`: one trace of the whole model, every site."""
        return self.log_joint(z, None, None).total

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        """Sum of the latent sites' log-densities (one trace over the full data)."""
        return self._terms(params, self._indices(None)).latent

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Unscaled :math:`\\sum_{i \\in \\text{batch}}` of the data plate's observed sites,
        plus the observed sites outside it."""
        indices = self._indices(batch if self.data_plate is not None else None)
        terms = self._terms(params, indices)
        if self.data_plate is None:
            return terms.observed_other
        assert indices is not None
        return terms.observed_other + terms.observed_in_plate * (indices.shape[0] / self.num_data)

    # -- construction check ----------------------------------------------------------------
    def _vectorization_problem(self) -> str | None:
        """Compare the vectorised log joint of 3 particles with a loop; describe a mismatch."""
        generator = torch.Generator().manual_seed(12345)
        z = 0.5 * torch.randn(3, self.dim, generator=generator)
        indices = None
        if self.data_plate is not None:
            indices = self._plate_index[: min(self.num_data, 64)]
        params, _ = self.constrain(z)
        saved = getattr(self, "vectorize_particles", None)
        self._fixed_seed = 0
        try:
            self.vectorize_particles = True
            try:
                with torch.no_grad():
                    vectorized = self._terms(params, indices)
            except PyroModelError as err:
                return f"the vectorised trace failed: {_first_line(err.__cause__ or err)}"
            self.vectorize_particles = False
            with torch.no_grad():
                looped = self._terms(params, indices)
        finally:
            self.vectorize_particles = saved
            self._fixed_seed = None
        for field in _Terms.__dataclass_fields__:
            a, b = getattr(vectorized, field), getattr(looped, field)
            if a.shape != b.shape or not torch.allclose(
                a, b, rtol=1e-4, atol=1e-4 * (1.0 + float(b.abs().max())), equal_nan=True
            ):
                return f"vectorised and per-particle log-densities differ: {a.tolist()} vs {b.tolist()}"
        return None

    def extra_repr(self) -> str:
        plate = f", data_plate={self.data_plate!r}" if self.data_plate else ""
        return (
            f"{self.model_name}{plate}, vectorized={self.vectorize_particles}, "
            + super().extra_repr()
        )


def _in_particle_plate(fn: Callable[..., Any], particles: int, dim: int) -> Callable[..., Any]:
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(_PARTICLE_PLATE, particles, dim=dim):
            return fn(*args, **kwargs)

    return vectorized


def _message(err: BaseException) -> str:
    """The error's own message, without the trace-shape table Pyro appends to it."""
    return str(err).split("\nTrace Shapes:")[0].strip()


def _first_line(err: BaseException) -> str:
    text = _message(err).splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
