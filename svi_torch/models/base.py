"""The :class:`Model` base class: named constrained parameters, a log prior and a likelihood.

A user declares each parameter with a shape and a support (a ``torch.distributions``
constraint) and writes :meth:`Model.log_prior` and :meth:`Model.log_likelihood`. The
framework maps an unconstrained vector :math:`z \\in \\mathbb{R}^D` to the constrained
parameters :math:`\\theta = T(z)` with :math:`T =` ``biject_to(support)``, and estimates the
log joint of the unconstrained density from a minibatch :math:`\\mathcal{B}` of size
:math:`B` out of :math:`N`:

.. math::

    \\log p(z, D) \\approx \\log p(\\theta) + \\log\\lvert \\det J_T(z) \\rvert
        + \\frac{N}{B} \\sum_{i \\in \\mathcal{B}} \\log p(x_i \\mid \\theta),

which is unbiased for the full-data log joint when the batch is drawn uniformly.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform, biject_to, constraints
from torch.distributions.constraints import Constraint
from torch.distributions.transforms import ComposeTransform, identity_transform

from .. import compat
from ..data import Batch, as_tensor, batch_length, validate_data

__all__ = ["Model", "ParamSpec", "LogJoint", "ConjugateModel"]

# Index dtypes that ``index_select`` takes: the samplers' row indices.
_ROW_INDEX_DTYPES = frozenset({torch.int64, torch.int32})


@dataclass(frozen=True)
class ParamSpec:
    """A declared model parameter: its constrained shape, support and place in :math:`z`."""

    name: str
    shape: tuple[int, ...]
    support: Constraint
    transform: Transform
    unconstrained_shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        """Number of unconstrained coordinates."""
        return math.prod(self.unconstrained_shape)

    @functools.cached_property
    def is_identity(self) -> bool:
        """Whether the support is the real line (no transform, no Jacobian)."""
        return _is_identity(self.transform)


@dataclass
class LogJoint:
    """The terms of the unconstrained log joint, each of shape = particle shape.

    ``log_likelihood`` is already scaled by :math:`N/B`.
    """

    log_likelihood: Tensor
    log_prior: Tensor
    log_det_jacobian: Tensor

    @property
    def total(self) -> Tensor:
        return self.log_likelihood + self.log_prior + self.log_det_jacobian


class Model(nn.Module):
    """Base class of Bayesian models :math:`p(\\theta)\\prod_i p(x_i \\mid \\theta)`.

    Subclasses call :meth:`add_param` and :meth:`set_data` in ``__init__`` and implement
    :meth:`log_prior` and :meth:`log_likelihood`. ``params`` maps names to constrained
    tensors with leading particle dimensions ``S``; both methods return shape ``S``.
    A model can hold ``nn.Parameter``s of its own (empirical Bayes, decoders); ``fit``
    optimises them together with the family.

    Example:
        >>> class Coin(Model):
        ...     def __init__(self, flips):
        ...         super().__init__()
        ...         self.add_param("p", support=constraints.unit_interval)
        ...         self.set_data(flips=flips)
        ...     def log_prior(self, params):
        ...         return torch.zeros_like(params["p"])  # flat prior on (0, 1)
        ...     def log_likelihood(self, params, batch):
        ...         p = params["p"].unsqueeze(-1)
        ...         x = batch["flips"]
        ...         return (x * p.log() + (1 - x) * (-p).log1p()).sum(-1)
    """

    #: Whether a batch costs :math:`O(B)`. A model that reads all its data on every call
    #: sets it False; ``fit`` then trains on full batches by default.
    supports_minibatches: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._param_specs: dict[str, ParamSpec] = {}
        self._data_names: list[str] = []
        self._dim = 0
        self._z_is_param: str | None = None
        self.num_data = 0

    # -- declaration ---------------------------------------------------------------
    def add_param(
        self,
        name: str,
        shape: tuple[int, ...] | int = (),
        support: Constraint = constraints.real,
    ) -> ParamSpec:
        """Declare a parameter ``name`` with constrained ``shape`` and ``support``."""
        if name in self._param_specs:
            raise ValueError(f"parameter {name!r} is declared twice")
        shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"parameter {name!r} has shape {shape}; sizes must be positive")
        if not isinstance(support, Constraint):
            raise TypeError(
                f"support of {name!r} must be a torch.distributions constraint, "
                f"got {type(support).__name__}"
            )
        if support.is_discrete:
            raise ValueError(
                f"parameter {name!r} has a discrete support ({support}); VI over "
                "reparameterized families needs continuous parameters: marginalise it out"
            )
        try:
            transform = biject_to(support)
        except NotImplementedError:
            raise ValueError(
                f"cannot map the support {support} of parameter {name!r} to the real line; "
                "use a support that torch.distributions.biject_to knows (real, positive, "
                "unit_interval, interval, greater_than, less_than, simplex, "
                "positive_definite, ...)"
            ) from None
        unconstrained_shape = tuple(transform.inverse_shape(torch.Size(shape)))
        spec = ParamSpec(name, shape, support, transform, unconstrained_shape, self._dim)
        self._param_specs[name] = spec
        self._dim += spec.size
        only = next(iter(self._param_specs.values()))
        # One real vector parameter (a GLM's coefficients): z *is* the parameter, and
        # ``constrain`` can skip slicing and reshaping on the hot path.
        self._z_is_param = (
            only.name
            if len(self._param_specs) == 1 and len(shape) == 1 and _is_identity(transform)
            else None
        )
        return spec

    def set_data(self, **arrays: object) -> None:
        """Store the data arrays (tensors, NumPy arrays) as buffers sharing a leading axis.

        NaN/Inf values, empty arrays, non-numeric arrays and mismatched lengths raise.
        """
        tensors = {name: as_tensor(value, name) for name, value in arrays.items()}
        self.num_data = validate_data(tensors)
        for name in self._data_names:
            delattr(self, name)
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)
        self._data_names = list(tensors)

    # -- structure -----------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension :math:`D` of the unconstrained vector :math:`z`."""
        return self._dim

    @property
    def param_specs(self) -> Mapping[str, ParamSpec]:
        return dict(self._param_specs)

    @property
    def data(self) -> Batch:
        """The full data set as a batch."""
        return {name: getattr(self, name) for name in self._data_names}

    def index_data(self, indices: Tensor) -> Batch:
        """The minibatch of rows ``indices``: one gather per data tensor, no collation.

        A 1-D integer ``indices`` (what the samplers draw) goes through
        ``index_select(0, ...)``, which copies whole rows; ``tensor[indices]`` takes the
        element-wise advanced-indexing kernel, 4-7x slower once the rows are scattered
        over data larger than the cache: 527-538 against 79-119 us for 1024 random rows
        of a 10^6 x 50 tensor, 126-130 against 27-30 us for 256 rows of 10^5 x 100 (one
        CPU thread, two runs of ``python benchmarks/step_overhead.py``). Any other index (a mask, a 2-D index)
        is applied as ``tensor[indices]``.
        """
        buffers = compat.module_buffers(self)  # not getattr: it costs more than the gather
        if (
            isinstance(indices, Tensor)
            and indices.dtype in _ROW_INDEX_DTYPES
            and indices.dim() == 1
        ):
            return {name: buffers[name].index_select(0, indices) for name in self._data_names}
        return {name: buffers[name][indices] for name in self._data_names}

    def flat_names(self) -> list[str]:
        """Names of every constrained scalar, e.g. ``["mu", "beta[0]", "beta[1]"]``."""
        names = []
        for spec in self._param_specs.values():
            if spec.shape == ():
                names.append(spec.name)
                continue
            for idx in itertools.product(*(range(s) for s in spec.shape)):
                names.append(f"{spec.name}[{','.join(map(str, idx))}]")
        return names

    # -- the maths -----------------------------------------------------------------
    def log_prior_from_z(self, z: Tensor) -> Tensor | None:
        """Optional fast path: :math:`\\log p(\\theta)` computed straight from the flat :math:`z`.

        ``None`` (the default) means ``log_prior(constrain(z)[0])``. A model whose prior is
        one formula over every coordinate (a network's i.i.d. Gaussian weights) overrides
        it, so that the prior costs a few tensor ops per step instead of a few per
        parameter. It must return the same value as :meth:`log_prior`; the Jacobian of the
        constraining transform is added separately either way.
        """
        return None

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        """:math:`\\log p(\\theta)`; shape = particle shape. Return zeros for a flat prior."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_prior")

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\sum_{i \\in \\text{batch}} \\log p(x_i \\mid \\theta)`; shape = particle shape."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_likelihood")

    def constrain(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Map :math:`z` (shape ``S + (D,)``) to constrained params and :math:`\\log|\\det J_T(z)|`."""
        if z.shape[-1] != self._dim:
            raise ValueError(
                f"z has last dimension {z.shape[-1]}, but {type(self).__name__} has "
                f"dim={self._dim}; build the family with model.dim"
            )
        sample_shape = z.shape[:-1]
        if self._z_is_param is not None:
            return {self._z_is_param: z}, z.new_zeros(sample_shape)
        params: dict[str, Tensor] = {}
        log_det = z.new_zeros(sample_shape)
        for spec in self._param_specs.values():
            u = z[..., spec.offset : spec.offset + spec.size].reshape(
                tuple(sample_shape) + spec.unconstrained_shape
            )
            if spec.is_identity:
                params[spec.name] = u
                continue
            theta = spec.transform(u)
            params[spec.name] = theta
            ldj = spec.transform.log_abs_det_jacobian(u, theta)
            log_det = log_det + ldj.reshape(tuple(sample_shape) + (-1,)).sum(-1)
        return params, log_det

    def unconstrain(self, params: Mapping[str, Tensor]) -> Tensor:
        """Inverse of :meth:`constrain`: constrained params to :math:`z`."""
        pieces = []
        for spec in self._param_specs.values():
            theta = params[spec.name]
            if not isinstance(theta, Tensor):
                theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
            u = spec.transform.inv(theta)
            sample_shape = u.shape[: u.dim() - len(spec.unconstrained_shape)]
            pieces.append(u.reshape(tuple(sample_shape) + (spec.size,)))
        return torch.cat(pieces, -1)

    def log_joint(
        self, z: Tensor, batch: Batch | None = None, likelihood_scale: float | None = None
    ) -> LogJoint:
        """Terms of :math:`\\log p(z, D)` estimated from ``batch`` (the full data if ``None``).

        The likelihood is scaled by ``likelihood_scale``, by default :math:`N/B`.
        """
        params, log_det = self.constrain(z)
        log_prior = self.log_prior_from_z(z)
        if batch is None:
            batch = self.data
        log_lik = self.log_likelihood(params, batch) if batch else z.new_zeros(z.shape[:-1])
        if likelihood_scale is None:
            likelihood_scale = self.num_data / batch_length(batch) if batch else 1.0
        return LogJoint(
            log_likelihood=log_lik * likelihood_scale,
            log_prior=self.log_prior(params) if log_prior is None else log_prior,
            log_det_jacobian=log_det,
        )

    # -- hooks for full-data passes and for what comes after the fit ----------------------
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype the model computes in: that of its data (default dtype without data).

        ``fit`` builds and moves the family to this dtype, so float64 data train in float64
        without the user converting anything.
        """
        buffer = next((b for b in self.buffers() if b.is_floating_point()), None)
        return buffer.dtype if buffer is not None else torch.get_default_dtype()

    def full_data_chunk_rows(self, num_points: int = 1) -> int:
        """Rows per chunk of a full-data pass over ``num_points`` particles.

        About :math:`2^{22}` elements per ``(particles, rows, D)`` block, so that a pass over
        :math:`N = 10^6` points fits in memory; at least 256 rows.
        """
        return max(256, (1 << 22) // max(self.dim * max(num_points, 1), 1))

    def full_log_joint(self, z: Tensor) -> Tensor:
        """Exact full-data :math:`\\log p(z, D)` (unconstrained, Jacobian included), unscaled.

        .. math::

            \\log p(z, D) = \\log p(T(z)) + \\log|\\det J_T(z)|
                + \\sum_{i=1}^{N} \\log p(x_i \\mid T(z)),

        with the likelihood summed over row chunks of :meth:`full_data_chunk_rows`, so the
        memory of one pass is bounded whatever :math:`N`. Every full-data computation (MAP
        search, Laplace, final ELBO, diagnostics, monitoring) goes through this method;
        models whose full-data density is not the sum over rows of the minibatch
        likelihood (the Pyro bridge) override it. ``z`` has shape ``S + (D,)``; returns
        shape ``S``.
        """
        params, log_det = self.constrain(z)
        log_prior = self.log_prior_from_z(z)
        total = (self.log_prior(params) if log_prior is None else log_prior) + log_det
        if self.num_data == 0:
            return total
        rows = self.full_data_chunk_rows(math.prod(z.shape[:-1]))
        data = self.data
        for start in range(0, self.num_data, rows):
            chunk = {k: v[start : start + rows] for k, v in data.items()}
            total = total + self.log_likelihood(params, chunk)
        return total

    def unconstrained_prior(self) -> Distribution | None:
        """The prior over the unconstrained :math:`z` as a distribution, or ``None`` (unknown).

        Where it is known (a Gaussian prior on real-valued parameters, whose transform is
        the identity), monitoring takes :math:`\\mathrm{KL}(q \\,\\|\\, p(z))` in closed form
        against it; ``None`` (the default) makes that KL a Monte Carlo estimate.
        """
        return None

    def reparameterizable_sites(self) -> tuple[str, ...]:
        """Parameters :meth:`reparameterized` can change (default: none)."""
        return ()

    def reparameterized(self, sites: Sequence[str] | None = None) -> Model | None:
        """The same posterior on a better-conditioned parameterisation, or ``None`` (none known).

        What the automatic method fits instead when the fit on this parameterisation is
        doubtful. ``sites`` (default: every one of :meth:`reparameterizable_sites`) says which
        parameters to change. The model returned must have the same evidence :math:`p(D)` (a
        change of variables with its Jacobian), so that ELBOs compare, and report this
        model's quantities (e.g. as :meth:`derived` ones). The Pyro bridge non-centres
        hierarchical location-scale sites.
        """
        return None

    def initial_point(self) -> Tensor | None:
        """A feasible start in the unconstrained space, shape ``(D,)``, or ``None`` (zero).

        Where the MAP search of the automatic method starts first, before its dispersed
        restarts. The Pyro bridge returns the point of its ``init_loc_fn``.
        """
        return None

    def derived(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Derived quantities (Stan's generated quantities) of constrained ``params``.

        Named tensors with the particle shape of ``params`` in front, e.g. eight schools'
        school effects :math:`\\theta_j = \\mu + \\tau\\tilde\\theta_j`. They are returned by
        ``FitResult.sample()`` beside the parameters and enter the summaries and the export.
        The default is none.
        """
        return {}

    def simulate(
        self, params: Mapping[str, Tensor], batch: Batch | None = None
    ) -> dict[str, Tensor]:
        """Draw data from the likelihood :math:`x \\sim p(x \\mid \\theta)`: its sampling counterpart.

        ``params`` are constrained with particle shape ``S`` in front; ``batch`` holds the
        inputs to simulate at (``None``: the fitted data). Returns named tensors of shape
        ``S + (B, ...)``, keyed like the observed arrays (e.g. ``{"y": ...}``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement simulate(params, batch), so it has no "
            "posterior predictive; add the likelihood's sampling counterpart to the model"
        )

    def pointwise_log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """:math:`\\log p(x_i \\mid \\theta)` for each point of ``batch``: shape ``S + (B,)``.

        Summed over the batch it equals :meth:`log_likelihood`; LOO and WAIC need it per point.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement pointwise_log_likelihood(params, batch), "
            "so it has no per-point log likelihood (needed for LOO/WAIC)"
        )

    def observed_values(self) -> dict[str, Tensor]:
        """The observed arrays, keyed like :meth:`simulate`'s draws (for checks and export).

        The default is the model's data arrays; a model whose observations are not among
        them (a Pyro model's ``obs=``) gives its own.
        """
        return dict(self.data)

    @property
    def data_summary(self) -> str:
        """The data in a few words, for printouts: ``num_data=N`` and what they are."""
        return f"num_data={self.num_data}"

    @property
    def no_data_reason(self) -> str:
        """Why the model has no data points, with the fix where there is one (for errors)."""
        return "a density-only target"

    def extra_repr(self) -> str:
        specs = ", ".join(
            f"{s.name}{list(s.shape)}:{s.support}" for s in self._param_specs.values()
        )
        return f"dim={self._dim}, num_data={self.num_data}, params=({specs})"


class ConjugateModel(Model):
    """A model whose posterior over :math:`z` and evidence :math:`p(D)` are known exactly."""

    def exact_posterior(self) -> Distribution:
        """:math:`p(z \\mid D)` as a distribution with event shape ``(dim,)``."""
        raise NotImplementedError

    def log_evidence(self) -> Tensor:
        """:math:`\\log p(D) = \\log \\int p(D \\mid \\theta) p(\\theta)\\, d\\theta`."""
        raise NotImplementedError


def _is_identity(transform: Transform) -> bool:
    return transform == identity_transform or (
        isinstance(transform, ComposeTransform) and not transform.parts
    )
