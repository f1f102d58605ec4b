"""Diagnostics: PSIS k-hat readings, importance-weighted evidence, gradient variance (STL)."""

from __future__ import annotations

import math

import pytest
import torch

import svi_torch as st
from svi_torch.diagnostics import (
    Diagnostics,
    diagnose,
    gradient_variance,
    khat_reading,
    log_evidence_iw,
    psis_khat,
    psis_smooth,
)
from svi_torch.families import FullRankGaussian, MeanFieldGaussian
from svi_torch.models import BayesianLinearRegression, CorrelatedGaussianTarget, regression_data
from svi_torch.objectives import ELBO


@pytest.fixture(scope="module")
def regression():
    X, y, _ = regression_data(300, 3, correlation=0.6, seed=4)
    return BayesianLinearRegression(X.double(), y.double())


def _at_posterior(model, family_cls=FullRankGaussian):
    post = model.exact_posterior()
    family = family_cls(model.dim).double()
    family.set_moments(post.mean, post.covariance_matrix)
    return family


def test_khat_reading_thresholds():
    assert [khat_reading(k) for k in (-0.3, 0.49, 0.5, 0.7, 0.71, 2.0)] == [
        "good",
        "good",
        "ok",
        "ok",
        "bad",
        "bad",
    ]


def test_psis_khat_recovers_the_tail_shape_of_known_weights():
    # Weights with a Pareto(alpha) tail have GPD shape k = 1/alpha. With S = 10_000 the tail
    # holds M = 300 draws; the Zhang-Stephens estimate has sd ~ (1 + k)/sqrt(M) ~ 0.1, so
    # +-0.25 is a 2.5-sd band. Light-tailed (log-normal with small sigma) weights give k < 0.5.
    g = torch.Generator().manual_seed(0)
    u = torch.rand(10_000, generator=g, dtype=torch.float64)
    heavy = psis_khat(-torch.log(u) / (1 / 0.8))  # log of Pareto(alpha=1.25) draws: k = 0.8
    assert heavy.tail_size == 300
    assert heavy.value == pytest.approx(0.8, abs=0.25)
    heavier = psis_khat(-torch.log(u) * 1.5)  # k = 1.5: infinite-mean weights
    assert heavier.value == pytest.approx(1.5, abs=0.5) and heavier.reading == "bad"
    light = psis_khat(0.1 * torch.randn(10_000, generator=g, dtype=torch.float64))
    assert light.reading == "good"


def test_khat_separates_a_good_fit_from_a_bad_one(regression):
    # Full-rank Gaussian at the exact posterior of a conjugate model: weights constant up to
    # rounding; the k-hat reading is good.
    good = diagnose(regression, _at_posterior(regression), num_samples=4000, seed=0)
    assert good.reading == "good"
    # Mean-field (reverse-KL optimum) on a 2-D Gaussian with rho = 0.95: q's variance is
    # (1 - rho^2) = 0.0975 of the target's, so the weights p/q have an infinite-variance tail.
    target = CorrelatedGaussianTarget(rho=0.95)
    narrow = MeanFieldGaussian(2)
    narrow.set_moments(target.loc, target.cov)
    bad = diagnose(target, narrow, num_samples=4000, seed=0)
    assert bad.reading == "bad" and bad.khat > 0.7


def test_importance_weighted_evidence_matches_the_exact_log_evidence(regression):
    # A mean-field q (not exact, so the weights vary) on a conjugate model with known log p(D).
    family = _at_posterior(regression, MeanFieldGaussian)
    result = diagnose(regression, family, num_samples=20_000, seed=1)
    exact = regression.log_evidence().item()
    assert result.reading in ("good", "ok")
    # The delta-method se describes the estimate's noise: 4 se band (plus its O(se^2) bias).
    assert (
        abs(result.log_evidence_iw - exact)
        < 4 * result.log_evidence_iw_se + result.log_evidence_iw_se**2
    )
    # ELBO <= IW estimate; the ELBO misses log p(D) by KL(q||p) > 0 (clearly, beyond 4 se).
    assert result.elbo < result.log_evidence_iw
    assert exact - result.elbo > 4 * result.elbo_se


