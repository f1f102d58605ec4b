"""Batch-and-match as a method: :class:`BaM` and its update rule, run by the training loop.

The update is :class:`~svi_torch.methods.bam.BatchAndMatch`'s (Cai et al., ICML 2024; the
closed-form proximal step of the score-based divergence, module docstring there): each
step draws ``num_draws`` points :math:`z_b \\sim q_t`, takes the scores
:math:`\\nabla_z \\log p(z_b, D)` on the loop's minibatch (likelihood scaled by
:math:`N/B_{\\text{data}}`) and moves :math:`(\\mu, \\Sigma)` in closed form. Everything else —
minibatches, the stop rule, health (non-finite steps skipped and rolled back), logs,
checkpoints — is the loop's.

* **Families.** :class:`~svi_torch.families.FullRankGaussian`: the full-rank update
  (:math:`O(D^3)` a step). :class:`~svi_torch.families.LowRankGaussian`: the
  low-rank-plus-diagonal update (pBaM: exact match step through the factors, then a
  factor-analysis patch back to rank :math:`r`; :math:`O(D(r + B)^2)` a step, no
  :math:`D \\times D` matrix), written into the family with
  :meth:`~svi_torch.families.LowRankGaussian.set_factors`.
  :class:`~svi_torch.families.MeanFieldGaussian` is **refused**: the diagonal of the
  full-rank update is not a fixed point of any divergence BaM minimises (for a Gaussian
  target it would converge to the marginal variances :math:`\\Sigma_{dd}`, where the
  reverse-KL mean-field optimum is :math:`1/\\Lambda_{dd}`), so a "mean-field BaM" would be
  silently wrong; ``method="ngvi"`` fits mean-field Gaussians.
* **Step size.** :math:`\\lambda_t = \\lambda_0 / (1 + t/\\tau)` (``learning_rate``
  :math:`\\lambda_0 = 10`, ``decay_steps`` :math:`\\tau = 10`; ``decay_steps=None`` keeps it
  constant), times the health guard's roll-back factor. For a Gaussian target with exact
  scores the posterior is a fixed point of every step, whatever :math:`\\lambda`; with
  noisy scores (minibatches, non-Gaussian targets) :math:`q` fluctuates at a level that
  grows with :math:`\\lambda`, which the decay removes.
* **Minibatches.** By default every score is a full-data one (``batch_size`` defaults to
  :math:`N` here, not to the loop's 128): the scores of a minibatch are unbiased but
  noisy, and the noise biases BaM's covariance down (``bam.py``'s docstring: about half
  the exact one at :math:`N/B_{\\text{data}} = 10`). With ``batch_size < N`` the rule uses the
  control variate :math:`\\tilde g(z) = \\hat g_{\\mathcal B}(z) - \\hat g_{\\mathcal B}(z_{\\text{ref}})
  + g(z_{\\text{ref}})` with the full-data score at the current mean, refreshed every
  ``refresh_every`` steps (one full-data gradient each), and averages the iterates.
  What is left grows with :math:`D/B_{\\text{data}}`: the control variate's noise is the
  minibatch's curvature error times the spread of the draws,
  :math:`(\\hat A - A)(z - z_{\\text{ref}})`, of the order of :math:`(D/B_{\\text{data}})A`.
  Measured on the conjugate regressions (N = 1000, 200 steps of 8 draws,
  ``python benchmarks/gaussian_vi_evals.py --minibatch``): KL(q‖p) 0.0003 / 0.012 / 1.8 at
  D = 5 / 20 / 100 with :math:`B_{\\text{data}} = 100`, 0.00003 / 0.0016 / 0.26 with 500;
  without the control variate 0.49 / 0.92 / 100.
* **Averaging.** Over the loop's refine phase (from ``average_from`` of the budget, or
  once the stop rule sees a plateau) the moments are averaged,
  :math:`\\bar\\mu = \\frac1n\\sum_t\\mu_t`, :math:`\\bar\\Sigma = \\frac1n\\sum_t\\Sigma_t`, and the
  average is the result. Low rank: the mean and the diagonal of :math:`\\Sigma_t` are
  averaged exactly and :math:`\\frac1n\\sum_t \\Lambda_t\\Lambda_t^\\top` through a fixed
  Gaussian sketch :math:`\\Omega \\in \\mathbb{R}^{D\\times k}`, :math:`k = \\min(D, 2r + 10)`
  (Nyström: :math:`\\bar L \\approx Y(\\Omega^\\top Y)^{-1}Y^\\top` with
  :math:`Y = \\bar L\\Omega`), projected back to rank :math:`r` plus diagonal by the
  update's own factor-analysis patch; memory :math:`O(Dk)`. Averaging helps against
  noise; from a start far from the posterior, iterates that are still converging spoil
  it (low rank climbs slowly to large eigenvalues), so a late ``average_from`` is
  better there.
* **Start.** BaM needs a start near the posterior: from :math:`\\mathcal{N}(0, I)` on a
  concentrated posterior with fewer draws than dimensions its mean stalls (``bam.py``).
  ``init="auto"`` (default) starts at the Laplace approximation when a MAP passes its
  checks and :math:`D \\le 500` (on a conjugate Gaussian model that is already the
  posterior, and BaM keeps it there), and at Pathfinder's Gaussian otherwise (no MAP, as
  in a centred hierarchical model whose scale runs to zero, where a "Laplace" start at the
  best point is not even positive definite; or :math:`D > 500`); ``result.decisions``
  records which. Measured at D = 600 (conjugate regression, N = 2000, 300 steps of 32
  draws): KL(q‖p) 6e-7 from Pathfinder, 1e-6 from the MAP with the family's scales.
* **Budget.** 200 steps unless ``steps``/``epochs`` are given: from a start near the
  posterior BaM settles in tens of steps, and the second hundred are averaged.
* **Cost.** ``grad_evals`` counts each score at one point as :math:`B_{\\text{data}}/N`
  (one per draw, plus the control variate's reference row) and each refresh as 1.

Example:
    >>> import svi_torch as st
    >>> st.methods.BaM(num_draws=16).summary
    'bam(num_draws=16)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..data import Batch
from ..families.base import VariationalFamily
from ..families.gaussian import FullRankGaussian, LowRankGaussian
from ..models.base import Model
from ..objectives.base import Objective, ObjectiveOutput
from ..training.logging import Logger
from ..training.loop import TrainingLoop, prepare_state
from ..training.result import Decision, FitResult
from ..training.schedule import LRSchedule
from ..training.state import TrainConfig, TrainState
from .bam import BatchAndMatch, factor_analysis_patch
from .base import (
    LoopMethod,
    check_init,
    check_positive_int,
    check_positive_number,
    refuse_objective,
    refuse_trainable,
    register_method,
)
from .density import is_numerical_failure
from .starts import (
    LAPLACE_MAX_DIM,
    Initialization,
    find_map,
    initialize,
    pathfinder_start,
    start_point,
)

__all__ = ["BaM", "BaMRule", "LowRankAverage", "DEFAULT_BAM_STEPS"]

#: Steps when neither ``steps`` nor ``epochs`` is given (module docstring, "Budget").
DEFAULT_BAM_STEPS = 200
_LOG_2PI = math.log(2 * math.pi)


class LowRankAverage:
    """Running average of low-rank-plus-diagonal covariances through a Nyström sketch.

    Keeps :math:`\\sum_t \\mu_t`, :math:`\\sum_t \\mathrm{diag}(\\Sigma_t)` and
    :math:`\\sum_t \\Lambda_t(\\Lambda_t^\\top\\Omega)` for a fixed Gaussian
    :math:`\\Omega \\in \\mathbb{R}^{D \\times k}` (seed 0), :math:`O(Dk)` memory. The
    average :math:`\\bar\\Sigma` is rebuilt as the rank-:math:`k` Nyström part
    :math:`FF^\\top \\approx \\frac1n\\sum_t\\Lambda_t\\Lambda_t^\\top` plus the diagonal that
    gives it the averaged diagonal, then projected to rank :math:`r` plus diagonal by the
    factor-analysis patch of the update itself
    (:func:`~svi_torch.methods.bam.factor_analysis_patch`, warm-started at the top
    :math:`r` singular directions of :math:`F`), which decreases the KL to
    :math:`\\bar\\Sigma` as the update's patch does.
    """

    def __init__(self, dim: int, rank: int, device: torch.device, em_steps: int = 10) -> None:
        self.rank, self.em_steps = rank, max(em_steps, 10)
        width = min(dim, 2 * rank + 10)
        gen = torch.Generator().manual_seed(0)
        self.omega = torch.randn(dim, width, generator=gen, dtype=torch.float64).to(device)
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.diag = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sketch = torch.zeros(dim, width, dtype=torch.float64, device=device)

    def update(self, mean: Tensor, factor: Tensor, diag: Tensor) -> None:
        self.count += 1
        self.mean += mean
        self.diag += diag + factor.square().sum(1)
        self.sketch += factor @ (factor.mT @ self.omega)

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean, factor (D, r), diagonal variance (D,))`` of the average."""
        n = self.count
        mean, s_diag, sketch = self.mean / n, self.diag / n, self.sketch / n
        core = self.omega.mT @ sketch
        core = 0.5 * (core + core.mT)
        # A small shift keeps the Cholesky factor of Omega' L Omega defined when L has rank < k.
        shift = 1e-10 * float(core.diagonal().abs().max().clamp_min(1e-300))
        eye = torch.eye(core.shape[0], dtype=core.dtype, device=core.device)
        chol = torch.linalg.cholesky(core + shift * eye)
        root = torch.linalg.solve_triangular(chol, sketch.mT, upper=False).mT  # L ~ root root'
        rest = (s_diag - root.square().sum(1)).clamp_min(0.0)

        def s_times(x: Tensor) -> Tensor:
            return root @ (root.mT @ x) + rest[:, None] * x

        # Warm start: the top r singular directions of the Nystrom part, the rest of the
        # averaged diagonal as Psi (exact when the average is rank r plus diagonal).
        u, sv, _ = torch.linalg.svd(root, full_matrices=False)
        start = u[:, : self.rank] * sv[: self.rank]
        floor = 1e-8 * float(s_diag.max().clamp_min(1e-300))
        start_diag = (s_diag - start.square().sum(1)).clamp_min(floor)
        factor, diag = factor_analysis_patch(s_times, s_diag, start, start_diag, self.em_steps)
        return mean, factor, diag

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "diag": self.diag, "sketch": self.sketch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = state["mean"].to(self.mean, copy=True)
        self.diag = state["diag"].to(self.diag, copy=True)
        self.sketch = state["sketch"].to(self.sketch, copy=True)


