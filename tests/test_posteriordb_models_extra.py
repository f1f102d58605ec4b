"""The seven posteriordb translations of part 2 (regressions, GP, HMM, two ODEs).

The generic harness ``tests/test_posteriordb_models.py`` checks every posterior point by
point. Here:

* each Pyro model evaluated for five dispersed particles in one trace, under an outer
  particle plate (as the Pyro bridge and Pyro's vectorised ELBO run it), minus the NumPy
  reference of the Stan ``target`` is one constant; the native model likewise for the same
  batch of particles; ``quantities`` gives the reference's keys;
* the ODE solutions: at the default (fast) tolerances, their error in :math:`\\log y`
  against SciPy at ``rtol=1e-12`` is at most :math:`10^{-3}` of the smallest plausible
  observation-noise sd (the reference q05 of :math:`\\sigma`), for single and batched
  parameter vectors, and smaller than that of Stan's own configured solver; gradients
  through the solver match finite differences of the SciPy density; a solver failure gives
  NaN, not an exception;
* the HMM forward algorithm equals the sum over all :math:`2^T` state paths of a short
  prefix, maps under ``torch.func.vmap``, and the native simulator has zero-mean score.

**Tolerances.** Log densities: :math:`|\\Delta_k - \\Delta_0| \\le 10^{-8}(1 + \\max|f|)`
(float64 sums of at most a few thousand terms; the ODE densities inside
:func:`~benchmarks.posteriordb.ode.tight_tolerances`, where the solver errs by about
:math:`10^{-10}`). ODE error: :math:`10^{-3}\\sigma_{q05}` (the brief's criterion: a bias of
:math:`10^{-3}` noise sds shifts no posterior summary visibly).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_value
from pyro.poutine.util import site_is_subsample
from scipy.integrate import solve_ivp
from torch import Tensor
from torch.distributions import biject_to

from benchmarks.posteriordb.ode import solve_at, tight_tolerances
from benchmarks.posteriordb.posteriors import (
    bball_drive_event_0_hmm_drive_0 as hmm,
)
from benchmarks.posteriordb.posteriors import (
    hudson_lynx_hare_lotka_volterra as lv,
)
from benchmarks.posteriordb.posteriors import load_posteriors
from benchmarks.posteriordb.posteriors import (
    one_comp_mm_elim_abs_one_comp_mm_elim_abs as pk,
)
from benchmarks.posteriordb.spec import Posterior, Reference, load_reference

NAMES = [
    "kidiq_with_mom_work-kidscore_interaction_c2",
    "nes2000-nes",
    "mesquite-mesquite",
    "gp_pois_regr-gp_regr",
    "bball_drive_event_0-hmm_drive_0",
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs",
    "hudson_lynx_hare-lotka_volterra",
]
ODE = {"one_comp_mm_elim_abs-one_comp_mm_elim_abs", "hudson_lynx_hare-lotka_volterra"}
POSTERIORS = load_posteriors(NAMES)
NUM_POINTS = 5
_KEY = re.compile(r"^(?P<site>[^\[]+)(\[(?P<index>[0-9,]+)\])?$")


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# -- dispersed points from the reference --------------------------------------------------


def reference_value(ref: Reference, stat: str) -> dict[str, np.ndarray]:
    """Each site's reference ``stat`` (``"q50"``, ``"mean"``...) as an array of its shape."""
    entries: dict[str, dict[tuple[int, ...], float]] = {}
    for key, summary in ref.params.items():
        match = _KEY.match(key)
        assert match is not None, key
        index = tuple(int(i) - 1 for i in (match["index"] or "").split(",") if i)
        entries.setdefault(match["site"], {})[index] = summary[stat]
    out = {}
    for site, values in entries.items():
        shape = tuple(max(i[d] for i in values) + 1 for d in range(len(next(iter(values)))))
        array = np.zeros(shape)
        for index, value in values.items():
            array[index] = value
        out[site] = array
    return out


@dataclass(frozen=True)
class Case:
    posterior: Posterior
    ref: Reference
    kwargs: dict[str, Any]
    supports: dict[str, Any]
    #: NUM_POINTS points, each site's values stacked on a leading dim.
    points: dict[str, Tensor]


