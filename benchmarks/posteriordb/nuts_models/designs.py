"""The regressions' designs and responses as NumPy arrays, shared by the NumPyro and PyMC
models (Stan's transformed data, computed from the raw JSON data).

A regression of the suite is :math:`y \\sim \\mathcal{N}(X\\beta, \\sigma^2)` with a flat
:math:`\\beta` (``kidiq`` puts a half-Cauchy(2.5) on :math:`\\sigma`, the others leave it
flat). Where a posterior module already builds its design in NumPy it is reused, so each
design is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..posteriors import (
    diamonds_diamonds,
    earnings_logearn_interaction_z,
    kidiq_with_mom_work_kidscore_interaction_c2,
    mesquite_mesquite,
    nes2000_nes,
)

__all__ = ["Regression", "REGRESSIONS", "BUILDERS", "registry", "lags", "centred"]


@dataclass(frozen=True)
class Regression:
    """A flat-prior Gaussian regression of the suite.

    Attributes:
        design: JSON data -> the design :math:`X` (intercept column included), ``(N, P)``.
        response: JSON data -> :math:`y`, ``(N,)``.
        sigma_cauchy_scale: the scale of the half-Cauchy on :math:`\\sigma`, ``None`` for flat.
    """

    design: Callable[[Mapping[str, Any]], np.ndarray]
    response: Callable[[Mapping[str, Any]], np.ndarray]
    sigma_cauchy_scale: float | None = None


def _column(name: str) -> Callable[[Mapping[str, Any]], np.ndarray]:
    return lambda data: np.asarray(data[name], dtype=float)


def _earn_height(data: Mapping[str, Any]) -> np.ndarray:
    height = np.asarray(data["height"], dtype=float)
    return np.column_stack([np.ones_like(height), height])


def _kidscore_interaction(data: Mapping[str, Any]) -> np.ndarray:
    hs, iq = np.asarray(data["mom_hs"], dtype=float), np.asarray(data["mom_iq"], dtype=float)
    return np.column_stack([np.ones_like(hs), hs, iq, hs * iq])


#: The six flat-beta regressions by posteriordb name.
REGRESSIONS: dict[str, Regression] = {
    "earnings-earn_height": Regression(_earn_height, _column("earn")),
    "earnings-logearn_interaction_z": Regression(
        earnings_logearn_interaction_z._design,
        lambda data: np.log(np.asarray(data["earn"], dtype=float)),
    ),
    "kidiq-kidscore_interaction": Regression(
        _kidscore_interaction, _column("kid_score"), sigma_cauchy_scale=2.5
    ),
    "kidiq_with_mom_work-kidscore_interaction_c2": Regression(
        kidiq_with_mom_work_kidscore_interaction_c2._design, _column("kid_score")
    ),
    "nes2000-nes": Regression(nes2000_nes._design, _column("partyid7")),
    "mesquite-mesquite": Regression(mesquite_mesquite._design, _column("weight")),
}


def lags(data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """arK's conditional rows: the lag matrix (row for Stan's ``t`` holds ``y[t-1..t-K]``)
    and the targets ``y[K+1..T]``."""
    K, T, y = int(data["K"]), int(data["T"]), np.asarray(data["y"], dtype=float)
    return np.stack([y[K - k : T - k] for k in range(1, K + 1)], axis=-1), y[K:]


def centred(data: Mapping[str, Any]) -> np.ndarray:
    """diamonds' ``Xc``: the columns 2..K of ``X`` minus their means (brms' centring)."""
    return diamonds_diamonds._centred(np.asarray(data["X"], dtype=float))


#: The other nine posteriors: posteriordb name -> the name of its builder, the same in
#: each framework's module.
BUILDERS: dict[str, str] = {
    "eight_schools-eight_schools_noncentered": "eight_schools_noncentered",
    "arK-arK": "ark",
    "sblrc-blr": "blr",
    "sblri-blr": "blr",
    "diamonds-diamonds": "diamonds",
    "gp_pois_regr-gp_regr": "gp_regr",
    "bball_drive_event_0-hmm_drive_0": "hmm_drive_0",
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs": "one_comp_mm_elim_abs",
    "hudson_lynx_hare-lotka_volterra": "lotka_volterra_model",
}


def registry(
    namespace: Mapping[str, Any], regression: Callable[[Regression], Callable[..., Any]]
) -> dict[str, Callable[..., Any]]:
    """A framework's builders by posteriordb name: ``regression(spec)`` for each of
    :data:`REGRESSIONS`, and the function :data:`BUILDERS` names in ``namespace`` (the
    framework module's globals) for the others."""
    return {
        **{name: regression(spec) for name, spec in REGRESSIONS.items()},
        **{name: namespace[builder] for name, builder in BUILDERS.items()},
    }
