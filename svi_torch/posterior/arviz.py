"""Export a fit to ArviZ: an ``xarray.DataTree`` built by ArviZ's own ``from_dict``.

ArviZ 1.x (``pip install svi_torch[arviz]``) keeps inference data in an
``xarray.DataTree``; :func:`to_arviz` fills its groups from :math:`S` draws
:math:`z_s \\sim q` (one chain: the draws are independent):

* ``posterior``: the constrained parameters :math:`\\theta_s = T(z_s)` and the model's
  derived quantities, float64, with a named dimension per axis of a vector parameter
  (``beta_dim_0``, ...);
* ``posterior_predictive``: :math:`\\tilde x_s \\sim p(\\cdot \\mid \\theta_s)`
  (:meth:`Model.simulate`), where the model has it;
* ``observed_data``: the model's observed arrays (:meth:`Model.observed_values`, a Pyro
  model's ``obs=``) named like the simulated ones;
* ``log_likelihood``: :math:`\\log p(x_i \\mid \\theta_s)` per point, for ``az.loo``;
* ``sample_stats``: per draw ``lp`` :math:`= \\log p(z_s, D)` (unconstrained, Jacobian
  included: ArviZ's name for the joint log density), ``log_q`` :math:`= \\log q(z_s)`,
  ``log_weight`` :math:`= \\log p(z_s, D) - \\log q(z_s)` and ``weight``, the
  self-normalised importance weight :math:`w_s / \\sum_t w_t`; its attributes hold the
  PSIS :math:`\\hat k` of these weights with its reading, the ELBO estimate
  :math:`\\frac1S\\sum_s \\log w_s` and the training trace (``elbo_trace`` at
  ``elbo_trace_step``).

With ``lp`` and ``log_q`` beside the draws, ``az.loo_approximate_posterior(dt, log_p=
dt.sample_stats.lp, log_q=dt.sample_stats.log_q)`` corrects the LOO estimate for
:math:`q \\ne p` (Magnusson et al. 2019).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .draws import DEFAULT_SEED, constrained_draws, seeded
from .predictive import pointwise_log_likelihood, posterior_predictive

if TYPE_CHECKING:
    from ..training.result import FitResult

__all__ = ["to_arviz", "write_run_posterior", "import_arviz_base", "log_joint_of_draws"]

#: Largest draws x data points stored per group in a run's ``posterior.nc`` (16 MB of float32).
RUN_ELEMENTS = 4_000_000


def import_arviz_base() -> Any:
    """ArviZ's converters (``arviz_base``, part of ArviZ 1.x), or a one-line error."""
    try:
        import arviz_base
    except ImportError:
        raise ImportError(
            "the ArviZ export needs ArviZ 1.x (built on xarray.DataTree): "
            "pip install 'svi_torch[arviz]'"
        ) from None
    return arviz_base


def log_joint_of_draws(model: Any, z: Tensor, block: int = 500) -> Tensor:
    """:math:`\\log p(z_s, D)` of each draw on the full data, in blocks of draws (float64)."""
    with torch.no_grad():
        return torch.cat(
            [model.full_log_joint(z[i : i + block]).double() for i in range(0, z.shape[0], block)]
        )


