"""The posterior predictive check figure.

For each observed array :math:`y` (named like :meth:`Model.simulate`'s outputs), the
figure shows the empirical CDF of the observed values against those of replicated data sets
:math:`\\tilde y_s \\sim p(\\cdot \\mid \\theta_s)`, :math:`\\theta_s \\sim q`, and two test
statistics, :math:`T(y) = \\bar y` and :math:`T(y) = \\mathrm{sd}(y)`: the histogram of
:math:`T(\\tilde y_s)` with a line at :math:`T(y)` and the posterior predictive p-value
:math:`\\Pr(T(\\tilde y) \\ge T(y))`. A p-value near 0 or 1 says the model (or :math:`q`)
does not reproduce that feature of the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..families.base import VariationalFamily
from ..models.base import Model
from .draws import DEFAULT_SEED
from .predictive import posterior_predictive

__all__ = ["ppc_figure", "predictive_p_value"]


def predictive_p_value(replicated: Tensor, observed: float) -> float:
    """:math:`\\Pr(T(\\tilde y) \\ge T(y))` estimated from the replicated statistics."""
    return (replicated >= observed).double().mean().item()


def _ecdf(values: Tensor, grid: Tensor) -> Tensor:
    """:math:`\\hat F(t) = \\#\\{i: v_i \\le t\\} / n` at each grid point."""
    ordered = torch.sort(values).values
    return torch.searchsorted(ordered, grid, right=True).double() / values.numel()


def ppc_figure(
    model: Model,
    family: VariationalFamily,
    num_samples: int = 100,
    seed: int | None = DEFAULT_SEED,
    max_lines: int = 50,
    observed: Mapping[str, Tensor] | None = None,
) -> Any:
    """Posterior predictive check of every observed array: a ``matplotlib`` ``Figure``.

    Args:
        model, family: the fit (the model must implement :meth:`Model.simulate`).
        num_samples: replicated data sets.
        seed: seed of the draws.
        max_lines: replicated data sets drawn as histograms in the first panel.
        observed: observed arrays by name (default: the model's
            :meth:`~svi_torch.models.Model.observed_values` named like the simulated ones).
    """
    from matplotlib.figure import Figure

    replicated = posterior_predictive(model, family, num_samples, seed=seed)
    if observed is None:
        observed = {k: v for k, v in model.observed_values().items() if k in replicated}
    names = [k for k in replicated if k in observed]
    if not names:
        raise ValueError(
            f"no observed arrays named like the simulated ones ({sorted(replicated)}); pass "
            "observed={name: values}"
        )
    fig = Figure(figsize=(10, 2.8 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 3, squeeze=False)
    for row, name in enumerate(names):
        y = observed[name].detach().double().cpu().reshape(-1)
        rep = replicated[name].detach().double().cpu().reshape(num_samples, -1)
        lo = min(y.min().item(), rep.quantile(0.005).item())
        hi = max(y.max().item(), rep.quantile(0.995).item())
        grid = torch.linspace(lo, hi, 200, dtype=torch.float64)
        ax = axes[row, 0]
        # ECDFs on a fixed grid: readable for 8 points and for a million alike.
        for s in range(min(max_lines, num_samples)):
            ax.plot(
                grid,
                _ecdf(rep[s], grid),
                color="C0",
                alpha=0.2,
                linewidth=0.8,
                label="replicated" if s == 0 else None,
            )
        ax.plot(grid, _ecdf(y, grid), color="k", linewidth=1.8, label="observed")
        ax.set_title(f"{name}: empirical CDFs", fontsize=9)
        ax.legend(fontsize=7)
        for col, (label, stat) in enumerate(
            (("mean", lambda t: t.mean(-1)), ("sd", lambda t: t.std(-1))), start=1
        ):
            ax = axes[row, col]
            t_rep, t_obs = stat(rep), stat(y).item()
            ax.hist(t_rep.numpy(), bins=30, color="C0", alpha=0.6)
            ax.axvline(t_obs, color="k", linewidth=1.8)
            p = predictive_p_value(t_rep, t_obs)
            ax.set_title(f"T = {label}({name}); p = {p:.2f}", fontsize=9)
        for ax in axes[row]:
            ax.tick_params(labelsize=7)
    fig.suptitle(f"posterior predictive check ({num_samples} replicated data sets)", fontsize=10)
    return fig
