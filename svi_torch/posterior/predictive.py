"""Posterior predictive draws and the per-point log likelihood of a fitted family.

The posterior predictive of the variational approximation is

.. math::

    q(\\tilde x \\mid D) = \\int p(\\tilde x \\mid \\theta)\\, q(\\theta)\\, d\\theta,

drawn by ancestral sampling: :math:`\\theta_s = T(z_s)` with :math:`z_s \\sim q`, then
:math:`\\tilde x_s \\sim p(\\cdot \\mid \\theta_s)` by :meth:`Model.simulate`. The per-point
log likelihood :math:`\\ell_{si} = \\log p(x_i \\mid \\theta_s)` (a draws-by-points matrix,
what LOO and WAIC need) comes from :meth:`Model.pointwise_log_likelihood`, in blocks of
draws and of rows whose size is bounded, so that :math:`N = 10^6` points fit in memory:
only the result, :math:`S \\times N` numbers, is held at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..data import Batch, as_tensor, validate_data
from ..families.base import VariationalFamily
from ..models.base import Model
from .draws import DEFAULT_SEED, constrained_draws, draw_latents, seeded

__all__ = ["posterior_predictive", "pointwise_log_likelihood", "as_batch", "BLOCK_ELEMENTS"]

#: Elements of one (draws x rows) block: bounds the memory of the intermediate tensors.
BLOCK_ELEMENTS = 1 << 22


def as_batch(model: Model, data: Mapping[str, object]) -> Batch:
    """New inputs as a batch of the model's dtypes and device, validated.

    Each array keeps the dtype of the model's data array of the same name (the model's
    floating dtype for names it has no array for); lengths must agree.
    """
    if not isinstance(data, Mapping) or not data:
        raise TypeError(
            "data must be a non-empty mapping of array names to arrays, e.g. data={'X': X_new}"
        )
    fitted = model.data
    device = next((t.device for t in fitted.values()), torch.device("cpu"))
    batch = {}
    for name, value in data.items():
        dtype = fitted[name].dtype if name in fitted else model.dtype
        batch[name] = as_tensor(value, f"data[{name!r}]", dtype=dtype).to(device)
    validate_data(batch)
    return batch


def _simulate(model: Model, params: Mapping[str, Tensor], batch: Batch | None) -> dict[str, Tensor]:
    try:
        out = model.simulate(params, batch)
    except KeyError as err:
        raise ValueError(
            f"{type(model).__name__}.simulate needs the input {err.args[0]!r}, which data "
            f"does not hold (it has {sorted(batch or {})}); pass data={{{err.args[0]!r}: ...}}"
        ) from None
    if not isinstance(out, Mapping) or not out:
        raise TypeError(
            f"{type(model).__name__}.simulate must return a non-empty dict of named draws, "
            f"got {type(out).__name__}"
        )
    return dict(out)


def _no_data_check(model: Model, what: str) -> None:
    if model.num_data == 0 and not model.data:
        raise ValueError(
            f"{type(model).__name__} has no data ({model.no_data_reason}), so it has no {what}"
        )


def posterior_predictive(
    model: Model,
    family: VariationalFamily,
    num_samples: int = 1000,
    data: Mapping[str, object] | None = None,
    seed: int | None = DEFAULT_SEED,
    z: Tensor | None = None,
) -> dict[str, Tensor]:
    """Draws :math:`\\tilde x_s \\sim p(\\cdot \\mid \\theta_s)`, :math:`\\theta_s \\sim q`.

    Args:
        model: the fitted model (must implement :meth:`Model.simulate`).
        family: its fitted family.
        num_samples: :math:`S`, one simulated data set per posterior draw.
        data: new inputs to simulate at (e.g. ``{"X": X_new}`` for a regression), or
            ``None`` for the fitted data's inputs.
        seed: seed of the draws (see :mod:`svi_torch.posterior.draws`): the posterior
            draws are those of ``FitResult.sample(num_samples, seed=seed)``.
        z: posterior draws to use instead of new ones, shape ``(S, D)``
            (``num_samples`` is then ignored; the simulation noise still follows ``seed``).

    Returns:
        Named draws keyed like the observed arrays, each of shape ``(S, M, ...)`` with
        :math:`M` the rows of ``data`` (:math:`N` for the fitted data).

    Example:
        >>> draws = posterior_predictive(model, family, 200, {"X": X_new})  # doctest: +SKIP
        >>> draws["y"].shape  # doctest: +SKIP
        torch.Size([200, 10])
    """
    if type(model).simulate is Model.simulate:
        # A model that simulates has a predictive even without data arrays (a Pyro model
        # with no data plate replays the whole model); a density-only target does not.
        _no_data_check(model, "posterior predictive")
    batch = None if data is None else as_batch(model, data)
    rows = model.num_data if batch is None else next(iter(batch.values())).shape[0]
    # Blocks of draws only: simulate sees whole data sets (a model may couple its rows).
    per_block = max(1, BLOCK_ELEMENTS // max(rows * max(model.dim, 1), 1))
    with seeded(seed, family, model):
        if z is None:
            z, _ = draw_latents(family, num_samples, seed=None)
        num_samples = z.shape[0]
        params = constrained_draws(model, z, derived=False)
        pieces: list[dict[str, Tensor]] = []
        with torch.no_grad():
            for start in range(0, num_samples, per_block):
                block = {k: v[start : start + per_block] for k, v in params.items()}
                pieces.append(_simulate(model, block, batch))
    return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}


def pointwise_log_likelihood(
    model: Model,
    family: VariationalFamily,
    num_samples: int = 1000,
    seed: int | None = DEFAULT_SEED,
    data: Mapping[str, object] | None = None,
    z: Tensor | None = None,
) -> Tensor:
    """:math:`\\ell_{si} = \\log p(x_i \\mid \\theta_s)` for :math:`\\theta_s \\sim q`: shape ``(S, N)``.

    Computed in blocks of draws and rows of about :data:`BLOCK_ELEMENTS` entries each, so
    memory beyond the :math:`S \\times N` result stays bounded whatever :math:`N`.

    Args:
        model, family: the fit.
        num_samples: :math:`S`.
        seed: seed of the draws.
        data: held-out points (inputs and observations) instead of the fitted data.
        z: draws to use instead of new ones, shape ``(S, D)`` (``num_samples`` and ``seed``
            are then ignored).
    """
    _no_data_check(model, "per-point log likelihood")
    batch = model.data if data is None else as_batch(model, data)
    rows_total = next(iter(batch.values())).shape[0] if batch else 0
    if z is None:
        z, _ = draw_latents(family, num_samples, seed)
    num = z.shape[0]
    params = constrained_draws(model, z, derived=False)
    # Rows per block: about BLOCK_ELEMENTS (draws x rows x D) numbers at once.
    rows = max(256, BLOCK_ELEMENTS // max(min(num, 64) * max(model.dim, 1), 1))
    draws = max(1, min(num, BLOCK_ELEMENTS // max(rows, 1)))
    out = None
    with torch.no_grad():
        for start in range(0, max(rows_total, 1), rows):
            chunk = {k: v[start : start + rows] for k, v in batch.items()}
            for first in range(0, num, draws):
                block = {k: v[first : first + draws] for k, v in params.items()}
                values = model.pointwise_log_likelihood(block, chunk)
                if out is None:
                    width = rows_total if rows_total else values.shape[-1]
                    out = values.new_empty((num, width))
                out[first : first + values.shape[0], start : start + values.shape[-1]] = values
    assert out is not None
    if not math.isfinite(out.sum().item()):
        bad = (~torch.isfinite(out)).sum().item()
        raise ValueError(
            f"the per-point log likelihood has {bad} NaN/Inf entries: q puts mass where "
            f"{type(model).__name__}'s likelihood is undefined"
        )
    return out