def _numpy(value: Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    value = value.detach().cpu()
    return (value if dtype is None else value.to(dtype)).numpy()


def _dims(name: str, shape: Sequence[int], given: Mapping[str, Sequence[str]]) -> list[str]:
    """The dims of ``name`` beyond chain and draw: the user's, else ``{name}_dim_{i}``."""
    if name in given:
        return list(given[name])
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def _optional(compute: Any) -> Any:
    """``compute()``, or ``None`` when the model does not implement the hook it calls."""
    try:
        return compute()
    except NotImplementedError:
        return None


def to_arviz(
    result: FitResult,
    num_samples: int = 1000,
    seed: int | None = DEFAULT_SEED,
    *,
    predictive: bool = True,
    log_likelihood: bool = True,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence[Any]] | None = None,
    observed_data: Mapping[str, Any] | None = None,
) -> Any:
    """The fit as ArviZ's ``xarray.DataTree``; the groups are listed in the module docstring.

    Args:
        result: the fit.
        num_samples: draws :math:`S` (one chain of :math:`S` draws).
        seed: seed of the draws: the posterior group holds the same draws as
            ``result.sample(num_samples, seed=seed)``.
        predictive: include ``posterior_predictive`` and ``observed_data`` (models that
            implement :meth:`Model.simulate`).
        log_likelihood: include ``log_likelihood`` (models that implement
            :meth:`Model.pointwise_log_likelihood`).
        dims: dimension names per variable beyond ``(chain, draw)``, e.g.
            ``{"theta": ["school"], "y": ["school"]}``; default ``{name}_dim_{i}``.
        coords: coordinate values per dimension, e.g. ``{"school": ["A", ..., "H"]}``.
        observed_data: the observed arrays by name (default: the model's
            :meth:`~svi_torch.models.Model.observed_values` of the simulated names).

    Returns:
        ``xarray.DataTree``; ``dt.to_netcdf(path)`` writes it and
        ``xarray.open_datatree(path)`` (``az.from_netcdf``) reads it back.

    Example:
        >>> import arviz as az  # doctest: +SKIP
        >>> dt = result.to_arviz(num_samples=2000)  # doctest: +SKIP
        >>> az.summary(dt), az.loo(dt, pointwise=True).pareto_k  # doctest: +SKIP
    """
    from ..registry import class_path

    arviz_base = import_arviz_base()
    model, family = result.model, result.family
    given = dict(dims or {})
    with seeded(seed, family, model):
        # The fit's draws: new ones from q, or the fixed draws a method left (Pathfinder).
        z, log_q = result.latents(num_samples, seed=None)
        draws = constrained_draws(model, z)
        lp = log_joint_of_draws(model, z)
        simulated = None
        if predictive and model.num_data:
            simulated = _optional(lambda: posterior_predictive(model, family, seed=None, z=z))
    pointwise = None
    if log_likelihood and model.num_data:
        pointwise = _optional(lambda: pointwise_log_likelihood(model, family, z=z))
    log_w = lp - log_q.double()
    data: dict[str, dict[str, np.ndarray]] = {
        "posterior": {k: _numpy(v, torch.float64)[None] for k, v in draws.items()},
        "sample_stats": {
            "lp": _numpy(lp)[None],
            "log_q": _numpy(log_q, torch.float64)[None],
            "log_weight": _numpy(log_w)[None],
            "weight": _numpy(torch.softmax(log_w, 0))[None],
        },
    }
    all_dims = {k: _dims(k, v.shape[1:], given) for k, v in draws.items()}
    observed_names: list[str] = []
    if simulated is not None:
        data["posterior_predictive"] = {k: _numpy(v)[None] for k, v in simulated.items()}
        all_dims.update({k: _dims(k, v.shape[1:], given) for k, v in simulated.items()})
        source = model.observed_values() if observed_data is None else observed_data
        observed = {k: torch.as_tensor(v) for k, v in source.items() if k in simulated}
        if observed:
            data["observed_data"] = {k: _numpy(v) for k, v in observed.items()}
        observed_names = list(simulated)
    if pointwise is not None:
        name = observed_names[0] if len(observed_names) == 1 else "obs"
        data["log_likelihood"] = {name: _numpy(pointwise)[None]}
        all_dims.setdefault(name, _dims(name, pointwise.shape[1:], given))
    # The fit's one diagnosis (result.diagnose() at its defaults, kept on the result), so
    # that the export states the same k-hat as the summary, the printout and the logs.
    try:
        fit_diagnosis = result.diagnose()
        khat_value, khat_reading = fit_diagnosis.khat, fit_diagnosis.reading
        khat_se, doubtful = fit_diagnosis.khat_se, ", ".join(fit_diagnosis.doubtful)
    except (ValueError, TypeError, NotImplementedError) as err:
        khat_value, khat_reading = math.nan, " ".join(str(err).split())
        khat_se, doubtful = math.nan, ""
    stats_attrs: dict[str, Any] = {
        "elbo": float(log_w.mean()),
        "khat": khat_value,
        "khat_se": khat_se,
        "khat_reading": khat_reading,
        "doubtful": doubtful,
        "draws": result.draws_source or "new draws from q",
        "space": "lp and log_q are densities of the unconstrained z (Jacobian in lp)",
    }
    if result.history.get("elbo"):
        stats_attrs["elbo_trace"] = np.asarray(result.history["elbo"], dtype=np.float64)
        stats_attrs["elbo_trace_step"] = np.asarray(
            result.history.get("step", range(len(result.history["elbo"]))), dtype=np.float64
        )
    attrs = {
        "/": {
            "inference_library": "svi_torch",
            "inference_method": "variational inference, reverse KL(q || p)",
            "family": class_path(family),
            "model": class_path(model),
            "num_draws": num_samples,
            "seed": -1 if seed is None else int(seed),
            "steps": int(result.steps),
            "stop_reason": str(result.stop_reason),
        },
        "posterior": {"space": "constrained, with the model's derived quantities"},
        "sample_stats": stats_attrs,
    }
    return arviz_base.from_dict(data, dims=all_dims, coords=dict(coords or {}), attrs=attrs)


def write_run_posterior(result: FitResult, path: str | os.PathLike[str]) -> Path | None:
    """Write a CLI run's ``posterior.nc``; ``None`` (nothing written) without ArviZ.

    Draws: 1000, fewer for large :math:`N` (at least 100) so that the per-point groups
    (``log_likelihood``, ``posterior_predictive``) stay within :data:`RUN_ELEMENTS`
    numbers each; beyond that (:math:`N > 40\\,000`) they are left out and the file holds
    the posterior and sample statistics only. A fit the export cannot describe (e.g. an
    amortized family) warns and writes nothing.
    """
    try:
        import_arviz_base()
    except ImportError:
        return None
    num_data = max(result.model.num_data, 1)
    draws = min(1000, max(100, RUN_ELEMENTS // num_data))
    per_point = draws * num_data <= RUN_ELEMENTS
    try:
        tree = to_arviz(result, draws, predictive=per_point, log_likelihood=per_point)
    except (ValueError, TypeError, RuntimeError) as err:
        warnings.warn(f"posterior.nc not written: {' '.join(str(err).split())}", stacklevel=2)
        return None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tree.to_netcdf(tmp)
    os.replace(tmp, path)
    return path
