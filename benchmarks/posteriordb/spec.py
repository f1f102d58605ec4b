"""What the posteriordb suite knows about one posterior: its models, its data, its reference.

A :class:`Posterior` pairs a Pyro model faithful to the posterior's Stan program (flat
priors where Stan states none, ``target +=`` as ``pyro.factor``, Stan's implicit
truncations, transformed data computed in the model) with an independent NumPy/SciPy
implementation of the same density, the map from posterior draws to posteriordb's
reference quantities, and optionally a native svi_torch model.

:func:`load_reference` reads the posteriordb record (Stan code, data, NUTS summaries,
correlations): from ``root`` when given, else from ``../shared/posteriordb`` beside the
repository when that folder holds the posterior, else from the copy kept in
``benchmarks/posteriordb/reference/`` (gzipped, so a clone runs the suite on its own), or
for the hierarchical set's posteriors from ``benchmarks/hierarchical/reference/`` (records
of the same keys, made by its ``make_references.py``).

Example:
    >>> ref = load_reference("eight_schools-eight_schools_noncentered")
    >>> ref.params["mu"]["mean"]  # doctest: +ELLIPSIS
    4.41...
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

__all__ = [
    "Posterior",
    "Reference",
    "load_reference",
    "REPO",
    "SHARED_POSTERIORDB",
    "VENDORED",
    "HIERARCHICAL",
]

REPO = Path(__file__).resolve().parents[2]
SHARED_POSTERIORDB = REPO.parent / "shared" / "posteriordb"
VENDORED = Path(__file__).resolve().parent / "reference"
HIERARCHICAL = REPO / "benchmarks" / "hierarchical" / "reference"


@dataclass(frozen=True)
class Reference:
    """A posteriordb record: the Stan program, its data and the NUTS reference summaries.

    Attributes:
        name: ``<data>-<model>``, e.g. ``"eight_schools-eight_schools_noncentered"``.
        stan_code: the Stan program.
        data: the data dict the Stan program reads (JSON values).
        params: per reference quantity in Stan's 1-based names (``"beta[1]"``): mean, sd,
            q05, q50, q95 (and more where posteriordb gives it).
        corr_order: the quantities' order in ``corr``.
        corr: the reference correlation matrix (rounded; use it entry by entry).
        path: the file it was read from.
    """

    name: str
    stan_code: str
    data: dict[str, Any]
    params: dict[str, dict[str, float]]
    corr_order: list[str]
    corr: np.ndarray
    path: Path
    record: dict[str, Any] = field(repr=False, default_factory=dict)


def load_reference(name: str, root: str | Path | None = None) -> Reference:
    """The posteriordb record ``name`` (see the module docstring for where it is read)."""
    candidates = []
    if root is not None:
        candidates += [Path(root) / f"{name}.json", Path(root) / f"{name}.json.gz"]
    else:
        candidates += [
            SHARED_POSTERIORDB / f"{name}.json",
            VENDORED / f"{name}.json.gz",
            HIERARCHICAL / f"{name}.json.gz",
        ]
    for path in candidates:
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as handle:
                record = json.load(handle)
            corr = record.get("posterior_corr") or {"order": [], "matrix": []}
            return Reference(
                name=name,
                stan_code=record.get("stan_code", ""),
                data=record["data"],
                params=record["params"],
                corr_order=list(corr["order"]),
                corr=np.asarray(corr["matrix"], dtype=float),
                path=path,
                record=record,
            )
    raise FileNotFoundError(
        f"posteriordb record {name!r} not found in {[str(c) for c in candidates]}"
    )


@dataclass(frozen=True)
class Posterior:
    """One posterior of the suite.

    Attributes:
        name: the posteriordb name (the file name without ``.json``).
        pyro_model: the Pyro model, called as ``pyro_model(**pyro_data(ref.data))``.
        pyro_data: JSON data -> keyword arguments of ``pyro_model`` (float64 tensors and
            ints, as ``torch.as_tensor`` gives them; no transformation: transformed data
            are computed inside the model, as in the Stan program).
        stan_log_density: NumPy/SciPy implementation of the Stan program's ``target``,
            ``stan_log_density(values, data)`` with ``values`` the constrained parameters
            keyed by the Pyro model's latent site names (NumPy arrays) and ``data`` the
            JSON data; equal to the Pyro model's log density up to an additive constant.
        quantities: named posterior draws (latent sites and ``pyro.deterministic``
            sites, leading draw dimension) -> the reference quantities keyed by
            posteriordb's 1-based names, each of shape ``(draws,)``.
        data_plate: the Pyro model's plate over data points, if it can be minibatched.
        native: optional builder of an equivalent native svi_torch model from the JSON
            data; its parameter names are the Pyro model's site names, so
            ``quantities`` serves both.
        notes: what this posterior stresses, and known facts about it.
        sd_free: reference quantities whose sd is not a target (no finite posterior
            variance: the reference sd is a Monte Carlo artefact); scored by their means.
    """

    name: str
    pyro_model: Callable[..., Any]
    pyro_data: Callable[[Mapping[str, Any]], dict[str, Any]]
    stan_log_density: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], float]
    quantities: Callable[[Mapping[str, Tensor]], dict[str, Tensor]]
    data_plate: str | None = None
    native: Callable[[Mapping[str, Any]], Any] | None = None
    notes: str = ""
    sd_free: tuple[str, ...] = ()
