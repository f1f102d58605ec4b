"""The NumPyro and PyMC translations of the posteriordb suite target their Stan programs.

For every posterior of the suite and each framework (NumPyro for NumPyro's NUTS, PyMC for
nutpie; ``benchmarks/posteriordb/nuts_models``), at five points, the framework's log
density minus the independent NumPy/SciPy density of the posterior module
(``stan_log_density``) is one constant.

**The points** are drawn in the unconstrained space and mapped to constrained values by the
framework's own bijections: :math:`u = T^{-1}(\\mu) + s\\,\\sigma_u\\,\\varepsilon`, with
:math:`\\mu` the reference mean, :math:`\\sigma_u` the reference sd carried through
:math:`T^{-1}` (its derivative, by a finite difference), :math:`s \\in \\{0.5, 1, 1, 1.5, 2\\}`
and :math:`\\varepsilon` standard normal; a support with an event dimension (simplex,
positive ordered) moves by :math:`0.2 s` per coordinate instead.

**Jacobians.** Both sides are densities of the constrained values: NumPyro's
``log_density`` (no Jacobian) and PyMC's ``compile_logp(jacobian=False)`` evaluated at the
value variables :math:`u = T^{-1}(x)`. The Jacobian terms that the samplers add are the
libraries' own; the one transform written here (PyMC's log-then-ordered chain for
``positive_ordered``) is checked separately against a finite-difference determinant.

**Tolerances.** As ``tests/test_posteriordb_models.py``: :math:`|\\Delta_k - \\Delta_0| \\le
r\\,(1 + \\max|f|)` with :math:`r = 10^{-10}` (a float64 sum of at most 5000 terms). The ODE
posteriors' densities are approximate on both sides: NumPyro's ``odeint`` runs at the Pyro
models' tolerances (:math:`r = 10^{-5}`, the Pyro modules' own ``LOG_DENSITY_RTOL``), and
PyMC's fixed-step RK4 is held to an absolute :data:`ODE_ATOL` = 0.01 nats over the whole
density (measured: 2.6e-3 for one_comp, whose noise sd is near 0.1 on 20 measurements, and
2e-6 for lotka_volterra).

Skipped when NumPyro (or PyMC) is not installed: they are the ``bench`` extra.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from benchmarks.posteriordb import posteriors as suite
from benchmarks.posteriordb.nuts_models import numpyro_model, pymc_model
from benchmarks.posteriordb.posteriors import load_posteriors
from benchmarks.posteriordb.spec import Posterior, load_reference

# The fifteen posteriordb posteriors have NumPyro and PyMC translations here; the
# hierarchical set (also found by load_posteriors) has its own NumPyro ones, tested in
# tests/test_hierarchical_models.py, and no PyMC ones yet.
POSTERIORS = {
    name: posterior
    for name, posterior in load_posteriors().items()
    if posterior.pyro_model.__module__.startswith(suite.__name__)
}
NAMES = sorted(POSTERIORS)
SCALES = (0.5, 1.0, 1.0, 1.5, 2.0)
LOG_DENSITY_RTOL = 1e-10
ODE_ATOL = 0.01
ODE = ("one_comp_mm_elim_abs-one_comp_mm_elim_abs", "hudson_lynx_hare-lotka_volterra")
#: The posteriors as parameters; the ODEs (a solve per point, compiled) marked slow.
CASES = [pytest.param(n, marks=pytest.mark.slow) if n in ODE else n for n in NAMES]


def _index_names(name: str, shape: tuple[int, ...]) -> list[str]:
    if shape == ():
        return [name]
    return [f"{name}[{','.join(str(i + 1) for i in idx)}]" for idx in np.ndindex(*shape)]


def _reference_stats(name: str, site: str, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    ref = load_reference(name)
    stats = {**ref.params, **ref.record.get("derived_params", {})}
    keys = _index_names(site, shape)
    mean = np.array([stats[k]["mean"] for k in keys]).reshape(shape)
    sd = np.array([stats[k]["sd"] for k in keys]).reshape(shape)
    return mean, sd


def _rtol(posterior: Posterior) -> float:
    module = sys.modules[posterior.pyro_model.__module__]
    return float(getattr(module, "LOG_DENSITY_RTOL", LOG_DENSITY_RTOL))


def _assert_constant_difference(
    framework: list[float], numpy: list[float], rtol: float, atol: float
) -> None:
    gaps = np.array(framework) - np.array(numpy)
    scale = 1 + max(abs(f) for f in numpy)
    assert np.all(np.isfinite(gaps)), (framework, numpy)
    assert np.abs(gaps - gaps[0]).max() <= rtol * scale + atol, (gaps - gaps[0], scale)


# -- NumPyro -----------------------------------------------------------------------------


@functools.cache
def numpyro_points(name: str) -> list[dict[str, np.ndarray]]:
    """Constrained points from unconstrained draws, by NumPyro's bijections."""
    import jax.numpy as jnp
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer import init_to_uniform

    model = numpyro_model(name, load_reference(name).data)
    # One eager trace for the sites' supports and shapes (seeded innermost, so the start
    # strategy finds its key; flat sites cannot be sampled, only started).
    seeded = handlers.seed(model, rng_seed=0)
    trace = handlers.trace(handlers.substitute(seeded, substitute_fn=init_to_uniform)).get_trace()
    latent = {k: s for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    rng = np.random.default_rng(20240531)
    points = []
    for scale in SCALES:
        point = {}
        for site_name, site in latent.items():
            support = site["fn"].support
            transform = biject_to(support)
            mean, sd = _reference_stats(name, site_name, tuple(site["fn"].shape()))
            u0 = np.asarray(transform.inv(jnp.asarray(mean)))
            if support.event_dim:
                spread = 0.2 * np.ones_like(u0)
            else:
                step = 1e-6 * sd
                spread = np.abs(np.asarray(transform.inv(jnp.asarray(mean + step))) - u0) / 1e-6
            u = u0 + scale * spread * rng.standard_normal(u0.shape)
            point[site_name] = np.asarray(transform(jnp.asarray(u)))
        points.append(point)
    return points


@pytest.mark.parametrize("name", CASES)
def test_numpyro_model_is_the_stan_density(name: str) -> None:
    pytest.importorskip("numpyro")
    from numpyro.infer.util import log_density

    posterior = POSTERIORS[name]
    data = load_reference(name).data
    model = numpyro_model(name, data)
    points = numpyro_points(name)
    ours = [float(log_density(model, (), {}, p)[0]) for p in points]
    theirs = [posterior.stan_log_density(p, data) for p in points]
    _assert_constant_difference(ours, theirs, _rtol(posterior), 0.0)


# -- PyMC --------------------------------------------------------------------------------


def _pymc_value_point(model: Any, point: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyMC's value variables (unconstrained) at constrained ``point``: :math:`T^{-1}(x)`."""
    values = {}
    for rv in model.free_RVs:
        value_var = model.rvs_to_values[rv]
        transform = model.rvs_to_transforms[rv]
        x = np.asarray(point[rv.name], dtype=float)
        if transform is None:
            values[value_var.name] = x
        else:
            values[value_var.name] = transform.forward(x, *rv.owner.inputs).eval()
    return values


@pytest.mark.parametrize("name", CASES)
def test_pymc_model_is_the_stan_density(name: str) -> None:
    pytest.importorskip("pymc")
    pytest.importorskip("numpyro")  # the points come from NumPyro's bijections
    posterior = POSTERIORS[name]
    data = load_reference(name).data
    model = pymc_model(name, data)
    assert sorted(rv.name for rv in model.free_RVs) == sorted(numpyro_points(name)[0])
    logp = model.compile_logp(jacobian=False)
    points = numpyro_points(name)
    ours = [float(logp(_pymc_value_point(model, p))) for p in points]
    theirs = [posterior.stan_log_density(p, data) for p in points]
    atol = ODE_ATOL if name in ODE else 0.0
    _assert_constant_difference(ours, theirs, LOG_DENSITY_RTOL, atol)


def test_pymc_positive_ordered_jacobian_is_the_maps_determinant() -> None:
    """hmm_drive_0's ``phi``: logp with the Jacobian minus without it is
    :math:`\\log|\\det \\partial x / \\partial u|` of :math:`x = T(u)`, by central differences."""
    pytest.importorskip("pymc")
    name = "bball_drive_event_0-hmm_drive_0"
    model = pymc_model(name, load_reference(name).data)
    rv = next(r for r in model.free_RVs if r.name == "phi")
    transform = model.rvs_to_transforms[rv]
    u = np.array([0.3, -0.4])
    x_of = lambda z: transform.backward(z, *rv.owner.inputs).eval()  # noqa: E731
    h = 1e-6
    J = np.column_stack([(x_of(u + h * e) - x_of(u - h * e)) / (2 * h) for e in np.eye(2)])
    value = model.rvs_to_values[rv]
    jacobian = transform.log_jac_det(value, *rv.owner.inputs).sum().eval({value: u})
    assert math.isclose(float(jacobian), math.log(abs(np.linalg.det(J))), rel_tol=1e-6)


def test_every_posterior_has_both_translations() -> None:
    pytest.importorskip("pymc")
    pytest.importorskip("numpyro")
    from benchmarks.posteriordb.nuts_models import numpyro_models, pymc_models

    assert sorted(numpyro_models.MODELS) == NAMES
    assert sorted(pymc_models.MODELS) == NAMES
