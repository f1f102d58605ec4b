"""Every posteriordb translation targets its Stan program.

For every posterior of ``benchmarks/posteriordb/posteriors`` (found by
``load_posteriors()``, so a new module is tested with no edit here):

* the Pyro model's log density, from Pyro's own trace machinery in float64, minus the
  independent NumPy/SciPy implementation of the Stan ``target`` is one constant at five
  dispersed feasible points (drawn around the reference means with the reference sds);
* its gradient (torch autograd) matches central finite differences of the NumPy density;
* the data plate, where one is named, subsamples the data (the model indexes its data
  with the plate's indices);
* ``quantities`` gives exactly the reference quantities, consistent with the site values;
* the native model, where there is one, declares the Pyro sites' names and shapes, has the
  same density up to a constant and the same gradient, and its per-point likelihood and
  simulation agree with its likelihood.

**Tolerances.** Log densities: :math:`|\\Delta_k - \\Delta_0| \\le r\\,(1 + \\max|f|)`, with
:math:`\\Delta_k` the difference at point :math:`k` and :math:`r = 10^{-10}`: a float64 sum
of :math:`N \\le 5000` terms errs by at most :math:`N\\epsilon \\approx 10^{-12}` relative
(:math:`\\epsilon = 2.2\\cdot10^{-16}`; about :math:`10^{-15}` is measured). Gradients, per
coordinate and in units of the reference sd (:math:`\\tilde g_i = s_i\\,\\partial f/\\partial
x_i`), with the step :math:`h_i = \\tilde h s_i`, :math:`\\tilde h = 10^{-5}`: the central
difference has truncation error :math:`\\tilde h^2 \\tilde f'''/6 \\approx
2\\cdot10^{-11}\\tilde f'''` and rounding error :math:`\\epsilon_f/\\tilde h`, where the
NumPy density is exact to :math:`\\epsilon_f \\le 64\\,\\epsilon\\,(1 + |f|)`; so
:math:`|\\tilde g^{\\text{autograd}}_i - \\tilde g^{\\text{fd}}_i| \\le
g\\,|\\tilde g^{\\text{autograd}}_i| + 64\\,\\epsilon\\,(1 + |f|)/\\tilde h`, with
:math:`g = 10^{-6}` covering the truncation term.

A posterior whose NumPy density is itself approximate (an ODE solved to a tolerance) states
its own :math:`r` and :math:`g` as ``LOG_DENSITY_RTOL`` and ``GRADIENT_RTOL`` in the module
that defines its Pyro model, with the reason beside them.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to

from benchmarks.posteriordb.linear import LinearRegression
from benchmarks.posteriordb.posteriors import load_posteriors
from benchmarks.posteriordb.sites import LatentSite, latent_sites
from benchmarks.posteriordb.spec import Posterior, Reference, load_reference
from benchmarks.posteriordb.validate_nuts import compare
from svi_torch.models import Model

POSTERIORS = load_posteriors()
NAMES = sorted(POSTERIORS)
NATIVE = [n for n in NAMES if POSTERIORS[n].native is not None]
#: Spread of the points, in reference sds (dispersed: from near the mean to the tails).
SCALES = (0.5, 1.0, 1.0, 1.5, 2.0)
FD_STEP = 1e-5  # in reference sds
LOG_DENSITY_RTOL = 1e-10
GRADIENT_RTOL = 1e-6
EPS = float(np.finfo(np.float64).eps)

#: The translations here written to broadcast over leading particle dimensions (the
#: others are written for one draw, as the README table says).
BROADCASTING = [
    "arK-arK",
    "earnings-logearn_interaction_z",
    "eight_schools-eight_schools_noncentered",
    "sblrc-blr",
    "sblri-blr",
]
#: The translations here written for one draw (``X @ beta``, ``beta[0]``).
ONE_DRAW = ["diamonds-diamonds", "earnings-earn_height", "kidiq-kidscore_interaction"]


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# -- the points --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A posterior with its reference, model arguments, latent sites and test points."""

    posterior: Posterior
    ref: Reference
    kwargs: dict[str, Any]
    sites: list[LatentSite]
    points: list[dict[str, Tensor]]
    #: per site: the reference sd of each coordinate, shaped like the site.
    sds: dict[str, Tensor]


