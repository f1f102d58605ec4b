"""Pathfinder as a method (``st.fit(model, family, method="pathfinder")``) and as a start.

The algorithm is :mod:`svi_torch.methods.pathfinder` (Zhang, Carpenter, Gelman and Vehtari
2022): L-BFGS paths on the full-data :math:`\\log p(z, D)` from dispersed starts, a Gaussian
per iterate from the inverse-Hessian factors, an ELBO per iterate, the best iterate per
path, the paths pooled by PSIS importance resampling. This module runs it on a model and
turns its result into a :class:`~svi_torch.training.FitResult`:

* **the family** is placed at the best path's Gaussian (``set_moments``; a family that is
  not Gaussian but has ``initialize_from_gaussian(loc, covariance)`` is fitted to it that
  way; any other family is refused in one line);
* **the draws**: ``result.sample()`` (and the summaries, the predictive, the ArviZ export)
  returns Pathfinder's resampled draws, held in ``result.draws`` (unconstrained, equally
  weighted), not new draws from the family;
* ``result.diagnostics``: the PSIS :math:`\\hat k` of the pooled importance weights with
  its reading, the importance-weighted :math:`\\log p(D)` and the pooled proposal's ELBO;
* ``result.decisions``: one line per path (starts, iterations, stop reason, back-offs,
  best ELBO and its iterate, gradients), the pooling (:math:`\\hat k`, effective sample
  size, largest weight, distinct draws), every warning, and where the family was placed,
  so that a fit whose draws are copies of a few points is *reported* as such;
* ``result.grad_evals``: full-data gradient evaluations (L-BFGS and the starts); the
  density-only evaluations (ELBO draws, pooled draws) are stated in the decisions.

**Full data only**: L-BFGS's line search and the ELBO comparisons need a deterministic log
density, so the method refuses ``batch_size < N`` (and the loop's ``steps``, ``epochs``,
``convergence`` and ``resume``, which it does not have). With a ``checkpoint_path`` it
writes one checkpoint at the end, in the loop's format plus the draws, so that a command
line run directory loads back (:func:`svi_torch.load_run`) with its draws.

**Defaults and why.** Stan's are 4 paths, history 5, line-search :math:`c_2 = 0.9`, 25 ELBO
draws, 1000 draws a path, 1000 resampled draws. Here ``history_size`` is
:math:`\\min(D, 50)` and ``wolfe_c2 = 0.01`` (a near-exact line search), the rest as Stan.
Measured on the conjugate regressions of ``benchmarks/gaussian_vi_evals.py`` (N = 1000,
D = 5, 20, 100; that script prints both settings): KL(q‖p) of the best
Gaussian 0.0026 / 0.19 / 3.2 nats at D = 5 / 20 / 100 with Stan's settings, 0 / 0.032 / 2.1
with these, at 56 / 115 / 276 against 73 / 141 / 258 gradient evaluations and fewer
density evaluations (fewer iterations: 6 / 10 / 16 a path instead of 13 / 26 / 57). The
history is capped at 50 because an iterate's Gaussian costs :math:`O(DJ^2)`; L-BFGS
rarely runs more iterations than that on a posterior it can fit. Pathfinder's Gaussian only
corrects the diagonal along the directions the path explored, so for :math:`D \\gtrsim 50`
it is a start, not a fit: use it as ``init="pathfinder"`` of NGVI, SGD or batch-and-match.

Example:
    >>> result = st.fit(model, st.families.FullRankGaussian(model.dim),
    ...                 method="pathfinder")  # doctest: +SKIP
    >>> result.sample()["beta"].shape, result.diagnostics.reading  # doctest: +SKIP
    (torch.Size([1000, 5]), 'good')
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ..diagnostics import Diagnostics, log_evidence_iw
from ..families.base import VariationalFamily
from ..families.gaussian import GaussianFamily
from ..models.base import Model
from ..objectives.base import Objective
from ..training.logging import Logger
from ..training.loop import prepare_state
from ..training.result import Decision, FitResult
from ..training.state import TrainConfig
from .base import (
    Method,
    check_choice,
    check_positive_int,
    check_positive_number,
    refuse_objective,
    refuse_trainable,
    register_method,
)
from .pathfinder import RESAMPLING, PathfinderResult, pathfinder_model

__all__ = [
    "Pathfinder",
    "run_pathfinder",
    "place_at_pathfinder",
    "pathfinder_decisions",
    "pathfinder_diagnostics",
    "HISTORY_CAP",
]

#: ``history_size=None`` uses :math:`\\min(D, \\text{HISTORY\\_CAP})` pairs (module docstring).
HISTORY_CAP = 50

#: Loop settings Pathfinder has no use for, with the one-line reason it refuses them.
_LOOP_ONLY = {
    "steps": "Pathfinder runs L-BFGS to its tolerances; bound it with Pathfinder(max_iters=...)",
    "epochs": "Pathfinder runs L-BFGS to its tolerances; bound it with Pathfinder(max_iters=...)",
    "convergence": "Pathfinder stops on L-BFGS's own tolerances",
    "resume": "Pathfinder has no training loop to resume (a run takes seconds: run it again)",
}


@register_method
@dataclass(frozen=True)
class Pathfinder(Method):
    """Multi-path Pathfinder on the full-data log density (module docstring).

    Args:
        num_paths: L-BFGS paths from dispersed starts (Stan: 4).
        history_size: L-BFGS pairs :math:`J`; ``None``: :math:`\\min(D, 50)` (Stan: 5).
        wolfe_c2: the line search's curvature constant (Stan's L-BFGS: 0.9); 0.01 gives
            more accurate Gaussians in fewer iterations (module docstring).
        max_iters: L-BFGS iterations per path at most.
        elbo_draws: draws per iterate's ELBO estimate (Stan: 25).
        draws_per_path: draws from each path's best Gaussian, pooled (Stan: 1000).
        num_draws: draws returned (Stan: 1000); ``result.sample`` gives at most these.
        resample: ``"with_replacement"`` (Stan), ``"without_replacement"``, or ``"off"``
            (all pooled draws, which are then *not* equally weighted: refused by the method,
            available from :func:`~svi_torch.methods.pathfinder.pathfinder`).
        init_radius: half-width of the uniform jitter of the starts around
            ``model.initial_point()`` (zero when it has none), unconstrained (Stan: 2).
        elbo_patience: stop a path after this many iterations without a larger ELBO
            (None: to L-BFGS's tolerances, as Stan); where the log density has no maximum
            L-BFGS would otherwise run to ``max_iters`` far past the best iterate.
        warn: raise :class:`~svi_torch.methods.pathfinder.PathfinderWarning` when the draws
            are unreliable (the messages are in ``result.decisions`` either way).
    """

    name: ClassVar[str] = "pathfinder"
    num_paths: int = 4
    history_size: int | None = None
    wolfe_c2: float = 0.01
    max_iters: int = 1000
    elbo_draws: int = 25
    draws_per_path: int = 1000
    num_draws: int = 1000
    resample: str = "with_replacement"
    init_radius: float = 2.0
    elbo_patience: int | None = 50
    warn: bool = True

    def __post_init__(self) -> None:
        for name in ("num_paths", "max_iters", "elbo_draws", "draws_per_path", "num_draws"):
            check_positive_int(getattr(self, name), f"Pathfinder {name}")
        if self.history_size is not None:
            check_positive_int(self.history_size, "Pathfinder history_size")
        if self.elbo_patience is not None:
            check_positive_int(self.elbo_patience, "Pathfinder elbo_patience")
        check_positive_number(self.wolfe_c2, "Pathfinder wolfe_c2")
        if self.wolfe_c2 >= 1:
            raise ValueError(f"Pathfinder wolfe_c2 must be in (1e-4, 1), got {self.wolfe_c2}")
        check_choice(self.resample, RESAMPLING[:2], "Pathfinder resample")
        if not (isinstance(self.init_radius, int | float) and math.isfinite(self.init_radius)):
            raise ValueError(
                f"Pathfinder init_radius must be a number >= 0, got {self.init_radius!r}"
            )
        if self.init_radius < 0:
            raise ValueError(f"Pathfinder init_radius must be >= 0, got {self.init_radius!r}")
        if self.resample == "without_replacement" and (
            self.num_draws > self.num_paths * self.draws_per_path
        ):
            raise ValueError(
                "Pathfinder resample='without_replacement' needs num_draws <= num_paths * "
                f"draws_per_path = {self.num_paths * self.draws_per_path}, got {self.num_draws}"
            )

    # -- checks ------------------------------------------------------------------------------
    def validate(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
    ) -> None:
        refuse_objective(objective, "pathfinder", "chooses its Gaussians by their ELBO")
        if not isinstance(family, GaussianFamily) and not callable(
            getattr(family, "initialize_from_gaussian", None)
        ):
            raise TypeError(
                f"method='pathfinder' places a Gaussian family (MeanFieldGaussian, "
                f"FullRankGaussian, LowRankGaussian) at its best Gaussian; "
                f"{type(family).__name__} is not one and has no initialize_from_gaussian. "
                "Use init='pathfinder' with method='sgd' for it (from a Gaussian family), or "
                "method='sgd'"
            )
        refuse_trainable(model, "pathfinder", "only the posterior over z")
        defaults = TrainConfig()
        for key, why in _LOOP_ONLY.items():
            if getattr(settings, key) != getattr(defaults, key):
                raise ValueError(f"method='pathfinder' does not take {key}=: {why}")
        if settings.batch_size is not None and settings.batch_size < model.num_data:
            raise ValueError(
                f"method='pathfinder' needs the full-data log density (L-BFGS's line search "
                f"and the ELBO comparisons need a deterministic one), so batch_size="
                f"{settings.batch_size} < N={model.num_data} is refused; leave batch_size unset"
            )
        prepare_state(model, family, objective, settings)  # the loop's own checks and moves

    # -- the fit -----------------------------------------------------------------------------
    def fit(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
    ) -> FitResult:
        began = time.perf_counter()
        self.validate(model, family, objective, settings)
        result = run_pathfinder(model, self, seed=settings.seed, warn=self.warn)
        placed = place_at_pathfinder(result, family)
        decisions = pathfinder_decisions(result)
        decisions.append(Decision("family", "placed", placed))
        diagnostics = pathfinder_diagnostics(result)
        decisions.append(
            Decision("k-hat", diagnostics.reading, f"PSIS k-hat {diagnostics.khat:.2f}")
        )
        iterations = sum(p.num_iters for p in result.paths)
        stop = "; ".join(sorted({p.stop_reason or "failed" for p in result.paths}))
        fitted = FitResult(
            family=family,
            model=model,
            steps=iterations,
            stop_reason=f"pathfinder: {len(result.paths)} paths ({stop})",
            wall_time=time.perf_counter() - began,
            method=self.summary,
            grad_evals=float(result.num_grad_evals),
            decisions=decisions,
            diagnostics=diagnostics,
            draws=result.draws.detach(),
            draws_log_q=result.log_q.detach(),
        )
        if settings.checkpoint_path is not None:
            _write_checkpoint(fitted, settings.checkpoint_path, self)
        return fitted

    def settings_for(self, dim: int) -> dict[str, Any]:
        """The keyword arguments of :func:`~svi_torch.methods.pathfinder.pathfinder`."""
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "warn"}
        if options["history_size"] is None:
            options["history_size"] = min(dim, HISTORY_CAP)
        return options


def run_pathfinder(
    model: Model,
    method: Pathfinder | None = None,
    *,
    seed: int = 0,
    warn: bool = True,
    **changes: Any,
) -> PathfinderResult:
    """:func:`~svi_torch.methods.pathfinder.pathfinder_model` with ``method``'s settings.

    ``changes`` override them (the start uses fewer draws). Linear-algebra failures inside
    torch (a NaN reaching a QR factorisation, say) come out as one-line ``RuntimeError``.
    """
    options = (method or Pathfinder()).settings_for(model.dim)
    options.update(changes)
    device = next((b.device for b in model.buffers()), torch.device("cpu"))
    try:
        return pathfinder_model(model, seed=seed, warn=warn, device=device, **options)
    except torch.linalg.LinAlgError as err:
        raise RuntimeError(
            f"pathfinder: a linear-algebra step failed ({' '.join(str(err).split())[:200]}); "
            "the log density may be non-finite or flat along the paths: check the model, or "
            "pass a feasible start through the model's initial_point"
        ) from None


def place_at_pathfinder(result: PathfinderResult, family: VariationalFamily) -> str:
    """Place ``family`` at the best path's Gaussian; returns one line saying how."""
    gaussian = result.gaussian
    path = result.paths[result.best_path]
    where = (
        f"path {result.best_path}'s Gaussian (iterate {path.best_iter}, ELBO {path.best_elbo:.6g})"
    )
    if isinstance(family, GaussianFamily):
        result.set_family(family)
        return f"set_moments at {where}"
    loc = family.parameters().__next__()
    family.initialize_from_gaussian(  # type: ignore[attr-defined]
        gaussian.loc.to(loc), gaussian.covariance().to(loc)
    )
    return f"initialize_from_gaussian at {where}"


def pathfinder_decisions(result: PathfinderResult) -> list[Decision]:
    """Per-path lines, the pooling, and every warning, as :class:`Decision` entries."""
    decisions = []
    for path in result.paths:
        if path.failure:
            outcome, reason = "failed", path.failure
        else:
            outcome = "ok"
            reason = (
                f"{path.num_iters} L-BFGS iterations ({path.stop_reason}), "
                f"{path.init_attempts} start(s), {path.num_backoffs} back-off(s), "
                f"{path.num_skipped_pairs} skipped pair(s); best ELBO {path.best_elbo:.6g} at "
                f"iterate {path.best_iter}; {path.num_density_evals} density evaluations"
            )
        decisions.append(Decision(f"path {path.index}", outcome, reason, path.num_grad_evals))
    pooled = result.pooled_log_weights.shape[0]
    decisions.append(
        Decision(
            "pooling",
            result.khat.reading,
            f"PSIS k-hat {result.khat.value:.2f} ({result.khat.reading}); ESS {result.ess:.0f} "
            f"of {pooled} pooled draws; largest weight {result.max_weight:.3f}; "
            f"{result.num_distinct} distinct of {result.draws.shape[0]} returned draws",
            seconds=result.seconds,
        )
    )
    decisions.extend(Decision("warning", "pathfinder", message) for message in result.warnings)
    return decisions


def pathfinder_diagnostics(result: PathfinderResult) -> Diagnostics:
    """The diagnostics of the pooled proposal :math:`\\frac1I\\sum_i q_i`: PSIS :math:`\\hat k`
    (of the smoothed pooled weights), importance-weighted :math:`\\log p(D)` and its ELBO."""
    raw = result.pooled_log_ratios
    finite = raw[torch.isfinite(raw)]
    value, stderr = log_evidence_iw(finite)
    # Draws outside the support count as -inf in the ELBO; the evidence uses the finite ones.
    elbo = float(raw.mean()) if finite.numel() == raw.numel() else -math.inf
    elbo_se = float(finite.std() / math.sqrt(finite.numel())) if finite.numel() > 1 else math.nan
    return Diagnostics(
        khat=result.khat.value,
        reading=result.khat.reading,
        log_evidence_iw=value,
        log_evidence_iw_se=stderr,
        elbo=elbo,
        elbo_se=elbo_se,
        num_samples=int(raw.numel()),
    )


def _write_checkpoint(result: FitResult, path: Any, method: Pathfinder) -> None:
    """The loop's checkpoint keys that :func:`svi_torch.load_run` reads, plus the draws."""
    from ..training.checkpoint import save_checkpoint

    save_checkpoint(
        path,
        {
            "step": result.steps,
            "method": method.describe(),
            "family": result.family.state_dict(),
            "model_params": {k: v.detach() for k, v in result.model.named_parameters()},
            "history": {},
            "wall_time": result.wall_time,
            "skipped_steps": 0,
            "grad_evals": result.grad_evals,
            "draws": result.draws,
            "draws_log_q": result.draws_log_q,
        },
    )