def _on_support(value: np.ndarray, support: Any) -> Tensor:
    """The nearest point the support's bijection reaches (a renormalised simplex)."""
    t = biject_to(support)
    return t(t.inv(torch.as_tensor(value)))


@functools.cache
def case(name: str) -> Case:
    """Points :math:`T(u_{50} + c \\odot s)`: :math:`u_{50}` the reference medians in the
    unconstrained space, :math:`s` the q05-q95 spread there over 3.29 (one sd for a normal),
    :math:`c \\sim \\mathcal{U}(-2, 2)` per coordinate (seeded): from the bulk to the tails."""
    torch.set_default_dtype(torch.float64)
    posterior = POSTERIORS[name]
    ref = load_reference(name)
    kwargs = posterior.pyro_data(ref.data)
    medians = reference_value(ref, "q50")
    start = init_to_value(values={k: torch.as_tensor(v) for k, v in medians.items()})
    trace = poutine.trace(InitMessenger(start)(posterior.pyro_model)).get_trace(**kwargs)
    supports = {
        n: s["fn"].support
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }
    assert set(supports) == set(medians), (name, sorted(supports), sorted(medians))
    generator = torch.Generator().manual_seed(7)
    points = {}
    for site, support in supports.items():
        t = biject_to(support)
        u = {
            q: t.inv(_on_support(reference_value(ref, q)[site], support))
            for q in ("q05", "q50", "q95")
        }
        spread = (u["q95"] - u["q05"]).abs() / 3.29 + 1e-3
        c = 4 * torch.rand((NUM_POINTS, *u["q50"].shape), generator=generator) - 2
        points[site] = t(u["q50"] + c * spread)
    return Case(posterior, ref, kwargs, supports, points)


def numpy_log_density(c: Case, k: int) -> float:
    values = {site: v[k].numpy().copy() for site, v in c.points.items()}
    return float(c.posterior.stan_log_density(values, c.ref.data))


def assert_same_up_to_constant(name: str, ours: np.ndarray, reference: np.ndarray) -> None:
    assert np.all(np.isfinite(ours)) and np.all(np.isfinite(reference)), (ours, reference)
    diff = ours - reference
    tolerance = 1e-8 * (1.0 + np.abs(reference).max())
    spread = np.abs(diff - diff[0]).max()
    assert spread <= tolerance, (
        f"{name}: log density minus the NumPy reference varies by {spread:.3g} > "
        f"{tolerance:.3g}; differences {diff}"
    )
    assert np.ptp(reference) > 100 * tolerance, reference  # the points are dispersed


# -- the models against the Stan target ---------------------------------------------------


def vectorised_log_density(c: Case) -> Tensor:
    """Each point's log density from one trace with the points as particles of an outer plate."""
    single = poutine.trace(
        poutine.condition(c.posterior.pyro_model, data={k: v[0] for k, v in c.points.items()})
    ).get_trace(**c.kwargs)
    nesting = max(
        (-f.dim for s in single.nodes.values() for f in s.get("cond_indep_stack", ())), default=0
    )
    stacked = {}
    for site, value in c.points.items():
        event = single.nodes[site]["fn"].event_shape
        batch = (1,) * (nesting - len(single.nodes[site]["fn"].batch_shape))
        stacked[site] = value.reshape((NUM_POINTS, *batch, *event))

    def particles(**kwargs: Any) -> None:
        with pyro.plate("particles", NUM_POINTS, dim=-(nesting + 1)):
            c.posterior.pyro_model(**kwargs)

    trace = poutine.trace(poutine.condition(particles, data=stacked)).get_trace(**c.kwargs)
    trace.compute_log_prob()
    total = torch.zeros(NUM_POINTS)
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + site["log_prob"].reshape(NUM_POINTS, -1).sum(-1)
    return total


@pytest.mark.parametrize("name", NAMES)
def test_pyro_model_for_a_batch_of_particles_equals_stan_target(name: str) -> None:
    c = case(name)
    with pyro.validation_enabled(True), tight_tolerances():
        ours = vectorised_log_density(c).detach().numpy()
    reference = np.array([numpy_log_density(c, k) for k in range(NUM_POINTS)])
    assert_same_up_to_constant(name, ours, reference)