def test_log_evidence_iw_standard_error_on_known_weights():
    # log w = log p(D) + N(0, s^2) - s^2/2 (unbiased weights): the estimate is log p(D) - O(se^2)
    # and the delta-method se = sd(w)/(mean(w) sqrt(S)) ~ sqrt(exp(s^2) - 1)/sqrt(S).
    s, num = 0.5, 40_000
    log_w = (
        -3.0
        + s * torch.randn(num, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        - s**2 / 2
    )
    value, se = log_evidence_iw(log_w)
    assert se == pytest.approx(math.sqrt(math.expm1(s**2) / num), rel=0.1)
    assert abs(value + 3.0) < 4 * se


def test_stl_gradient_variance_vanishes_at_the_exact_posterior_but_reparam_does_not(regression):
    family = _at_posterior(regression)
    stl = gradient_variance(
        ELBO(num_particles=4, gradient="stl"), family, regression, num_repeats=50, seed=0
    )
    reparam = gradient_variance(ELBO(num_particles=4), family, regression, num_repeats=50, seed=0)
    # Roeder et al. 2017: at q = p(z | D), log p(z, D) - log q(z) is constant in z, so the STL
    # path gradient is zero up to float64 rounding of set_moments (here ~1e-10, ten orders
    # below reparam); the reparam gradient keeps the score term's variance at the optimum.
    assert reparam.total_variance > 1.0
    assert stl.total_variance < 1e-8 * reparam.total_variance
    assert stl.mean.abs().max() < 1e-4  # the exact optimum: zero gradient up to rounding
    # Away from the optimum STL is noisy too (the zero is a property of the posterior).
    away = FullRankGaussian(regression.dim).double()
    moved = gradient_variance(
        ELBO(num_particles=4, gradient="stl"), away, regression, num_repeats=20, seed=0
    )
    assert moved.total_variance > 1.0


def test_gradient_variance_reports_names_and_snr(regression):
    family = FullRankGaussian(regression.dim).double()
    stats = gradient_variance(ELBO(), family, regression, num_repeats=10, seed=0)
    assert len(stats.names) == stats.mean.numel() == 3 + 3 + 9
    assert stats.names[0] == "loc[0]"
    assert torch.all(stats.snr[stats.variance > 0] >= 0)
    assert family.loc.grad is None  # the family's .grad fields are untouched
    with pytest.raises(ValueError, match="num_repeats"):
        gradient_variance(ELBO(), family, regression, num_repeats=1)


def test_fit_result_diagnose_gives_the_logged_scalars():
    X, y, _ = regression_data(200, 2, seed=5)
    model = BayesianLinearRegression(X, y)
    result = st.fit(
        model, FullRankGaussian(model.dim), steps=600, method=st.methods.SGD(lr=5e-2), seed=0
    )
    diagnostics = result.diagnose(num_samples=2000, seed=0)
    assert isinstance(diagnostics, Diagnostics) and diagnostics.num_samples == 2000
    logged = diagnostics.as_dict()
    assert {"diagnostics/khat", "diagnostics/log_evidence_iw"} <= set(logged)
    assert logged["diagnostics/khat"] == diagnostics.khat
    assert diagnostics.reading == "good"
    assert abs(diagnostics.log_evidence_iw - model.log_evidence().item()) < 0.05
    assert "k-hat" in str(diagnostics)


def test_bad_weights_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 25"):
        psis_khat(torch.zeros(10))
    with pytest.raises(ValueError, match="NaN/Inf"):
        psis_khat(torch.tensor([0.0] * 30 + [math.nan]))
    with pytest.raises(ValueError, match="vector"):
        psis_khat(torch.zeros(5, 5))


def test_psis_smooth_replaces_only_the_tail_and_keeps_its_order():
    """Pareto(alpha = 1.25) weights (k = 0.8): the M largest log weights become GPD quantiles,
    in the same order, no larger than the raw maximum; the rest is untouched. Smoothing
    lowers the largest normalised weight (what dominates importance resampling)."""
    g = torch.Generator().manual_seed(1)
    log_w = -torch.log(torch.rand(2000, generator=g, dtype=torch.float64)) / 1.25
    smoothed, khat = psis_smooth(log_w)
    assert khat == psis_khat(log_w)
    tail = torch.argsort(log_w)[-khat.tail_size :]
    body = torch.ones(2000, dtype=torch.bool)
    body[tail] = False
    assert torch.equal(smoothed[body], log_w[body])
    assert torch.equal(torch.argsort(smoothed[tail]), torch.argsort(log_w[tail]))
    assert float(smoothed.max()) <= float(log_w.max())
    largest = lambda x: float(torch.softmax(x, 0).max())  # noqa: E731
    assert largest(smoothed) < largest(log_w)  # measured 0.067 against 0.099
    flat, flat_khat = psis_smooth(torch.zeros(100, dtype=torch.float64))
    assert torch.equal(flat, torch.zeros(100, dtype=torch.float64)) and flat_khat.value == -math.inf


def test_psis_khat_is_bad_when_one_weight_carries_all_the_mass():
    """Log weights 50 nats apart (a q far too narrow, as a flow fitted at a poor scale gives):
    all but the few largest underflow against the largest, the Pareto fit cannot divide by
    the tail's quartile, and the tail is the heaviest possible, not a flat one."""
    log_w = torch.linspace(-100_000.0, 0.0, 2000, dtype=torch.float64)
    khat = psis_khat(log_w)
    assert khat.value == math.inf and khat.reading == "bad"
    smoothed, smoothed_khat = psis_smooth(log_w)
    assert smoothed_khat == khat and torch.equal(smoothed, log_w)  # nothing to smooth with
