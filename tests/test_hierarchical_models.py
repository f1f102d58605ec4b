"""The hierarchical set: its Pyro models, their NumPyro translations and their references.

* Every posterior of ``benchmarks/hierarchical/posteriors`` is found by the suite's
  ``load_posteriors`` (so the runner takes it), and its reference record loads with every
  reference quantity's mean and sd finite, the quantities the model gives, the data the
  committed ``data/*.json`` and the chains mixed (R-hat < 1.01 everywhere). No NumPyro needed.
* The NumPyro translation the reference was drawn from has the Pyro model's density: at
  points of the unconstrained space, Pyro's potential (``initialize_model``, with each
  support's log-Jacobian) equals NumPyro's ``potential_energy``, and the constrained log
  densities agree too. Skipped when NumPyro is missing (it is in the ``bench`` extra).

The Pyro density against the independent SciPy one (``stan_log_density``), its gradient and
the quantities' names are checked with the posteriordb suite's in
``tests/test_posteriordb_models.py``, which runs over the same ``load_posteriors()``.

**Tolerances.** Both frameworks evaluate the same float64 terms (the same normalising
constants, the same bijections: ``exp`` for positive supports, an affine sigmoid for
intervals), so the potentials agree to rounding: :math:`|\\Delta| \\le 10^{-9}(1 + |U|)`
for sums of at most 300 terms of size :math:`|U|` (error about :math:`300\\,\\epsilon|U|
\\approx 10^{-13}|U|`), with margin for the different summation orders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.posteriordb.posteriors import load_posteriors
from benchmarks.posteriordb.sites import trace_model
from benchmarks.posteriordb.spec import HIERARCHICAL, load_reference

SET = Path(__file__).resolve().parents[1] / "benchmarks" / "hierarchical"
NAMES = sorted(p.name.removesuffix(".json.gz") for p in (SET / "reference").glob("*.json.gz"))
MODULES = sorted(p.stem for p in (SET / "posteriors").glob("*.py") if p.stem != "__init__")
POINTS = 4


# The data are float64 tensors; the models' sites must be too (as the suite runs them).
pytestmark = pytest.mark.usefixtures("float64")


def test_every_module_has_a_posterior_and_a_reference_found_by_the_suite() -> None:
    # One posterior per module, each with its reference, all loaded with the suite's.
    assert len(MODULES) == len(NAMES) >= 6
    loaded = load_posteriors(NAMES)
    assert list(loaded) == NAMES
    for name in NAMES:
        assert load_reference(name).path.parent == HIERARCHICAL


@pytest.mark.parametrize("name", NAMES)
def test_reference_has_every_quantity_finite_and_mixed(name: str) -> None:
    ref = load_reference(name)
    posterior = load_posteriors([name])[name]
    # The quantities the Pyro model's draws give are exactly the reference's.
    draws = _prior_like_draws(posterior, ref.data)
    assert set(posterior.quantities(draws)) == set(ref.params)
    for quantity, summary in {**ref.params, **ref.record.get("derived_params", {})}.items():
        assert math.isfinite(summary["mean"]) and math.isfinite(summary["sd"]), quantity
        assert summary["sd"] > 0, quantity
        assert summary["q05"] <= summary["q50"] <= summary["q95"], quantity
        assert summary["rhat"] < 1.01, (quantity, summary["rhat"])
        assert summary["ess_bulk"] > 400 and summary["ess_tail"] > 400, (quantity, summary)
    assert ref.corr.shape == (len(ref.corr_order),) * 2
    assert ref.record["n_chains"] == 4


@pytest.mark.parametrize("name", NAMES)
def test_reference_data_are_the_committed_data(name: str) -> None:
    ref = load_reference(name)
    data_name = name.split("-", 1)[0]
    assert ref.data == json.loads((SET / "data" / f"{data_name}.json").read_text())


def _prior_like_draws(posterior: Any, data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Two draws of every latent site from Stan's uniform start (Pyro only, no NumPyro)."""
    traces = [trace_model(posterior.pyro_model, posterior.pyro_data(data)) for _ in range(2)]
    latent = [
        n for n, s in traces[0].nodes.items() if s["type"] == "sample" and not s["is_observed"]
    ]
    return {n: torch.stack([t.nodes[n]["value"] for t in traces]) for n in latent}


