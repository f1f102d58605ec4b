"""Batch-and-match (BaM): score-based Gaussian VI with closed-form proximal updates.

Cai, Modi, Pillaud-Vivien, Margossian, Gower, Blei and Saul (2024), "Batch and match:
black-box variational inference with a score-based divergence", ICML (arXiv:2402.14758);
its :math:`\\lambda \\to \\infty` special case is GSM-VI (Modi et al., NeurIPS 2023). Each
step draws :math:`z_1, \\dots, z_B \\sim q_t = \\mathcal{N}(\\mu_t, \\Sigma_t)`, evaluates the
scores :math:`g_b = \\nabla_z \\log p(z_b)` (autograd), and moves :math:`q` to the minimiser
of the score-based divergence on the batch plus a KL proximity term,

.. math::

    q_{t+1} = \\arg\\min_q\\; \\frac1B\\sum_b \\lVert \\nabla\\log q(z_b) - g_b
        \\rVert^2_{\\mathrm{Cov}(q)} + \\frac{2}{\\lambda_t}\\mathrm{KL}(q_t \\| q),

in closed form (the paper's Algorithm 1; the matrix quadratic below is its Lemma on the
match step). With the batch means :math:`\\bar z, \\bar g` and covariances
:math:`C = \\frac1B\\sum_b (z_b - \\bar z)(z_b - \\bar z)^\\top`,
:math:`\\Gamma = \\frac1B\\sum_b (g_b - \\bar g)(g_b - \\bar g)^\\top`:

.. math::

    U &= \\lambda\\Gamma + \\tfrac{\\lambda}{1+\\lambda}\\bar g\\bar g^\\top, \\qquad
    V = \\Sigma_t + \\lambda C + \\tfrac{\\lambda}{1+\\lambda}(\\mu_t - \\bar z)(\\mu_t - \\bar z)^\\top,\\\\
    \\Sigma_{t+1} &= 2V\\big(I + (I + 4UV)^{1/2}\\big)^{-1}
        \\quad(\\text{the solution of } \\Sigma U \\Sigma + \\Sigma = V),\\\\
    \\mu_{t+1} &= \\tfrac{1}{1+\\lambda}\\mu_t + \\tfrac{\\lambda}{1+\\lambda}(\\Sigma_{t+1}\\bar g + \\bar z).

**Full rank** (:func:`bam_update`). :math:`UV` is not symmetric, so its square root is not
taken directly: with :math:`V = LL^\\top` (Cholesky) and the symmetric
:math:`K = L^\\top U L = E\\,\\mathrm{diag}(\\kappa)E^\\top` (eigendecomposition),
:math:`(I + 4UV)^{1/2} = L^{-\\top}(I + 4K)^{1/2}L^\\top` and

.. math::

    \\Sigma_{t+1} = L E\\,\\mathrm{diag}\\Big(\\frac{2}{1 + \\sqrt{1 + 4\\kappa}}\\Big) E^\\top L^\\top,

symmetric positive definite by construction (:math:`\\kappa \\ge 0` up to rounding, which is
clamped), :math:`O(D^3)` per step. A :math:`V` whose Cholesky fails to rounding is repaired
by clamping its eigenvalues (counted in ``num_repairs``).

**Low rank plus diagonal** (:func:`lowrank_bam_update`, "pBaM": Modi, Cai and Saul 2025,
"Batch, match, and patch: low-rank approximations for score-based variational inference",
AISTATS). :math:`\\Sigma_t = \\Lambda\\Lambda^\\top + \\Psi` with :math:`\\Lambda \\in
\\mathbb{R}^{D\\times r}`. Then :math:`U = QQ^\\top` with :math:`Q = [\\sqrt\\lambda\\,G_c^\\top,
\\sqrt{\\lambda/(1+\\lambda)}\\,\\bar g]` (:math:`m = B + 1` columns) and :math:`V = \\Psi +
RR^\\top` with :math:`R = [\\Lambda, \\sqrt\\lambda\\,X_c^\\top, \\sqrt{\\lambda/(1+\\lambda)}(\\mu_t -
\\bar z)]`, and the match step is exactly

.. math::

    \\Sigma_{t+1} = V - VQ\\,M^{-2}Q^\\top V,\\qquad M = \\tfrac12 I_m + (\\tfrac14 I_m + Q^\\top VQ)^{1/2},

(check: :math:`M^2 - Q^\\top VQ = M`, so :math:`\\Sigma_{t+1}Q = VQM^{-1}` and
:math:`\\Sigma_{t+1}U\\Sigma_{t+1} + \\Sigma_{t+1} = V`), never formed as a :math:`D\\times D`
matrix. The *patch* projects it back to rank :math:`r` plus diagonal by a few EM iterations
of factor analysis warm-started at :math:`(\\Lambda, \\Psi)`, i.e. it decreases
:math:`\\mathrm{KL}(\\mathcal{N}(0, \\Sigma_{t+1}) \\| \\mathcal{N}(0, \\Lambda\\Lambda^\\top + \\Psi))`,
with every product taken through the factors. Cost :math:`O(D(r + B)^2)` per step and per
EM iteration, memory :math:`O(D(r + B))`: linear in :math:`D`.

**Learning rate.** :math:`\\lambda` is dimensionless (BaM is affine invariant: no
preconditioning, no Adam). For a Gaussian target with exact scores the target is a fixed
point of every update, whatever the batch (:math:`\\Gamma = ACA`, :math:`\\bar g =
-A(\\bar z - m)` give :math:`\\Sigma_{t+1} = A^{-1}`, :math:`\\mu_{t+1} = m`), so a constant
:math:`\\lambda` converges exponentially fast (the paper's theorem for
:math:`B \\to \\infty`; measured here at :math:`B = 4` to :math:`16`). With noisy scores a
constant :math:`\\lambda` leaves :math:`q` fluctuating at a level :math:`\\propto \\lambda`:
the default schedule decays it, :math:`\\lambda_t = \\lambda_0 / (1 + t/\\tau)`, and iterates
are averaged (``average_start``).

**Minibatch scores.** A minibatch estimate :math:`\\hat g = \\nabla\\log p(z) + \\xi` (the
likelihood scaled by :math:`N/B_{\\text{data}}`) is unbiased, but the divergence weights the
score error by :math:`\\mathrm{Cov}(q)`, so the noise adds :math:`\\mathrm{tr}(\\Sigma\\,
\\mathrm{Cov}(\\xi))` to the objective: :math:`\\mathbb{E}[\\bar g\\bar g^\\top]` gains
:math:`\\mathrm{Cov}(\\xi)`, :math:`U` is biased up and :math:`\\Sigma` down, by an amount that
neither a decaying :math:`\\lambda_t` nor averaging removes. In a regression
:math:`\\mathrm{Cov}(\\xi)` is about :math:`N/B_{\\text{data}}` times the posterior precision
(the residual noise of every point): in ``tests/test_bam.py`` (:math:`D = 5`,
:math:`N/B_{\\text{data}} = 10`, 200 steps of 8 draws) the averaged covariance comes out
about half the exact one (mean eigenvalue ratio 0.53, KL 0.47). The handling here is a
control variate (as in SVRG, or control-variate SG-MCMC, Baker et al. 2019): given the exact
``reference_log_density`` (full data), its score :math:`g(z_{\\text{ref}})` at a reference
point (the current mean, refreshed every ``refresh_every`` steps, one full-data gradient
each), every score is taken as

.. math::

    \\tilde g(z) = \\hat g_{\\mathcal B}(z) - \\hat g_{\\mathcal B}(z_{\\text{ref}}) + g(z_{\\text{ref}}),

with :math:`\\hat g_{\\mathcal B}(z_{\\text{ref}})` from the *same* minibatch (the reference
point rides as one more row of the call: ``log_density`` must use one minibatch for all
the rows of a call, as :func:`~svi_torch.methods.density.minibatch_log_density` does).
Unbiased still, and its noise is :math:`(\\hat A - A)(z - z_{\\text{ref}})`, of the size of the
curvature noise over one posterior standard deviation instead of the residual noise of
the data. What remains is averaged out by the decaying :math:`\\lambda_t` and the iterate
average (``average_start``): :math:`\\bar\\mu = \\frac1n\\sum\\mu_t`,
:math:`\\bar\\Sigma = \\frac1n\\sum\\Sigma_t` over the last :math:`n` steps.

**Start.** The score mismatch at a mean many posterior standard deviations away enters
:math:`U` through :math:`\\bar g\\bar g^\\top` and shrinks :math:`\\Sigma` along
:math:`\\bar g` faster than the mean moves (each step moves it about one current
standard deviation along :math:`\\bar g`): from :math:`\\mathcal{N}(0, I)` on a concentrated
posterior with :math:`B < D`, BaM stalls. ``BaMStep.whitened_score``
:math:`= (\\bar g^\\top\\Sigma\\bar g)^{1/2}` tells (about :math:`\\sqrt{D/B}` at the fixed point;
:math:`\\gg \\sqrt D` means the mean is far). Start BaM where the posterior is: at a MAP or
Laplace point, or at Pathfinder's Gaussian (:mod:`~svi_torch.methods.pathfinder`); from
Pathfinder at Stan's defaults, BaM reaches the exact posterior of the D = 100 regression
of the tests in tens of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .density import LogDensity, log_density_and_score

__all__ = [
    "bam_update",
    "lowrank_bam_update",
    "BatchAndMatch",
    "BaMStep",
    "decaying_learning_rate",
    "factor_analysis_patch",
]


def decaying_learning_rate(initial: float, scale: float) -> Callable[[int], float]:
    """:math:`\\lambda_t = \\lambda_0 / (1 + t/\\tau)`, ``initial`` :math:`=\\lambda_0`, ``scale`` :math:`=\\tau`."""
    if not (initial > 0 and scale > 0):
        raise ValueError(f"initial and scale must be positive, got {initial!r}, {scale!r}")
    return lambda t: initial / (1.0 + t / scale)


def _centred(z: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:math:`\\bar z`, :math:`\\bar g` and the factors :math:`X_c = (z - \\bar z)/\\sqrt B`,
    :math:`G_c = (g - \\bar g)/\\sqrt B` of :math:`C = X_c^\\top X_c`, :math:`\\Gamma = G_c^\\top G_c`."""
    root = math.sqrt(z.shape[0])
    z_bar, g_bar = z.mean(0), scores.mean(0)
    return z_bar, g_bar, (z - z_bar) / root, (scores - g_bar) / root


