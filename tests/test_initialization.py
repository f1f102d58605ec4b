"""Initialisation: Laplace is exact on conjugate models, close on logistic regression; errors."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import svi_torch as st
from svi_torch.families import (
    FullRankGaussian,
    LowRankGaussian,
    MeanFieldGaussian,
    VariationalFamily,
)
from svi_torch.methods.starts import find_map, initialize
from svi_torch.models import (
    BayesianLinearRegression,
    BayesianLogisticRegression,
    EightSchools,
    logistic_data,
    regression_data,
)
from svi_torch.training import estimate_elbo


@pytest.fixture(scope="module")
def uncentred_regression():
    # Uncentred, correlated predictors (offset 3): an ill-conditioned posterior.
    X, y, _ = regression_data(3000, 4, correlation=0.6, seed=2, offset=3.0)
    return BayesianLinearRegression(X.double(), y.double(), noise_scale=1.0, prior_scale=1.0)


def test_laplace_init_is_the_exact_posterior_on_a_conjugate_model(uncentred_regression):
    model = uncentred_regression
    family = FullRankGaussian(model.dim).double()
    info = initialize(model, family, "laplace")
    assert info.method == "laplace"
    post = model.exact_posterior()
    # Newton polishing makes the MAP exact to rounding; the Hessian of a quadratic is exact.
    torch.testing.assert_close(family.loc.detach(), post.mean, rtol=0, atol=1e-9 * 10)
    torch.testing.assert_close(
        family.covariance().detach(), post.covariance_matrix, rtol=1e-8, atol=0
    )


def test_meanfield_laplace_is_the_meanfield_optimum(uncentred_regression):
    model = uncentred_regression
    family = MeanFieldGaussian(model.dim).double()
    initialize(model, family, "laplace")
    expected = 1 / torch.diagonal(model.posterior_precision())
    torch.testing.assert_close(family.variance().detach(), expected, rtol=1e-8, atol=0)
    torch.testing.assert_close(
        family.loc.detach(), model.exact_posterior().mean, rtol=1e-8, atol=1e-9
    )


def test_map_init_moves_only_the_mean(uncentred_regression):
    model = uncentred_regression
    family = LowRankGaussian(model.dim, rank=2).double()
    before = family.diag_scale.detach().clone()
    initialize(model, family, "map")
    torch.testing.assert_close(
        family.loc.detach(), model.exact_posterior().mean, rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(family.diag_scale.detach(), before)


@pytest.mark.slow
def test_laplace_on_logistic_regression_is_within_half_a_nat_of_the_final_fit():
    X, y, _ = logistic_data(2000, 5, correlation=0.5, seed=0)
    model = BayesianLogisticRegression(X, y)
    laplace = FullRankGaussian(model.dim)
    initialize(model, laplace, "laplace")
    fitted = FullRankGaussian(model.dim)
    st.fit(model, fitted, method=st.methods.NGVI(init="prior"), batch_size=200, steps=1500, seed=0)
    # KL(q||p) = log p(D) - ELBO(q), so KL(laplace||p) - KL(fit||p) = ELBO(fit) - ELBO(laplace):
    # the estimated KL of Laplace beyond the fit's. 20000 draws give s.e. ~ 0.01 nats each.
    torch.manual_seed(1)
    elbo_fit, se_fit = estimate_elbo(model, fitted, 20000)
    torch.manual_seed(1)
    elbo_laplace, se_laplace = estimate_elbo(model, laplace, 20000)
    noise = 4 * (se_fit**2 + se_laplace**2) ** 0.5
    gap = elbo_fit - elbo_laplace
    assert gap < 0.5, f"Laplace is {gap:.3f} nats (estimated KL) worse than the fit"
    # ... and the fit is no worse than its starting point could have been (up to noise).
    assert gap > -noise
    # Independent check on the mean: both agree to a small fraction of a posterior sd.
    with torch.no_grad():
        sd = fitted.variance().sqrt()
        assert ((laplace.loc - fitted.loc).abs() / sd).max().item() < 0.3


@pytest.mark.slow
def test_default_fit_starts_from_laplace_and_reaches_the_posterior():
    X, y, _ = regression_data(2000, 3, correlation=0.6, seed=1)
    model = BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)
    family = FullRankGaussian(model.dim)
    st.fit(model, family, batch_size=64, steps=2000, seed=0)
    post = model.exact_posterior()
    with torch.no_grad():
        q = MultivariateNormal(family.loc.double(), family.covariance().double())
    kl = kl_divergence(
        q, MultivariateNormal(post.mean.double(), post.covariance_matrix.double())
    ).item()
    assert kl < 0.01, f"KL(q||p) = {kl:.4f}"


def test_map_handles_a_constrained_hierarchical_model():
    model = EightSchools()
    estimate = find_map(model, torch.zeros(model.dim))
    z = estimate.z
    assert estimate.converged, estimate.reason
    assert bool(torch.isfinite(z).all())
    # The non-centred eight schools log joint at the MAP beats the start.
    start = model.log_joint(torch.zeros(1, model.dim)).total.item()
    assert model.log_joint(z.unsqueeze(0)).total.item() > start


def test_bad_init_settings_get_clear_errors(uncentred_regression):
    model = uncentred_regression

    class Laplace(VariationalFamily):
        def __init__(self, dim):
            super().__init__(dim)
            self.loc = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))

        def forward(self, context=None):
            return torch.distributions.Independent(torch.distributions.Laplace(self.loc, 1.0), 1)

    with pytest.raises(ValueError, match="unknown init 'mode'"):
        initialize(model, FullRankGaussian(model.dim).double(), "mode")
    with pytest.raises(TypeError, match="needs a Gaussian family"):
        initialize(model, Laplace(model.dim), "laplace")
    assert initialize(model, Laplace(model.dim), "auto").method == "prior"
    with pytest.raises(ValueError, match="unknown init"):
        st.fit(
            model,
            FullRankGaussian(model.dim).double(),
            steps=1,
            method=st.methods.NGVI(init="zeros"),  # refused when the value is built
        )