@pytest.mark.parametrize("name", NAMES)
def test_native_model_for_a_batch_of_particles_equals_stan_target(name: str) -> None:
    c = case(name)
    model = c.posterior.native(c.ref.data)
    assert list(model.param_specs) == list(c.supports)
    assert model.dtype == torch.float64
    z = model.unconstrain(c.points)
    with tight_tolerances():
        params, log_det = model.constrain(z)
        ours = (model.full_log_joint(z) - log_det).detach().numpy()
    for site, value in params.items():
        torch.testing.assert_close(value, c.points[site])
    reference = np.array([numpy_log_density(c, k) for k in range(NUM_POINTS)])
    assert_same_up_to_constant(name, ours, reference)


@pytest.mark.parametrize("name", NAMES)
def test_quantities_are_the_reference_quantities(name: str) -> None:
    c = case(name)
    q = c.posterior.quantities(c.points)
    assert list(q) == list(c.ref.params)
    medians = reference_value(c.ref, "q50")
    for key, value in q.items():
        site, index = _KEY.match(key)["site"], _KEY.match(key)["index"]
        idx = tuple(int(i) - 1 for i in (index or "").split(",") if i)
        assert medians[site].shape == c.points[site].shape[1:]
        torch.testing.assert_close(value, c.points[site][(slice(None), *idx)])


# -- ODEs ---------------------------------------------------------------------------------