def _spd_cholesky(matrix: Tensor) -> tuple[Tensor, bool]:
    """Cholesky factor of a symmetric matrix that should be positive definite, and whether
    it had to be repaired (eigenvalues clamped to :math:`10^{-12}` of the largest)."""
    sym = 0.5 * (matrix + matrix.mT)
    chol, info = torch.linalg.cholesky_ex(sym)
    if info == 0:
        return chol, False
    evals, evecs = torch.linalg.eigh(sym)
    floor = 1e-12 * float(evals.abs().max().clamp_min(1e-300))
    repaired = (evecs * evals.clamp_min(floor)) @ evecs.mT
    return torch.linalg.cholesky(0.5 * (repaired + repaired.mT)), True


def bam_update(
    mean: Tensor, cov: Tensor, z: Tensor, scores: Tensor, lr: float
) -> tuple[Tensor, Tensor, bool]:
    """One full-rank BaM step (module docstring): :math:`(\\mu_{t+1}, \\Sigma_{t+1})`.

    Args:
        mean, cov: :math:`\\mu_t` ``(D,)``, :math:`\\Sigma_t` ``(D, D)`` positive definite.
        z: the batch ``(B, D)`` drawn from :math:`\\mathcal{N}(\\mu_t, \\Sigma_t)`.
        scores: :math:`\\nabla\\log p(z_b)`, ``(B, D)``.
        lr: :math:`\\lambda_t > 0`.

    Returns:
        ``(mean, cov, repaired)``: the update, and whether :math:`V` needed an SPD repair.

    Example:
        >>> A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> z = torch.randn(3, 2, dtype=torch.float64)
        >>> m, S, _ = bam_update(torch.zeros(2, dtype=torch.float64), torch.linalg.inv(A),
        ...                      z, -z @ A, lr=10.0)  # the target N(0, A^-1) is a fixed point
        >>> bool(torch.allclose(S, torch.linalg.inv(A)) and torch.allclose(m, 0 * m))
        True
    """
    z_bar, g_bar, xc, gc = _centred(z, scores)
    delta = mean - z_bar
    shrink = lr / (1 + lr)
    v = cov + lr * (xc.mT @ xc) + shrink * torch.outer(delta, delta)
    chol, repaired = _spd_cholesky(v)
    u = lr * (gc.mT @ gc) + shrink * torch.outer(g_bar, g_bar)
    k = chol.mT @ u @ chol
    kappa, evecs = torch.linalg.eigh(0.5 * (k + k.mT))
    # kappa >= 0 in exact arithmetic (U is PSD); clamp the rounding.
    weights = 2.0 / (1.0 + torch.sqrt(1.0 + 4.0 * kappa.clamp_min(0.0)))
    factor = (chol @ evecs) * weights.sqrt()
    new_cov = factor @ factor.mT
    new_cov = 0.5 * (new_cov + new_cov.mT)
    new_mean = mean / (1 + lr) + shrink * (new_cov @ g_bar + z_bar)
    return new_mean, new_cov, repaired


