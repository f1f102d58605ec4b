"""Pathfinder: Gaussian approximations along L-BFGS paths, pooled by importance resampling.

Zhang, Carpenter, Gelman and Vehtari (2022), "Pathfinder: parallel quasi-Newton variational
inference", JMLR 23(306). For each of ``num_paths`` paths:

1. **Start.** :math:`x_0 = c + u`, :math:`u \\sim \\mathcal{U}(-r, r)^D` with ``center``
   :math:`c` (``init``; by default 0, the model's ``initial_point`` through
   :func:`pathfinder_model`) and radius :math:`r` = ``init_radius`` (default 2, Stan's, in the
   unconstrained space). A start where :math:`\\log p` or its gradient is not finite is
   redrawn, up to ``max_init_attempts`` times; the attempts are reported per path.
2. **Path.** L-BFGS on :math:`f = -\\log p` (:func:`~svi_torch.methods.lbfgs.lbfgs`: own line
   search that backs off non-finite values, stopping on relative tolerances of the objective
   and of the gradient).
3. **Gaussians.** At every iterate :math:`l`, the inverse Hessian estimate from the last
   :math:`J` pairs that meet the curvature condition, in the compact form of Byrd, Nocedal
   and Schnabel (1994) over the diagonal :math:`\\alpha` of the paper's Algorithm 4,

   .. math::

       \\Sigma_l = \\mathrm{diag}(\\alpha) + \\beta\\gamma\\beta^\\top,\\quad
       \\beta = [\\mathrm{diag}(\\alpha) Y,\\; S],\\quad
       \\gamma = \\begin{bmatrix} 0 & -R^{-1} \\\\ -R^{-\\top} &
           R^{-\\top}(E + Y^\\top\\mathrm{diag}(\\alpha)Y)R^{-1} \\end{bmatrix},

   (:math:`R` the upper triangle of :math:`S^\\top Y`, :math:`E` its diagonal), and
   :math:`q_l = \\mathcal{N}(x_l + \\Sigma_l \\nabla\\log p(x_l), \\Sigma_l)`, sampled and
   evaluated through a thin QR factorisation of :math:`\\mathrm{diag}(\\alpha)^{-1/2}\\beta`
   (:class:`PathfinderGaussian`; :math:`O(DJ^2)` per iterate).
4. **ELBO.** :math:`\\widehat{\\mathrm{ELBO}}_l = \\frac1K\\sum_k \\log p(z_k) - \\log q_l(z_k)`,
   :math:`z_k \\sim q_l` (``elbo_draws`` :math:`= K`), every estimate made from the same
   :math:`K` standard normals (common random numbers, so that iterates and paths are
   compared on paired draws); a draw where :math:`\\log p` is not finite makes it
   :math:`-\\infty` (``q`` puts mass where ``p`` has none). The path's result is the iterate
   with the largest ELBO, except that iterates within two paired standard errors of it
   count as tied and the one whose log ratios :math:`\\log p - \\log q` vary least is taken
   (:func:`_choose`: with :math:`K = 25` the estimate's noise is larger than the KL
   differences it must resolve near a good fit). ``draws_per_path`` draws are taken from it.

**Accuracy and the history.** :math:`\\Sigma_l` corrects the diagonal along at most
:math:`2J` directions, and only along those the path has explored. BFGS recovers the inverse
Hessian of a quadratic from :math:`D` conjugate steps (Dixon's theorem), which takes a
history :math:`J \\ge D`, a line search close to exact and at least :math:`D` iterations:
on the spread spectrum of the tests (:math:`D = 10`, condition number 100)
``history_size=D, wolfe_c2=0.01`` makes the best Gaussian exact, where Stan's
:math:`J = 5`, :math:`c_2 = 0.9` leave it 1.4 nats off. On the conjugate regressions of
``benchmarks/gaussian_vi_evals.py`` (:math:`N = 1000`) L-BFGS converges in fewer than
:math:`D` iterations (a clustered spectrum) and the unexplored directions keep the diagonal
guess: KL(q‖p) = 0.0026, 0.19 and 3.2 nats at :math:`D = 5, 20, 100` with Stan's defaults,
0, 0.032 and 2.1 with ``history_size=D, wolfe_c2=0.01``. Pathfinder is then a start, not a
fit: batch-and-match from its Gaussian reaches KL < 0.01 in 2 and 21 steps of 16 draws
(same benchmark).

**Pooling.** The draws of all paths are importance-weighted against the *mixture* of the
paths' Gaussians, :math:`\\log w = \\log p(z) - \\log\\frac1I\\sum_i q_i(z)` (the balance
heuristic of multiple importance sampling). The paper weights each draw by its own path's
:math:`q_i`; then the share of a mode in the resampled draws depends on how many paths
happened to reach it, and with the mixture it does not. The log weights are Pareto smoothed
(:func:`~svi_torch.diagnostics.psis_smooth`) and ``num_draws`` draws resampled with
replacement (Stan's default), without replacement, or not at all (``resample="off"``: all
pooled draws with their weights).

**What cannot pass silently.** The result reports the PSIS :math:`\\hat k` with its reading,
the effective sample size :math:`1/\\sum_s \\bar w_s^2` of the pooled weights, the largest
normalised weight, the number of distinct resampled draws, and for each path its start
attempts, iterations, evaluations, back-offs, stop reason, best ELBO and its iterate. A
:class:`PathfinderWarning` is raised (and the message kept in ``result.warnings``) when
:math:`\\hat k > 0.7`, when the distinct draws are fewer than half of those resampled, when
one draw holds more than 5% of the weight, when the effective sample size is below 5% of
the pooled draws, when draws fall where :math:`\\log p` is not finite, or when a path fails.

**Full data only.** L-BFGS's line search compares objective values and gradients at nearby
points, and the ELBOs choose between iterates by differences of a few nats: both need a
deterministic ``log_density``. A minibatch estimate that draws a new batch at each call is
not supported (the Wolfe conditions and the pairs :math:`(s, y)` would measure the noise).
A *fixed* subsample with the likelihood scaled by :math:`N/B` is a deterministic function
and runs, but every figure then refers to that surrogate posterior, not to :math:`p(z\\mid D)`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..diagnostics import KHat, psis_smooth
from ..models.base import Model
from .density import LogDensity, log_density_and_score, tolerate_numerical_failures
from .lbfgs import LBFGSIterate, lbfgs

__all__ = [
    "pathfinder",
    "pathfinder_model",
    "PathfinderResult",
    "PathResult",
    "PathfinderGaussian",
    "PathfinderWarning",
    "RESAMPLING",
]

RESAMPLING = ("with_replacement", "without_replacement", "off")
_LOG_2PI = math.log(2 * math.pi)

# Thresholds of the warnings (module docstring).
BAD_KHAT = 0.7
MIN_DISTINCT_FRACTION = 0.5
MAX_WEIGHT = 0.05
MIN_ESS_FRACTION = 0.05


class PathfinderWarning(UserWarning):
    """Pathfinder's draws are not a reliable approximation of the posterior (see the message)."""