def _index_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """posteriordb's names of a site's coordinates, row-major: ``b[1]``, ``b[1,2]``..."""
    if shape == ():
        return [name]
    return [f"{name}[{','.join(str(i + 1) for i in idx)}]" for idx in np.ndindex(*shape)]


def _site_stats(site: LatentSite, ref: Reference) -> tuple[Tensor, Tensor]:
    stats = {**ref.params, **ref.record.get("derived_params", {})}
    keys = _index_names(site.name, site.shape)
    missing = [k for k in keys if k not in stats]
    if missing:
        raise AssertionError(
            f"{ref.name}: latent site {site.name!r} has no reference summaries for {missing}; "
            "name the Pyro sites after the Stan parameters (the reference's params or "
            "derived_params)"
        )
    mean = torch.tensor([stats[k]["mean"] for k in keys], dtype=torch.float64)
    sd = torch.tensor([stats[k]["sd"] for k in keys], dtype=torch.float64)
    mean, sd = mean.reshape(site.shape), sd.reshape(site.shape)
    return mean, sd


def _feasible(site: LatentSite, value: Tensor, sd: Tensor) -> bool:
    """In the support, and (for elementwise supports) so are the finite-difference steps."""
    if not (torch.isfinite(value).all() and site.support.check(value).all()):
        return False
    if site.support.event_dim:
        return True
    margin = 10 * FD_STEP * sd
    return bool(
        site.support.check(value - margin).all() and site.support.check(value + margin).all()
    )


def _draw(site: LatentSite, ref: Reference, scale: float, generator: torch.Generator) -> Tensor:
    """A feasible value of ``site`` near the reference mean, ``scale`` reference sds away."""
    mean, sd = _site_stats(site, ref)
    transform = biject_to(site.support)
    for _ in range(1000):
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
        candidate = mean + scale * sd * noise
        # For supports with an event dim (simplex, ordered) map through the support's
        # bijection and back: the nearest point the bijection reaches, or NaN.
        if site.support.event_dim:
            candidate = transform(transform.inv(candidate))
        if _feasible(site, candidate, sd):
            return candidate
    # A heavy-tailed vector site (the horseshoe's local scales, sds far above their means) is
    # almost never feasible in every coordinate at once: step from the mean in the unconstrained
    # space instead, where every point is feasible.
    for _ in range(1000):
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
        candidate = transform(transform.inv(mean) + scale * noise)
        if _feasible(site, candidate, sd):
            return candidate
    raise AssertionError(f"{ref.name}: no feasible value of {site.name!r} in 2000 draws")


@functools.cache
def case(name: str) -> Case:
    posterior = POSTERIORS[name]
    ref = load_reference(name)
    kwargs = posterior.pyro_data(ref.data)
    with pyro.validation_enabled(True):
        sites = latent_sites(posterior.pyro_model, kwargs)
    generator = torch.Generator().manual_seed(20240531)
    points = [{s.name: _draw(s, ref, scale, generator) for s in sites} for scale in SCALES]
    sds = {s.name: _site_stats(s, ref)[1] for s in sites}
    return Case(posterior, ref, kwargs, sites, points, sds)


# -- the densities -----------------------------------------------------------------------


def pyro_trace(c: Case, values: Mapping[str, Tensor], **extra: Tensor) -> Any:
    conditioned = poutine.condition(c.posterior.pyro_model, data={**values, **extra})
    return poutine.trace(conditioned).get_trace(**c.kwargs)


def pyro_log_density(c: Case, values: Mapping[str, Tensor]) -> Tensor:
    with pyro.validation_enabled(True):
        return pyro_trace(c, values).log_prob_sum()


def numpy_log_density(c: Case, values: Mapping[str, Tensor]) -> float:
    arrays = {k: v.detach().numpy().copy() for k, v in values.items()}
    return float(c.posterior.stan_log_density(arrays, c.ref.data))


def native_log_density(model: Model, values: Mapping[str, Tensor]) -> Tensor:
    """The native log joint in the constrained space: ``log_joint(z).total - log|det J|``."""
    z = model.unconstrain(dict(values))
    joint = model.log_joint(z[None], likelihood_scale=1.0)
    return (joint.total - joint.log_det_jacobian)[0]


def tolerance(posterior: Posterior, which: str) -> float:
    """``LOG_DENSITY_RTOL`` or ``GRADIENT_RTOL``: the Pyro model's module's own, else this file's."""
    module = sys.modules[posterior.pyro_model.__module__]
    return float(getattr(module, which, globals()[which]))


