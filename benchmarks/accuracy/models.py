"""The three posteriordb reference posteriors, each as an svi_torch Model and a Pyro model.

A :class:`Posterior` reads one ``../shared/posteriordb/*.json`` file (data plus
gold-standard MCMC summaries: mean, sd, quantiles per parameter) and builds

* ``native()``: the svi_torch :class:`~svi_torch.models.Model`,
* ``pyro_model`` / ``pyro_args``: the same model written in Pyro (fitted through
  :class:`~svi_torch.models.PyroModel` and by Pyro's own SVI),
* ``quantities(draws)``: the reference quantities (named as in the JSON file, e.g.
  ``"beta[1]"``, 1-based) from named posterior draws, so that every method is scored on
  exactly the summaries posteriordb reports.

The Pyro models use the site names of the svi_torch models, so one ``quantities`` serves
both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from svi_torch.models import AutoRegressive, BayesianLinearRegression, EightSchools, Model
from svi_torch.models.timeseries import lag_matrix

__all__ = ["Posterior", "POSTERIORS", "load_posteriors"]


# -- Pyro models (written to broadcast over leading particle dimensions) ----------------------


def eight_schools_pyro(y: Tensor, sigma: Tensor) -> None:
    """Eight schools, non-centered, as in posteriordb (``mu ~ N(0, 5)``, ``tau ~ C+(0, 5)``)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def sblrc_pyro(X: Tensor, y: Tensor) -> None:
    """Linear regression without intercept, ``beta ~ N(0, 10)``, ``sigma ~ N+(0, 10)``."""
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(10.0))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal((X[idx] * beta).sum(-1), sigma), obs=y[idx])


def ark_pyro(lags: Tensor, target: Tensor) -> None:
    """AR(K) on rows (lags, target), ``alpha, beta ~ N(0, 10)``, ``sigma ~ C+(0, 2.5)``."""
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([lags.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    with pyro.plate("data", len(target)) as idx:
        mean = alpha + (lags[idx] * beta).sum(-1)
        pyro.sample("y", dist.Normal(mean, sigma), obs=target[idx])


# -- reference quantities from named draws ----------------------------------------------------


def _one_based(name: str, values: Tensor) -> dict[str, Tensor]:
    return {f"{name}[{j + 1}]": values[:, j] for j in range(values.shape[1])}


def _eight_schools_quantities(draws: dict[str, Tensor]) -> dict[str, Tensor]:
    theta = draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_tilde"]
    return {
        **_one_based("theta", theta),
        "mu": draws["mu"],
        "tau": draws["tau"],
        **_one_based("theta_trans", draws["theta_tilde"]),
    }


def _sblrc_quantities(draws: dict[str, Tensor]) -> dict[str, Tensor]:
    return {**_one_based("beta", draws["beta"]), "sigma": draws["sigma"]}


def _ark_quantities(draws: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"alpha": draws["alpha"], **_one_based("beta", draws["beta"]), "sigma": draws["sigma"]}


# -- the posteriors ---------------------------------------------------------------------------


@dataclass
class Posterior:
    """One reference posterior: data, the model in both languages, and its summaries."""

    name: str
    native: Callable[[], Model]
    pyro_model: Callable[..., None]
    pyro_args: tuple[Tensor, ...]
    data_plate: str | None
    quantities: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    #: ``{"order": [names], "matrix": [[...]]}``: the reference posterior correlations.
    correlation: dict[str, Any] = field(default_factory=dict)

    def reference_moments(self) -> tuple[list[str], Tensor, Tensor]:
        """Names, reference means and sds of every reference quantity."""
        names = list(self.reference)
        mean = torch.tensor([self.reference[n]["mean"] for n in names], dtype=torch.float64)
        sd = torch.tensor([self.reference[n]["sd"] for n in names], dtype=torch.float64)
        return names, mean, sd


def _eight_schools(data: dict[str, Any]) -> tuple:
    y = torch.tensor(data["y"], dtype=torch.get_default_dtype())
    sigma = torch.tensor(data["sigma"], dtype=torch.get_default_dtype())
    return (
        lambda: EightSchools(y, sigma),
        eight_schools_pyro,
        (y, sigma),
        None,
        _eight_schools_quantities,
    )


def _sblrc(data: dict[str, Any]) -> tuple:
    X = torch.tensor(data["X"], dtype=torch.get_default_dtype())
    y = torch.tensor(data["y"], dtype=torch.get_default_dtype())
    return (
        lambda: BayesianLinearRegression(
            X, y, noise_scale=None, prior_scale=10.0, noise_prior_scale=10.0
        ),
        sblrc_pyro,
        (X, y),
        "data",
        _sblrc_quantities,
    )


def _ark(data: dict[str, Any]) -> tuple:
    y = torch.tensor(data["y"], dtype=torch.get_default_dtype())
    order = int(data["K"])
    return (
        lambda: AutoRegressive(y, order=order, prior_scale=10.0, noise_prior_scale=2.5),
        ark_pyro,
        (lag_matrix(y, order), y[order:]),
        "data",
        _ark_quantities,
    )


#: file name -> (short name, builder from the JSON ``data`` block)
POSTERIORS: dict[str, tuple[str, Callable[[dict[str, Any]], tuple]]] = {
    "eight_schools-eight_schools_noncentered.json": ("eight_schools", _eight_schools),
    "sblrc-blr.json": ("sblrc", _sblrc),
    "arK-arK.json": ("arK", _ark),
}


def load_posteriors(directory: str | Path, only: list[str] | None = None) -> list[Posterior]:
    """Read the reference posteriors in ``directory`` (``posteriordb/*.json``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"posteriordb directory {directory} does not exist; pass --posteriordb PATH "
            "(the folder holding eight_schools-eight_schools_noncentered.json, ...)"
        )
    posteriors = []
    for filename, (short, build) in POSTERIORS.items():
        if only and short not in only:
            continue
        path = directory / filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing from the posteriordb directory")
        record = json.loads(path.read_text())
        native, model, args, plate, quantities = build(record["data"])
        reference = {**record["params"], **record.get("derived_params", {})}
        posteriors.append(
            Posterior(
                short, native, model, args, plate, quantities, reference, record["posterior_corr"]
            )
        )
    return posteriors
