"""Replaying a Pyro model at given latent values, for K particles at once.

:class:`Replay` is one reusable Pyro messenger, the outermost handler of every evaluation:
it sets each latent site to the given constrained value (what ``poutine.condition`` does),
hands the data plate its subsample indices, optionally lets observed sites be resampled
(what ``poutine.uncondition`` does), and records every sample site's message. The
log-density of a recorded site is Pyro's own, as ``Trace.compute_log_prob`` computes it,

.. math::

    \\ell_s = c_s\\, m_s \\log p_s(x_s \\mid \\cdot),

with the scale :math:`c_s` (plates' :math:`N/B`, ``poutine.scale``) and mask :math:`m_s`
(``poutine.mask``) Pyro attached; so :math:`\\sum_s \\ell_s` is ``Trace.log_prob_sum()``.
Building no ``Trace`` and no new handler per call keeps the per-step cost near that of
the model's own tensor operations.

:class:`ParticleRunner` evaluates the :math:`K` particles of a step along one of three
paths, each giving the same per-particle results:

* ``"plate"``: one run with the particles as a leading batch dim, left of the model's
  plates (the layout of ``Trace_ELBO(vectorize_particles=True)``); the model must
  broadcast over leading batch dimensions. Densities need nothing more: the latent values
  carry the particle dim and Pyro's distributions broadcast it (an extra outermost
  ``pyro.plate`` would only expand every site's distribution, at a cost per site).
  Drawing observed sites afresh runs inside that ``pyro.plate`` of size :math:`K`, so each
  particle gets its own draws;
* ``"vmap"``: ``torch.func.vmap`` over the particles of a model written for one draw
  (``X @ beta``, Python loops over time steps); data-dependent Python control flow does not
  vmap;
* ``"loop"``: one run per particle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from torch import Tensor

from .pyro_sites import PARTICLE_PLATE, LatentSite, Message, PyroModelError, model_error

__all__ = [
    "Replay",
    "ParticleRunner",
    "PATHS",
    "site_log_prob",
    "site_log_prob_sum",
    "per_particle_sum",
    "per_particle_value",
    "per_point",
    "event_point_log_prob",
]

PATHS = ("plate", "vmap", "loop")
Collect = Callable[[Sequence[Message], "int | None"], dict[str, Tensor]]


class Replay(Messenger):
    """Sets latent values and the data plate's indices; records every sample site.

    Attributes (set before each run): ``values`` (site name to constrained value),
    ``indices`` (the data plate's subsample, or ``None`` to let the plate run in full),
    ``resample`` (observed sites other than factors and deterministic sites are drawn
    afresh, their observed value kept in ``msg["infer"]["obs"]``). ``sites`` holds the
    recorded messages of the last run, in order.
    """

    def __init__(self, data_plate: str | None) -> None:
        super().__init__()
        self.data_plate = data_plate
        self.values: Mapping[str, Tensor] = {}
        self.indices: Tensor | None = None
        self.resample = False
        self.sites: list[Message] = []

    def _pyro_sample(self, msg: Message) -> None:
        name = msg["name"]
        value = self.values.get(name)
        if value is not None:
            msg["value"] = value
            msg["is_observed"] = True
        elif name == self.data_plate and self.indices is not None:
            # Conditioning the plate's subsample site fixes its indices: Pyro then draws no
            # randperm and scales the plate's sites by N / len(indices).
            msg["value"] = self.indices
            msg["is_observed"] = True
        elif (
            self.resample
            and msg["is_observed"]
            and not msg["infer"].get("_deterministic")
            and type(msg["fn"]).__name__ != "Unit"
        ):
            msg["infer"] = {**msg["infer"], "obs": msg["value"]}
            msg["value"] = None
            msg["is_observed"] = False

    def _pyro_post_sample(self, msg: Message) -> None:
        self.sites.append(msg)


def site_log_prob(msg: Message) -> Tensor:
    """The scaled and masked log-density of a recorded site (``Trace.compute_log_prob``)."""
    log_p = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
    return scale_and_mask(log_p, msg["scale"], msg["mask"])


def site_log_prob_sum(msg: Message, particles: int | None, nesting: int) -> Tensor:
    """A site's scaled, masked log-density summed per particle: ``(K,)``, or ``()`` per draw.

    The same number as ``site_log_prob(msg)`` summed, but a scalar scale multiplies the
    sum, not every element (one multiply per particle instead of per data point).
    """
    scale, mask = msg["scale"], msg["mask"]
    if mask is False:
        log_p = site_log_prob(msg)
        return per_particle_sum(msg["name"], log_p, particles, nesting)
    log_p = msg["fn"].log_prob(msg["value"], *msg["args"], **msg["kwargs"])
    if not isinstance(log_p, Tensor):
        log_p = torch.as_tensor(log_p)
    scalar_scale = not isinstance(scale, Tensor) or scale.numel() == 1
    if not scalar_scale:
        log_p = log_p * scale
    if mask is not None and mask is not True:
        log_p = torch.where(mask, log_p, log_p.new_zeros(()))
    total = per_particle_sum(msg["name"], log_p, particles, nesting)
    if scalar_scale and not (isinstance(scale, int | float) and scale == 1):
        total = total * scale
    return total


def per_particle_sum(name: str, log_p: Tensor, particles: int | None, nesting: int) -> Tensor:
    """A site's log-density summed over everything but the particle dim: ``(K,)`` or ``()``.

    Under the particle plate a site has at most ``nesting + 1`` batch dims, the leftmost
    of size :math:`K` (or 1, or absent, where it does not vary across particles).
    """
    if not isinstance(log_p, Tensor):
        log_p = torch.as_tensor(log_p)
    if particles is None:
        return log_p.sum()
    ndim = log_p.dim()
    if ndim <= nesting:
        return log_p.sum().expand(particles)
    lead = log_p.shape[0]
    if ndim > nesting + 1 or lead not in (1, particles):
        raise PyroModelError(
            f"site {name!r} has log-density shape {tuple(log_p.shape)} under {particles} "
            f"vectorised particles; expected ({particles}, ...) with {nesting} batch dims "
            "after the particle dim"
        )
    total = log_p.sum(tuple(range(1, ndim))) if ndim > 1 else log_p
    return total if lead == particles else total.expand(particles)


def event_point_log_prob(msg: Message) -> Tensor:
    """Per-entry log-densities of an ``Independent`` site over one reinterpreted dim.

    ``Normal(mu, s).to_event(1)`` sums its entries; its base distribution gives them one
    by one, with the site's scale and mask (which live on the batch dims) broadcast over
    the entries.
    """
    fn = msg["fn"]
    if not isinstance(fn, torch.distributions.Independent) or fn.reinterpreted_batch_ndims != 1:
        raise PyroModelError(
            f"site {msg['name']!r} was an Independent distribution over one dim at discovery "
            f"and is now {type(fn).__name__}; the per-point log likelihood needs the same "
            "distribution every run"
        )
    log_p = fn.base_dist.log_prob(msg["value"])
    scale, mask = msg["scale"], msg["mask"]
    if isinstance(scale, Tensor):
        scale = scale.unsqueeze(-1)
    if isinstance(mask, Tensor):
        mask = mask.unsqueeze(-1)
    return scale_and_mask(log_p, scale, mask)


def per_point(name: str, log_p: Tensor, dim: int, particles: int | None, nesting: int) -> Tensor:
    """A site's log-density per point of the batch dim ``dim`` (negative): ``(K, B)`` or ``(B,)``.

    Every other batch dim (another plate, a batched site) is summed.
    """
    if log_p.dim() < -dim:
        raise PyroModelError(
            f"site {name!r} has log-density shape {tuple(log_p.shape)}, without the batch "
            f"dim {dim} of its data points"
        )
    log_p = log_p.movedim(dim, -1)
    points = log_p.shape[-1]
    if particles is None:
        return log_p.reshape(-1, points).sum(0)
    if log_p.dim() <= nesting:
        return log_p.reshape(-1, points).sum(0).expand(particles, points)
    lead = log_p.shape[0]
    return log_p.reshape(lead, -1, points).sum(1).expand(particles, points)


def per_particle_value(
    name: str, value: Tensor, shape: Sequence[int], particles: int | None
) -> Tensor:
    """A site's value with the particle dim in front: ``(K, *shape)``, or ``shape`` per draw.

    Under the particle plate a value carries the particle dim and singleton batch dims
    (padding to the plate's position) in front of ``shape``; a value that does not vary
    across particles is expanded.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    if particles is None:
        if value.numel() == size:
            return value.reshape(shape)
        return value.expand(shape)
    if value.numel() == particles * size:
        return value.reshape((particles,) + shape)
    if value.numel() == size:
        return value.reshape(shape).expand((particles,) + shape)
    raise PyroModelError(
        f"site {name!r} has shape {tuple(value.shape)} under {particles} vectorised "
        f"particles; expected {particles} values of shape {shape}"
    )


class ParticleRunner:
    """Runs a Pyro model at the latent values of ``num`` particles along a chosen path.

    Args:
        call: calls the model with its arguments.
        replay: the :class:`Replay` messenger (outermost handler).
        latent: the latent sites (shapes and batch dims, to place the particle dim).
        nesting: the model's ``max_plate_nesting``; the particle plate goes left of it.
        model_name: for error messages.
    """

    def __init__(
        self,
        call: Callable[[], Any],
        replay: Replay,
        latent: Sequence[LatentSite],
        nesting: int,
        model_name: str,
    ) -> None:
        self.call = call
        self.replay = replay
        self.latent = tuple(latent)
        self.nesting = nesting
        self.model_name = model_name
        self.seed: int | None = None
        self._plates: dict[tuple[int, torch.device], Any] = {}

    def run(
        self,
        values: Mapping[str, Tensor],
        indices: Tensor | None,
        particles: int | None,
        doing: str,
        resample: bool = False,
    ) -> list[Message]:
        """One model run at ``values``; returns the recorded sample sites."""
        replay = self.replay
        replay.values, replay.indices, replay.resample = values, indices, resample
        replay.sites = sites = []
        call = self.call
        if self.seed is not None:
            # Construction checks only: the same random draws (e.g. a plate Pyro subsamples
            # itself) in every path.
            call = poutine.seed(call, rng_seed=self.seed)
        try:
            with replay:
                if particles is None or not resample:
                    call()
                else:
                    with self._particle_plate(particles, next(iter(values.values())).device):
                        call()
        except Exception as err:
            raise model_error(self.model_name, doing, err, sites) from err
        finally:
            replay.values, replay.indices = {}, None
        return sites

    def _particle_plate(self, particles: int, device: torch.device) -> Any:
        key = (particles, device)
        plate = self._plates.get(key)
        if plate is None:
            if len(self._plates) > 16:
                self._plates.clear()
            plate = pyro.plate(PARTICLE_PLATE, particles, dim=-(self.nesting + 1), device=device)
            self._plates[key] = plate
        return plate

    def evaluate(
        self,
        path: str,
        values: Mapping[str, Tensor],
        indices: Tensor | None,
        collect: Collect,
        doing: str,
        resample: bool = False,
    ) -> dict[str, Tensor]:
        """``collect`` of each particle's run, stacked: tensors of shape ``(num, ...)``.

        ``values`` hold the latent sites' constrained values, shape ``(num, *site shape)``.
        ``collect(sites, particles)`` reduces one run's recorded sites to named tensors,
        with a leading particle dim when ``particles`` is an int (the plate path) and per
        draw when it is ``None``.
        """
        num = next(iter(values.values())).shape[0]
        if path == "plate":
            nesting = self.nesting
            shaped = {
                s.name: values[s.name].reshape((num,) + (1,) * (nesting - s.batch_ndim) + s.shape)
                for s in self.latent
            }
            return collect(self.run(shaped, indices, num, doing, resample), num)
        if path == "vmap":

            def one(draw: dict[str, Tensor]) -> dict[str, Tensor]:
                return collect(self.run(draw, indices, None, doing, resample), None)

            with pyro.validation_enabled(False):
                return torch.func.vmap(one, randomness="different" if resample else "same")(
                    dict(values)
                )
        if path != "loop":
            raise ValueError(f"unknown particle path {path!r}; choose one of {PATHS}")
        parts = [
            collect(
                self.run({k: v[i] for k, v in values.items()}, indices, None, doing, resample), None
            )
            for i in range(num)
        ]
        return {key: torch.stack([p[key] for p in parts]) for key in parts[0]}