def assert_same_up_to_constant(
    c: Case, ours: list[float], reference: list[float], *, varies: bool = True
) -> None:
    """``ours - reference`` is one constant; with ``varies``, ``reference`` is not constant."""
    name = c.ref.name
    ours_a, ref_a = np.asarray(ours), np.asarray(reference)
    assert np.all(np.isfinite(ours_a)) and np.all(np.isfinite(ref_a)), (ours_a, ref_a)
    diff = ours_a - ref_a
    allowed = tolerance(c.posterior, "LOG_DENSITY_RTOL") * (1.0 + np.abs(ref_a).max())
    spread = np.abs(diff - diff[0]).max()
    assert spread <= allowed, (
        f"{name}: log density minus the NumPy reference varies by {spread:.3g} over the "
        f"points (tolerance {allowed:.3g}); differences {diff}, reference {ref_a}"
    )
    if varies:
        # Dispersed points: the density itself must vary, or the check is empty.
        assert np.ptp(ref_a) > 100 * allowed, ref_a


def finite_difference_gradient(c: Case, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Central differences of the NumPy density, in reference-sd units (see the docstring).

    Elementwise supports are differenced in the constrained coordinates; supports with an
    event dim (a simplex) in the unconstrained coordinates of their bijection, where every
    step stays feasible.
    """
    out: dict[str, Tensor] = {}
    for site in c.sites:
        base = values[site.name]
        if site.support.event_dim:
            transform = biject_to(site.support)
            u0 = transform.inv(base)
            grad = torch.zeros_like(u0)
            for i in range(u0.numel()):
                step = torch.zeros_like(u0).reshape(-1)
                step[i] = FD_STEP
                step = step.reshape(u0.shape)
                plus = numpy_log_density(c, {**values, site.name: transform(u0 + step)})
                minus = numpy_log_density(c, {**values, site.name: transform(u0 - step)})
                grad.reshape(-1)[i] = (plus - minus) / (2 * FD_STEP)
            out[site.name] = grad
            continue
        sd = c.sds[site.name]
        grad = torch.zeros_like(base)
        for i in range(base.numel()):
            step = torch.zeros_like(base).reshape(-1)
            step[i] = FD_STEP * sd.reshape(-1)[i]
            step = step.reshape(base.shape)
            plus = numpy_log_density(c, {**values, site.name: base + step})
            minus = numpy_log_density(c, {**values, site.name: base - step})
            grad.reshape(-1)[i] = (plus - minus) / (2 * FD_STEP)
        out[site.name] = grad
    return out


def autograd_gradient(
    c: Case, values: Mapping[str, Tensor], log_density: Any
) -> tuple[float, dict[str, Tensor]]:
    """``log_density`` and its gradient in the coordinates of :func:`finite_difference_gradient`."""
    leaves: dict[str, Tensor] = {}
    constrained: dict[str, Tensor] = {}
    for site in c.sites:
        if site.support.event_dim:
            transform = biject_to(site.support)
            leaves[site.name] = transform.inv(values[site.name]).detach().requires_grad_()
            constrained[site.name] = transform(leaves[site.name])
        else:
            leaves[site.name] = values[site.name].detach().clone().requires_grad_()
            constrained[site.name] = leaves[site.name]
    f = log_density(constrained)
    grads = torch.autograd.grad(f, list(leaves.values()))
    out = {}
    for site, grad in zip(c.sites, grads, strict=True):
        out[site.name] = grad if site.support.event_dim else grad * c.sds[site.name]
    return float(f.detach()), out


def assert_gradients_match(
    c: Case, f: float, ours: Mapping[str, Tensor], fd: Mapping[str, Tensor]
) -> None:
    flat_ours = torch.cat([g.reshape(-1) for g in ours.values()])
    flat_fd = torch.cat([fd[k].reshape(-1) for k in ours])
    rtol = tolerance(c.posterior, "GRADIENT_RTOL")
    allowed = rtol * flat_ours.abs() + 64 * EPS * (1 + abs(f)) / FD_STEP
    excess = (flat_ours - flat_fd).abs() / allowed
    assert bool((excess <= 1).all()), (
        f"{c.ref.name}: gradient differs from central differences of the NumPy density by "
        f"up to {float(excess.max()):.3g} times the tolerance\nautograd {flat_ours}\n"
        f"finite differences {flat_fd}"
    )


# -- the Pyro models ---------------------------------------------------------------------


def assert_pyro_density_matches_numpy(c: Case) -> None:
    ours = [float(pyro_log_density(c, p)) for p in c.points]
    reference = [numpy_log_density(c, p) for p in c.points]
    assert_same_up_to_constant(c, ours, reference)


@pytest.mark.parametrize("name", NAMES)
def test_pyro_log_density_equals_stan_target_up_to_a_constant(name: str) -> None:
    assert_pyro_density_matches_numpy(case(name))


@pytest.mark.parametrize("name", NAMES)
def test_pyro_gradient_matches_finite_differences_of_stan_target(name: str) -> None:
    c = case(name)
    for point in c.points[:3]:
        f, ours = autograd_gradient(c, point, lambda v: pyro_log_density(c, v))
        assert_gradients_match(c, f, ours, finite_difference_gradient(c, point))


@pytest.mark.parametrize("name", [n for n in NAMES if "prior_only" in load_reference(n).data])
def test_pyro_prior_only_density_equals_stan_target(name: str) -> None:
    """brms's ``prior_only = 1`` drops the likelihood: the same check on the prior alone,
    which sees prior terms that are negligible beside the likelihood (diamonds' Intercept
    prior varies by about 1e-6 nats over the points, below the full density's tolerance)."""
    c = case(name)
    data = {**c.ref.data, "prior_only": 1}
    ref = Reference(**{**c.ref.__dict__, "data": data})
    assert_pyro_density_matches_numpy(
        Case(c.posterior, ref, c.posterior.pyro_data(data), c.sites, c.points, c.sds)
    )


@pytest.mark.parametrize("name", NAMES)
def test_data_plate_subsamples_the_data(name: str) -> None:
    """Two disjoint halves of the data plate, rescaled by B/N, sum to the full data's terms."""
    c = case(name)
    plate = c.posterior.data_plate
    trace = pyro_trace(c, c.points[0])
    plates = {n: s for n, s in trace.nodes.items() if site_is_subsample(s)}
    if plate is None:
        # No data plate: nothing may claim to subsample; the model is evaluated whole.
        assert all(len(s["value"]) == s["fn"].size for s in plates.values())
        return
    assert plate in plates, (
        f"{name}: data_plate={plate!r} but the model's plates are {sorted(plates)}"
    )
    num_data = plates[plate]["fn"].size

    def in_plate_terms(indices: Tensor) -> float:
        t = pyro_trace(c, c.points[0], **{plate: indices})
        t.compute_log_prob()
        total = 0.0
        for site in t.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            frames = [f.name for f in site["cond_indep_stack"]]
            if plate in frames:
                assert site["is_observed"], (
                    f"{name}: latent site {site['name']!r} in the data plate"
                )
                total += float(site["log_prob_sum"])
        return total

    order = torch.randperm(num_data, generator=torch.Generator().manual_seed(1))
    first, second = order[: num_data // 2], order[num_data // 2 :]
    full = in_plate_terms(torch.arange(num_data))
    halves = (
        in_plate_terms(first) * len(first) / num_data
        + in_plate_terms(second) * len(second) / num_data
    )
    assert full != 0.0
    assert math.isclose(halves, full, rel_tol=1e-10, abs_tol=1e-10), (name, halves, full)


def vectorised_and_looped(c: Case) -> tuple[Tensor, Tensor]:
    """Three particles' log densities from one trace under an outer particle plate (as the
    bridge and Pyro's vectorised ELBO evaluate them, batch dims left of the plates), and
    the same particles traced one by one. A model written for one draw may raise."""
    trace = pyro_trace(c, c.points[0])
    frames = [f for s in trace.nodes.values() for f in s.get("cond_indep_stack", ())]
    nesting = max([-f.dim for f in frames if f.dim is not None], default=0)
    batch_ndim = {s.name: len(trace.nodes[s.name]["fn"].batch_shape) for s in c.sites}
    stacked = {
        s.name: torch.stack([p[s.name] for p in c.points[:3]]).reshape(
            (3,) + (1,) * (nesting - batch_ndim[s.name]) + s.shape
        )
        for s in c.sites
    }

    def particles_model(**kwargs: Any) -> None:
        with pyro.plate("particles", 3, dim=-(nesting + 1)):
            c.posterior.pyro_model(**kwargs)

    t = poutine.trace(poutine.condition(particles_model, data=stacked)).get_trace(**c.kwargs)
    t.compute_log_prob()
    vectorised = torch.zeros(3)
    for site in t.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            lp = site["log_prob"]
            per_particle = lp.reshape(lp.shape[0] if lp.dim() > nesting else 1, -1).sum(-1)
            vectorised = vectorised + per_particle
    looped = torch.stack([pyro_log_density(c, p) for p in c.points[:3]])
    return vectorised, looped


@pytest.mark.parametrize("name", BROADCASTING)
def test_pyro_model_broadcasts_over_particles(name: str) -> None:
    vectorised, looped = vectorised_and_looped(case(name))
    torch.testing.assert_close(vectorised, looped, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("name", ONE_DRAW)
def test_pyro_model_written_for_one_draw_does_not_broadcast(name: str) -> None:
    """The README's other kind: these stay cases a vectorising bridge (vmap) must handle."""
    try:
        vectorised, looped = vectorised_and_looped(case(name))
    except Exception:
        return  # the shapes do not broadcast: it raised
    assert not torch.allclose(vectorised, looped), (name, vectorised, looped)


def _draws_at_points(c: Case, points: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Latent and deterministic site values at ``points``, stacked on a leading draw dim."""
    per_point = []
    for p in points:
        trace = pyro_trace(c, p)
        per_point.append(
            {
                n: s["value"]
                for n, s in trace.nodes.items()
                if s["type"] == "sample" and (n in p or s["infer"].get("_deterministic", False))
            }
        )
    return {k: torch.stack([d[k] for d in per_point]) for k in per_point[0]}


_KEY = re.compile(r"^(?P<base>[^\[]+)(\[(?P<index>[0-9,]+)\])?$")


def assert_quantities_match_reference(c: Case, draws: Mapping[str, Tensor]) -> dict[str, Tensor]:
    q = c.posterior.quantities(draws)
    assert set(q) == set(c.ref.params), (
        f"{c.ref.name}: quantities {sorted(set(q) ^ set(c.ref.params))} differ from the reference's"
    )
    num = next(iter(draws.values())).shape[0]
    for key, value in q.items():
        assert value.shape == (num,), (key, value.shape)
        match = _KEY.match(key)
        assert match is not None, key
        base = match["base"]
        if base in draws:
            index = tuple(int(i) - 1 for i in (match["index"] or "").split(",") if i)
            torch.testing.assert_close(value, draws[base][(slice(None), *index)])
    return q


@pytest.mark.parametrize("name", NAMES)
def test_quantities_are_the_reference_quantities(name: str) -> None:
    c = case(name)
    assert_quantities_match_reference(c, _draws_at_points(c, c.points))


# -- the native models -------------------------------------------------------------------


@functools.cache
def native(name: str) -> Model:
    c = case(name)
    assert c.posterior.native is not None
    return c.posterior.native(c.ref.data)


def native_params(model: Model, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: values[k] for k in model.param_specs}


@pytest.mark.parametrize("name", NATIVE)
def test_native_declares_the_pyro_sites(name: str) -> None:
    c = case(name)
    model = native(name)
    declared = {k: spec.shape for k, spec in model.param_specs.items()}
    assert declared == {s.name: s.shape for s in c.sites}
    assert model.dtype == torch.float64


@pytest.mark.parametrize("name", NATIVE)
def test_native_log_density_equals_stan_target_up_to_a_constant(name: str) -> None:
    c = case(name)
    model = native(name)
    ours = [float(native_log_density(model, p)) for p in c.points]
    reference = [numpy_log_density(c, p) for p in c.points]
    assert_same_up_to_constant(c, ours, reference)
    # The same through log_prior + log_likelihood on the full data.
    direct = [
        float(model.log_prior(p) + model.log_likelihood(native_params(model, p), model.data))
        for p in c.points
    ]
    np.testing.assert_allclose(direct, ours, rtol=1e-12, atol=1e-9)


def pyro_prior_and_likelihood(c: Case, values: Mapping[str, Tensor]) -> tuple[float, float]:
    """The Pyro model's log density split in two: the likelihood is the sites in the data
    plate, the prior everything else."""
    trace = pyro_trace(c, values)
    trace.compute_log_prob()
    prior = likelihood = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if any(f.name == c.posterior.data_plate for f in site["cond_indep_stack"]):
            likelihood += float(site["log_prob_sum"])
        else:
            prior += float(site["log_prob_sum"])
    return prior, likelihood


@pytest.mark.parametrize("name", [n for n in NATIVE if POSTERIORS[n].data_plate is not None])
def test_native_prior_and_likelihood_match_the_pyro_terms(name: str) -> None:
    """Prior and likelihood separately, each up to a constant: a prior term too small to
    show beside the likelihood (diamonds' Intercept prior) is still compared. The data
    plate makes the split: its sites are the likelihood, the rest the prior (without one,
    a ``pyro.factor`` could be either)."""
    c = case(name)
    model = native(name)
    split = [pyro_prior_and_likelihood(c, p) for p in c.points]
    params = [native_params(model, p) for p in c.points]
    assert_same_up_to_constant(
        c,
        [float(model.log_prior(p)) for p in params],
        [prior for prior, _ in split],
        varies=False,  # flat priors are constant
    )
    assert_same_up_to_constant(
        c,
        [float(model.log_likelihood(p, model.data)) for p in params],
        [likelihood for _, likelihood in split],
    )


@pytest.mark.parametrize("name", NATIVE)
def test_native_gradient_matches_finite_differences_of_stan_target(name: str) -> None:
    c = case(name)
    model = native(name)
    for point in c.points[:3]:
        f, ours = autograd_gradient(c, point, lambda v: native_log_density(model, v))
        assert_gradients_match(c, f, ours, finite_difference_gradient(c, point))


@pytest.mark.parametrize("name", NATIVE)
def test_native_quantities_agree_with_pyro(name: str) -> None:
    c = case(name)
    model = native(name)
    stacked = {k: torch.stack([p[k] for p in c.points]) for k in model.param_specs}
    native_draws = {**stacked, **model.derived(stacked)}
    from_native = assert_quantities_match_reference(c, native_draws)
    from_pyro = c.posterior.quantities(_draws_at_points(c, c.points))
    for key, value in from_pyro.items():
        torch.testing.assert_close(from_native[key], value, rtol=1e-12, atol=1e-12)


def _overrides(name: str, method: str) -> bool:
    """Whether the native model implements ``method`` (a model that fails to build is
    kept, so that its test runs and reports the error)."""
    try:
        cls = type(POSTERIORS[name].native(load_reference(name).data))  # type: ignore[misc]
    except Exception:
        return True
    return getattr(cls, method) is not getattr(Model, method)


@pytest.mark.parametrize("name", [n for n in NATIVE if _overrides(n, "pointwise_log_likelihood")])
def test_native_pointwise_log_likelihood_sums_to_the_likelihood(name: str) -> None:
    c = case(name)
    model = native(name)
    params = {k: torch.stack([p[k] for p in c.points[:3]]) for k in model.param_specs}
    pointwise = model.pointwise_log_likelihood(params, model.data)
    assert pointwise.shape == (3, model.num_data)
    torch.testing.assert_close(
        pointwise.sum(-1), model.log_likelihood(params, model.data), rtol=1e-12, atol=1e-9
    )


@pytest.mark.parametrize("name", [n for n in NATIVE if _overrides(n, "simulate")])
def test_native_simulation_has_zero_mean_score(name: str) -> None:
    """Data simulated at theta have E[grad_theta log p(y | theta)] = 0 (the score identity):
    wrong means or scales in ``simulate`` shift it. The z-score of the 64-replicate mean
    (a t with 63 degrees of freedom) stays below 5 per coordinate: a false alarm has
    probability about 5e-6 per coordinate, 2e-4 over 30."""
    c = case(name)
    model = native(name)
    torch.manual_seed(3)
    theta = {k: c.points[0][k] for k in model.param_specs}
    replicates = 64
    simulated = model.simulate({k: v.expand((replicates,) + v.shape) for k, v in theta.items()})
    data = model.data
    for key, value in simulated.items():
        assert key in data, f"{name}: simulate returned {key!r}, not a data array"
        assert value.shape == (replicates,) + data[key].shape, (key, value.shape)
    # The score in the unconstrained coordinates: p(y | T(z)) is normalised in y for every
    # z, whereas a simplex's constrained coordinates also move off the simplex.
    z = model.unconstrain(theta).detach().requires_grad_()
    params, _ = model.constrain(z)
    scores = []
    for r in range(replicates):
        batch = {**data, **{k: v[r] for k, v in simulated.items()}}
        loglik = model.log_likelihood(params, batch)
        scores.append(torch.autograd.grad(loglik, [z], retain_graph=True)[0])
    score = torch.stack(scores)
    z = score.mean(0) / (score.std(0) / math.sqrt(replicates))
    assert float(z.abs().max()) < 5.0, (name, z)


# -- the reference against closed forms ---------------------------------------------------


def _flat_regression(name: str) -> bool:
    try:
        model = POSTERIORS[name].native(load_reference(name).data)  # type: ignore[misc]
    except Exception:
        return False
    return (
        isinstance(model, LinearRegression) and model.coef_prior is None and model.intercept is None
    )


@pytest.mark.parametrize("name", [n for n in NATIVE if _flat_regression(n)])
def test_flat_regression_reference_matches_the_exact_posterior(name: str) -> None:
    """With :math:`p(\\beta) \\propto 1`, :math:`\\beta \\mid \\sigma, y \\sim
    \\mathcal{N}(\\hat\\beta, \\sigma^2 (X^\\top X)^{-1})` whatever the prior on
    :math:`\\sigma`, so :math:`E[\\beta \\mid y] = \\hat\\beta` (least squares). With
    :math:`p(\\sigma) \\propto 1` too, :math:`\\beta \\mid y` is a multivariate t with
    :math:`\\nu = N - D - 1` degrees of freedom and scale :math:`(S/\\nu)(X^\\top X)^{-1}`
    (:math:`S` the residual sum of squares), and :math:`\\sigma^2 \\mid y \\sim
    \\text{Inv-Gamma}(\\nu/2, S/2)`. The reference (posteriordb's NUTS) must agree within 4
    of its Monte Carlo standard errors (means) and :math:`4/\\sqrt{2n}` relative (sds): a
    check of the native design and data against the reference, free of any sampler run here."""
    c = case(name)
    model = native(name)
    X, y = model.X.numpy(), model.y.numpy()
    num, dim = X.shape
    gram_inv = np.linalg.inv(X.T @ X)
    beta_hat = gram_inv @ X.T @ y
    rss = float(((y - X @ beta_hat) ** 2).sum())
    nu = num - dim - 1
    n_ref = int(c.ref.record.get("n_draws", 10000))

    def mcse(stats: Mapping[str, float]) -> float:
        return float(stats.get("mcse_mean", stats["sd"] / math.sqrt(n_ref)))

    for j in range(dim):
        stats = c.ref.params[f"{model.coef}[{j + 1}]"]
        assert abs(stats["mean"] - beta_hat[j]) <= 4 * mcse(stats), (j, stats, beta_hat[j])
    if model.sigma_prior is not None:
        return
    sd = np.sqrt(nu / (nu - 2) * rss / nu * np.diag(gram_inv))
    ratio = np.array([c.ref.params[f"{model.coef}[{j + 1}]"]["sd"] for j in range(dim)]) / sd
    np.testing.assert_array_less(np.abs(ratio - 1), 4 / math.sqrt(2 * n_ref))
    stats = c.ref.params["sigma"]
    a, b = nu / 2, rss / 2
    sigma_mean = math.sqrt(b) * math.exp(math.lgamma(a - 0.5) - math.lgamma(a))
    assert abs(stats["mean"] - sigma_mean) <= 4 * mcse(stats), (stats, sigma_mean)


# -- the NUTS comparison ------------------------------------------------------------------


def test_nuts_comparison_flags_shifted_means_and_wrong_spreads() -> None:
    """``validate_nuts.compare`` on independent draws from the reference marginals passes;
    a mean shifted by 0.3 sd (z about 0.3 sqrt(2000) = 13) or an sd 30% too large (z_sd
    about 0.3 sqrt(4000) = 19) is flagged."""
    ref = load_reference("eight_schools-eight_schools_noncentered")
    generator = torch.Generator().manual_seed(5)
    exact = {
        k: s["mean"] + s["sd"] * torch.randn(1, 2000, generator=generator, dtype=torch.float64)
        for k, s in ref.params.items()
    }
    assert all(q.consistent for q in compare(ref, exact))
    mu = ref.params["mu"]
    shifted = {**exact, "mu": exact["mu"] + 0.3 * mu["sd"]}
    wider = {**exact, "mu": mu["mean"] + 1.3 * (exact["mu"] - mu["mean"])}
    for draws in (shifted, wider):
        flagged = [q.name for q in compare(ref, draws) if not q.consistent]
        assert flagged == ["mu"]