class BaMRule:
    """The update rule of :class:`BaM` (see the module docstring).

    Args:
        num_draws: draws (scores) per step :math:`B \\ge 2`.
        learning_rate: :math:`\\lambda_0`.
        decay_steps: :math:`\\tau` of :math:`\\lambda_t = \\lambda_0/(1 + t/\\tau)`; None: constant.
        average_from: start of the averaging phase, as a fraction of the steps.
        control_variate: use the control variate for minibatch scores (None: when
            ``batch_size < N``).
        refresh_every: steps between refreshes of the control variate's reference score.
        em_steps: EM iterations of the low-rank patch.
    """

    name = "bam"

    def __init__(
        self,
        num_draws: int = 8,
        learning_rate: float = 10.0,
        decay_steps: float | None = 10.0,
        average_from: float = 0.5,
        control_variate: bool | None = None,
        refresh_every: int = 20,
        em_steps: int = 10,
    ) -> None:
        self.num_draws, self.base_lr, self.decay_steps = num_draws, learning_rate, decay_steps
        self.average_from, self.control_variate = average_from, control_variate
        self.refresh_every, self.em_steps = refresh_every, em_steps
        self._lambda = float(learning_rate)
        self._terms: dict[str, Tensor] = {}

    # -- set-up ------------------------------------------------------------------------------
    def init(self, state: TrainState) -> None:
        family, model = state.family, state.model
        self.lowrank = isinstance(family, LowRankGaussian)
        minibatch = state.stream is not None and state.stream.batch_size < model.num_data
        self.uses_control_variate = minibatch and self.control_variate is not False
        with torch.no_grad():
            loc = family.loc.detach().double()
            if self.lowrank:
                assert isinstance(family, LowRankGaussian)
                cov: Any = (family.cov_factor.detach().double(), family.diag_scale.double() ** 2)
            else:
                cov = family.covariance().detach().double()
        self.bam = BatchAndMatch(
            family.dim,
            batch_size=self.num_draws,
            learning_rate=lambda t: self._lambda,
            rank=family.rank if self.lowrank else None,  # type: ignore[arg-type]
            em_steps=self.em_steps,
            reference_log_density=model.full_log_joint if self.uses_control_variate else None,
            refresh_every=self.refresh_every,
            init_loc=loc,
            init_cov=cov,
            dtype=model.dtype,
            device=loc.device,
            max_rejections=2**62,  # the loop's health guard handles streaks of bad steps
        )
        state.schedule = LRSchedule("auto", state.total_steps, self.average_from)
        if self.lowrank:
            self.average: Any = LowRankAverage(
                family.dim,
                family.rank,
                loc.device,
                self.em_steps,  # type: ignore[arg-type]
            )
        else:
            self.average = _FullRankAverage(family.dim, loc.device)

    # -- one step ----------------------------------------------------------------------------
    def step(
        self, state: TrainState, batch: Batch | None, likelihood_scale: float
    ) -> tuple[ObjectiveOutput, bool]:
        decay = 1.0 if self.decay_steps is None else 1.0 + state.step / self.decay_steps
        self._lambda = self.base_lr * state.step_size_factor / decay
        model, terms = state.model, self._terms
        terms.clear()

        def log_density(points: Tensor) -> Tensor:
            joint = model.log_joint(points, batch, likelihood_scale)
            terms.update(
                log_likelihood=joint.log_likelihood.detach().mean(),
                log_prior=joint.log_prior.detach().mean(),
                log_det_jacobian=joint.log_det_jacobian.detach().mean(),
            )
            return joint.total

        entropy = self._entropy()
        try:
            info = self.bam.step(log_density)
        except Exception as err:  # noqa: BLE001 - re-raised unless numerical
            if not is_numerical_failure(err):
                raise
            # A factorisation failed on this batch, ours or the model's (a GP kernel that is
            # singular at a draw; the bridge wraps it): the state is unchanged, a bad step.
            return self._bad_output(), False
        state.grad_evals += info.num_score_evals * state.batch_fraction + info.num_full_evals
        if not info.accepted:
            return self._bad_output(), False
        self._write_family(state.family, self.bam.mean, *self._moments())
        assert state.schedule is not None
        if state.schedule.in_refine(state.step):
            self.average.update(self.bam.mean, *self._moments())
        log_joint = torch.tensor(info.mean_log_density, dtype=torch.float64)
        elbo = log_joint + entropy
        metrics = {
            "elbo": elbo,
            "log_joint": log_joint,
            "entropy": entropy,
            "bam/whitened_score": torch.tensor(info.whitened_score, dtype=torch.float64),
        }
        return ObjectiveOutput(loss=-elbo, metrics=metrics), True

    def _moments(self) -> tuple[Tensor, ...]:
        if self.lowrank:
            return self.bam.factor, self.bam.diag
        return (self.bam.cov,)

    def _entropy(self) -> Tensor:
        """:math:`H[q_t] = \\tfrac12(\\log\\det\\Sigma_t + D(1 + \\log 2\\pi))`, through the
        factors for low rank (:math:`\\log\\det\\Psi + \\log\\det(I + \\Lambda^\\top\\Psi^{-1}\\Lambda)`)."""
        bam = self.bam
        if self.lowrank:
            scaled = bam.factor / bam.diag.sqrt()[:, None]
            inner = torch.eye(bam.rank, dtype=torch.float64, device=scaled.device)  # type: ignore[arg-type]
            logdet = bam.diag.log().sum() + torch.logdet(inner + scaled.mT @ scaled)
        else:
            logdet = torch.linalg.slogdet(bam.cov)[1]
        return 0.5 * (logdet + bam.dim * (1 + _LOG_2PI))

    def _bad_output(self) -> ObjectiveOutput:
        """The log joint's terms from the failed step, so the error can name the bad one."""
        nan = torch.tensor(math.nan)
        terms = dict(self._terms)
        if terms and all(bool(torch.isfinite(v)) for v in terms.values()):
            # Finite densities: the scores or the update itself were not finite.
            return ObjectiveOutput(loss=nan, metrics={"bam update": nan})
        total = sum(terms.values(), torch.zeros(())) if terms else nan
        return ObjectiveOutput(loss=-total, metrics=terms or {"log_joint": nan})

    @staticmethod
    def _write_family(family: VariationalFamily, mean: Tensor, *moments: Tensor) -> None:
        if isinstance(family, LowRankGaussian):
            factor, diag = moments
            family.set_factors(mean.to(family.loc), factor.to(family.loc), diag.to(family.loc))
        else:
            family.set_moments(mean, moments[0])  # type: ignore[attr-defined]

    # -- the protocol's rest -----------------------------------------------------------------
    def learning_rate(self, state: TrainState) -> float:
        return self._lambda

    def grad_norm(self, state: TrainState) -> Tensor | None:
        return None  # BaM takes no gradient step; its whitened score is logged instead

    def finalize(self, state: TrainState) -> None:
        if self.average.count == 0:
            return
        mean, *moments = self.average.result()
        self._write_family(state.family, mean, *moments)

    def state_dict(self) -> dict[str, Any]:
        return {
            "bam": self.bam.state_dict(),
            "average": self.average.state_dict(),
            "lambda": self._lambda,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bam.load_state_dict(state["bam"])
        self.average.load_state_dict(state["average"])
        self._lambda = float(state["lambda"])


class _FullRankAverage:
    """Running sums of :math:`\\mu_t` and :math:`\\Sigma_t` (float64)."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.cov = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, mean: Tensor, cov: Tensor) -> None:
        self.count += 1
        self.mean += mean
        self.cov += cov

    def result(self) -> tuple[Tensor, Tensor]:
        cov = self.cov / self.count
        return self.mean / self.count, 0.5 * (cov + cov.mT)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "cov": self.cov}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = state["mean"].to(self.mean, copy=True)
        self.cov = state["cov"].to(self.cov, copy=True)


@register_method
@dataclass(frozen=True)
class BaM(LoopMethod):
    """Batch-and-match Gaussian VI (Cai et al., ICML 2024) in the training loop.

    For :class:`~svi_torch.families.FullRankGaussian` and
    :class:`~svi_torch.families.LowRankGaussian` on models without trainable parameters
    (module docstring). BaM minimises a score-based divergence, not an objective: leave
    ``objective`` unset (or the ELBO, which is then only what is logged).

    Args:
        num_draws: :math:`B`, draws (scores) per step, at least 2.
        learning_rate: :math:`\\lambda_0 > 0` (dimensionless; BaM is affine invariant).
        decay_steps: :math:`\\tau` in :math:`\\lambda_t = \\lambda_0/(1 + t/\\tau)`; None keeps
            :math:`\\lambda` constant (fine with exact scores on a near-Gaussian posterior).
        average_from: where iterate averaging starts, as a fraction of the steps.
        control_variate: the minibatch control variate; None: on exactly when
            ``batch_size < N``; False: off (the covariance then comes out too small).
        refresh_every: steps between refreshes of its full-data reference score.
        em_steps: EM iterations of the low-rank patch.
        init: ``"auto"`` (Laplace at a checked MAP up to 500 dimensions, else Pathfinder),
            ``"laplace"``, ``"map"``, ``"pathfinder"`` or ``"prior"`` (the family as built).

    Example:
        >>> result = st.fit(model, st.families.FullRankGaussian(model.dim),
        ...                 method=st.methods.BaM(num_draws=8))  # doctest: +SKIP
    """

    name: ClassVar[str] = "bam"
    num_draws: int = 8
    learning_rate: float = 10.0
    decay_steps: float | None = 10.0
    average_from: float = 0.5
    control_variate: bool | None = None
    refresh_every: int = 20
    em_steps: int = 10
    init: str = "auto"

    def __post_init__(self) -> None:
        check_positive_int(self.num_draws, "BaM num_draws")
        if self.num_draws < 2:
            raise ValueError(
                f"BaM num_draws must be at least 2 (a batch covariance needs two), got "
                f"{self.num_draws}"
            )
        check_positive_number(self.learning_rate, "BaM learning_rate")
        check_positive_number(self.decay_steps, "BaM decay_steps", allow_none=True)
        if not (isinstance(self.average_from, int | float) and 0 <= self.average_from < 1):
            raise ValueError(f"BaM average_from must be in [0, 1), got {self.average_from!r}")
        if self.control_variate not in (None, True, False):
            raise ValueError(
                f"BaM control_variate must be None, True or False, got {self.control_variate!r}"
            )
        check_positive_int(self.refresh_every, "BaM refresh_every")
        if (
            isinstance(self.em_steps, bool)
            or not isinstance(self.em_steps, int)
            or self.em_steps < 0
        ):
            raise ValueError(f"BaM em_steps must be an int >= 0, got {self.em_steps!r}")
        check_init(self.init, "BaM init")

    def check(self, model: Model, family: VariationalFamily, objective: Objective | None) -> None:
        refuse_objective(objective, "bam", "minimises a score-based divergence")
        if not isinstance(family, FullRankGaussian | LowRankGaussian):
            extra = (
                " (the diagonal of its full-rank update is not the mean-field optimum: use "
                "method='ngvi' for MeanFieldGaussian)"
                if type(family).__name__ == "MeanFieldGaussian"
                else "; use method='sgd' for other families"
            )
            raise TypeError(
                f"method='bam' fits FullRankGaussian or LowRankGaussian, got "
                f"{type(family).__name__}{extra}"
            )
        refuse_trainable(model, "bam", "only the variational Gaussian")

    def validate(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
    ) -> None:
        self.check(model, family, objective)
        prepare_state(model, family, objective, _with_budget(settings, model))

    def prepare(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
        **options: Any,
    ) -> TrainingLoop:
        """:meth:`LoopMethod.prepare` with BaM's default budget (module docstring)."""
        return super().prepare(
            model, family, objective, _with_budget(settings, model), loggers, callbacks, **options
        )

    def initialize(self, state: TrainState, start: Initialization | None = None) -> Initialization:
        """``init="auto"``: Laplace at a MAP that passed its checks (:math:`D \\le 500`), else
        Pathfinder's Gaussian (no MAP, a Hessian that cannot be used, or :math:`D > 500`);
        ``result.decisions`` says which and why."""
        if start is not None or self.init != "auto":
            return super().initialize(state, start)
        model, family, seed = state.model, state.family, state.settings.seed
        estimate = None
        if family.dim <= LAPLACE_MAX_DIM:
            estimate = find_map(model, start_point(model, family), seed=seed)
            if estimate.converged:
                try:
                    begun = initialize(model, family, "laplace", seed=seed, map_estimate=estimate)
                except (ValueError, torch.linalg.LinAlgError) as err:
                    why = f"no Laplace start ({' '.join(str(err).split())})"
                else:
                    begun.reason = f"Laplace at the MAP ({estimate.reason})"
                    return begun
            else:
                why = estimate.reason
        else:
            why = f"D = {family.dim} > {LAPLACE_MAX_DIM}: no Hessian"
        begun = pathfinder_start(model, family, seed=seed)
        begun.map = estimate  # its evaluations are the start's too
        found = begun.pathfinder
        begun.reason = (
            f"Pathfinder's best Gaussian, as {why}; its PSIS k-hat {found.khat.value:.2f} "
            f"({found.khat.reading})"
        )
        return begun

    def fit(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
    ) -> FitResult:
        loop = self.prepare(model, family, objective, settings, loggers, callbacks)
        result = loop.run()
        result.method = self.summary
        start = getattr(loop, "start", None)
        if start is not None:
            result.decisions = [
                Decision(
                    "start",
                    start.method,
                    start.reason or f"init={self.init!r}",
                    start.evaluations,
                    start.seconds,
                )
            ]
        return result

    def make_rule(self, state: TrainState, start: Initialization | None) -> BaMRule:
        if state.dist.active:
            raise ValueError(
                "method='bam' runs in one process; use method='sgd' for data-parallel "
                "(torchrun) training"
            )
        return BaMRule(
            self.num_draws,
            self.learning_rate,
            self.decay_steps,
            self.average_from,
            self.control_variate,
            self.refresh_every,
            self.em_steps,
        )


def _with_budget(settings: TrainConfig, model: Model) -> TrainConfig:
    """``settings`` with :data:`DEFAULT_BAM_STEPS` when no budget was given, and full-data
    scores when no ``batch_size`` was (module docstring, "Minibatches")."""
    if settings.steps is None and settings.epochs is None:
        settings = replace(settings, steps=DEFAULT_BAM_STEPS)
    if settings.batch_size is None and model.num_data > 0:
        settings = replace(settings, batch_size=model.num_data)
    return settings
