"""Natural-gradient Gaussian VI (NGVI): stochastic natural-gradient steps on mean and precision.

For a Gaussian :math:`q = \\mathcal{N}(m, \\Lambda^{-1})` the natural gradient of the ELBO
with respect to its natural parameters gives the update (Hoffman et al. 2013; Khan & Lin
2017; Khan et al. 2018, "VON"):

.. math::

    \\Lambda_{t+1} &= (1 - \\rho_t)\\,\\Lambda_t + \\rho_t\\,\\hat H_t, \\qquad
        \\hat H_t \\approx -\\mathbb{E}_{q_t}[\\nabla^2_z \\log p(z, D)], \\\\
    m_{t+1} &= m_t + \\rho_t\\,\\Lambda_{t+1}^{-1}\\,\\hat g_t, \\qquad
        \\hat g_t \\approx \\mathbb{E}_{q_t}[\\nabla_z \\log p(z, D)],

a Newton step on the mean preconditioned by an exponential average of the expected
curvature. Expectations use :math:`K` particles drawn in antithetic pairs
:math:`m \\pm \\delta` (the pair's mean is exactly :math:`m`, so on a quadratic log joint
:math:`\\hat g` is exact) and a minibatch whose likelihood is scaled by :math:`N/B`.
On a conjugate Gaussian model with full batches, :math:`\\rho = 1` lands on the exact
posterior in one step. The fixed point is the stationary point of the ELBO over the family:
:math:`\\mathbb{E}_q[\\nabla \\log p] = 0` and :math:`\\Lambda = -\\mathbb{E}_q[\\nabla^2 \\log p]`.

Curvature :math:`\\hat H`: ``"hessian"`` (exact, by autograd; the default for
:math:`D \\le 200`) or ``"stein"`` (gradients only, Stein's lemma, see
:func:`~svi_torch.curvature.stein_hessian`; the default above). Mean-field families take
their variances from the diagonal, :math:`\\sigma_d^2 = 1/\\Lambda_{dd}` (the mean-field
optimum for a Gaussian target); with exact Hessians the full :math:`\\Lambda` still
preconditions the mean step (a Newton step with the same fixed point, so that one
full-batch step of size 1 is exact on conjugate models), with the Stein estimator only the
diagonal is kept. Low-rank families run the
full-rank update and are projected by ``set_moments`` after each step.

Positive definiteness: if :math:`\\hat H` is not positive definite (a model that is not
log-concave, or a noisy estimate) and the plain update is not positive definite, the step
uses the improved Bayesian learning rule (Lin, Schmidt & Khan 2020),
:math:`\\Lambda_{t+1} = \\Lambda_t + \\rho G + \\tfrac{\\rho^2}{2} G\\Lambda_t^{-1}G` with
:math:`G = \\hat H - \\Lambda_t`, which equals
:math:`\\tfrac12\\Lambda_t + \\tfrac12(\\Lambda_t + \\rho G)\\Lambda_t^{-1}(\\Lambda_t + \\rho G)`
and so is positive definite for any symmetric :math:`\\hat H`.

Step sizes: :math:`\\rho_t = \\rho_0 \\cdot` the trainer's schedule factor (the default
``"auto"``: constant, then a cosine decay); during the decay the natural parameters
:math:`(\\Lambda, \\Lambda m)` are averaged (Polyak–Ruppert), and the average is the result.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..curvature import gradient, gradient_and_hessian, stein_hessian
from ..families.base import VariationalFamily
from ..families.gaussian import GaussianFamily, MeanFieldGaussian
from ..models.base import Model
from ..objectives.base import ObjectiveOutput

__all__ = ["NaturalGradientVI", "default_step_size", "CURVATURES"]

CURVATURES = ("auto", "hessian", "stein")
#: Above this dimension ``curvature="auto"`` uses the gradient-only Stein estimator.
HESSIAN_MAX_DIM = 200
#: Default step size with full batches (see :func:`default_step_size`).
FULL_BATCH_STEP = 0.25
#: Default particles with full batches (one step is cheap there; see :class:`NaturalGradientVI`).
FULL_BATCH_PARTICLES = 8
#: Relative spread of the particles' Hessians below which the log joint counts as quadratic.
QUADRATIC_SPREAD = 1e-4
#: A step changes the precision by at most this factor in any direction (the trust region).
MAX_PRECISION_RATIO = 10.0


def default_step_size(
    num_data: int, batch_size: int | None, near: bool = True, dim: int = 1
) -> float:
    """Default :math:`\\rho_0`: :data:`FULL_BATCH_STEP` for full batches and density targets,
    else by the start.

    Full batches: a step of 1 replaces :math:`\\Lambda` by one particle estimate of
    :math:`\\mathbb{E}_q[-\\nabla^2 \\log p]`, exact on a Gaussian posterior (one step lands on
    it) but as noisy as that estimate elsewhere. On eight schools (2000 steps, full batch,
    ELBO to the best Gaussian found by Adam with 64 particles, 20000 draws) a step of 1 is
    12 nats short with 2 particles and 4 with 8; 0.5 is 0.02 / 0.005 short; 0.25 is 0.009 /
    0.002, within the estimates' noise. A conjugate posterior is then reached in about 50
    steps (the error shrinks by :math:`1 - \\rho` a step) instead of one.

    ``near`` (a Laplace start, or a resumed run): :math:`\\rho_0 = B / (N \\max(16, 4\\sqrt D))`.
    Why: with a small constant :math:`\\rho` the mean's minibatch noise adds up along an
    epoch and cancels at its end (each point is used once per epoch), so the excursion is
    a bridge of whitened size about :math:`\\rho N / (2B)` per coordinate, and its cost
    in KL(q||p) about :math:`D (\\rho N/B)^2 / 8`, quadratic in the step and linear in
    :math:`D`; keeping :math:`\\rho N / B \\le 1/(4\\sqrt D)` bounds it by about 0.008
    nats before iterate averaging, which removes most of the rest. The start is near the
    optimum, so little movement is needed: on a logistic regression (:math:`N = 10^5`,
    :math:`D = 50`) the Laplace start is 0.005 nats from the Gaussian family's optimum
    (the row ``c = start`` of the benchmark below). Measured with :math:`B = 64`, 2000 steps, worst of two seeds
    (KL to the float64 exact posterior; ``python benchmarks/ngvi_step_size.py``): the
    former default :math:`B/(4N)` gave 0.004 / 0.006 / 0.013 / 0.034 nats on
    regressions with (N, D, condition number) = (10^3, 5, 10), (10^4, 20, 9e2),
    (10^5, 5, 2e4), (10^4, 100, 3e4), and 0.08 nats from the optimum on that logistic
    regression; :math:`B/(16N)` gave 0.002 / 0.0005 / 0.002 / 0.004 and 0.012.

    Otherwise (a start far from the posterior): :math:`\\rho_0 = \\min(1, \\max(0.05, 4B/N))`,
    which converges within a few hundred steps and relies on the averaging phase to remove
    the larger noise; on large data sets prefer the Laplace start.
    """
    if num_data == 0 or batch_size is None or batch_size >= num_data:
        return FULL_BATCH_STEP
    if near:
        return batch_size / (num_data * max(16.0, 4.0 * math.sqrt(dim)))
    return min(1.0, max(0.05, 4.0 * batch_size / num_data))


class NaturalGradientVI:
    """State and step of natural-gradient Gaussian VI; see the module docstring.

    Args:
        model: the model (its log joint is differentiated in the unconstrained space).
        family: a :class:`~svi_torch.families.GaussianFamily`; read at the start and
            written with ``set_moments`` after every step.
        num_particles: draws per step, rounded up to an even number (antithetic pairs).
        curvature: ``"auto"``, ``"hessian"`` or ``"stein"``.

    Example:
        >>> ngvi = NaturalGradientVI(model, family)  # doctest: +SKIP
        >>> ngvi.step(batch=None, likelihood_scale=1.0, rho=1.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        family: VariationalFamily,
        num_particles: int = 2,
        curvature: str = "auto",
    ) -> None:
        if not isinstance(family, GaussianFamily):
            raise TypeError(
                f"method='ngvi' needs a Gaussian family (MeanFieldGaussian, "
                f"FullRankGaussian, LowRankGaussian), whose curvature it updates; got "
                f"{type(family).__name__}. Use method='sgd' for other families"
            )
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"method='ngvi' updates only the variational Gaussian, but the model has "
                f"trainable parameters {trainable}; use method='sgd' to fit them jointly"
            )
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise TypeError(f"num_particles must be an int, got {num_particles!r}")
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {curvature!r}; choose one of {CURVATURES}")
        self.model, self.family = model, family
        self.pairs = (num_particles + 1) // 2
        if curvature == "auto":
            curvature = "hessian" if family.dim <= HESSIAN_MAX_DIM else "stein"
        self.curvature = curvature
        # q is diagonal for mean-field families. With exact Hessians the state still keeps the
        # full expected curvature: its diagonal sets q's variances (1 / Lambda_dd), and the
        # whole matrix preconditions the mean, a Newton step whose fixed point E_q[g] = 0 is
        # the mean-field one, but which does not zig-zag on correlated posteriors. With the
        # Stein estimator only the diagonal is tracked.
        self.diagonal_q = isinstance(family, MeanFieldGaussian)
        self.diagonal = self.diagonal_q and curvature == "stein"
        with torch.no_grad():
            self.loc = family.loc.detach().clone()
            cov = family.covariance().detach()
            if self.diagonal:
                self.precision = 1.0 / torch.diagonal(cov).clone()
            elif self.diagonal_q:
                self.precision = torch.diag_embed(1.0 / torch.diagonal(cov))
            else:
                self.precision = _spd_inverse(cov)
        self.count = 0
        # The sums are kept in float64: the averaged mean is solve(mean Lambda, mean Lambda m),
        # which multiplies rounding errors by the condition number of Lambda; float32 sums
        # fail test_averaged_natural_parameters_keep_an_ill_conditioned_mean.
        self.precision_sum = torch.zeros_like(self.precision, dtype=torch.float64)
        self.shift_sum = torch.zeros_like(self.loc, dtype=torch.float64)  # sum of Lambda m
        self.fallbacks = 0
        self.damped_steps = 0
        self.clipped_steps = 0
        self.last_terms: dict[str, Tensor] = {}

    # -- one step ----------------------------------------------------------------------
    def step(
        self, batch: Any, likelihood_scale: float | None, rho: float
    ) -> ObjectiveOutput | None:
        """One natural-gradient step with step size ``rho``; ``None`` if it was not finite.

        Returns the ELBO estimate at the *current* :math:`q` (before the update) as
        ``metrics["elbo"]``: :math:`\\frac1K\\sum_k \\log p(z_k, D) + H[q]`.
        """
        loc, precision = self.loc, self.precision
        delta = self._draw_offsets()
        z = torch.cat([loc + delta, loc - delta])
        terms: dict[str, Tensor] = {}

        def log_density(points: Tensor) -> Tensor:
            joint = self.model.log_joint(points, batch, likelihood_scale)
            # Kept (detached) so that a non-finite step can name the culprit term.
            terms.update(
                log_likelihood=joint.log_likelihood.detach().mean(),
                log_prior=joint.log_prior.detach().mean(),
                log_det_jacobian=joint.log_det_jacobian.detach().mean(),
            )
            return joint.total

        if self.curvature == "hessian":
            values, grads, hessians = gradient_and_hessian(log_density, z)
            neg_hess = -hessians.mean(0)
            # The particles' Hessians agree where the log joint is quadratic over q: the
            # Newton step is then exact and needs no trust region.
            spread = (hessians + neg_hess).abs().amax() / neg_hess.abs().amax().clamp_min(1e-300)
            quadratic = bool(spread <= QUADRATIC_SPREAD)
        else:
            values, grads = gradient(log_density, z)
            neg_hess = -stein_hessian(z, grads, loc, precision)
            quadratic = False
        grad = grads.mean(0)
        self.last_terms = terms
        finite = torch.isfinite(values).all() & torch.isfinite(grad).all()
        if not bool(finite & torch.isfinite(neg_hess).all()):
            return None
        elbo = values.mean() + self.entropy()
        update = self._damped_update(loc, precision, grad, neg_hess, rho, trusted=quadratic)
        if update is None:
            return None
        self.loc, self.precision = update
        self.write_family()
        metrics = {
            "elbo": elbo.detach(),
            "log_joint": values.mean().detach(),
            "entropy": self.entropy().detach(),
            "grad_norm": grad.norm().detach(),
        }
        return ObjectiveOutput(loss=-elbo.detach(), metrics=metrics)

    def _damped_update(
        self,
        loc: Tensor,
        precision: Tensor,
        grad: Tensor,
        neg_hess: Tensor,
        rho: float,
        trusted: bool = False,
    ) -> tuple[Tensor, Tensor] | None:
        """The step of size ``rho``, damped so that it stays inside a trust region.

        Two guards, because a two-particle estimate of :math:`\\mathbb{E}_q[\\nabla^2 \\log p]`
        can be wild where the posterior is not Gaussian (a hierarchical scale: one draw in
        the tail gives a Hessian :math:`10^{20}` times the typical one):

        * the precision: the step is halved (up to four times) until the new
          :math:`\\Lambda'` is positive definite and within a factor
          :data:`MAX_PRECISION_RATIO` of :math:`\\Lambda` in every direction,
          :math:`\\Lambda / c \\preceq \\Lambda' \\preceq c\\Lambda` (checked by two Cholesky
          factorisations); the improved Bayesian learning rule keeps :math:`\\Lambda'`
          positive definite in exact arithmetic, this keeps it so in floating point and
          keeps one bad draw from collapsing or exploding :math:`q`;
        * the mean: the move :math:`\\delta = \\rho\\Lambda'^{-1}\\hat g` is shortened to at
          most :math:`r = \\max(5, 2\\sqrt D)` standard deviations of :math:`q'`,
          :math:`\\delta^\\top\\Lambda'\\delta \\le r^2`, the region where the particles
          informed :math:`\\hat g`.

        ``trusted`` (the particles' exact Hessians agree to :data:`QUADRATIC_SPREAD`: the log
        joint is quadratic where :math:`q` puts its mass) skips both bounds: the step is
        then Newton's on a quadratic, exact at any size, so that one full-batch step of
        size 1 still lands on a conjugate Gaussian posterior from any start. ``None`` when
        no damped precision was positive definite (the loop counts a non-finite step).
        """
        fallback = None
        for _ in range(5):
            new_precision = self._update_precision(precision, neg_hess, rho)
            if bool(torch.isfinite(new_precision).all()) and _positive(new_precision):
                if fallback is None:
                    fallback = (new_precision, rho)
                if trusted or _within_ratio(precision, new_precision, MAX_PRECISION_RATIO):
                    break
            rho *= 0.5
            self.damped_steps += 1
        else:
            if fallback is None:
                return None
            new_precision, rho = fallback
        if self.diagonal:
            step = rho * grad / new_precision
            length2 = (step * step * new_precision).sum()
        else:
            chol = torch.linalg.cholesky(new_precision)
            step = rho * torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
            length2 = step @ (new_precision @ step)
        radius = max(5.0, 2.0 * math.sqrt(loc.shape[0]))
        if not trusted and bool(length2 > radius**2):
            step = step * (radius / length2.sqrt())
            self.clipped_steps += 1
        new_loc = loc + step
        if not bool(torch.isfinite(new_loc).all()):
            return None
        return new_loc, new_precision

    def _draw_offsets(self) -> Tensor:
        eps = torch.randn(
            self.pairs, self.loc.shape[0], dtype=self.loc.dtype, device=self.loc.device
        )
        if self.diagonal_q:
            return eps * self._q_precision_diagonal().rsqrt()
        # z = m + L^{-T} eps has covariance (L L^T)^{-1} = Lambda^{-1}.
        chol = torch.linalg.cholesky(self.precision)
        return torch.linalg.solve_triangular(chol.mT, eps.mT, upper=True).mT

    def _update_precision(self, precision: Tensor, neg_hess: Tensor, rho: float) -> Tensor:
        if self.diagonal:
            plain = (1 - rho) * precision + rho * neg_hess
            if bool((plain > 0).all()):
                return plain
            self.fallbacks += 1
            gap = neg_hess - precision
            return precision + rho * gap + 0.5 * rho**2 * gap**2 / precision
        neg_hess = 0.5 * (neg_hess + neg_hess.mT)
        plain = (1 - rho) * precision + rho * neg_hess
        if torch.linalg.cholesky_ex(plain).info.item() == 0:
            return plain
        self.fallbacks += 1
        gap = neg_hess - precision
        chol, info = torch.linalg.cholesky_ex(precision)
        if info.item() != 0:
            return plain  # not positive definite either way: the caller halves the step
        correction = gap @ torch.cholesky_solve(gap, chol)
        updated = precision + rho * gap + 0.5 * rho**2 * correction
        return 0.5 * (updated + updated.mT)

    # -- moments, averaging, results ---------------------------------------------------
    def _q_precision_diagonal(self) -> Tensor:
        return self.precision if self.diagonal else torch.diagonal(self.precision)

    def entropy(self) -> Tensor:
        """:math:`H[q] = \\frac D2\\log(2\\pi e) - \\frac12\\log\\det\\Lambda_q`."""
        dim = self.loc.shape[0]
        if self.diagonal_q:
            logdet = self._q_precision_diagonal().log().sum()
        else:
            logdet = torch.linalg.slogdet(self.precision)[1]
        return 0.5 * dim * math.log(2 * math.pi * math.e) - 0.5 * logdet

    def covariance(self) -> Tensor:
        """Covariance of :math:`q`: :math:`\\Lambda^{-1}`, or :math:`\\mathrm{diag}(1/\\Lambda_{dd})` for mean-field."""
        if self.diagonal_q:
            return torch.diag_embed(1.0 / self._q_precision_diagonal())
        # In float64: the inverse of an ill-conditioned float32 precision can lose its
        # definiteness; set_moments factorises it in float64 too.
        return _spd_inverse(self.precision.double())

    def write_family(self) -> None:
        """Place the family at :math:`\\mathcal{N}(m, \\Lambda^{-1})` (projected if needed)."""
        self.family.set_moments(self.loc, self.covariance())

    def accumulate(self) -> None:
        """Add the current natural parameters :math:`(\\Lambda, \\Lambda m)` to the average."""
        self.count += 1
        precision, loc = self.precision.double(), self.loc.double()
        self.precision_sum += precision
        self.shift_sum += precision * loc if self.diagonal else precision @ loc

    def apply_average(self) -> None:
        """Replace the iterate by the average of the natural parameters, if any were taken."""
        if self.count == 0:
            return
        precision = self.precision_sum / self.count
        shift = self.shift_sum / self.count
        loc = shift / precision if self.diagonal else torch.linalg.solve(precision, shift)
        dtype = self.loc.dtype
        self.loc, self.precision = loc.to(dtype), precision.to(dtype)
        self.write_family()

    def state_dict(self) -> dict[str, Any]:
        return {
            "loc": self.loc,
            "precision": self.precision,
            "count": self.count,
            "precision_sum": self.precision_sum,
            "shift_sum": self.shift_sum,
            "fallbacks": self.fallbacks,
            "damped_steps": self.damped_steps,
            "clipped_steps": self.clipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loc = state["loc"].clone()
        self.precision = state["precision"].clone()
        self.count = int(state["count"])
        # Copies: the sums are updated in place and must not alias the checkpoint's tensors.
        self.precision_sum = state["precision_sum"].to(torch.float64, copy=True)
        self.shift_sum = state["shift_sum"].to(torch.float64, copy=True)
        self.fallbacks = int(state["fallbacks"])
        self.damped_steps = int(state.get("damped_steps", 0))
        self.clipped_steps = int(state.get("clipped_steps", 0))


def _positive(precision: Tensor) -> bool:
    """Positive definite (entrywise positive for a diagonal)."""
    if precision.dim() == 1:
        return bool((precision > 0).all())
    return torch.linalg.cholesky_ex(precision).info.item() == 0


def _within_ratio(old: Tensor, new: Tensor, ratio: float) -> bool:
    """:math:`\\Lambda/c \\preceq \\Lambda' \\preceq c\\Lambda` (elementwise for diagonals)."""
    if old.dim() == 1:
        return bool(((new <= ratio * old) & (new >= old / ratio)).all())
    return _positive(ratio * old - new) and _positive(new - old / ratio)


def _spd_inverse(matrix: Tensor) -> Tensor:
    """Inverse of a symmetric positive-definite matrix through its Cholesky factor."""
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(matrix))
    return 0.5 * (inverse + inverse.mT)