@dataclass(frozen=True)
class PathfinderGaussian:
    """:math:`\\mathcal{N}(\\mu, \\Sigma)` with :math:`\\Sigma = A^{1/2}(I + Q(LL^\\top - I)Q^\\top)A^{1/2}`.

    :math:`A = \\mathrm{diag}(\\alpha)`, :math:`Q` (``basis``, :math:`D \\times k`, orthonormal
    columns) and :math:`R` from the thin QR :math:`A^{-1/2}\\beta = QR`, and :math:`L`
    (``chol``) the Cholesky factor of :math:`I_k + R\\gamma R^\\top`, so that
    :math:`\\Sigma = A + \\beta\\gamma\\beta^\\top`. Then
    :math:`z = \\mu + A^{1/2}(QLv + u - Qv)`, :math:`v = Q^\\top u`, :math:`u \\sim
    \\mathcal{N}(0, I)` has covariance :math:`\\Sigma`, and
    :math:`\\log\\det\\Sigma = \\sum_d\\log\\alpha_d + 2\\sum_j \\log L_{jj}`. All float64.
    """

    loc: Tensor
    alpha: Tensor
    basis: Tensor
    chol: Tensor

    @classmethod
    def from_iterate(cls, iterate: LBFGSIterate) -> PathfinderGaussian | None:
        """The Gaussian of an L-BFGS iterate on :math:`f = -\\log p`, or ``None`` when
        :math:`I + R\\gamma R^\\top` is not positive definite (rounding)."""
        x, grad, s, y, alpha = iterate.x, iterate.grad, iterate.s, iterate.y, iterate.alpha
        dim, m = s.shape
        if m == 0:
            empty = x.new_zeros(dim, 0)
            return cls(x - alpha * grad, alpha, empty, x.new_zeros(0, 0))
        sy = s.mT @ y
        eye = torch.eye(m, dtype=x.dtype, device=x.device)
        r_inv = torch.linalg.solve_triangular(sy.triu(), eye, upper=True)
        alpha_y = alpha[:, None] * y
        corner = r_inv.mT @ (torch.diag(sy.diagonal()) + y.mT @ alpha_y) @ r_inv
        gamma = torch.cat(
            [torch.cat([torch.zeros_like(eye), -r_inv], 1), torch.cat([-r_inv.mT, corner], 1)],
            0,
        )
        beta = torch.cat([alpha_y, s], 1)
        # Mean: one Newton step x - H grad f, with H = diag(alpha) + beta gamma beta'.
        loc = x - alpha * grad - beta @ (gamma @ (beta.mT @ grad))
        basis, r = torch.linalg.qr(beta / alpha.sqrt()[:, None])
        inner = torch.eye(basis.shape[1], dtype=x.dtype, device=x.device) + r @ gamma @ r.mT
        chol, info = torch.linalg.cholesky_ex(0.5 * (inner + inner.mT))
        if info != 0 or not bool(torch.isfinite(loc).all()):
            return None
        return cls(loc, alpha, basis, chol)

    @property
    def dim(self) -> int:
        return self.loc.shape[0]

    @property
    def log_det(self) -> Tensor:
        """:math:`\\log\\det\\Sigma`."""
        return self.alpha.log().sum() + 2 * self.chol.diagonal().log().sum()

    def sample(self, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``num`` draws ``(num, D)`` and their :math:`\\log q`."""
        u = torch.randn(num, self.dim, generator=generator, dtype=torch.float64)
        return self.transform(u.to(self.loc.device))

    def transform(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """The draws made from standard normal ``u`` ``(S, D)``, and their :math:`\\log q`."""
        v = u @ self.basis
        z = self.loc + self.alpha.sqrt() * (u + (v @ self.chol.mT - v) @ self.basis.mT)
        log_q = -0.5 * (u.square().sum(-1) + self.log_det + self.dim * _LOG_2PI)
        return z, log_q

    def log_prob(self, z: Tensor) -> Tensor:
        """:math:`\\log q(z)` for rows of ``z``; with :math:`x = A^{-1/2}(z - \\mu)`, the
        Mahalanobis term is :math:`\\lVert x\\rVert^2 - \\lVert Q^\\top x\\rVert^2 +
        \\lVert L^{-1}Q^\\top x\\rVert^2`."""
        x = (z.to(self.loc) - self.loc) / self.alpha.sqrt()
        v = x @ self.basis
        w = torch.linalg.solve_triangular(self.chol, v.mT, upper=False).mT
        maha = x.square().sum(-1) - v.square().sum(-1) + w.square().sum(-1)
        return -0.5 * (maha + self.log_det + self.dim * _LOG_2PI)

    def covariance(self) -> Tensor:
        """The dense :math:`\\Sigma` (:math:`D \\times D`), e.g. for ``family.set_moments``."""
        root = self.alpha.sqrt()
        q = self.basis
        middle = self.chol @ self.chol.mT - torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
        inner = torch.eye(self.dim, dtype=q.dtype, device=q.device) + q @ middle @ q.mT
        cov = root[:, None] * inner * root[None, :]
        return 0.5 * (cov + cov.mT)

    def entropy(self) -> Tensor:
        """:math:`H[q] = \\tfrac12(\\log\\det\\Sigma + D(1 + \\log 2\\pi))`."""
        return 0.5 * (self.log_det + self.dim * (1 + _LOG_2PI))


@dataclass
class PathResult:
    """What one path did.

    Attributes:
        index: path number.
        start: the start :math:`x_0` (``(D,)``, float64), or ``None`` when none was found.
        init_attempts: starts drawn until one was feasible.
        num_iters: L-BFGS iterations.
        num_grad_evals: evaluations of :math:`\\log p` with its gradient (starts included).
        num_density_evals: evaluations of :math:`\\log p` alone (ELBO and final draws).
        num_backoffs: line-search trial points with a non-finite value or gradient.
        num_skipped_pairs: pairs left out of the history (curvature condition).
        stop_reason: why L-BFGS stopped (:class:`~svi_torch.methods.lbfgs.LBFGSResult`).
        elbos: the ELBO estimate of each iterate (:math:`-\\infty` where ``q`` was invalid).
        best_iter: the iterate chosen (the largest ELBO up to ties, see :func:`_choose`;
            ``-1`` if none is finite).
        best_elbo: its ELBO estimate.
        gaussian: its Gaussian, or ``None`` for a failed path.
        failure: why the path failed, or ``None``.
    """

    index: int
    start: Tensor | None = None
    init_attempts: int = 0
    num_iters: int = 0
    num_grad_evals: int = 0
    num_density_evals: int = 0
    num_backoffs: int = 0
    num_skipped_pairs: int = 0
    stop_reason: str = ""
    elbos: list[float] = field(default_factory=list)
    best_iter: int = -1
    best_elbo: float = -math.inf
    gaussian: PathfinderGaussian | None = None
    failure: str | None = None


@dataclass
class PathfinderResult:
    """Pathfinder's draws, their weights, the best Gaussian and the diagnostics.

    Attributes:
        draws: the returned draws, ``(R, D)``, unconstrained, in the ``dtype`` that
            ``log_density`` takes: resampled ones, or all pooled ones with
            ``resample="off"``.
        log_p: :math:`\\log p(z)` of each returned draw (float64).
        log_q: :math:`\\log\\frac1I\\sum_i q_i(z)`, the pooled proposal's density (float64).
        log_weights: normalised log importance weights of the returned draws: :math:`-\\log R`
            after resampling, the smoothed pooled weights with ``resample="off"``.
        pooled_log_weights: Pareto-smoothed, normalised :math:`\\log \\bar w` of every pooled
            draw (:math:`-\\infty` where :math:`\\log p` was not finite).
        pooled_log_ratios: the raw :math:`\\log p(z) - \\log\\frac1I\\sum_i q_i(z)` of every
            pooled draw, before smoothing (:math:`-\\infty` where :math:`\\log p` was not
            finite): the importance-weighted evidence and the pooled proposal's ELBO.
        indices: the pooled draw each returned draw is (``(R,)``).
        gaussian: the best path's :class:`PathfinderGaussian` (largest ELBO, ties chosen as
            within a path).
        best_path: its index.
        paths: a :class:`PathResult` per path.
        khat: PSIS :math:`\\hat k` of the pooled weights, with its reading.
        ess: :math:`1/\\sum_s \\bar w_s^2` of the pooled weights.
        max_weight: the largest normalised pooled weight.
        num_distinct: distinct draws among those returned.
        num_grad_evals, num_density_evals: totals over the paths.
        seconds: wall time.
        warnings: the messages of the :class:`PathfinderWarning` raised (empty when none).
    """

    draws: Tensor
    log_p: Tensor
    log_q: Tensor
    log_weights: Tensor
    pooled_log_weights: Tensor
    pooled_log_ratios: Tensor
    indices: Tensor
    gaussian: PathfinderGaussian
    best_path: int
    paths: list[PathResult]
    khat: KHat
    ess: float
    max_weight: float
    num_distinct: int
    num_grad_evals: int
    num_density_evals: int
    seconds: float
    warnings: list[str]

    def set_family(self, family: object) -> None:
        """Place a :class:`~svi_torch.families.gaussian.GaussianFamily` at the best Gaussian."""
        loc = family.loc  # type: ignore[attr-defined]
        family.set_moments(  # type: ignore[attr-defined]
            self.gaussian.loc.to(loc), self.gaussian.covariance().to(loc)
        )

    def __str__(self) -> str:
        lines = [
            f"Pathfinder: {len(self.paths)} paths, {self.num_grad_evals} gradient and "
            f"{self.num_density_evals} density evaluations, {self.seconds:.2f} s",
            f"PSIS k-hat = {self.khat.value:.2f} ({self.khat.reading}); ESS {self.ess:.0f}; "
            f"largest weight {self.max_weight:.3f}; {self.num_distinct} distinct of "
            f"{self.draws.shape[0]} draws",
        ]
        for p in self.paths:
            state = f"failed: {p.failure}" if p.failure else f"best ELBO {p.best_elbo:.3f}"
            lines.append(
                f"  path {p.index}: {p.init_attempts} start(s), {p.num_iters} iterations "
                f"({p.stop_reason}), {p.num_grad_evals} gradients, {p.num_backoffs} "
                f"back-offs, {state} at iterate {p.best_iter}"
            )
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


class _Density:
    """``log_density`` seen in float64, with evaluation counts."""

    def __init__(self, log_density: LogDensity, dtype: torch.dtype, chunk: int) -> None:
        self.log_density, self.dtype, self.chunk = log_density, dtype, chunk
        self.grad_evals = 0
        self.density_evals = 0

    def value_and_grad(self, x: Tensor) -> tuple[float, Tensor]:
        """:math:`(-\\log p(x), -\\nabla\\log p(x))`: the L-BFGS objective."""
        self.grad_evals += 1
        value, score = log_density_and_score(self.log_density, x.to(self.dtype)[None])
        return -float(value[0]), -score[0].to(torch.float64)

    def values(self, z: Tensor) -> Tensor:
        self.density_evals += z.shape[0]
        with torch.no_grad():
            pieces = [
                self.log_density(z[i : i + self.chunk].to(self.dtype)).to(torch.float64)
                for i in range(0, z.shape[0], self.chunk)
            ]
        return torch.cat(pieces)


def _centers(init: Tensor | None, dim: int, num_paths: int, device: torch.device) -> Tensor:
    if init is None:
        return torch.zeros(num_paths, dim, dtype=torch.float64, device=device)
    init = torch.as_tensor(init).detach().to(torch.float64)
    if init.shape == (dim,):
        return init.expand(num_paths, dim).clone()
    if init.shape == (num_paths, dim):
        return init.clone()
    raise ValueError(
        f"init must have shape ({dim},) or (num_paths, dim) = ({num_paths}, {dim}), "
        f"got {tuple(init.shape)}"
    )


# Gaussians kept per path for the final choice: the tie set (``_choose``) lies among the
# largest ELBOs, so the others need not be held in memory.
_KEEP_CANDIDATES = 20
# Candidates within this many paired standard errors of the largest ELBO count as tied.
TIE_STANDARD_ERRORS = 2.0


def _choose(elbos: Tensor, log_ratios: Tensor) -> int:
    """The candidate to report among ELBO estimates made from common random numbers.

    ``log_ratios[c]`` holds :math:`r_{ck} = \\log p(z_{ck}) - \\log q_c(z_{ck})` of candidate
    :math:`c` at draws :math:`z_{ck}` made from the same standard normals for every
    candidate, and ``elbos`` their means. The plain rule (the paper's) takes the largest
    ELBO. Its estimate has standard deviation :math:`\\approx\\sqrt{2\\,\\mathrm{KL}/K}` near a
    Gaussian target, larger than the KL differences it is meant to resolve (with
    :math:`K = 25`, an iterate 0.03 nats off beats an exact one a quarter of the time). So
    the candidates whose ELBO is within two paired standard errors
    :math:`2\\,\\mathrm{sd}_k(r_{c^*k} - r_{ck})/\\sqrt K` of the largest count as tied, and of
    those the one whose log ratios vary least is taken: :math:`\\mathrm{sd}_k(r_{ck}) = 0`
    exactly when :math:`q_c \\propto p`. A candidate clearly better by ELBO always wins.
    """
    finite = torch.isfinite(elbos)
    top = int(torch.where(finite, elbos, -math.inf).argmax())
    k = log_ratios.shape[1]
    paired_se = (log_ratios[top] - log_ratios).std(-1) / math.sqrt(k)
    tied = finite & (elbos[top] - elbos <= TIE_STANDARD_ERRORS * paired_se)
    spread = torch.where(tied, log_ratios.std(-1), math.inf)
    spread[top] = min(float(spread[top]), float(log_ratios[top].std()))
    return int(spread.argmin())


def _run_path(
    path: PathResult,
    density: _Density,
    center: Tensor,
    settings: _Settings,
    generator: torch.Generator,
    elbo_noise: Tensor,
) -> Tensor | None:
    """Start, L-BFGS path, ELBO of every iterate; fills ``path`` in place.

    Returns the log ratios (``(K,)``) of the chosen iterate, ``None`` for a failed path.
    """
    before_grad, before_density = density.grad_evals, density.density_evals
    for attempt in range(1, settings.max_init_attempts + 1):
        jitter = torch.rand(center.shape, generator=generator, dtype=torch.float64)
        x0 = center + settings.init_radius * (2 * jitter.to(center.device) - 1)
        value, grad = density.value_and_grad(x0)
        path.init_attempts = attempt
        if math.isfinite(value) and bool(torch.isfinite(grad).all()):
            path.start = x0
            break
        if settings.init_radius == 0:
            break  # the same point every time
    if path.start is None:
        path.failure = (
            f"no start with a finite log density and gradient in {path.init_attempts} "
            f"draw(s) within ±{settings.init_radius} of the center; pass a feasible init= "
            "(or a smaller init_radius)"
        )
        path.num_grad_evals = density.grad_evals - before_grad
        return None

    ratios: list[Tensor] = []
    kept: dict[int, PathfinderGaussian] = {}

    best = {"elbo": -math.inf, "at": 0}

    def on_iterate(iterate: LBFGSIterate) -> bool:
        gaussian = PathfinderGaussian.from_iterate(iterate)
        if gaussian is None:
            path.elbos.append(-math.inf)
            ratios.append(torch.full((elbo_noise.shape[0],), math.nan, dtype=torch.float64))
            return _out_of_patience(iterate.index, best, settings.elbo_patience)
        z, log_q = gaussian.transform(elbo_noise)
        ratio = density.values(z) - log_q
        elbo = float(ratio.mean()) if bool(torch.isfinite(ratio).all()) else -math.inf
        path.elbos.append(elbo)
        ratios.append(ratio)
        if math.isfinite(elbo):
            kept[iterate.index] = gaussian
            if len(kept) > _KEEP_CANDIDATES:
                del kept[min(kept, key=lambda i: path.elbos[i])]
            if elbo > best["elbo"]:
                best["elbo"], best["at"] = elbo, iterate.index
        return _out_of_patience(iterate.index, best, settings.elbo_patience)

    result = lbfgs(
        density.value_and_grad,
        path.start,
        initial=(value, grad),
        history_size=settings.history_size,
        max_iters=settings.max_iters,
        tol_rel_obj=settings.tol_rel_obj,
        tol_rel_grad=settings.tol_rel_grad,
        wolfe_c2=settings.wolfe_c2,
        callback=on_iterate,
    )
    stop = "elbo_patience" if result.stop_reason == "callback" else result.stop_reason
    path.num_iters, path.stop_reason = result.num_iters, stop
    path.num_backoffs, path.num_skipped_pairs = result.num_backoffs, result.num_skipped_pairs
    path.num_grad_evals = density.grad_evals - before_grad
    path.num_density_evals = density.density_evals - before_density
    if not kept:
        path.failure = (
            "no iterate had a finite ELBO: every Gaussian along the path put draws where "
            "log p is not finite (or its covariance was not positive definite)"
        )
        return None
    elbos = torch.tensor(path.elbos, dtype=torch.float64)
    elbos[[i for i in range(len(path.elbos)) if i not in kept]] = -math.inf
    chosen = _choose(elbos, torch.stack(ratios))
    path.best_iter, path.best_elbo, path.gaussian = chosen, path.elbos[chosen], kept[chosen]
    return ratios[chosen]


def _out_of_patience(index: int, best: dict, patience: int | None) -> bool:
    """Whether ``patience`` iterates have passed since the path's best ELBO."""
    return patience is not None and index - best["at"] >= patience


@dataclass(frozen=True)
class _Settings:
    history_size: int
    max_iters: int
    tol_rel_obj: float
    tol_rel_grad: float
    wolfe_c2: float
    elbo_draws: int
    init_radius: float
    max_init_attempts: int
    elbo_patience: int | None = None


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def pathfinder(
    log_density: LogDensity,
    dim: int,
    *,
    num_paths: int = 4,
    init: Tensor | None = None,
    init_radius: float = 2.0,
    max_init_attempts: int = 100,
    history_size: int = 5,
    max_iters: int = 1000,
    tol_rel_obj: float = 1e-12,
    tol_rel_grad: float = 1e-8,
    wolfe_c2: float = 0.9,
    elbo_draws: int = 25,
    draws_per_path: int = 1000,
    num_draws: int = 1000,
    resample: str = "with_replacement",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    chunk_size: int = 1000,
    seed: int = 0,
    warn: bool = True,
    elbo_patience: int | None = None,
) -> PathfinderResult:
    """Multi-path Pathfinder over a full-data log density (see the module docstring).

    Args:
        log_density: ``z (S, D) -> log p(z) (S,)``, deterministic (full data).
        dim: :math:`D`.
        num_paths: :math:`I`, paths (Stan: 4).
        init: start center ``(D,)``, or one per path ``(num_paths, D)``; default zeros.
        init_radius: half-width :math:`r` of the uniform jitter around the center (Stan: 2);
            0 starts exactly at ``init``.
        max_init_attempts: starts drawn per path before it gives up (Stan: 100).
        history_size: :math:`J`, L-BFGS pairs (Stan: 5).
        max_iters: L-BFGS iterations per path at most (Stan: 1000).
        tol_rel_obj, tol_rel_grad: L-BFGS stopping tolerances.
        wolfe_c2: the line search's curvature constant (Stan's L-BFGS: 0.9).
        elbo_draws: :math:`K`, draws per ELBO estimate (Stan: 25).
        draws_per_path: draws from each path's best Gaussian (Stan: 1000).
        num_draws: :math:`R`, draws returned after resampling (Stan: 1000).
        resample: ``"with_replacement"`` (Stan), ``"without_replacement"`` or ``"off"``.
        dtype: the dtype ``log_density`` takes (default: torch's default dtype).
        device: where the draws live (default CPU).
        chunk_size: rows per ``log_density`` call when evaluating many draws.
        seed: seeds the starts, the draws and the resampling.
        warn: raise :class:`PathfinderWarning` (the messages are kept either way).
        elbo_patience: stop a path once this many iterations have passed without a larger
            ELBO; ``None`` (Stan) runs L-BFGS to its
            tolerances. Where the log density has no maximum (a hierarchical scale running
            to zero) L-BFGS runs to ``max_iters`` while the ELBO peaks in the first few
            iterations: on the centred eight schools the best iterates were 1, 6, 3 and 1
            of 1000. The path's ``stop_reason`` is then ``"elbo_patience"``.

    Returns:
        :class:`PathfinderResult`.

    Raises:
        ValueError: for bad settings, or when no path finds a feasible start.
        RuntimeError: when every path fails (no finite ELBO along any path).

    Example:
        >>> target = torch.distributions.MultivariateNormal(torch.ones(3), torch.eye(3))
        >>> res = pathfinder(target.log_prob, 3, num_paths=2, draws_per_path=200, num_draws=100)
        >>> res.draws.shape, res.khat.reading
        (torch.Size([100, 3]), 'good')
    """
    start_time = time.perf_counter()
    dim = _check_int(dim, "dim", 1)
    num_paths = _check_int(num_paths, "num_paths", 1)
    for name, value in (("elbo_draws", elbo_draws), ("draws_per_path", draws_per_path)):
        _check_int(value, name, 1)
    num_draws = _check_int(num_draws, "num_draws", 1)
    _check_int(max_init_attempts, "max_init_attempts", 1)
    _check_int(chunk_size, "chunk_size", 1)
    if elbo_patience is not None:
        _check_int(elbo_patience, "elbo_patience", 1)
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
    if not (isinstance(init_radius, int | float) and math.isfinite(init_radius)) or init_radius < 0:
        raise ValueError(f"init_radius must be a finite number >= 0, got {init_radius!r}")
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.device("cpu")
    settings = _Settings(
        history_size,
        max_iters,
        tol_rel_obj,
        tol_rel_grad,
        wolfe_c2,
        elbo_draws,
        float(init_radius),
        max_init_attempts,
        elbo_patience,
    )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    density = _Density(log_density, dtype, chunk_size)
    centers = _centers(init, dim, num_paths, device)
    paths = [PathResult(i) for i in range(num_paths)]
    # One set of standard normals for every ELBO estimate: common random numbers make the
    # comparisons between iterates and between paths paired (see ``_choose``).
    elbo_noise = torch.randn(elbo_draws, dim, generator=generator, dtype=torch.float64)
    elbo_noise = elbo_noise.to(device)
    chosen_ratios = {}
    for path, center in zip(paths, centers, strict=True):
        ratio = _run_path(path, density, center, settings, generator, elbo_noise)
        if ratio is not None:
            chosen_ratios[path.index] = ratio
    good = [p for p in paths if p.gaussian is not None]
    if not any(p.start is not None for p in paths):
        raise ValueError(f"pathfinder: {paths[0].failure}")
    if not good:
        reasons = "; ".join(f"path {p.index}: {p.failure}" for p in paths)
        raise RuntimeError(f"pathfinder: every path failed ({reasons})")
    messages = [f"path {p.index} failed: {p.failure}" for p in paths if p.failure]
    messages += [
        f"path {p.index} stopped at max_iters={max_iters} before converging"
        for p in good
        if p.stop_reason == "max_iters"
    ]

    # Pool the paths' draws and weight them against the mixture of the paths' Gaussians.
    pieces = [p.gaussian.sample(draws_per_path, generator)[0] for p in good]  # type: ignore[union-attr]
    pooled = torch.cat(pieces).to(device)
    log_p = density.values(pooled)
    per_path = torch.stack([p.gaussian.log_prob(pooled) for p in good])  # type: ignore[union-attr]
    log_q = torch.logsumexp(per_path, 0) - math.log(len(good))
    for p, piece in zip(good, pieces, strict=True):
        p.num_density_evals += piece.shape[0]
    raw = torch.where(torch.isfinite(log_p), log_p - log_q, -math.inf)
    finite = torch.isfinite(raw)
    num_outside = int((~finite).sum())
    if num_outside:
        messages.append(
            f"{num_outside} of {raw.shape[0]} pooled draws fall where log p is not finite "
            "(zero weight): the Gaussians spill outside the posterior's support"
        )
    if int(finite.sum()) < 25:
        raise RuntimeError(
            f"pathfinder: only {int(finite.sum())} of {raw.shape[0]} pooled draws have a finite "
            "log p; the Gaussian approximations do not cover the posterior's support"
        )
    smoothed, khat = psis_smooth(raw[finite])
    log_w = torch.full_like(raw, -math.inf)
    log_w[finite] = smoothed
    log_w = log_w - torch.logsumexp(log_w, 0)
    weights = log_w.exp()
    ess = float(1.0 / weights.square().sum())
    max_weight = float(weights.max())

    if resample == "off":
        indices = torch.arange(pooled.shape[0], device=device)
        returned_log_w = log_w
    else:
        replacement = resample == "with_replacement"
        positive = int((weights > 0).sum())
        if not replacement and num_draws > positive:
            raise ValueError(
                f"resample='without_replacement' needs num_draws <= the {positive} pooled "
                "draws with positive weight; lower num_draws or raise draws_per_path"
            )
        indices = torch.multinomial(
            weights.cpu(), num_draws, replacement=replacement, generator=generator
        ).to(device)
        returned_log_w = torch.full((num_draws,), -math.log(num_draws), dtype=torch.float64)
    num_distinct = int(torch.unique(indices[torch.isfinite(log_w[indices])]).numel())

    if khat.value > BAD_KHAT:
        messages.append(
            f"PSIS k-hat = {khat.value:.2f} (bad): the importance weights have a heavy tail, "
            "so the pooled Gaussians miss posterior mass and the draws are unreliable"
        )
    if resample == "with_replacement" and num_distinct < MIN_DISTINCT_FRACTION * num_draws:
        messages.append(
            f"only {num_distinct} of {num_draws} resampled draws are distinct: a few "
            "importance weights dominate, so the draws are copies of few points"
        )
    if max_weight > MAX_WEIGHT:
        messages.append(
            f"one pooled draw holds {max_weight:.1%} of the importance weight "
            f"(> {MAX_WEIGHT:.0%}): the approximation is dominated by a single point"
        )
    if ess < MIN_ESS_FRACTION * pooled.shape[0]:
        messages.append(
            f"importance-weight effective sample size {ess:.0f} is below "
            f"{MIN_ESS_FRACTION:.0%} of the {pooled.shape[0]} pooled draws"
        )
    if warn and messages:
        warnings.warn("; ".join(messages), PathfinderWarning, stacklevel=2)

    best = good[
        _choose(
            torch.tensor([p.best_elbo for p in good], dtype=torch.float64),
            torch.stack([chosen_ratios[p.index] for p in good]),
        )
    ]
    return PathfinderResult(
        draws=pooled[indices].to(dtype),
        log_p=log_p[indices],
        log_q=log_q[indices],
        log_weights=returned_log_w,
        pooled_log_weights=log_w,
        pooled_log_ratios=raw,
        indices=indices,
        gaussian=best.gaussian,  # type: ignore[arg-type]
        best_path=best.index,
        paths=paths,
        khat=khat,
        ess=ess,
        max_weight=max_weight,
        num_distinct=num_distinct,
        num_grad_evals=density.grad_evals,
        num_density_evals=density.density_evals,
        seconds=time.perf_counter() - start_time,
        warnings=messages,
    )


def pathfinder_model(model: Model, **kwargs: object) -> PathfinderResult:
    """:func:`pathfinder` on ``model.full_log_joint``, in the model's dtype, centred at
    ``model.initial_point()`` (zero when it has none) unless ``init`` is given."""
    if "init" not in kwargs:
        kwargs["init"] = model.initial_point()
    kwargs.setdefault("dtype", model.dtype)
    log_density = tolerate_numerical_failures(model.full_log_joint)
    return pathfinder(log_density, model.dim, **kwargs)  # type: ignore[arg-type]
