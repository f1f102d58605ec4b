"""The suite's posteriors written for the NUTS a user would run instead: NumPyro and PyMC.

Each of the fifteen posteriordb posteriors has a NumPyro model (:mod:`.numpyro_models`,
sampled by NumPyro's NUTS) and a PyMC model (:mod:`.pymc_models`, sampled by nutpie),
faithful to the Stan program as the Pyro translations in ``posteriors/`` are: flat priors
where Stan states none, the same constraints and truncations (equal up to a constant),
transformed data computed from the raw JSON data. Latent variables carry the Pyro sites'
names, so a posterior's ``quantities`` maps their draws to the reference quantities.

NumPyro, JAX, PyMC and nutpie are the ``bench`` extra, not the core install: nothing here
imports them at import time; :func:`numpyro_model` and :func:`pymc_model` import them when
called. The regressions' designs (:mod:`.designs`) are NumPy, shared by both frameworks.

Example:
    >>> from benchmarks.posteriordb.spec import load_reference
    >>> ref = load_reference("arK-arK")
    >>> model = numpyro_model("arK-arK", ref.data)  # doctest: +SKIP
    >>> pm_model = pymc_model("arK-arK", ref.data)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["numpyro_model", "pymc_model", "NOT_FAITHFUL"]

#: Posteriors whose translation into a framework is not faithful, with the reason (their
#: rows are "n/a"); empty: all fifteen are translated in both frameworks.
NOT_FAITHFUL: dict[tuple[str, str], str] = {}


def numpyro_model(name: str, data: Mapping[str, Any]) -> Callable[[], None]:
    """The NumPyro model of posterior ``name`` on its JSON ``data``, a function of no
    arguments (the data are bound), for ``numpyro.infer.MCMC(NUTS(model)).run(key)``."""
    import jax

    # Float64, as Stan computes (earn_height's dollar scales need it); set when a NumPyro
    # model is asked for, not at import.
    jax.config.update("jax_enable_x64", True)
    from . import numpyro_models

    return numpyro_models.MODELS[name](data)


def pymc_model(name: str, data: Mapping[str, Any]) -> Any:
    """The ``pymc.Model`` of posterior ``name`` on its JSON ``data``, for
    ``nutpie.compile_pymc_model``."""
    from . import pymc_models

    return pymc_models.MODELS[name](data)
