"""fit: exactness on conjugate models with minibatches, constraints, reproducibility, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import svi_torch as st
from svi_torch.families import FullRankGaussian, MeanFieldGaussian
from svi_torch.models import (
    BayesianLinearRegression,
    EightSchools,
    NormalMean,
    normal_mean_data,
    regression_data,
)
from svi_torch.objectives import ELBO


def _as_mvn(family):
    with torch.no_grad():
        return MultivariateNormal(family.loc.double(), family.covariance().double())


def _exact_kl(family, model):
    post = model.exact_posterior()
    return kl_divergence(
        _as_mvn(family), MultivariateNormal(post.mean.double(), post.covariance_matrix.double())
    ).item()


@pytest.fixture(scope="module")
def correlated_regression():
    X, y, _ = regression_data(2000, 3, correlation=0.6, seed=1)
    return BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)


@pytest.fixture(scope="module")
def fullrank_fit(correlated_regression):
    family = FullRankGaussian(correlated_regression.dim)
    result = st.fit(
        correlated_regression,
        family,
        ELBO(num_particles=16),
        batch_size=64,
        steps=6000,
        method=st.methods.SGD(lr=3e-2, average_from=0.3),
        seed=0,
    )
    return family, result


def _check_exact(family, model, elbo_estimate):
    post = model.exact_posterior()
    sd = post.stddev
    with torch.no_grad():
        mean_err = ((family.mean() - post.mean).abs() / sd).max().item()
        var_ratio = (family.variance() / post.variance).tolist()
    assert mean_err < 0.05, f"means are {mean_err:.3f} posterior sd off"
    assert all(abs(r - 1) < 0.05 for r in var_ratio), f"variance ratios {var_ratio}"
    kl = _exact_kl(family, model)
    assert kl < 0.01, f"KL(q||p) = {kl:.4f} nats"
    elbo, se = elbo_estimate
    log_z = model.log_evidence().item()
    # ELBO = log p(D) - KL(q||p): below log p(D) (up to 4 s.e. of Monte Carlo error) and close.
    assert elbo <= log_z + 4 * se
    assert log_z - elbo < 0.05 + 4 * se


def test_fullrank_recovers_correlated_regression_posterior_with_minibatches(
    fullrank_fit, correlated_regression
):
    family, result = fullrank_fit
    assert result.steps == 6000
    _check_exact(family, correlated_regression, result.elbo(20000))


def test_fullrank_recovers_normal_mean_posterior_with_minibatches():
    x = normal_mean_data(5000, true_mean=1.3, noise_scale=2.0, seed=4)
    model = NormalMean(x, noise_scale=2.0, prior_loc=0.0, prior_scale=1.0)
    family = FullRankGaussian(model.dim)
    result = st.fit(
        model,
        family,
        ELBO(num_particles=16),
        batch_size=100,
        steps=6000,
        method=st.methods.SGD(lr=3e-2, average_from=0.3),
        seed=1,
    )
    _check_exact(family, model, result.elbo(20000))


def test_meanfield_converges_to_inverse_precision_diagonal(correlated_regression):
    """Mean-field optimum of KL(q||p) for a Gaussian p: sigma_d^2 = 1 / Lambda_dd < Sigma_dd."""
    model = correlated_regression
    family = MeanFieldGaussian(model.dim)
    st.fit(
        model,
        family,
        ELBO(num_particles=16),
        batch_size=64,
        steps=6000,
        method=st.methods.SGD(lr=3e-2, average_from=0.3),
        seed=2,
    )
    precision = model.posterior_precision()
    expected = 1 / torch.diagonal(precision)
    marginal = model.exact_posterior().variance
    with torch.no_grad():
        ratio = family.variance() / expected
        mean_err = ((family.mean() - model.exact_posterior().mean) / marginal.sqrt()).abs().max()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=0.05, rtol=0)
    assert mean_err < 0.05
    # ... which underestimates the marginal variance, here by at least 20%.
    assert bool((expected < 0.8 * marginal).all())


def test_positive_noise_scale_is_recovered():
    X, y, _ = regression_data(3000, 2, correlation=0.3, noise_scale=0.5, seed=5)
    model = BayesianLinearRegression(X, y, noise_scale=None, noise_prior_scale=2.0)
    family = FullRankGaussian(model.dim)
    result = st.fit(
        model,
        family,
        ELBO(num_particles=8),
        batch_size=100,
        steps=3000,
        method=st.methods.SGD(lr=3e-2),
        seed=0,
    )
    draws = result.sample(4000)["sigma"]
    assert bool((draws > 0).all())
    # The posterior of sigma concentrates at the residual sd; sd of the estimate ~ 0.5/sqrt(2N) = 0.0065.
    residual_sd = (y - X @ torch.linalg.lstsq(X, y.unsqueeze(-1)).solution.squeeze(-1)).std().item()
    assert draws.mean().item() == pytest.approx(residual_sd, abs=4 * 0.0065)


def test_eight_schools_fits_without_nan_and_tau_is_positive():
    model = EightSchools()
    family = FullRankGaussian(model.dim)
    result = st.fit(model, family, ELBO(num_particles=8), steps=2000, seed=0)
    assert result.skipped_steps == 0
    draws = result.sample(2000)
    assert bool((draws["tau"] > 0).all())
    summary = result.posterior_summary()
    assert all(math.isfinite(v) for stats in summary.values() for v in stats.values())
    # Reference (posteriordb, NUTS): mu has posterior mean 4.4 and sd 3.3.
    assert summary["mu"]["mean"] == pytest.approx(4.4, abs=1.5)


def test_posterior_summary_has_named_quantiles(fullrank_fit, correlated_regression):
    _, result = fullrank_fit
    summary = result.posterior_summary(num_samples=20000)
    post = correlated_regression.exact_posterior()
    assert list(summary) == ["beta[0]", "beta[1]", "beta[2]"]
    for i, name in enumerate(summary):
        stats = summary[name]
        assert stats["q05"] < stats["q50"] < stats["q95"]
        sd = post.stddev[i].item()
        # Monte Carlo s.e. of the mean is sd/sqrt(20000) ~ 0.007 sd; the fit adds < 0.05 sd.
        assert stats["mean"] == pytest.approx(post.mean[i].item(), abs=0.08 * sd)
        assert stats["sd"] == pytest.approx(sd, rel=0.05)
        assert stats["q95"] - stats["q05"] == pytest.approx(2 * 1.6449 * sd, rel=0.06)


def test_same_seed_same_result_bit_for_bit():
    X, y, _ = regression_data(500, 3, seed=0)
    model = BayesianLinearRegression(X, y)
    runs = []
    for _ in range(2):
        family = FullRankGaussian(model.dim)
        st.fit(model, family, ELBO(num_particles=2), batch_size=32, steps=300, seed=11)
        runs.append({k: v.clone() for k, v in family.state_dict().items()})
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    X, y, _ = regression_data(500, 3, seed=0)
    model = BayesianLinearRegression(X, y)
    settings = dict(batch_size=32, steps=400, seed=5, log_every=50, convergence=True)
    reference = FullRankGaussian(model.dim)
    ref_result = st.fit(model, reference, ELBO(num_particles=2), method="sgd", **settings)

    ckpt = tmp_path / "run.pt"
    first = FullRankGaussian(model.dim)
    loop = st.methods.SGD().prepare(
        model,
        first,
        ELBO(num_particles=2),
        st.training.TrainConfig(**settings, checkpoint_path=ckpt),
    )
    # Stop after 230 steps (mid-epoch, mid-window), as if the process had been killed.
    paused = loop.run(stop_at=230)
    assert paused.steps == 230

    resumed = FullRankGaussian(model.dim)
    result = st.fit(
        model,
        resumed,
        ELBO(num_particles=2),
        method="sgd",
        **settings,
        checkpoint_path=ckpt,
        resume=True,
    )
    assert result.steps == ref_result.steps
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_nan_steps_are_skipped_then_raise(correlated_regression):
    class Flaky(BayesianLinearRegression):
        calls = 0

        def log_likelihood(self, params, batch):
            Flaky.calls += 1
            value = super().log_likelihood(params, batch)
            return value * math.nan if Flaky.calls % 7 == 0 else value

    X, y, _ = regression_data(200, 2, seed=0)
    model = Flaky(X, y)
    # SGD: one likelihood evaluation per step (the automatic method's MAP search and
    # diagnostics would evaluate it too, and it has tests of its own).
    result = st.fit(model, FullRankGaussian(model.dim), method="sgd", steps=140, seed=0)
    assert result.skipped_steps == 20
    assert all(math.isfinite(v) for v in result.family.state_dict()["loc"].tolist())

    class Broken(BayesianLinearRegression):
        def log_likelihood(self, params, batch):
            return super().log_likelihood(params, batch) * math.nan

    broken = Broken(X, y)
    with pytest.raises(st.training.NonFiniteLossError, match="log_likelihood"):
        st.fit(broken, FullRankGaussian(broken.dim), method="sgd", steps=100, max_bad_steps=5)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (dict(batch_size=0), ValueError, "batch_size must be between 1"),
        (dict(batch_size=10_000), ValueError, "batch_size must be between 1"),
        (dict(batch_size=2.5), TypeError, "batch_size must be an int"),
        (
            dict(method={"name": "sgd", "options": {"optimizer": "adamw2"}}),
            ValueError,
            "unknown optimizer 'adamw2'",
        ),
        (dict(steps=0), ValueError, "steps must be a positive int"),
        (
            dict(method={"name": "sgd", "options": {"lr": -1.0}}),
            ValueError,
            "SGD lr must be a positive",
        ),
        (
            dict(method={"name": "sgd", "options": {"schedule": "linear"}}),
            ValueError,
            "SGD schedule must be one of",
        ),
        (dict(stepz=10), TypeError, "unknown setting"),
        (
            dict(device="cuda:7") if not torch.cuda.is_available() else dict(device="nonsense"),
            (ValueError, RuntimeError),
            "device",
        ),
    ],
)
def test_bad_settings_get_clear_errors(correlated_regression, settings, error, message):
    with pytest.raises(error, match=message):
        st.fit(
            correlated_regression,
            FullRankGaussian(correlated_regression.dim),
            steps=settings.pop("steps", 10),
            **settings,
        )


def test_wrong_family_dim_is_rejected(correlated_regression):
    with pytest.raises(ValueError, match="family has dim=5 but the model has dim=3"):
        st.fit(correlated_regression, MeanFieldGaussian(5), steps=10)