def _lv_solution(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> np.ndarray:
    return np.log(
        lv.stan_populations(values["theta"], values["z_init"], np.asarray(data["ts"], float))
    )


def _lv_ours(values: Mapping[str, Tensor], data: Mapping[str, Any]) -> Tensor:
    return lv.log_populations(
        values["theta"], values["z_init"], torch.tensor(data["ts"], dtype=torch.float64)
    )


def _pk_solution(values: Mapping[str, np.ndarray], data: Mapping[str, Any]) -> np.ndarray:
    theta = np.array([values["k_a"], values["K_m"], values["V_m"]], dtype=float)
    return np.log(pk.stan_concentration(theta, data))[:, None]


def _pk_ours(values: Mapping[str, Tensor], data: Mapping[str, Any]) -> Tensor:
    kw = pk.data(data)
    C = pk.concentration(
        values["k_a"], values["K_m"], values["V_m"], kw["t0"], kw["times"], kw["D"], kw["V"]
    )
    return C.log()


SOLUTIONS = {
    "hudson_lynx_hare-lotka_volterra": (_lv_solution, _lv_ours),
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs": (_pk_solution, _pk_ours),
}


def _noise_floor(ref: Reference) -> float:
    """The smallest plausible observation-noise sd: the least reference q05 of sigma."""
    return min(v["q05"] for k, v in ref.params.items() if k.startswith("sigma"))


def _corners(ref: Reference) -> list[dict[str, np.ndarray]]:
    """The reference mean, q05 and q95 points (each site at that statistic)."""
    return [reference_value(ref, stat) for stat in ("mean", "q05", "q95")]


@pytest.mark.parametrize("name", sorted(ODE))
def test_ode_error_at_default_tolerances_is_below_a_thousandth_of_the_noise(name: str) -> None:
    ref = load_reference(name)
    exact_fn, ours_fn = SOLUTIONS[name]
    bound = 1e-3 * _noise_floor(ref)
    corners = _corners(ref)
    batch = {k: torch.as_tensor(np.stack([p[k] for p in corners])) for k in corners[0]}
    batched = ours_fn(batch, ref.data).detach()  # the three points solved at once
    for k, point in enumerate(corners):
        exact = exact_fn(point, ref.data)
        single = ours_fn({s: torch.as_tensor(v) for s, v in point.items()}, ref.data).detach()
        assert single.shape == exact.shape
        for label, ours in (("single", single), ("batched", batched[k])):
            error = float(np.abs(ours.numpy() - exact).max())
            assert error <= bound, (name, k, label, error, bound)


def test_lotka_volterra_solution_is_closer_than_stans_own_solver() -> None:
    """Stan's ``integrate_ode_rk45`` at ``rtol=1e-5, atol=1e-3`` (SciPy's RK45 at those, as a
    stand-in for Boost's Dormand-Prince) errs more than the default solve here: matching
    "Stan's solution" is matching the exact one."""
    ref = load_reference("hudson_lynx_hare-lotka_volterra")
    point = reference_value(ref, "mean")
    exact = _lv_solution(point, ref.data)
    ts = np.asarray(ref.data["ts"], float)
    a, b, g, d = point["theta"]
    stan_like = solve_ivp(
        lambda t, z: [(a - b * z[1]) * z[0], (-g + d * z[0]) * z[1]],
        (0.0, ts[-1]),
        point["z_init"],
        t_eval=ts,
        method="RK45",
        rtol=1e-5,
        atol=1e-3,
    ).y.T
    ours = _lv_ours({k: torch.as_tensor(v) for k, v in point.items()}, ref.data).numpy()
    stan_error = np.abs(np.log(stan_like) - exact).max()
    our_error = np.abs(ours - exact).max()
    assert our_error < stan_error / 10, (our_error, stan_error)


@pytest.mark.parametrize("name", sorted(ODE))
def test_gradient_through_the_solver_matches_finite_differences(name: str) -> None:
    """Autograd through ``odeint`` (default tolerances) against central differences of the
    SciPy density, in the unconstrained coordinates; relative to the gradient's size, the
    default solve's error (~1e-5 relative) sets the tolerance 1e-3."""
    c = case(name)
    values = {k: v[0] for k, v in c.points.items()}
    transforms = {k: biject_to(s) for k, s in c.supports.items()}
    leaves = {k: transforms[k].inv(v).detach().requires_grad_() for k, v in values.items()}

    def log_jacobian(x: Mapping[str, Tensor], u: Mapping[str, Tensor]) -> Tensor:
        return sum(transforms[k].log_abs_det_jacobian(u[k], x[k]).sum() for k in u)

    constrained = {k: transforms[k](u) for k, u in leaves.items()}
    trace = poutine.trace(poutine.condition(c.posterior.pyro_model, data=constrained)).get_trace(
        **c.kwargs
    )
    f = trace.log_prob_sum() + log_jacobian(constrained, leaves)
    grads = torch.autograd.grad(f, list(leaves.values()))
    ours = torch.cat([g.reshape(-1) for g in grads])
    fd = []
    h = 1e-5
    for site, u0 in leaves.items():
        for i in range(u0.numel()):
            step = torch.zeros(u0.numel())
            step[i] = h
            sides = []
            for sign in (1, -1):
                u = {k: v.detach() for k, v in leaves.items()}
                u[site] = u0.detach() + sign * step.reshape(u0.shape)
                x = {k: transforms[k](v) for k, v in u.items()}
                arrays = {k: v.numpy() for k, v in x.items()}
                sides.append(
                    c.posterior.stan_log_density(arrays, c.ref.data) + float(log_jacobian(x, u))
                )
            fd.append((sides[0] - sides[1]) / (2 * h))
    fd_t = torch.tensor(fd)
    error = float((ours - fd_t).abs().max())
    assert error <= 1e-3 * float(fd_t.abs().max()), (name, ours, fd_t)


def test_solver_failure_gives_nan_not_an_exception() -> None:
    """:math:`\\dot y = y^2`, :math:`y(0) = 1` blows up at :math:`t = 1`: NaN at every output
    time (as Stan rejects the draw), where ``torchdiffeq`` would raise mid-run."""
    y0 = torch.ones(3, 1, requires_grad=True)
    y = solve_at(lambda t, y: y.square(), y0, torch.tensor([0.5, 2.0]), rtol=1e-6, atol=1e-6)
    assert y.shape == (3, 2, 1)
    assert bool(torch.isnan(y).all())
    assert y.requires_grad  # still in the graph: a sampler's gradient call does not raise


def test_lotka_volterra_in_log_space_survives_a_population_collapse() -> None:
    """Fast prey growth makes the predators boom and the prey collapse to exp(-16000): the
    log-space solve stays finite where the populations themselves underflow to zero."""
    theta = torch.tensor([50.0, 1e-6, 0.01, 1e-6])
    log_z = lv.log_populations(theta, torch.tensor([30.0, 4.0]), torch.arange(1.0, 21.0))
    assert bool(torch.isfinite(log_z).all())
    assert float(log_z[-1, 0]) < -1000


def test_solve_at_rejects_times_before_t0() -> None:
    with pytest.raises(ValueError, match="strictly increasing and after t0"):
        solve_at(
            lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), 0.0, rtol=1e-6, atol=1e-6
        )