def lowrank_bam_update(
    mean: Tensor,
    factor: Tensor,
    diag: Tensor,
    z: Tensor,
    scores: Tensor,
    lr: float,
    em_steps: int = 10,
    diag_floor: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """One pBaM step: the exact match step through factors, then the factor-analysis patch.

    Args:
        mean: :math:`\\mu_t` ``(D,)``.
        factor: :math:`\\Lambda` ``(D, r)``.
        diag: :math:`\\mathrm{diag}(\\Psi)` ``(D,)``, positive.
        z, scores: the batch ``(B, D)`` and its scores.
        lr: :math:`\\lambda_t`.
        em_steps: EM iterations of the patch (warm-started, each :math:`O(D(r + B)^2)`).
        diag_floor: :math:`\\Psi` is kept at least this fraction of the largest diagonal entry
            of :math:`\\Sigma_{t+1}` (EM can drive a variance to zero on a singular batch).

    Returns:
        ``(mean, factor, diag)`` of :math:`q_{t+1}`.
    """
    z_bar, g_bar, xc, gc = _centred(z, scores)
    shrink = math.sqrt(lr / (1 + lr))
    q = torch.cat([math.sqrt(lr) * gc.mT, shrink * g_bar[:, None]], 1)
    r = torch.cat([factor, math.sqrt(lr) * xc.mT, shrink * (mean - z_bar)[:, None]], 1)

    def v_times(x: Tensor) -> Tensor:  # (Psi + R R') x, never forming V
        return diag[:, None] * x + r @ (r.mT @ x)

    vq = v_times(q)
    inner = q.mT @ vq
    a, evecs = torch.linalg.eigh(0.5 * (inner + inner.mT))
    p = (vq @ evecs) / (0.5 + torch.sqrt(0.25 + a.clamp_min(0.0)))  # P P' = VQ M^-2 Q'V

    def s_times(x: Tensor) -> Tensor:  # Sigma_{t+1} x = (Psi + R R' - P P') x
        return v_times(x) - p @ (p.mT @ x)

    new_mean = mean / (1 + lr) + lr / (1 + lr) * (s_times(g_bar[:, None])[:, 0] + z_bar)
    s_diag = diag + r.square().sum(1) - p.square().sum(1)
    new_factor, new_diag = factor_analysis_patch(
        s_times, s_diag, factor, diag, em_steps, diag_floor
    )
    return new_mean, new_factor, new_diag


def factor_analysis_patch(
    s_times: Callable[[Tensor], Tensor],
    s_diag: Tensor,
    factor: Tensor,
    diag: Tensor,
    em_steps: int = 10,
    diag_floor: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """Project a covariance :math:`S` onto rank :math:`r` plus diagonal by EM of factor analysis.

    Each iteration decreases :math:`\\mathrm{KL}(\\mathcal{N}(0, S) \\| \\mathcal{N}(0,
    \\Lambda\\Lambda^\\top + \\Psi))`, warm-started at ``(factor, diag)``; :math:`S` is seen
    only through ``s_times`` (:math:`x \\mapsto Sx`, ``(D, r)`` blocks) and its diagonal
    ``s_diag``, so the cost is :math:`O(D r^2)` plus ``s_times`` per iteration.

    Args:
        s_times: :math:`x \\mapsto Sx`.
        s_diag: :math:`\\mathrm{diag}(S)`.
        factor, diag: the warm start :math:`(\\Lambda, \\mathrm{diag}\\,\\Psi)`.
        em_steps: iterations.
        diag_floor: :math:`\\Psi` is kept at least this fraction of :math:`\\max_d S_{dd}`.
    """
    floor = diag_floor * float(s_diag.max().clamp_min(1e-300))
    new_factor, new_diag = factor, diag
    eye = torch.eye(factor.shape[1], dtype=factor.dtype, device=factor.device)
    for _ in range(em_steps):
        # E-step: beta = Lambda'(Lambda Lambda' + Psi)^-1 by Woodbury, r x D.
        scaled = new_factor / new_diag[:, None]
        beta = torch.linalg.solve(eye + new_factor.mT @ scaled, scaled.mT)
        s_beta = s_times(beta.mT)  # S beta', D x r
        ezz = eye - beta @ new_factor + beta @ s_beta
        # M-step: Lambda = S beta' Ezz^-1, Psi = diag(S - Lambda beta S).
        new_factor = torch.linalg.solve(ezz, s_beta.mT).mT
        new_diag = (s_diag - (new_factor * s_beta).sum(1)).clamp_min(floor)
    return new_factor, new_diag


@dataclass(frozen=True)
class BaMStep:
    """What one :meth:`BatchAndMatch.step` did.

    Attributes:
        step: the step number after it.
        lr: :math:`\\lambda_t` used.
        accepted: ``False`` when the batch had non-finite values or scores, or the update was
            not finite (the state is then unchanged).
        mean_log_density: :math:`\\frac1B\\sum_b \\log p(z_b)` of the batch (a cheap trace).
        whitened_score: :math:`(\\bar g^\\top\\Sigma_t\\bar g)^{1/2}` before the update: about
            :math:`\\sqrt{D/B}` at the fixed point, :math:`\\gg\\sqrt D` when the mean is far off.
        num_score_evals: rows scored this step (:math:`B`, plus one with a control variate).
        num_full_evals: full-data gradients this step (control-variate refreshes).
    """

    step: int
    lr: float
    accepted: bool
    mean_log_density: float
    whitened_score: float
    num_score_evals: int
    num_full_evals: int


class BatchAndMatch:
    """The BaM update rule with its state: full rank, or low rank plus diagonal (``rank``).

    Args:
        dim: :math:`D`.
        batch_size: :math:`B`, draws (scores) per step, at least 2.
        learning_rate: :math:`\\lambda` (a constant) or a function ``t -> lambda_t``; default
            :func:`decaying_learning_rate` with :math:`\\lambda_0 = 10`, :math:`\\tau = 10`.
        rank: ``None`` (full rank) or :math:`r` for :math:`\\Lambda\\Lambda^\\top + \\Psi`.
        em_steps: EM iterations of the low-rank patch.
        reference_log_density: the exact (full-data) log density, for the control variate of
            minibatch scores (module docstring); ``None`` uses the scores as they come.
        refresh_every: steps between refreshes of the control variate's reference point.
        average_start: average :math:`\\mu_t` and :math:`\\Sigma_t` over the steps after this
            one (full rank); ``None`` keeps no average.
        init_loc, init_cov: :math:`q_0` (default :math:`\\mathcal{N}(0, I)`, the paper's);
            for low rank ``init_cov`` is a ``(factor, diag)`` pair.
        dtype: the dtype ``log_density`` takes (the state is float64).
        device: where the state lives.
        max_rejections: consecutive rejected steps before :meth:`step` raises.

    Example:
        >>> target = torch.distributions.MultivariateNormal(torch.ones(3), torch.eye(3) * 2)
        >>> bam = BatchAndMatch(3, batch_size=4, learning_rate=10.0, dtype=torch.float32)
        >>> for _ in range(30):
        ...     _ = bam.step(target.log_prob)
        >>> bool(torch.allclose(bam.covariance(), 2 * torch.eye(3, dtype=torch.float64), atol=1e-3))
        True
    """

    def __init__(
        self,
        dim: int,
        *,
        batch_size: int = 8,
        learning_rate: float | Callable[[int], float] | None = None,
        rank: int | None = None,
        em_steps: int = 10,
        reference_log_density: LogDensity | None = None,
        refresh_every: int = 20,
        average_start: int | None = None,
        init_loc: Tensor | None = None,
        init_cov: Tensor | tuple[Tensor, Tensor] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        max_rejections: int = 20,
    ) -> None:
        for name, value, low in (
            ("dim", dim, 1),
            ("batch_size", batch_size, 2),
            ("em_steps", em_steps, 0),
            ("refresh_every", refresh_every, 1),
            ("max_rejections", max_rejections, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if rank is not None and not (isinstance(rank, int) and 1 <= rank <= dim):
            raise ValueError(f"rank must be None (full rank) or an int in [1, {dim}], got {rank!r}")
        if rank is not None and average_start is not None:
            raise ValueError(
                "average_start is supported for the full-rank update only (an average of "
                "low-rank covariances is not low rank); use rank=None"
            )
        if learning_rate is None:
            learning_rate = decaying_learning_rate(10.0, 10.0)
        elif not callable(learning_rate):
            if not (isinstance(learning_rate, int | float) and learning_rate > 0):
                raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
            constant = float(learning_rate)
            learning_rate = lambda t: constant  # noqa: E731
        self.dim, self.batch_size, self.rank, self.em_steps = dim, batch_size, rank, em_steps
        self.learning_rate = learning_rate
        self.reference_log_density, self.refresh_every = reference_log_density, refresh_every
        self.average_start, self.max_rejections = average_start, max_rejections
        self.dtype = dtype or torch.get_default_dtype()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        f64 = {"dtype": torch.float64, "device": self.device}
        self.mean = torch.zeros(dim, **f64) if init_loc is None else _vector(init_loc, dim, f64)
        if rank is None:
            cov = torch.eye(dim, **f64) if init_cov is None else torch.as_tensor(init_cov).to(**f64)
            if cov.shape != (dim, dim) or _spd_cholesky(cov)[1]:
                raise ValueError(f"init_cov must be a ({dim}, {dim}) positive definite matrix")
            self.cov = cov.clone()
        elif init_cov is None:
            # A small fixed pseudo-random factor: exactly zero is a fixed point of the patch.
            gen = torch.Generator().manual_seed(0)
            self.factor = 1e-2 * torch.randn(dim, rank, generator=gen, dtype=torch.float64)
            self.factor = self.factor.to(self.device)
            self.diag = torch.ones(dim, **f64)
        else:
            factor, diag = init_cov  # type: ignore[misc]
            self.factor, self.diag = factor.to(**f64).clone(), _vector(diag, dim, f64)
            if self.factor.shape != (dim, rank) or not bool((self.diag > 0).all()):
                raise ValueError(
                    f"init_cov for rank={rank} must be (factor ({dim}, {rank}), diag ({dim},) > 0)"
                )
        self.t = 0
        self.num_score_evals = 0
        self.num_full_evals = 0
        self.num_rejected = 0
        self.num_repairs = 0
        self._consecutive_rejections = 0
        self._avg_count = 0
        self._avg_mean = torch.zeros_like(self.mean)
        self._avg_cov = torch.zeros(dim, dim, **f64) if rank is None else None
        self._ref_point: Tensor | None = None
        self._ref_score: Tensor | None = None

    # -- sampling and moments -----------------------------------------------------------------
    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """``num`` draws from :math:`q_t`, ``(num, D)`` float64."""
        eps = torch.randn(num, self.dim, generator=generator, dtype=torch.float64)
        eps = eps.to(self.device)
        if self.rank is None:
            return self.mean + eps @ torch.linalg.cholesky(self.cov).mT
        eta = torch.randn(num, self.rank, generator=generator, dtype=torch.float64)
        return self.mean + self.diag.sqrt() * eps + eta.to(self.device) @ self.factor.mT

    def covariance(self) -> Tensor:
        """:math:`\\Sigma_t` as a dense matrix (low rank: :math:`\\Lambda\\Lambda^\\top + \\Psi`)."""
        if self.rank is None:
            return self.cov
        return self.factor @ self.factor.mT + torch.diag(self.diag)

    def averaged_moments(self) -> tuple[Tensor, Tensor]:
        """:math:`(\\bar\\mu, \\bar\\Sigma)` over the steps after ``average_start`` (the current
        moments if none has been averaged yet)."""
        if self._avg_count == 0 or self._avg_cov is None:
            return self.mean, self.covariance()
        return self._avg_mean / self._avg_count, self._avg_cov / self._avg_count

    # -- the update -----------------------------------------------------------------------------
    def _scores(self, log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor, int]:
        """Values and scores of the rows of ``z`` (control-variate corrected), and the number
        of full-data gradients spent."""
        if self.reference_log_density is None:
            value, score = log_density_and_score(log_density, z.to(self.dtype))
            return value.double(), score.double(), 0
        full = 0
        if self._ref_point is None or self.t % self.refresh_every == 0:
            point = self.mean.clone()
            _, ref = log_density_and_score(self.reference_log_density, point.to(self.dtype)[None])
            self._ref_point, self._ref_score, full = point, ref[0].double(), 1
        rows = torch.cat([z, self._ref_point[None]]).to(self.dtype)
        value, score = log_density_and_score(log_density, rows)
        score = score.double()
        corrected = score[:-1] - score[-1] + self._ref_score
        return value[:-1].double(), corrected, full

    def step(self, log_density: LogDensity, generator: torch.Generator | None = None) -> BaMStep:
        """Draw a batch from :math:`q_t`, score it, and apply the BaM update.

        Args:
            log_density: ``z (S, D) -> log p(z) (S,)``, full data or a minibatch estimate.
            generator: the random stream of the draws (default: torch's global one).
        """
        lr = float(self.learning_rate(self.t))
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate at step {self.t} is {lr!r}; it must be positive")
        z = self.sample(self.batch_size, generator)
        value, scores, full = self._scores(log_density, z)
        rows = self.batch_size + int(self.reference_log_density is not None)
        self.num_score_evals += rows
        self.num_full_evals += full
        g_bar = scores.mean(0)
        if self.rank is None:
            quad = g_bar @ (self.cov @ g_bar)
        else:  # through the factors: no D x D matrix
            quad = (self.factor.mT @ g_bar).square().sum() + (self.diag * g_bar.square()).sum()
        whitened = float(quad.clamp_min(0.0)) ** 0.5
        finite = bool(torch.isfinite(value).all() and torch.isfinite(scores).all())
        accepted = finite and self._apply(z, scores, lr)
        self.t += 1
        if accepted:
            self._consecutive_rejections = 0
            if self.average_start is not None and self.t > self.average_start:
                self._avg_count += 1
                self._avg_mean += self.mean
                self._avg_cov += self.cov  # type: ignore[operator]
        else:
            self.num_rejected += 1
            self._consecutive_rejections += 1
            if self._consecutive_rejections >= self.max_rejections:
                raise RuntimeError(
                    f"batch-and-match rejected {self._consecutive_rejections} steps in a row: "
                    "log p or its score is not finite at draws from q (q spills outside the "
                    "support, or the log density overflows); start q closer to the posterior "
                    "(init_loc, init_cov) or lower the learning rate"
                )
        return BaMStep(self.t, lr, accepted, float(value.mean()), whitened, rows, full)

    def _apply(self, z: Tensor, scores: Tensor, lr: float) -> bool:
        if self.rank is None:
            mean, cov, repaired = bam_update(self.mean, self.cov, z, scores, lr)
            if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
                return False
            self.num_repairs += int(repaired)
            self.mean, self.cov = mean, cov
            return True
        mean, factor, diag = lowrank_bam_update(
            self.mean, self.factor, self.diag, z, scores, lr, self.em_steps
        )
        if not all(bool(torch.isfinite(x).all()) for x in (mean, factor, diag)):
            return False
        self.mean, self.factor, self.diag = mean, factor, diag
        return True

    # -- checkpoints --------------------------------------------------------------------------
    _COUNTERS = ("t", "num_score_evals", "num_full_evals", "num_rejected", "num_repairs")

    def state_dict(self) -> dict[str, object]:
        """Everything :meth:`step` reads besides the settings (the RNG is the caller's)."""
        state: dict[str, object] = {name: getattr(self, name) for name in self._COUNTERS}
        tensors = {"mean": self.mean, "avg_mean": self._avg_mean}
        if self.rank is None:
            tensors.update(cov=self.cov, avg_cov=self._avg_cov)
        else:
            tensors.update(factor=self.factor, diag=self.diag)
        if self._ref_point is not None:
            tensors.update(ref_point=self._ref_point, ref_score=self._ref_score)
        state.update({k: v.clone() for k, v in tensors.items()})  # type: ignore[union-attr]
        state["avg_count"] = self._avg_count
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict` (copies, so the checkpoint's tensors are not aliased)."""

        def tensor(name: str) -> Tensor:
            return torch.as_tensor(state[name]).to(dtype=torch.float64, device=self.device).clone()

        for name in self._COUNTERS:
            setattr(self, name, int(state[name]))  # type: ignore[call-overload]
        self._avg_count = int(state["avg_count"])  # type: ignore[call-overload]
        self.mean, self._avg_mean = tensor("mean"), tensor("avg_mean")
        if self.rank is None:
            self.cov, self._avg_cov = tensor("cov"), tensor("avg_cov")
        else:
            self.factor, self.diag = tensor("factor"), tensor("diag")
        has_ref = "ref_point" in state
        self._ref_point = tensor("ref_point") if has_ref else None
        self._ref_score = tensor("ref_score") if has_ref else None
        self._consecutive_rejections = 0


def _vector(value: object, dim: int, f64: dict) -> Tensor:
    vector = torch.as_tensor(value).to(**f64).clone()
    if vector.shape != (dim,) or not bool(torch.isfinite(vector).all()):
        raise ValueError(f"expected a finite vector of shape ({dim},), got {tuple(vector.shape)}")
    return vector
