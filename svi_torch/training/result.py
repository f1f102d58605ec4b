"""What ``fit`` returns: the trained family, its history, and posterior summaries."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..families.base import VariationalFamily
from ..models.base import Model
from ..posterior.draws import (
    DEFAULT_SEED,
    check_num_samples,
    constrained_draws,
    draw_latents,
    seeded,
)
from ..posterior.predictive import pointwise_log_likelihood, posterior_predictive
from ..posterior.summary import SummaryTable, summary_table
from ..reweighting import resample_indices

if TYPE_CHECKING:
    from ..diagnostics import Diagnostics

__all__ = ["FitResult", "Decision", "estimate_elbo", "DIAGNOSTIC_DRAWS"]

#: Draws of q behind a fit's diagnosis when no method made one: the PSIS k-hat's Monte
#: Carlo error is about (1 + k)/sqrt(3 sqrt(S)), 0.12 at k = 0.6 with these.
DIAGNOSTIC_DRAWS = 4000


@dataclass
class Decision:
    """One decision of a method (the automatic method logs each stage it tried).

    Attributes:
        stage: what was tried (``"map"``, ``"ngvi from laplace"``, ``"k-hat"``, ...).
        outcome: ``"ok"``, ``"completed"``, ``"failed"``, ``"repaired"``, a reading...
        reason: one line: how it went, or why the method moved on.
        grad_evals: gradient evaluations spent, in full-data units.
        seconds: wall time spent.
    """

    stage: str
    outcome: str
    reason: str
    grad_evals: float = 0.0
    seconds: float = 0.0


@dataclass(repr=False)
class FitResult:
    """Outcome of a training run, and the start of what comes after it.

    Every method that draws takes ``seed`` (default :data:`DEFAULT_SEED`, so the same call
    gives the same figures; ``None`` draws from the global RNG). Seeded calls run under a
    forked RNG and never change the global stream. All of them use the same draws for the
    same ``num_samples`` and ``seed``: ``sample``, the summaries, the predictive, the per-point
    log likelihood and the ArviZ export describe the very same :math:`z_s \\sim q`.

    Attributes:
        family: the trained family (averaged iterates when averaging ran).
        model: the model it was fitted to.
        history: metrics at each logging step; ``history["step"]`` holds the steps.
        steps: optimisation steps taken.
        stop_reason: why the run stopped (``"max_steps"`` or the convergence message).
        wall_time: seconds spent in the training loop.
        skipped_steps: steps skipped because the loss or gradient was not finite.
        method: the method that produced the family (``"sgd"``, ``"ngvi"``, for the
            automatic method ``"auto -> <stage>"``).
        grad_evals: gradient evaluations of the log joint in full-data units (a minibatch
            gradient at one point counts :math:`B/N`, a Hessian :math:`D`), the start's
            MAP search included.
        interrupted_by: the signal that paused the run, or None.
        decisions: what the method tried, in order (see :class:`Decision`).
        diagnostics: the final PSIS k-hat, importance-weighted evidence and ELBO: the last
            :meth:`diagnose` at its defaults, or the automatic method's (``None`` until computed;
            stored by :meth:`save` and restored by :func:`~svi_torch.load_result`).
        config: the resolved config of a CLI run (``None`` for a fit from Python); what
            rebuilds the model when the result is loaded.
        draws: fixed unconstrained draws ``(R, D)``, equally weighted, that the after-fit
            tools use *instead of* new draws from the family (``None``: draw from the
            family). Pathfinder sets them to its importance-resampled draws: ``sample``,
            the summaries, the predictive, the per-point log likelihood and the ArviZ export
            then describe those draws (the first ``num_samples`` of them; the default is
            all of them when fewer than the usual default, and asking for more than ``R``
            is an error), whatever ``seed``. ``diagnose`` still describes the family.
        draws_log_q: :math:`\\log` of the density the fixed draws were proposed from (for
            Pathfinder the mixture of the paths' Gaussians), ``(R,)``, or ``None``.
        draws_source: how the fixed draws were made, in a line (``""`` without them); the
            automatic method's importance resampling of q says so here.
        weighted_pool: for importance-resampled draws, the draws of q they were resampled
            from with their log q and Pareto-smoothed log weights, ``((S, D), (S,), (S,))``:
            asking for more than the :attr:`draws` held resamples that many from it
            (seeded), rather than failing.

    Example:
        >>> result = st.fit(model, family)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
        >>> result.predictive(200, data={"X": X_new})["y"].shape  # doctest: +SKIP
        torch.Size([200, 10])
    """

    family: VariationalFamily
    model: Model
    history: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    stop_reason: str = "max_steps"
    wall_time: float = 0.0
    skipped_steps: int = 0
    method: str = ""
    grad_evals: float = 0.0
    interrupted_by: int | None = None
    decisions: list[Decision] = field(default_factory=list)
    diagnostics: Diagnostics | None = None
    config: dict[str, Any] | None = None
    draws: Tensor | None = None
    draws_log_q: Tensor | None = None
    draws_source: str = ""
    weighted_pool: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def decision_summary(self) -> str:
        """The decisions in one line, e.g. ``map: ok -> ngvi from laplace: completed -> ...``."""
        if not self.decisions:
            return f"{self.method or 'fit'}: {self.steps} steps; {self.stop_reason}"
        parts = [f"{d.stage}: {d.outcome}" for d in self.decisions]
        evals = sum(d.grad_evals for d in self.decisions)
        seconds = sum(d.seconds for d in self.decisions)
        return f"{' -> '.join(parts)} ({evals:.4g} gradient evaluations, {seconds:.3g} s)"

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_time if self.wall_time > 0 else math.nan

    def __repr__(self) -> str:
        elbo = self.history.get("elbo")
        last = f"; last logged ELBO {elbo[-1]:.6g}" if elbo else ""
        lines = [
            f"FitResult({type(self.family).__name__} on {type(self.model).__name__}, "
            f"dim={self.model.dim}, {self.model.data_summary})",
            f"  {self.method or 'fit'}: {self.steps} steps in {self.wall_time:.3g} s "
            f"({self.skipped_steps} skipped); stop: {self.stop_reason}{last}",
        ]
        if self.diagnostics is not None:
            diag = self.diagnostics
            lines.append(f"  PSIS k-hat {diag.khat_text} from {diag.num_samples} draws of q")
            if diag.doubtful:
                lines.append(f"  {diag.doubtful_text}")
        if self.draws_source:
            lines.append(f"  draws: {self.draws_source}")
        lines.append(
            "  .summary() .sample() .predictive() .log_likelihood() .diagnose() .to_arviz() .save()"
        )
        return "\n".join(lines)

    # -- draws and summaries ----------------------------------------------------------
    def num_draws(self, num_samples: int | None, default: int) -> int:
        """``num_samples``, or the tools' ``default`` (capped at the fixed draws held)."""
        if num_samples is not None:
            return num_samples
        if self.draws is not None:
            return min(default, self.draws.shape[0])
        return default

    def latents(
        self, num_samples: int | None = None, seed: int | None = DEFAULT_SEED
    ) -> tuple[Tensor, Tensor]:
        """``(z, log q(z))``, shapes ``(S, D)`` and ``(S,)``: the draws every after-fit tool uses.

        New draws :math:`z_s \\sim q` from the family, or the first ``num_samples`` of the
        fixed :attr:`draws` when the method left some (``seed`` then plays no part).
        """
        num_samples = self.num_draws(num_samples, 1000)
        if self.draws is None:
            return draw_latents(self.family, num_samples, seed)
        check_num_samples(num_samples)
        held = self.draws.shape[0]
        if num_samples > held and self.weighted_pool is not None:
            # Importance-resampled draws: more of them come from the same weighted pool.
            pool, pool_log_q, pool_log_w = self.weighted_pool
            generator = None if seed is None else torch.Generator().manual_seed(int(seed))
            index = resample_indices(pool_log_w, num_samples, generator).to(pool.device)
            return pool[index], pool_log_q[index]
        if num_samples > held:
            raise ValueError(
                f"this fit holds {held} fixed draws ({self.method or 'the method'}'s "
                f"resampled draws), fewer than the {num_samples} asked for; ask for at most "
                f"{held}, or refit with more (e.g. st.methods.Pathfinder(num_draws="
                f"{num_samples}))"
            )
        z = self.draws[:num_samples]
        if self.draws_log_q is None:
            return z, torch.full((num_samples,), math.nan, dtype=torch.float64)
        return z, self.draws_log_q[:num_samples]

    def sample(
        self, num_samples: int | None = None, seed: int | None = DEFAULT_SEED, derived: bool = True
    ) -> dict[str, Tensor]:
        """Named constrained draws, each of shape ``(num_samples, *shape)`` (default 1000,
        or all the fixed draws a method such as Pathfinder left when they are fewer).

        With ``derived`` (default) the model's derived quantities (:meth:`Model.derived`,
        e.g. eight schools' ``theta``) come after the parameters.
        """
        z, _ = self.latents(num_samples, seed)
        return constrained_draws(self.model, z, derived)

    def summary(
        self, num_samples: int | None = None, seed: int | None = DEFAULT_SEED, khat: bool = True
    ) -> SummaryTable:
        """The posterior table: mean, sd, 5/50/95% quantiles and Monte Carlo s.e. of the mean
        of every constrained scalar and derived quantity, with the fit's PSIS :math:`\\hat k`
        (the one of :meth:`diagnose`, computed once per fit and the same everywhere it is
        reported; ``khat=False`` skips it when it is not computed yet). Default 4000 draws
        (all the fixed draws when a method left fewer).

        ``print(result.summary())`` prints it; ``.to_pandas()`` gives a DataFrame. See
        :mod:`svi_torch.posterior.summary`.
        """
        num_samples = self.num_draws(num_samples, 4000)
        z, _ = self.latents(num_samples, seed)
        draws = constrained_draws(self.model, z)
        value, reading, notes = None, "not computed", []
        if khat or self.diagnostics is not None:
            try:
                diag = self.diagnose()
                value, reading = diag.khat, diag.reading
                notes.append(f"k-hat {diag.khat_text} from the fit's {diag.num_samples} draws")
                if diag.doubtful:
                    notes.append(diag.doubtful_text)
            except (ValueError, TypeError, NotImplementedError) as err:
                reading = " ".join(str(err).split())
        if self.draws_source:
            notes.append(f"draws: {self.draws_source}")
        return summary_table(draws, num_samples, value, reading, seed, note="; ".join(notes))

    def posterior_summary(
        self, num_samples: int | None = None, seed: int | None = DEFAULT_SEED
    ) -> dict[str, dict[str, float]]:
        """Mean, sd and 5/50/95% quantiles of every constrained scalar and derived quantity,
        e.g. ``{"beta[0]": {"mean": ..., "sd": ..., "q05": ..., "q50": ..., "q95": ...}}``.

        The nested-dict form of :meth:`summary` (without :math:`\\hat k`); the same draws.
        """
        return self.summary(num_samples, seed, khat=False).as_dict()

    def elbo(self, num_samples: int = 1000, seed: int | None = DEFAULT_SEED) -> tuple[float, float]:
        """Full-data ELBO estimate and its standard error; see :func:`estimate_elbo`."""
        with seeded(seed, self.family, self.model):
            return estimate_elbo(self.model, self.family, num_samples)

    def diagnose(
        self, num_samples: int | None = None, seed: int | None = DEFAULT_SEED
    ) -> Diagnostics:
        """PSIS k-hat ± its error with its reading, the doubtful quantities, importance-weighted
        log p(D) ± se and ELBO ± se of the family.

        See :func:`svi_torch.diagnostics.diagnose`; ``.as_dict()`` gives the
        ``diagnostics/khat`` and ``diagnostics/log_evidence_iw`` scalars to log. At the
        default arguments this is *the fit's* diagnosis: the one in :attr:`diagnostics`
        (the automatic method's, or computed now from :data:`DIAGNOSTIC_DRAWS` draws and
        kept, with a ``RuntimeWarning`` when it reads "bad"), so that the summary, the
        printout, the logs and the ArviZ export all state the same :math:`\\hat k`. Other
        arguments compute a new one and keep nothing.
        """
        from ..diagnostics import OK_KHAT, diagnose, khat_warning  # deferred: imports objectives

        if num_samples is None and seed == DEFAULT_SEED and self.diagnostics is not None:
            return self.diagnostics
        count = DIAGNOSTIC_DRAWS if num_samples is None else num_samples
        with seeded(seed, self.family, self.model):
            diag = diagnose(self.model, self.family, count, None)
        if num_samples is None and seed == DEFAULT_SEED:
            self.diagnostics = diag
            if diag.khat > OK_KHAT:
                warnings.warn(khat_warning(diag, self.family), RuntimeWarning, stacklevel=2)
        return diag

    # -- what comes after the fit ---------------------------------------------------------
    def predictive(
        self,
        num_samples: int | None = None,
        data: Mapping[str, object] | None = None,
        seed: int | None = DEFAULT_SEED,
    ) -> dict[str, Tensor]:
        """Posterior predictive draws :math:`\\tilde x_s \\sim p(\\cdot\\mid\\theta_s)`,
        :math:`\\theta_s \\sim q`, at the fitted inputs (``data=None``) or at new ones
        (e.g. ``data={"X": X_new}``): named tensors of shape ``(num_samples, M, ...)``.

        See :func:`svi_torch.posterior.posterior_predictive`.
        """
        num_samples = self.num_draws(num_samples, 1000)
        z = self.latents(num_samples)[0] if self.draws is not None else None
        return posterior_predictive(self.model, self.family, num_samples, data, seed, z=z)

    def log_likelihood(
        self,
        num_samples: int | None = None,
        seed: int | None = DEFAULT_SEED,
        data: Mapping[str, object] | None = None,
    ) -> Tensor:
        """:math:`\\log p(x_i \\mid \\theta_s)` per draw and data point: shape
        ``(num_samples, N)``, computed in bounded blocks (for LOO and WAIC).

        See :func:`svi_torch.posterior.pointwise_log_likelihood`.
        """
        num_samples = self.num_draws(num_samples, 1000)
        z = self.latents(num_samples)[0] if self.draws is not None else None
        return pointwise_log_likelihood(self.model, self.family, num_samples, seed, data, z=z)

    def to_arviz(
        self, num_samples: int | None = None, seed: int | None = DEFAULT_SEED, **options: Any
    ) -> Any:
        """ArviZ's ``xarray.DataTree`` of the fit (posterior, posterior predictive, observed
        data, log likelihood, sample stats); see :func:`svi_torch.posterior.to_arviz`."""
        from ..posterior.arviz import to_arviz

        return to_arviz(self, self.num_draws(num_samples, 1000), seed, **options)

    def save(self, path: str | os.PathLike[str], diagnostics: bool = True) -> Path:
        """Write the fit to ``path`` (safe to load, checksummed, atomic); load it back with
        :func:`svi_torch.load_result`. See :mod:`svi_torch.posterior.persistence`."""
        from ..posterior.persistence import save_result

        return save_result(self, path, diagnostics)

    def marginals_figure(
        self,
        reference: Mapping[str, Tensor] | None = None,
        num_samples: int = 4000,
        seed: int | None = DEFAULT_SEED,
        max_panels: int = 12,
    ) -> Any:
        """Constrained marginals of :math:`q` against ``reference`` draws, else the exact
        posterior when the model has one; see
        :func:`svi_torch.training.monitoring.marginals_figure`."""
        from .monitoring import exact_posterior, marginals_figure

        posterior = exact_posterior(self.model) if reference is None else None
        return marginals_figure(
            self.model,
            self.family,
            posterior,
            max_panels=max_panels,
            num_samples=num_samples,
            reference=reference,
            seed=seed,
        )

    def ppc_figure(
        self,
        num_samples: int = 100,
        seed: int | None = DEFAULT_SEED,
        observed: Mapping[str, Tensor] | None = None,
    ) -> Any:
        """Posterior predictive check figure; see :func:`svi_torch.posterior.ppc_figure`.

        ``observed`` maps the simulated arrays' names to the data (default: the model's
        :meth:`~svi_torch.models.Model.observed_values`, a Pyro model's ``obs=`` arrays).
        """
        from ..posterior.plots import ppc_figure

        return ppc_figure(self.model, self.family, num_samples, seed, observed=observed)


def estimate_elbo(
    model: Model, family: VariationalFamily, num_samples: int = 1000, chunk: int = 250
) -> tuple[float, float]:
    """:math:`\\widehat{\\mathrm{ELBO}} = \\frac1S\\sum_s \\log p(z_s, D) - \\log q(z_s)` on the
    full data, with its Monte Carlo standard error :math:`\\hat\\sigma/\\sqrt{S}`."""
    values = []
    with torch.no_grad():
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            z, log_q = family.rsample_and_log_prob((n,))
            values.append(model.full_log_joint(z) - log_q)
    terms = torch.cat(values).double()
    return terms.mean().item(), (terms.std() / math.sqrt(terms.numel())).item()