# -- the NumPyro translations ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_numpyro_translation_has_the_pyro_models_density(name: str) -> None:
    pytest.importorskip("numpyro")
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import log_density, potential_energy
    from pyro.infer.mcmc.util import initialize_model

    from benchmarks.hierarchical.numpyro_models import MODELS

    jax.config.update("jax_enable_x64", True)
    ref = load_reference(name)
    posterior = load_posteriors([name])[name]
    kwargs = posterior.pyro_data(ref.data)
    _, pyro_potential, inverses, _ = initialize_model(posterior.pyro_model, model_kwargs=kwargs)
    # Pyro returns each support's constrained -> unconstrained map; invert to biject_to's.
    bijections = {k: t.inv for k, t in inverses.items()}
    np_kwargs = {
        k: jnp.asarray(v.numpy()) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
    }
    model = MODELS[name]
    rng = np.random.default_rng(0)
    for _ in range(POINTS):
        # Points around the reference means, in the unconstrained space of each support.
        constrained = _points_near_reference(ref, bijections, rng)
        unconstrained = {k: bijections[k].inv(v) for k, v in constrained.items()}
        u_pyro = float(pyro_potential(unconstrained))
        u_numpyro = float(
            potential_energy(
                model,
                (),
                np_kwargs,
                {k: jnp.asarray(v.numpy()) for k, v in unconstrained.items()},
            )
        )
        assert abs(u_pyro - u_numpyro) <= 1e-9 * (1 + abs(u_pyro)), (u_pyro, u_numpyro)
        # And without the Jacobians: the constrained log joint densities.
        lp_numpyro, _ = log_density(
            model, (), np_kwargs, {k: jnp.asarray(v.numpy()) for k, v in constrained.items()}
        )
        lp_pyro = -u_pyro - sum(
            float(bijections[k].log_abs_det_jacobian(unconstrained[k], v).sum())
            for k, v in constrained.items()
        )
        assert abs(lp_pyro - float(lp_numpyro)) <= 1e-9 * (1 + abs(lp_pyro))


def _points_near_reference(
    ref: Any, bijections: dict[str, Any], rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One point per latent site: the reference mean moved by up to a reference sd, mapped
    into the site's support through its unconstrained space (so it stays feasible)."""
    stats = {**ref.params, **ref.record.get("derived_params", {})}
    point = {}
    for site, transform in bijections.items():
        keys = sorted(k for k in stats if k == site or k.startswith(f"{site}["))
        keys.sort(key=lambda k: int(k[len(site) + 1 : -1]) if "[" in k else 0)
        mean = torch.tensor([stats[k]["mean"] for k in keys])
        sd = torch.tensor([stats[k]["sd"] for k in keys])
        value = mean + sd * torch.as_tensor(rng.uniform(-1, 1, len(keys)))
        shape = () if keys == [site] else (len(keys),)
        # Clamp into the support in the unconstrained space: u = T^-1(x) fails outside it.
        inner = transform.inv(value.clamp(min=1e-3) if _positive(transform) else value)
        point[site] = transform(inner.nan_to_num(0.0)).reshape(shape)
    return point


def _positive(transform: Any) -> bool:
    from torch.distributions import transforms as T

    parts = getattr(transform, "parts", [transform])
    return any(isinstance(p, T.ExpTransform | T.SigmoidTransform) for p in parts)


def test_centred_eight_schools_reference_agrees_with_posteriordbs_noncentred_one() -> None:
    """The same posterior sampled two ways: means within 4 joint MCSEs, sds within 5%."""
    ours = load_reference("eight_schools-eight_schools_centered").params
    theirs = load_reference("eight_schools-eight_schools_noncentered").params
    assert set(ours) == set(theirs)
    for quantity, ref in theirs.items():
        mcse = math.hypot(ours[quantity]["mcse_mean"], ref["mcse_mean"])
        assert abs(ours[quantity]["mean"] - ref["mean"]) <= 4 * mcse, quantity
        # sd's relative Monte Carlo error is about 1/sqrt(2 ESS) < 1.5% for ESS > 2500 each.
        assert abs(ours[quantity]["sd"] / ref["sd"] - 1) <= 0.05, quantity
