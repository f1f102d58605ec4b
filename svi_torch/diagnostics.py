"""Can this fit be trusted? PSIS k-hat, importance-weighted evidence and gradient noise.

Everything starts from the log importance weights of draws :math:`z_s \\sim q`,

.. math::

    \\log w_s = \\log p(z_s, D) - \\log q(z_s), \\qquad s = 1, \\dots, S,

on the full data (for a density-only target, :math:`\\log p` is its unnormalised density).

* **PSIS** :math:`\\hat k` (Yao et al. 2018, "Yes, but did it work?"): the shape of a
  generalized Pareto distribution fitted to the largest :math:`M = \\min(S/5, 3\\sqrt S)`
  weights (Vehtari et al., Pareto smoothed importance sampling). The variance of the weights
  is finite only for :math:`k < 1/2`; a heavy tail means ``q`` misses mass of the posterior.
  Reading: :math:`\\hat k < 0.5` good, :math:`0.5 \\le \\hat k \\le 0.7` ok (usable, with care),
  :math:`\\hat k > 0.7` bad (``q`` is unreliable for expectations and as a proposal).
* **Monte Carlo error of** :math:`\\hat k`: the asymptotic standard error of the
  generalized Pareto shape fitted to :math:`M` exceedances,
  :math:`\\mathrm{se}(\\hat k) \\approx (1 + \\hat k)/\\sqrt M` (the maximum-likelihood
  rate, which the Zhang & Stephens estimator attains); about 0.12 at :math:`\\hat k = 0.6`
  with :math:`S = 4000` draws. The reading of a value within a standard error of 0.5 or
  0.7 can flip with the draws: one diagnosis per fit is computed and reported everywhere.
* **Where q is off**: the quantities whose importance-weighted
  mean or sd disagree most with q's (:mod:`svi_torch.reweighting`), and the effective
  sample size of the smoothed weights.
* **Importance-weighted evidence**
  :math:`\\log \\hat p(D) = \\log \\frac1S\\sum_s w_s` (the :math:`K = S` IWAE bound; a lower
  bound in expectation that tightens with :math:`S`), with the delta-method standard error
  :math:`\\mathrm{se} \\approx \\hat\\sigma_w / (\\bar w \\sqrt S)`.
* **Gradient variance and signal-to-noise ratio** of an objective's gradient at the current
  variational parameters, over repeated draws on one batch: per parameter
  :math:`\\mathrm{SNR}_j = |\\mathbb{E}[g_j]| / \\mathrm{sd}(g_j)`. At the exact posterior the
  sticking-the-landing gradient has zero variance and the plain reparameterized one does not
  (Roeder et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .data import Batch
from .families.base import VariationalFamily
from .families.gaussian import GaussianFamily
from .models.base import Model
from .objectives.base import Objective
from .reweighting import doubtful_quantities, effective_sample_size, quantity_checks

__all__ = [
    "KHat",
    "GradientStats",
    "Diagnostics",
    "log_importance_weights",
    "importance_draws",
    "psis_khat",
    "psis_smooth",
    "khat_reading",
    "log_evidence_iw",
    "gradient_variance",
    "diagnose",
    "diagnose_draws",
    "khat_warning",
]

GOOD_KHAT = 0.5
OK_KHAT = 0.7


@dataclass(frozen=True)
class KHat:
    """The PSIS Pareto shape :math:`\\hat k`, its reading and the tail size used."""

    value: float
    reading: str
    tail_size: int

    @property
    def se(self) -> float:
        """Monte Carlo standard error :math:`(1 + \\hat k)/\\sqrt M`.

        A flat tail (:math:`\\hat k = -\\infty`, constant weights) has none; an underflowed
        one (:math:`+\\infty`) an unbounded one.
        """
        if not math.isfinite(self.value):
            return 0.0 if self.value < 0 else math.inf
        return (1.0 + max(self.value, 0.0)) / math.sqrt(self.tail_size)


def khat_reading(khat: float) -> str:
    """``"good"`` (:math:`\\hat k < 0.5`), ``"ok"`` (:math:`0.5 \\le \\hat k \\le 0.7`) or ``"bad"``."""
    if khat < GOOD_KHAT:
        return "good"
    if khat <= OK_KHAT:
        return "ok"
    return "bad"


def importance_draws(
    model: Model, family: VariationalFamily, num_samples: int = 2000, chunk: int = 500
) -> tuple[Tensor, Tensor, Tensor]:
    """``(z, log q(z), log w)`` for :math:`S` draws :math:`z_s \\sim q`, full data, no gradients.

    :math:`\\log w_s = \\log p(z_s, D) - \\log q(z_s)` in float64, shapes ``(S, D)``,
    ``(S,)``, ``(S,)``.
    """
    _check_int(num_samples, "num_samples", minimum=2)
    draws, log_qs, pieces = [], [], []
    with torch.no_grad():
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            z, log_q = family.rsample_and_log_prob((n,))
            draws.append(z)
            log_qs.append(log_q)
            pieces.append(model.full_log_joint(z) - log_q)
    log_w = torch.cat(pieces).double()
    if log_w.dim() != 1:
        raise ValueError(
            "diagnostics need one log weight per draw; amortized families (one q per data "
            "point) are not supported here"
        )
    return torch.cat(draws).detach(), torch.cat(log_qs).detach(), log_w


def log_importance_weights(
    model: Model, family: VariationalFamily, num_samples: int = 2000, chunk: int = 500
) -> Tensor:
    """:math:`\\log w_s = \\log p(z_s, D) - \\log q(z_s)` for :math:`z_s \\sim q`, full data, float64."""
    return importance_draws(model, family, num_samples, chunk)[2]


def psis_khat(log_weights: Tensor) -> KHat:
    """Pareto shape :math:`\\hat k` of the upper tail of the importance weights.

    Fits a generalized Pareto distribution (``pyro.ops.stats.fit_generalized_pareto``, the
    Zhang & Stephens estimator) to the exceedances :math:`w_{(S-M+i)} - w_{(S-M)}` of the
    :math:`M = \\lceil\\min(S/5, 3\\sqrt S)\\rceil` largest weights over the next largest one.

    Args:
        log_weights: :math:`\\log w_s`, shape ``(S,)``, :math:`S \\ge 25` finite values.

    Returns:
        :class:`KHat`. Constant weights (``q`` equal to the posterior up to rounding) give
        :math:`\\hat k = -\\infty`, a bounded tail, read ``"good"``. Weights so spread that
        a quarter of the tail underflows against the largest (more than ~745 nats below it:
        one draw carries all the mass) give :math:`\\hat k = +\\infty`, read ``"bad"``.
    """
    return _fit_tail(log_weights).khat


def psis_smooth(log_weights: Tensor) -> tuple[Tensor, KHat]:
    """Pareto-smoothed log importance weights and their :math:`\\hat k` (Vehtari et al.).

    The :math:`M` largest weights (as in :func:`psis_khat`) are replaced, in their order, by
    the quantiles :math:`u + F^{-1}\\big((i - \\tfrac12)/M\\big)`, :math:`i = 1, \\dots, M`, of
    the generalized Pareto distribution fitted to their exceedances over the threshold
    :math:`u`,

    .. math::

        F^{-1}(p) = \\frac{\\sigma}{k}\\big((1 - p)^{-k} - 1\\big),

    truncated at the largest raw weight. This lowers the variance of self-normalised
    estimates and of importance resampling; it does not rescue a fit with
    :math:`\\hat k > 0.7`, which is reported, not hidden.

    Args:
        log_weights: :math:`\\log w_s`, ``(S,)``, :math:`S \\ge 25` finite values.

    Returns:
        ``(smoothed, khat)``: smoothed log weights in the original order (float64, the
        same additive constant as the input) and the :class:`KHat`.
    """
    tail = _fit_tail(log_weights)
    smoothed = tail.log_weights.clone()
    if tail.sigma is None:
        return smoothed, tail.khat
    k, sigma, size = tail.khat.value, tail.sigma, tail.khat.tail_size
    p = (torch.arange(1, size + 1, dtype=torch.float64) - 0.5) / size
    quantiles = -sigma * torch.log1p(-p) if abs(k) < 1e-10 else sigma / k * ((1 - p) ** -k - 1)
    # On the scale w / max(w), as in the fit; the largest raw weight is 1.
    relative = (torch.exp(tail.threshold) + quantiles).clamp_max(1.0)
    smoothed[tail.tail_index] = torch.log(relative) + tail.log_max
    return smoothed, tail.khat


@dataclass(frozen=True)
class _Tail:
    log_weights: Tensor  # the input, float64
    khat: KHat
    sigma: float | None  # GPD scale on the w / max(w) scale; None: no fit (flat tail)
    tail_index: Tensor  # positions of the M largest weights, ascending by weight
    threshold: Tensor  # log of the (M+1)-th largest weight over the largest
    log_max: Tensor


def _fit_tail(log_weights: Tensor) -> _Tail:
    """Validate the weights and fit the generalized Pareto tail shared by both functions."""
    log_weights = torch.as_tensor(log_weights).detach().double()
    if log_weights.dim() != 1:
        raise ValueError(f"log_weights must be a vector (S,), got shape {tuple(log_weights.shape)}")
    num = log_weights.shape[0]
    if num < 25:
        raise ValueError(f"PSIS needs at least 25 importance weights, got {num}; draw more")
    if not torch.all(torch.isfinite(log_weights)):
        raise ValueError(
            "log_weights contain NaN/Inf: q puts mass where log p(z, D) is -inf or undefined"
        )
    tail_size = math.ceil(min(0.2 * num, 3 * math.sqrt(num)))
    # Work with w / max(w) so that exp never overflows; the GPD shape is scale-free.
    ordered, order = torch.sort(log_weights)
    log_max = ordered[-1]
    ordered = ordered - log_max
    threshold = ordered[-tail_size - 1]
    exceedances = torch.exp(ordered[-tail_size:]) - torch.exp(threshold)
    flat = _Tail(
        log_weights,
        KHat(-math.inf, "good", tail_size),
        None,
        order[-tail_size:],
        threshold,
        log_max,
    )
    # Weights are relative to the largest (= 1): a spread below 1e-9 is rounding, and the
    # GPD fit of such a tail is 0/0 (its estimate of b collapses to zero).
    if exceedances.max() <= 1e-9:
        return flat
    from pyro.ops.stats import fit_generalized_pareto  # deferred: importing pyro is slow

    try:
        khat, sigma = fit_generalized_pareto(exceedances)
    except ZeroDivisionError:
        # The fit divides by the tail's lower-quartile exceedance, which is zero here. When
        # the threshold weight itself underflows (it is below exp(-745) of the largest), the
        # weights span more than float64 can hold: a tail heavier than any fitted Pareto,
        # where the largest weight carries all the mass. Otherwise ties make it flat.
        if float(torch.exp(threshold)) == 0.0:
            return replace(flat, khat=KHat(math.inf, "bad", tail_size))
        return flat
    khat = float(khat)
    return _Tail(
        log_weights,
        KHat(khat, khat_reading(khat), tail_size),
        float(sigma),
        order[-tail_size:],
        threshold,
        log_max,
    )


def log_evidence_iw(log_weights: Tensor) -> tuple[float, float]:
    """:math:`\\log\\frac1S\\sum_s w_s` and its delta-method standard error.

    With :math:`\\hat p = \\bar w`, :math:`\\mathrm{Var}(\\log \\hat p) \\approx
    \\mathrm{Var}(\\hat p)/\\hat p^2 = \\hat\\sigma_w^2 / (S \\bar w^2)`. The estimate is biased
    low by about :math:`\\mathrm{se}^2/2` (Jensen); the bias is ignored in the error bar,
    which is only meaningful when :math:`\\hat k` is good.
    """
    log_weights = torch.as_tensor(log_weights).detach().double()
    num = log_weights.shape[0]
    value = torch.logsumexp(log_weights, 0) - math.log(num)
    scaled = torch.exp(log_weights - log_weights.max())
    stderr = scaled.std() / (scaled.mean() * math.sqrt(num))
    return value.item(), stderr.item()


@dataclass(frozen=True)
class GradientStats:
    """Mean, variance and SNR of a stochastic gradient, one entry per scalar parameter.

    Attributes:
        mean: :math:`\\hat{\\mathbb{E}}[g_j]`.
        variance: :math:`\\widehat{\\mathrm{Var}}[g_j]` (unbiased, over ``num_repeats`` draws).
        names: ``"param_name[i]"`` for each entry.
        num_repeats: independent gradient draws used.
    """

    mean: Tensor
    variance: Tensor
    names: list[str]
    num_repeats: int

    @property
    def snr(self) -> Tensor:
        """:math:`|\\hat{\\mathbb{E}}[g_j]| / \\widehat{\\mathrm{sd}}[g_j]` (inf where the variance is 0)."""
        return self.mean.abs() / self.variance.sqrt()

    @property
    def total_variance(self) -> float:
        """:math:`\\sum_j \\mathrm{Var}[g_j]`, the trace of the gradient covariance."""
        return self.variance.sum().item()

    @property
    def mean_snr(self) -> float:
        """Average SNR over parameters with non-zero mean."""
        snr = self.snr[self.mean != 0]
        return snr.mean().item() if snr.numel() else math.nan


def gradient_variance(
    objective: Objective,
    family: VariationalFamily,
    model: Model,
    batch: Batch | None = None,
    num_repeats: int = 200,
    likelihood_scale: float | None = None,
    seed: int | None = None,
) -> GradientStats:
    """Statistics of :math:`g = \\nabla_\\phi \\mathrm{loss}` over ``num_repeats`` fresh draws.

    The parameters and the batch stay fixed (``batch=None`` = full data); only the
    particles change. The family's ``.grad`` fields are left untouched.

    Example:
        >>> stats = gradient_variance(ELBO(gradient="stl"), family, model)  # doctest: +SKIP
        >>> stats.total_variance, stats.mean_snr  # doctest: +SKIP
    """
    _check_int(num_repeats, "num_repeats", minimum=2)
    named = [(n, p) for n, p in family.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the family has no trainable parameters")
    params = [p for _, p in named]
    names = [f"{n}[{i}]" for n, p in named for i in range(p.numel())]
    rows = []
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for _ in range(num_repeats):
            loss = objective(family, model, batch, likelihood_scale).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
            )
    draws = torch.stack(rows).double()
    return GradientStats(draws.mean(0), draws.var(0), names, num_repeats)


@dataclass(frozen=True)
class Diagnostics:
    """What :func:`diagnose` (and ``FitResult.diagnose``) report about a fitted ``q``.

    Attributes:
        khat: PSIS :math:`\\hat k`.
        reading: ``"good"``, ``"ok"`` or ``"bad"`` (see :func:`khat_reading`).
        log_evidence_iw: :math:`\\log\\frac1S\\sum_s w_s`, an estimate of :math:`\\log p(D)`.
        log_evidence_iw_se: its delta-method standard error.
        elbo: :math:`\\frac1S\\sum_s \\log w_s` from the same draws.
        elbo_se: its standard error :math:`\\hat\\sigma/\\sqrt S`.
        num_samples: :math:`S`.
        khat_se: Monte Carlo standard error of :math:`\\hat k` (:attr:`KHat.se`).
        ess: effective sample size of the Pareto-smoothed weights,
            :math:`1/\\sum_s \\bar w_s^2`.
        doubtful: the quantities whose importance-weighted mean or sd disagree with q's
            (:func:`svi_torch.reweighting.doubtful_quantities`), the most doubtful first;
            empty when none do. Meaningful while :math:`\\hat k \\le 0.7` (heavier weights
            estimate nothing reliably, but still point at where q is off).
    """

    khat: float
    reading: str
    log_evidence_iw: float
    log_evidence_iw_se: float
    elbo: float
    elbo_se: float
    num_samples: int
    khat_se: float = math.nan
    ess: float = math.nan
    doubtful: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        """Scalars to log, named ``diagnostics/...`` (TensorBoard tags, metrics.json keys)."""
        return {
            "diagnostics/khat": self.khat,
            "diagnostics/khat_se": self.khat_se,
            "diagnostics/ess": self.ess,
            "diagnostics/log_evidence_iw": self.log_evidence_iw,
            "diagnostics/log_evidence_iw_se": self.log_evidence_iw_se,
            "diagnostics/elbo": self.elbo,
            "diagnostics/elbo_se": self.elbo_se,
        }

    @property
    def khat_text(self) -> str:
        """``"0.62 ± 0.12 (ok)"``: the one way every printout states :math:`\\hat k`."""
        se = f" ± {self.khat_se:.2f}" if math.isfinite(self.khat_se) else ""
        return f"{self.khat:.2f}{se} ({self.reading})"

    @property
    def doubtful_text(self) -> str:
        """The doubtful quantities in a line (at most eight named), or ``""``."""
        if not self.doubtful:
            return ""
        named = ", ".join(self.doubtful[:8])
        more = f" and {len(self.doubtful) - 8} more" if len(self.doubtful) > 8 else ""
        return f"doubtful quantities (importance weights disagree with q): {named}{more}"

    def __str__(self) -> str:
        text = (
            f"PSIS k-hat = {self.khat_text}, S={self.num_samples}, ESS {self.ess:.0f}; "
            f"log p(D) ≈ {self.log_evidence_iw:.4f} ± {self.log_evidence_iw_se:.2g} "
            f"(importance-weighted); ELBO = {self.elbo:.4f} ± {self.elbo_se:.2g}"
        )
        return f"{text}; {self.doubtful_text}" if self.doubtful else text


def khat_warning(diagnostics: Diagnostics, family: VariationalFamily) -> str:
    """The warning for :math:`\\hat k > 0.7`: what is doubtful, and advice for the family fitted."""
    if isinstance(family, GaussianFamily):
        advice = (
            "a more expressive family (st.families.NormalizingFlow), a non-centred "
            "parameterisation of hierarchical scales, or MCMC"
        )
    else:
        advice = (
            f"the {type(family).__name__} fitted here does not hold this posterior either: a "
            "non-centred parameterisation of hierarchical scales, or MCMC"
        )
    doubtful = f"; {diagnostics.doubtful_text}" if diagnostics.doubtful else ""
    return (
        f"PSIS k-hat of the fit is {diagnostics.khat_text} (> {OK_KHAT}): q is not a "
        f"reliable approximation of this posterior{doubtful}. Importance weights cannot "
        f"correct it; try {advice}"
    )


def diagnose_draws(
    model: Model, z: Tensor, log_weights: Tensor, quantities: bool = True
) -> Diagnostics:
    """:class:`Diagnostics` of draws :math:`z_s \\sim q` and their raw log weights.

    With ``quantities`` (default) the constrained quantities are compared with their
    importance-weighted estimates (Pareto-smoothed weights) to name the doubtful ones;
    without, ``doubtful`` is left empty (a caller that needs only the ELBO skips the pass
    through the model's constraints and derived quantities).
    """
    num_samples = log_weights.shape[0]
    smoothed, khat = psis_smooth(log_weights)
    value, stderr = log_evidence_iw(log_weights)
    # Checked whatever k-hat reads: a Gaussian on a skewed scale (a hierarchical sd with
    # little data) can read k-hat < 0.5 with that sd at 0.6 of the posterior's.
    doubtful = doubtful_quantities(quantity_checks(model, z, smoothed)) if quantities else ()
    return Diagnostics(
        khat=khat.value,
        reading=khat.reading,
        log_evidence_iw=value,
        log_evidence_iw_se=stderr,
        elbo=log_weights.mean().item(),
        elbo_se=(log_weights.std() / math.sqrt(num_samples)).item(),
        num_samples=num_samples,
        khat_se=khat.se,
        ess=effective_sample_size(smoothed),
        doubtful=doubtful,
    )


def diagnose(
    model: Model, family: VariationalFamily, num_samples: int = 2000, seed: int | None = None
) -> Diagnostics:
    """PSIS :math:`\\hat k` ± its error, the doubtful quantities, importance-weighted
    :math:`\\log p(D)` and the ELBO, from one set of draws.

    Example:
        >>> diagnose(result.model, result.family, num_samples=4000).reading  # doctest: +SKIP
        'good'
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        z, _, log_w = importance_draws(model, family, num_samples)
    return diagnose_draws(model, z, log_w)


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
