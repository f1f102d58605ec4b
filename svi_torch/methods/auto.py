"""The automatic method: a documented decision procedure with fallbacks, the default of ``fit``.

:class:`Auto` chooses and chains loop methods, and records every decision on the result
(``result.decisions``, summarised in ``result.decision_summary``):

1. **Which path.** Natural-gradient VI when it applies — a Gaussian family, a model with
   no trainable parameters of its own, the ELBO as the objective (unset, or an
   :class:`~svi_torch.objectives.ELBO`), one process. Otherwise stochastic gradients
   (:class:`~svi_torch.methods.sgd.SGD`, Adam with the averaging schedule); a family that
   is not Gaussian but can start from a Gaussian (``initialize_from_gaussian``) is placed
   at the Laplace approximation first.
2. **MAP** (:func:`~svi_torch.methods.starts.find_map`): L-BFGS on the full-data log joint
   with a line search that backs off non-finite values, restarts from dispersed points,
   Newton polishing, and checks that the point is a maximum. A model whose log density is
   not finite anywhere tried is invalid: the one error this method raises for a model.
3. **The chain**, each stage with divergence detection (the ELBO falling beyond its noise)
   and the health guard (non-finite steps skipped, rolled back, and a stop after too many):

   a. NGVI from the Laplace approximation (the Hessian at the MAP, repaired if it is not
      positive definite), when a MAP was found and :math:`D \\le 500`;
   a'. otherwise (no MAP, or :math:`D > 500`): a start at Pathfinder's best Gaussian
      (:mod:`~svi_torch.methods.pathfinder_method`; its :math:`\\hat k`, distinct draws
      and warnings are logged as the ``pathfinder`` decision), then NGVI from it
      (:math:`D \\le 200`, exact Hessians) and batch-and-match from it (full-rank and
      low-rank families; a draw per 20 dimensions, 8 to 64, at most 500 steps), in that
      order, or batch-and-match first above 200 dimensions, where NGVI's gradient-only
      curvature is unreliable. Measured: on the centred eight schools (no MAP: the density
      grows without bound as :math:`\\tau \\to 0`) the former chain failed with a
      ``set_moments`` error in its smaller-step stage, the new one ends at ELBO -32.6
      (mu 4.46 ± 3.31; NUTS 4.4 ± 3.3); on a D = 600 conjugate regression (N = 2000)
      every former stage failed (NGVI non-finite precision updates, SGD falling), BaM
      from Pathfinder reaches KL(q‖p) 6e-7 in 300 steps of 32 draws. The common path
      (a MAP with :math:`D \\le 500`) does not run Pathfinder;
   b. NGVI from the best point with a quarter of the default step;
   c. SGD (Adam, decaying step, iterate averaging) from the best point with the Laplace
      scales where they exist, else from the family as built.

   A stage fails — and the next one starts — when its steps stay non-finite beyond the
   health guard's roll-backs, when it diverges, on a linear-algebra failure, or when it
   completes with a final ELBO (full data, with its Monte Carlo error) more than three
   standard errors below its start's. The first stage that completes without failing is
   the result; if none does, the q with the highest ELBO seen (a stage's start or result)
   is. Every failure is recorded with its reason.
4. **After the fit** (:meth:`_AutoRun.finish`): the fit's one diagnosis — PSIS
   :math:`\\hat k` with its Monte Carlo error and reading, and the doubtful quantities —
   then, where q is doubtful (:math:`\\hat k > 0.5` or a doubtful quantity): the model's
   reparameterised form (hierarchical location-scale sites non-centred) fitted by the same
   chain and kept when its ELBO wins; with :math:`\\hat k \\le 0.7` on what is kept, q's
   draws importance-resampled with their Pareto-smoothed weights (``result.draws``). A
   ``RuntimeWarning`` names the doubtful quantities for :math:`\\hat k > 0.7`, or for
   resampled draws resting on an ESS below :data:`MIN_RESAMPLED_ESS`. A stage that ends at
   most :data:`SMALL_FALL` nats below its start's ELBO keeps its start.

The stop rule (``convergence``) is on unless the caller set it. Gradient evaluations are
counted in full-data units (a minibatch gradient at one point is :math:`B/N`, a Hessian
:math:`D`).

Example:
    >>> result = st.fit(model, st.families.FullRankGaussian(model.dim))  # doctest: +SKIP
    >>> print(result.decision_summary)  # doctest: +SKIP
    auto: map ok (54 evals) -> ngvi from laplace: completed (2000 steps) ...; k-hat 0.12 (good)
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..diagnostics import (
    GOOD_KHAT,
    Diagnostics,
    diagnose_draws,
    importance_draws,
    khat_warning,
    psis_smooth,
)
from ..families.base import VariationalFamily
from ..families.gaussian import (
    FullRankGaussian,
    GaussianFamily,
    LowRankGaussian,
    MeanFieldGaussian,
)
from ..models.base import Model
from ..objectives.base import Objective
from ..objectives.elbo import ELBO
from ..reweighting import doubtful_quantities, quantity_checks, resample_indices
from ..training.checkpoint import load_checkpoint
from ..training.convergence import ConvergenceMonitor
from ..training.divergence import DivergenceCheck
from ..training.health import NonFiniteLossError
from ..training.logging import Logger
from ..training.result import DIAGNOSTIC_DRAWS, Decision, FitResult
from ..training.state import DEFAULT_STEPS, TrainConfig
from .bam_method import BaM
from .base import LoopMethod, Method, register_method
from .natural_gradient import HESSIAN_MAX_DIM
from .ngvi import NGVI
from .sgd import SGD
from .starts import (
    LAPLACE_MAX_DIM,
    Initialization,
    MapEstimate,
    find_map,
    laplace_precision,
    pathfinder_start,
    start_point,
)

__all__ = ["Auto"]

#: Above this k-hat the fit is flagged (Yao et al. 2018).
KHAT_WARN = 0.7
#: Stop-rule window of the natural-gradient stages (steps).
NGVI_WINDOW = 100
#: A stage that ends below its start's ELBO by at most this (nats of KL(q || p)) keeps its
#: start: a real but negligible fall (minibatch noise at the answer), no reason to go on.
SMALL_FALL = 0.1
#: Importance-resampled draws with doubtful quantities and an ESS below this warn: the
#: corrected sd of a heavy-tailed scale has a relative error of about sqrt(k - 1)/(2 sqrt(ESS))
#: (k its kurtosis), some 8% at ESS 400 for k = 10, the width of the [0.8, 1.25] band's edge.
MIN_RESAMPLED_ESS = 500
#: When non-centring every site loses, each site alone is tried if there are at most this many.
MAX_SINGLE_SITES = 3
#: Step budget of the batch-and-match stage when ``steps`` is not given.
BAM_STAGE_STEPS = 500


@register_method
@dataclass(frozen=True)
class Auto(Method):
    """The automatic method: MAP, Laplace, natural-gradient VI with fallbacks (module docstring).

    Args:
        diagnostic_draws: draws for the final PSIS k-hat and the ELBO comparisons
            (default: 4000, fewer for large data, at least 200).
        warn: warn when k-hat is above 0.7.
        reparameterize: when the fit is doubtful (k-hat above 0.5 or a doubtful quantity),
            also fit the model's
            :meth:`~svi_torch.models.Model.reparameterized` form where it has one (the Pyro
            bridge non-centres hierarchical location-scale sites) and keep the better.
    """

    name: ClassVar[str] = "auto"
    diagnostic_draws: int | None = None
    warn: bool = True
    reparameterize: bool = True

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
        if settings.convergence is None:
            settings = replace(settings, convergence=True)
        run = _AutoRun(self, model, family, objective, settings, loggers, callbacks)
        result = run.execute()
        result.method = f"auto -> {result.method}"
        result.decisions = run.decisions
        if result.interrupted_by is None:
            result = run.finish(result)
        result.wall_time = time.perf_counter() - began
        return result


class _AutoRun:
    """One execution of :class:`Auto` (the chain's state and its decision log)."""

    def __init__(
        self,
        auto: Auto,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
        loggers: Sequence[Logger],
        callbacks: Sequence[Any],
    ) -> None:
        self.auto, self.model, self.family, self.objective = auto, model, family, objective
        self.settings, self.loggers, self.callbacks = settings, list(loggers), list(callbacks)
        self.decisions: list[Decision] = []
        self.map: MapEstimate | None = None
        self.resumed: dict[str, Any] | None = None
        self.candidates: list[_Candidate] = []
        self._accepted = False
        self._pathfinder: Any = None  # the Pathfinder start, shared by the stages from it
        # The last full-data diagnosis and the family state it describes: the final ELBO of
        # the last stage and the final k-hat are of the same q, so it is computed once.
        self._diagnosed: tuple[list[Tensor], _Diagnosis] | None = None

    # -- the decision procedure ----------------------------------------------------------
    def execute(self) -> FitResult:
        self._read_checkpoint()
        reason = _ngvi_unavailable(self.model, self.family, self.objective)
        if reason is None:
            return self._gaussian_chain()
        self._record("path", "sgd", f"natural-gradient VI does not apply: {reason}")
        return self._sgd_path()

    def _gaussian_chain(self) -> FitResult:
        if self.resumed is not None:
            best, precision = self.resumed["best_point"], self.resumed.get("precision")
            laplace_ok, first = bool(self.resumed["laplace_ok"]), int(self.resumed["stage"])
            self.candidates = [_Candidate(**c) for c in self.resumed.get("candidates", [])]
        else:
            self.map = self._find_map()
            best, precision, first = self.map.z, self.map.precision, 0
            laplace_ok = self.map.converged and precision is not None
        stages = self._stages(laplace_ok)
        last: FitResult | None = None
        for index in range(first, len(stages)):
            label, make = stages[index]
            result = self._run_stage(index, label, make(), best, precision, laplace_ok)
            if result is not None and (result.interrupted_by is not None or self._accepted):
                return result
            last = result if result is not None else last
        if self.candidates:
            # No stage ended above its start: keep the best q seen (a start or a result).
            chosen = max(self.candidates, key=lambda c: c.elbo)
            self.family.load_state_dict(chosen.state)
            self._record("choice", chosen.label, f"the highest ELBO seen, {chosen.elbo:.6g}")
            if last is not None:
                last.method = chosen.label
                last.grad_evals = sum(d.grad_evals for d in self.decisions)
                return last
        raise RuntimeError(  # every stage failed: say what was tried
            "the automatic method could not fit this model: "
            + "; ".join(f"{d.stage}: {d.reason}" for d in self.decisions)
        )

    def _stages(self, laplace_ok: bool) -> list[tuple[str, Callable[[], LoopMethod]]]:
        """The chain, as (label, method factory): a method is built only if it is reached."""
        stages: list[tuple[str, Callable[[], LoopMethod]]] = []
        if laplace_ok and self.family.dim <= LAPLACE_MAX_DIM:
            stages.append(("ngvi from laplace", lambda: NGVI(init="laplace")))
        else:
            # No Laplace start (no MAP, an unusable Hessian, or D too large for one):
            # Pathfinder's Gaussian needs neither a maximum nor a Hessian. From it NGVI with
            # exact Hessians (D <= HESSIAN_MAX_DIM), else batch-and-match, which needs only
            # scores (NGVI's gradient-only curvature failed from every start at D = 300 and
            # 600; BaM from Pathfinder reached KL 6e-7 at D = 600, module docstring).
            ngvi = ("ngvi from pathfinder", lambda: NGVI(init="pathfinder"))
            stages.extend([ngvi] if self.family.dim <= HESSIAN_MAX_DIM else [])
            if isinstance(self.family, FullRankGaussian | LowRankGaussian):
                stages.append(("bam from pathfinder", self._bam))
            stages.extend([ngvi] if self.family.dim > HESSIAN_MAX_DIM else [])
        stages.append(
            ("ngvi from the best point, smaller step", lambda: NGVI(init="map", step_scale=0.25))
        )
        stages.append(("sgd from the best point", lambda: SGD(init="map")))
        return stages

    def _bam(self) -> BaM:
        """Batch-and-match for the chain: a draw per 20 dimensions (8 to 64), 500 steps at
        most unless ``steps`` says otherwise (the stop rule usually ends it sooner)."""
        draws = min(64, max(8, self.family.dim // 20))
        return BaM(init="pathfinder", num_draws=draws)

    def _run_stage(
        self,
        index: int,
        label: str,
        method: LoopMethod,
        best: torch.Tensor,
        precision: torch.Tensor | None,
        laplace_ok: bool,
    ) -> FitResult | None:
        began = time.perf_counter()
        saved_family = {k: v.detach().clone() for k, v in self.family.state_dict().items()}
        resuming = self.resumed is not None and self.resumed["stage"] == index
        settings = self.settings if resuming else replace(self.settings, resume=False)
        if isinstance(method, BaM) and settings.steps is None and settings.epochs is None:
            settings = replace(settings, steps=BAM_STAGE_STEPS)
        if isinstance(method, NGVI | BaM) and settings.convergence is True:
            # Natural-gradient steps settle within a few hundred steps: a shorter stop-rule
            # window than Adam's (whose default scales with the budget) ends the run sooner.
            window = max(50, min(NGVI_WINDOW, (settings.steps or DEFAULT_STEPS) // 20))
            settings = replace(settings, convergence=ConvergenceMonitor(window=window))
        start_elbo, start_state = None, saved_family
        self._accepted = False
        try:
            start = None
            if not resuming:
                start = self._place(method, best, precision, laplace_ok)
                start_elbo = self._elbo()
                start_state = {k: v.detach().clone() for k, v in self.family.state_dict().items()}
            else:
                assert self.resumed is not None
                start_elbo = self.resumed.get("start_elbo")
                start_state = self.resumed.get("start_family", saved_family)
            loop = method.prepare(
                self.model,
                self.family,
                self.objective,
                settings,
                self.loggers,
                self.callbacks,
                divergence=DivergenceCheck(),
                start=start,
                method={"name": "auto"},
                extra_state={
                    "stage": index,
                    "best_point": best,
                    "precision": precision,
                    "laplace_ok": laplace_ok,
                    "start_elbo": list(start_elbo) if start_elbo is not None else None,
                    "start_family": start_state,
                    "start_evals": start.evaluations if start is not None else 0,
                    "candidates": [dataclasses.asdict(c) for c in self.candidates],
                    "decisions": [dataclasses.asdict(d) for d in self.decisions],
                },
            )
            result = loop.run()
        except (NonFiniteLossError, torch.linalg.LinAlgError, _StageFailure, ValueError) as err:
            # ValueError: a step the family cannot hold (e.g. set_moments of a covariance that
            # lost definiteness from a start where the density has no maximum); the inputs
            # were validated before the chain started.
            self.family.load_state_dict(saved_family)
            self._record(label, "failed", _one_line(err), 0.0, time.perf_counter() - began)
            return None
        # The start's evaluations (the shared MAP search, Pathfinder) are recorded as
        # decisions of their own: the stage counts its loop's only.
        shared = start.evaluations if start is not None else 0
        if start is None and self.resumed is not None:
            shared = self.resumed.get("start_evals", 0)
        evals = result.grad_evals - shared
        result.method = label
        if result.interrupted_by is not None:
            self._record(label, "interrupted", result.stop_reason, evals, result.wall_time)
            return result
        if result.stop_reason.startswith("diverged"):
            self.family.load_state_dict(saved_family)
            self._record(label, "failed", result.stop_reason, evals, result.wall_time)
            if start_elbo is not None:
                self.candidates.append(
                    _Candidate(start_elbo[0], f"{label} (its start)", start_state)
                )
            return None
        final = self._elbo()
        result.grad_evals = sum(d.grad_evals for d in self.decisions) + evals
        if final is None:
            self.family.load_state_dict(saved_family)
            self._record(
                label, "failed", "the fitted q has no finite ELBO", evals, result.wall_time
            )
            return None
        fell = start_elbo is not None and start_elbo[0] - final[0] > 3 * math.hypot(
            start_elbo[1], final[1]
        )
        if fell and start_elbo is not None and start_elbo[0] - final[0] <= SMALL_FALL:
            # A fall too small to matter (minibatch noise around a start that was already
            # the answer): keep the start, the better q, rather than pay for another stage.
            self.family.load_state_dict(start_state)
            outcome = (
                f"{result.steps} steps; {result.stop_reason}; its start kept (ELBO "
                f"{start_elbo[0]:.6g} against the end's {final[0]:.6g}, within {SMALL_FALL} nats)"
            )
            self._record(label, "completed", outcome, evals, time.perf_counter() - began)
            result.grad_evals = sum(d.grad_evals for d in self.decisions)
            self._accepted = True
            return result
        if fell:
            # Completed, but the ELBO fell below its start's: not a fit to keep as it is.
            assert start_elbo is not None
            self._record(
                label,
                "failed",
                f"{result.steps} steps, but the ELBO fell from its start's {start_elbo[0]:.6g} "
                f"± {start_elbo[1]:.2g} to {final[0]:.6g} ± {final[1]:.2g}",
                evals,
                time.perf_counter() - began,
            )
            self.candidates.append(_Candidate(start_elbo[0], f"{label} (its start)", start_state))
            state = {k: v.detach().clone() for k, v in self.family.state_dict().items()}
            self.candidates.append(_Candidate(final[0], label, state))
            self.family.load_state_dict(saved_family)
            return result
        outcome = f"{result.steps} steps; {result.stop_reason}"
        self._record(label, "completed", outcome, evals, time.perf_counter() - began)
        result.grad_evals = sum(d.grad_evals for d in self.decisions)
        self._accepted = True
        return result

    def _place(
        self,
        method: LoopMethod,
        best: torch.Tensor,
        precision: torch.Tensor | None,
        laplace_ok: bool,
    ) -> Initialization:
        """The stage's start from the shared MAP search (no second search).

        NGVI from Laplace and SGD (when a MAP was found) start at the Laplace
        approximation; the smaller-step NGVI at the best point with the family's scales;
        SGD without a MAP from the family as built (the best point may have run off).
        """
        if method.init == "pathfinder":
            return self._pathfinder_start()
        dtype = self.model.dtype
        estimate = self.map if self.map is not None else MapEstimate(best, math.nan, laplace_ok, "")
        z = estimate.z.to(dtype)
        if method.init == "laplace" or (isinstance(method, SGD) and laplace_ok):
            try:
                matrix, repaired = laplace_precision(self.model, z, precision)
            except ValueError as err:
                raise _StageFailure(f"no Laplace approximation: {_one_line(err)}") from None
            if repaired:
                self._record("laplace", "repaired", repaired)
            with torch.no_grad():
                self.family.set_moments(z, _covariance(matrix))
            return Initialization("laplace", estimate, matrix, repaired)
        if isinstance(method, SGD):
            return Initialization("prior")
        with torch.no_grad():
            self.family.loc.copy_(z.to(self.family.loc))  # type: ignore[union-attr]
        return Initialization("map", estimate)

    def _pathfinder_start(self) -> Initialization:
        """Place the family at Pathfinder's best Gaussian, logging what Pathfinder found."""
        if self._pathfinder is not None:  # a later stage from the same start: no new run
            self._pathfinder.set_family(self.family)
            return Initialization("pathfinder", pathfinder=self._pathfinder)
        began = time.perf_counter()
        try:
            start = pathfinder_start(self.model, self.family, seed=self.settings.seed)
        except (ValueError, RuntimeError, TypeError) as err:
            raise _StageFailure(f"no Pathfinder start: {_one_line(err)}") from None
        found = self._pathfinder = start.pathfinder
        failed = sum(p.failure is not None for p in found.paths)
        reason = (
            f"best Gaussian of {len(found.paths) - failed} path(s) ({failed} failed); PSIS "
            f"k-hat {found.khat.value:.2f} ({found.khat.reading}), {found.num_distinct} "
            f"distinct of {found.draws.shape[0]} draws; {found.num_density_evals} density "
            "evaluations"
        )
        if found.warnings:
            reason += "; " + "; ".join(found.warnings)
        self._record("pathfinder", "ok", reason, found.num_grad_evals, time.perf_counter() - began)
        return start

    def _find_map(self) -> MapEstimate:
        began = time.perf_counter()
        self.family.to(dtype=self.model.dtype)
        estimate = find_map(
            self.model, start_point(self.model, self.family), seed=self.settings.seed
        )
        outcome = "ok" if estimate.converged else "not a MAP"
        self._record(
            "map", outcome, estimate.reason, estimate.evaluations, time.perf_counter() - began
        )
        return estimate

    def _sgd_path(self) -> FitResult:
        began = time.perf_counter()
        method = SGD()
        settings = (
            self.settings if self.resumed is not None else replace(self.settings, resume=False)
        )
        start = Initialization("prior")
        gaussian_start = getattr(self.family, "initialize_from_gaussian", None)
        if self.resumed is None and callable(gaussian_start) and self._gaussian_capable():
            try:
                estimate = self._find_map()
                if estimate.converged and estimate.precision is not None:
                    matrix, _ = laplace_precision(self.model, estimate.z, estimate.precision)
                    gaussian_start(estimate.z, _covariance(matrix).to(estimate.z))
                    self._record("start", "laplace", "family placed at the Laplace approximation")
            except (ValueError, _StageFailure) as err:
                self._record("start", "as built", f"no Gaussian start: {_one_line(err)}")
        loop = method.prepare(
            self.model,
            self.family,
            self.objective,
            settings,
            self.loggers,
            self.callbacks,
            start=start,
            method={"name": "auto"},
            extra_state={"stage": "sgd", "decisions": []},
        )
        result = loop.run()
        self._record(
            "sgd",
            "completed" if result.interrupted_by is None else "interrupted",
            f"{result.steps} steps; {result.stop_reason}",
            result.grad_evals,
            time.perf_counter() - began,
        )
        result.method = "sgd"
        result.grad_evals = sum(d.grad_evals for d in self.decisions)
        return result

    # -- comparisons, diagnostics, resume ------------------------------------------------------
    def _draws(self) -> int:
        """Draws of q per full-data diagnosis: :data:`DIAGNOSTIC_DRAWS` (k-hat's error about
        0.12 at 0.6) unless the data make a pass costly, then fewer, never under 200."""
        if self.auto.diagnostic_draws is not None:
            return self.auto.diagnostic_draws
        cost = max(self.model.num_data, 1) * max(self.model.dim, 1)
        return int(min(DIAGNOSTIC_DRAWS, max(200, 8e8 // cost)))

    def _diagnosis(self, quantities: bool = True) -> _Diagnosis:
        """The family as it is, diagnosed on full data; reused while the family is unchanged.

        ``quantities=False`` (a stage's ELBO comparisons) skips the doubtful quantities; a
        later call with them adds them to the same draws rather than drawing again.
        """
        state = [t.detach().clone() for t in self.family.state_dict().values()]
        if self._diagnosed is not None:
            before, diagnosis = self._diagnosed
            if len(before) == len(state) and all(map(torch.equal, before, state)):
                if quantities and not diagnosis.with_quantities:
                    diagnosis = diagnosis.completed(self.model)
                    self._diagnosed = (before, diagnosis)
                return diagnosis
        with torch.random.fork_rng(devices=[], enabled=self.settings.seed is not None):
            if self.settings.seed is not None:
                torch.manual_seed(self.settings.seed)
            z, log_q, log_w = importance_draws(self.model, self.family, self._draws())
        diagnostics = diagnose_draws(self.model, z, log_w, quantities)
        diagnosis = _Diagnosis(diagnostics, z, log_q, log_w, quantities)
        self._diagnosed = (state, diagnosis)
        return diagnosis

    def _elbo(self) -> tuple[float, float] | None:
        """Full-data ELBO of the family as it is, with its s.e. (None if not finite)."""
        try:
            diagnostics = self._diagnosis(quantities=False).diagnostics
        except ValueError:
            return None
        return diagnostics.elbo, diagnostics.elbo_se

    def finish(self, result: FitResult) -> FitResult:
        """The final PSIS k-hat ± its error, and what follows from it.

        * :math:`\\hat k \\le 0.5` and no doubtful quantity: q is kept as it is.
        * :math:`\\hat k > 0.5`, or a doubtful quantity, and the model has a
          reparameterised form (hierarchical location-scale sites non-centred): that form
          is fitted too, by this method, and
          kept when its ELBO is higher beyond the noise, or equal within it with a lower
          :math:`\\hat k` (:meth:`_reparameterized_fit`; both ELBOs bound the same
          :math:`\\log p(D)`).
        * :math:`\\hat k \\le 0.7` with :math:`\\hat k > 0.5` or a doubtful quantity, on what
          is kept: q's draws are importance-resampled
          with their Pareto-smoothed weights (:meth:`_resample`).
        * :math:`\\hat k > 0.7` on what is kept: the weights cannot be trusted to correct q:
          a ``RuntimeWarning`` naming the doubtful quantities, with advice for the family;
          resampled draws resting on an ESS below :data:`MIN_RESAMPLED_ESS` warn too.
        """
        try:
            diagnosis = self._diagnosis()
        except (ValueError, TypeError, NotImplementedError) as err:
            self._record("k-hat", "unavailable", _one_line(err))
            return result
        diagnostics = diagnosis.diagnostics
        result.diagnostics = diagnostics
        detail = f"PSIS k-hat {diagnostics.khat_text} from {diagnostics.num_samples} draws"
        if diagnostics.doubtful:
            detail += f"; {diagnostics.doubtful_text}"
        self._record("k-hat", diagnostics.reading, detail)
        doubtful = diagnostics.khat > GOOD_KHAT or bool(diagnostics.doubtful)
        if doubtful and self.auto.reparameterize:
            other = self._reparameterized_fit(result)
            if other is not None:
                assert other.diagnostics is not None
                self._warn(other.diagnostics, other.family, resampled=bool(other.draws_source))
                return other
        if doubtful and diagnostics.khat <= KHAT_WARN:
            self._resample(result, diagnosis)
        self._warn(diagnostics, self.family, resampled=bool(result.draws_source))
        return result

    def _warn(self, diagnostics: Diagnostics, family: VariationalFamily, resampled: bool) -> None:
        """A ``RuntimeWarning`` for k-hat > 0.7, or for resampled draws whose corrections of
        doubtful quantities rest on an ESS below :data:`MIN_RESAMPLED_ESS`."""
        if not self.auto.warn:
            return
        if diagnostics.khat > KHAT_WARN:
            warnings.warn(khat_warning(diagnostics, family), RuntimeWarning, stacklevel=5)
        elif resampled and diagnostics.doubtful and diagnostics.ess < MIN_RESAMPLED_ESS:
            warnings.warn(
                f"the fit's draws are q's draws importance-resampled (PSIS k-hat "
                f"{diagnostics.khat_text}) with an effective sample size of only "
                f"{diagnostics.ess:.0f}; the corrections of the {diagnostics.doubtful_text} "
                "rest on few draws and may fall short: check them with MCMC",
                RuntimeWarning,
                stacklevel=5,
            )

    def _reparameterized_fit(self, result: FitResult) -> FitResult | None:
        """Fit the model's reparameterised forms; the best that wins, else None.

        First every reparameterisable site at once; when that loses and there are several
        sites (at most :data:`MAX_SINGLE_SITES`), each site alone: a well-identified group
        fits better centred while a weakly identified one needs non-centring (measured on
        centred varying intercepts and slopes: all sites non-centred lost 0.8 nats).
        """
        try:
            sites = tuple(self.model.reparameterizable_sites())
        except (ValueError, TypeError, RuntimeError) as err:
            self._record("reparameterize", "failed", _one_line(err))
            return None
        if not sites:
            return None
        best, best_diag = None, result.diagnostics
        candidates: list[tuple[str, ...]] = [sites]
        for chosen in candidates:
            other = self._nested_fit(chosen, best_diag)
            if other is not None:
                best, best_diag = other, other.diagnostics
            elif chosen == sites and 1 < len(sites) <= MAX_SINGLE_SITES:
                candidates.extend((site,) for site in sites)
        if best is None:
            return None
        best.decisions = self.decisions + [
            replace(d, stage=f"non-centred {d.stage}") for d in best.decisions
        ]
        best.grad_evals = sum(d.grad_evals for d in self.decisions)
        best.method = best.method.replace("auto -> ", "auto -> non-centred ", 1)
        return best

    def _nested_fit(self, sites: tuple[str, ...], against: Diagnostics | None) -> FitResult | None:
        """The model with ``sites`` non-centred, fitted by this chain; it if it beats ``against``."""
        began = time.perf_counter()
        try:
            model = self.model.reparameterized(sites)
        except (ValueError, TypeError, RuntimeError) as err:
            self._record("reparameterize", "failed", _one_line(err))
            return None
        family = _family_like(self.family, model.dim) if model is not None else None
        if model is None or family is None:
            self._record(
                "reparameterize", "skipped", f"no reparameterised model or family for {sites}"
            )
            return None
        # The nested fit: the same chain on the new form, without checkpoints (the outer run
        # owns them), warnings (this run decides) or a second reparameterisation.
        nested = Auto(self.auto.diagnostic_draws, warn=False, reparameterize=False)
        settings = replace(self.settings, checkpoint_path=None, resume=False)
        try:
            other = nested.fit(model, family, self.objective, settings)
        except (RuntimeError, ValueError) as err:
            self._record(
                "reparameterize", "failed", _one_line(err), 0.0, time.perf_counter() - began
            )
            return None
        new = other.diagnostics
        if against is None or new is None:
            self._record("reparameterize", "failed", "a fit without a diagnosis to compare")
            return None
        noise = 2 * math.hypot(against.elbo_se, new.elbo_se)
        gain = new.elbo - against.elbo
        wins = gain > noise or (abs(gain) <= noise and new.khat < against.khat)
        reason = (
            f"sites {', '.join(sites)}; ELBO {new.elbo:.6g} ± {new.elbo_se:.2g} against "
            f"{against.elbo:.6g} ± {against.elbo_se:.2g}, k-hat {new.khat_text} against "
            f"{against.khat_text}"
        )
        seconds = time.perf_counter() - began
        self._record(
            "non-centred", "kept" if wins else "rejected", reason, other.grad_evals, seconds
        )
        return other if wins else None

    def _resample(self, result: FitResult, diagnosis: _Diagnosis) -> None:
        """Replace q's draws by their Pareto-smoothed importance resample, and say so."""
        began = time.perf_counter()
        smoothed, _ = psis_smooth(diagnosis.log_w)
        generator = None
        if self.settings.seed is not None:
            generator = torch.Generator().manual_seed(self.settings.seed + 1)
        num = diagnosis.log_w.shape[0]
        index = resample_indices(smoothed, num, generator)
        result.draws = diagnosis.z[index]
        result.draws_log_q = diagnosis.log_q[index].double()
        result.weighted_pool = (diagnosis.z, diagnosis.log_q.double(), smoothed)
        checks = quantity_checks(self.model, diagnosis.z, smoothed)
        moved = sorted(checks, key=lambda c: -c.score)[:4]
        changes = ", ".join(f"{c.name} sd x{c.ratio:.2f} mean {c.shift:+.2f} sd" for c in moved)
        distinct = int(torch.unique(index).numel())
        result.draws_source = (
            f"PSIS importance resampling of {num} draws of q (k-hat "
            f"{diagnosis.diagnostics.khat_text}; ESS {diagnosis.diagnostics.ess:.0f}, "
            f"{distinct} distinct)"
        )
        self._record(
            "importance resampling",
            "applied",
            f"{result.draws_source}; largest corrections: {changes}",
            0.0,
            time.perf_counter() - began,
        )

    def _read_checkpoint(self) -> None:
        path = self.settings.checkpoint_path
        if not (self.settings.resume and path and Path(path).exists()):
            return
        saved = load_checkpoint(path)
        extra = saved.get("extra") or {}
        self.resumed = extra
        self.decisions = [Decision(**d) for d in extra.get("decisions", [])]

    def _gaussian_capable(self) -> bool:
        return not any(p.requires_grad for p in self.model.parameters()) and (
            self.family.dim <= LAPLACE_MAX_DIM
        )

    def _record(
        self, stage: str, outcome: str, reason: str, grad_evals: float = 0.0, seconds: float = 0.0
    ) -> None:
        self.decisions.append(Decision(stage, outcome, reason, float(grad_evals), float(seconds)))


@dataclass
class _Candidate:
    """A q the chain may fall back on: a stage's start or result, with its ELBO."""

    elbo: float
    label: str
    state: dict[str, Any]


@dataclass(frozen=True)
class _Diagnosis:
    """A full-data diagnosis and the draws behind it (kept for importance resampling)."""

    diagnostics: Diagnostics
    z: Tensor
    log_q: Tensor
    log_w: Tensor
    with_quantities: bool = True

    def completed(self, model: Model) -> _Diagnosis:
        """The same diagnosis with the doubtful quantities of its draws filled in."""
        smoothed, _ = psis_smooth(self.log_w)
        doubtful = doubtful_quantities(quantity_checks(model, self.z, smoothed))
        diagnostics = replace(self.diagnostics, doubtful=doubtful)
        return replace(self, diagnostics=diagnostics, with_quantities=True)


class _StageFailure(RuntimeError):
    """A stage of the chain cannot start (e.g. no Laplace approximation at the point)."""


def _ngvi_unavailable(
    model: Model, family: VariationalFamily, objective: Objective | None
) -> str | None:
    """Why natural-gradient VI does not apply, or None when it does."""
    from ..training.distributed import current_context

    if not isinstance(family, GaussianFamily):
        return f"the family {type(family).__name__} is not Gaussian"
    if objective is not None and type(objective) is not ELBO:
        return f"the objective is {type(objective).__name__}, not the ELBO"
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if trainable:
        return f"the model has trainable parameters {trainable[:3]}"
    if current_context().active:
        return "data-parallel (torchrun) training"
    return None


def _family_like(family: VariationalFamily, dim: int) -> VariationalFamily | None:
    """A new family of the same Gaussian kind over ``dim`` dimensions (None: not known)."""
    if type(family) is FullRankGaussian:
        return FullRankGaussian(dim)
    if type(family) is MeanFieldGaussian:
        return MeanFieldGaussian(dim)
    if type(family) is LowRankGaussian:
        return LowRankGaussian(dim, rank=min(family.rank, dim))
    return None


def _covariance(precision: torch.Tensor) -> torch.Tensor:
    """:math:`\\Lambda^{-1}`, symmetric, through a float64 Cholesky factor (or a stage failure)."""
    chol, info = torch.linalg.cholesky_ex(precision.double())
    if info.item() != 0:
        raise _StageFailure("the Laplace precision is not positive definite")
    covariance = torch.cholesky_inverse(chol)
    return 0.5 * (covariance + covariance.mT)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:400]