# -- the HMM ------------------------------------------------------------------------------


def _short_hmm(steps: int) -> dict[str, Any]:
    data = dict(load_reference("bball_drive_event_0-hmm_drive_0").data)
    data.update(N=steps, u=data["u"][:steps], v=data["v"][:steps])
    return data


def _brute_force(log_theta: np.ndarray, emission: np.ndarray) -> float:
    """:math:`\\log \\sum_{s_{1:T}} \\exp(e_1(s_1) + \\sum_t \\log\\theta_{s_{t-1}s_t} + e_t(s_t))`."""
    terms = []
    for path in itertools.product(range(2), repeat=emission.shape[0]):
        terms.append(
            emission[0, path[0]]
            + sum(
                log_theta[path[t - 1], path[t]] + emission[t, path[t]] for t in range(1, len(path))
            )
        )
    return float(np.logaddexp.reduce(terms))


def test_hmm_forward_algorithm_sums_over_every_state_path() -> None:
    steps = 8
    data = _short_hmm(steps)
    c = case("bball_drive_event_0-hmm_drive_0")
    u, v = np.asarray(data["u"]), np.asarray(data["v"])
    for k in range(3):
        values = {s: p[k].numpy() for s, p in c.points.items()}
        theta = np.stack([values["theta1"], values["theta2"]])
        phi, lam = values["phi"], values["lambda"]
        emission = np.log(phi) - np.outer(u, phi) + np.log(lam) - np.outer(v, lam)
        exact = _brute_force(np.log(theta), emission)
        ours = float(
            hmm.forward_log_marginal(torch.as_tensor(np.log(theta)), torch.as_tensor(emission))
        )
        assert math.isclose(ours, exact, rel_tol=1e-12, abs_tol=1e-10), (ours, exact)
        # The NumPy reference is priors plus its forward algorithm: the priors cancel in
        # the difference between the 8-step and the 1-step prefix.
        likelihood_np = hmm.log_density(values, data) - hmm.log_density(values, _short_hmm(1))
        first = _brute_force(np.log(theta), emission[:1])
        assert math.isclose(likelihood_np, exact - first, rel_tol=1e-12, abs_tol=1e-10)


def test_hmm_forward_algorithm_maps_under_vmap() -> None:
    c = case("bball_drive_event_0-hmm_drive_0")
    kw = c.posterior.pyro_data(c.ref.data)
    p = c.points
    log_theta = torch.stack([p["theta1"], p["theta2"]], dim=-2).log()
    emission = hmm._log_emission(kw["u"], kw["v"], p["phi"], p["lambda"])
    batched = hmm.forward_log_marginal(log_theta, emission)
    mapped = torch.func.vmap(hmm.forward_log_marginal)(log_theta, emission)
    torch.testing.assert_close(mapped, batched, rtol=1e-12, atol=1e-9)


def test_hmm_simulation_has_zero_mean_score_in_unconstrained_coordinates() -> None:
    """:math:`E_{y \\sim p(y|\\theta)}[\\nabla_u \\log p(y \\mid T(u))] = 0`. In the unconstrained
    coordinates: along a simplex's entries taken one by one the likelihood is not a density
    (rescaling a row of :math:`\\theta` rescales it), so only tangent directions score zero.
    200 replicates of the first 100 steps; z-scores below 5 (false alarm ~1e-5 over 6)."""
    c = case("bball_drive_event_0-hmm_drive_0")
    data = _short_hmm(100)
    model = c.posterior.native(data)
    torch.manual_seed(11)
    replicates = 200
    theta = {k: v[0] for k, v in c.points.items()}
    simulated = model.simulate({k: v.expand(replicates, *v.shape) for k, v in theta.items()})
    for key, value in simulated.items():
        assert value.shape == (replicates, 1, 100), (key, value.shape)
    z0 = model.unconstrain(theta).detach()
    scores = []
    for r in range(replicates):
        z = z0.clone().requires_grad_()
        params, _ = model.constrain(z)
        loglik = model.log_likelihood(params, {k: v[r] for k, v in simulated.items()})
        scores.append(torch.autograd.grad(loglik, z)[0])
    score = torch.stack(scores)
    zscore = score.mean(0) / (score.std(0) / math.sqrt(replicates))
    assert float(zscore.abs().max()) < 5.0, zscore
