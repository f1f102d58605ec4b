"""Posterior predictive draws, the per-point log likelihood and derived quantities.

The numerical checks put q at the exact posterior of a conjugate model (``set_moments``),
so that the predictive of q *is* the exact posterior predictive and any difference beyond
Monte Carlo error is a bug of the predictive, not of an optimiser. Tolerances: with S
draws of a Gaussian predictive N(m, v), the sample mean has sd sqrt(v/S) and the sample
variance sd v sqrt(2/(S-1)); each check allows 4.5 of those (a few points per test, so a
false alarm has probability below 1e-4).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, constraints

import svi_torch as st
from svi_torch.posterior import predictive as predictive_module
from svi_torch.training.result import FitResult

S = 20_000
Z = 4.5


def _exact_result(model: st.models.ConjugateModel) -> FitResult:
    """A FitResult whose q is the model's exact posterior (float64)."""
    posterior = model.exact_posterior()
    family = st.families.FullRankGaussian(model.dim).double()
    family.set_moments(posterior.mean, posterior.covariance_matrix)
    return FitResult(family=family, model=model)


def _regression(
    num_data: int = 50, dim: int = 3, seed: int = 0
) -> st.models.BayesianLinearRegression:
    X, y, _ = st.models.regression_data(num_data, dim, correlation=0.4, seed=seed)
    return st.models.BayesianLinearRegression(X.double(), y.double(), noise_scale=0.8)


def _assert_matches_gaussian(draws: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    num = draws.shape[0]
    assert torch.all((draws.mean(0) - mean).abs() < Z * (var / num).sqrt())
    assert torch.all((draws.var(0) - var).abs() < Z * var * math.sqrt(2 / (num - 1)))


def test_regression_predictive_matches_exact_posterior_predictive_at_fitted_and_new_inputs() -> (
    None
):
    model = _regression()
    result = _exact_result(model)
    fitted = result.predictive(S, seed=1)["y"]
    assert fitted.shape == (S, model.num_data)
    exact = model.exact_posterior_predictive()
    _assert_matches_gaussian(fitted, exact.mean, exact.covariance_matrix.diagonal())
    X_new = torch.linspace(-2, 2, 18, dtype=torch.float64).reshape(6, 3)
    new = result.predictive(S, data={"X": X_new}, seed=2)["y"]
    assert new.shape == (S, 6)
    exact = model.exact_posterior_predictive(X_new)
    _assert_matches_gaussian(new, exact.mean, exact.covariance_matrix.diagonal())
    # The joint predictive too: the covariance between two new points (far apart in X).
    cov = torch.cov(new[:, [0, 5]].T)[0, 1]
    v = exact.covariance_matrix
    sd_cov = math.sqrt((v[0, 0] * v[5, 5] + v[0, 5] ** 2) / S)
    assert abs(cov - v[0, 5]) < Z * sd_cov


def test_normal_mean_predictive_matches_exact() -> None:
    x = st.models.normal_mean_data(40, true_mean=2.0, noise_scale=1.5, seed=3).double()
    model = st.models.NormalMean(x, noise_scale=1.5, prior_scale=2.0)
    draws = _exact_result(model).predictive(S, data={"x": torch.zeros(3)}, seed=0)["x"]
    assert draws.shape == (S, 3)
    exact = model.exact_posterior_predictive()
    _assert_matches_gaussian(draws, exact.mean.expand(3), exact.variance.expand(3))


def test_logistic_predictive_is_bernoulli_of_the_same_posterior_draws() -> None:
    X, y, _ = st.models.logistic_data(30, 2, seed=0)
    model = st.models.BayesianLogisticRegression(X, y)
    family = st.families.MeanFieldGaussian(2, init_loc=0.5, init_scale=0.3)
    result = FitResult(family=family, model=model)
    draws = result.predictive(S, seed=4)["y"]
    assert set(draws.unique().tolist()) <= {0.0, 1.0} and draws.shape == (S, 30)
    # Same seed, same posterior draws: E[y_i] is the mean of sigmoid(x_i beta_s).
    beta = result.sample(S, seed=4)["beta"]
    p = torch.sigmoid(beta @ X.T).mean(0)
    assert torch.all((draws.mean(0) - p).abs() < Z * (p * (1 - p) / S).sqrt())


def test_every_builtin_model_simulates_with_documented_shapes() -> None:
    y = torch.sin(torch.arange(60.0) / 4) + 0.1 * torch.randn(60)
    ar = st.models.AutoRegressive(y, order=3)
    X, yb = st.models.bnn_data(40, 2, hidden=4, seed=0)
    bnn = st.models.BayesianNeuralNetwork(X, yb, hidden=4)
    bnn_c = st.models.BayesianNeuralNetwork(
        X, (yb > 0).float(), hidden=4, likelihood="classification"
    )
    schools = st.models.EightSchools()
    cases = [
        (ar, "target", 57, {"lags": torch.randn(5, 3)}),
        (bnn, "y", 40, {"X": torch.randn(5, 2)}),
        (bnn_c, "y", 40, {"X": torch.randn(5, 2)}),
        (schools, "y", 8, {"school": torch.tensor([0.0, 7.0]), "sigma": torch.tensor([1.0, 2.0])}),
    ]
    for model, name, rows, new in cases:
        result = FitResult(family=st.families.MeanFieldGaussian(model.dim), model=model)
        assert result.predictive(7)[name].shape == (7, rows), type(model).__name__
        new_rows = next(iter(new.values())).shape[0]
        assert result.predictive(7, data=new)[name].shape == (7, new_rows)
        assert result.log_likelihood(7).shape == (7, rows)
    classes = FitResult(st.families.MeanFieldGaussian(bnn_c.dim), bnn_c).predictive(50)["y"]
    assert set(classes.unique().tolist()) <= {0.0, 1.0}


def test_pointwise_log_likelihood_matches_torch_distributions_per_point() -> None:
    g = torch.Generator().manual_seed(0)
    schools = st.models.EightSchools()
    X, yl, _ = st.models.logistic_data(25, 3, seed=1)
    logistic = st.models.BayesianLogisticRegression(X, yl)
    regression = _regression(20, 2)
    for model in (schools, logistic, regression):
        z = torch.randn(5, model.dim, generator=g, dtype=model.dtype)
        params, _ = model.constrain(z)
        pointwise = model.pointwise_log_likelihood(params, model.data)
        assert pointwise.shape == (5, model.num_data)
        assert torch.allclose(pointwise.sum(-1), model.log_likelihood(params, model.data))
        if model is schools:
            theta = params["mu"][:, None] + params["tau"][:, None] * params["theta_tilde"]
            expected = Normal(theta, schools.sigma).log_prob(schools.y)
        elif model is logistic:
            expected = Bernoulli(logits=params["beta"] @ X.T).log_prob(yl)
        else:
            expected = Normal(params["beta"] @ regression.X.T, 0.8).log_prob(regression.y)
        assert torch.allclose(pointwise, expected, atol=1e-5)


def test_log_likelihood_of_a_million_points_is_computed_in_bounded_blocks(monkeypatch) -> None:
    n = 1_000_000
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 2, generator=g)
    model = st.models.BayesianLinearRegression(
        X, X @ torch.tensor([1.0, -0.5]) + torch.randn(n, generator=g)
    )
    result = FitResult(family=st.families.MeanFieldGaussian(2, init_scale=0.01), model=model)
    blocks: list[tuple[int, int]] = []
    original = model.pointwise_log_likelihood

    def spy(params, batch):
        blocks.append((params["beta"].shape[0], batch["X"].shape[0]))
        return original(params, batch)

    monkeypatch.setattr(model, "pointwise_log_likelihood", spy)
    monkeypatch.setattr(predictive_module, "BLOCK_ELEMENTS", 1 << 20)
    values = result.log_likelihood(12, seed=5)
    assert values.shape == (12, n)
    assert len(blocks) > 1 and all(d * r <= 1 << 20 for d, r in blocks)
    beta = result.sample(12, seed=5)["beta"]
    rows = torch.arange(0, n, 9973)
    expected = Normal(beta @ X[rows].T, 1.0).log_prob(model.y[rows])
    assert torch.allclose(values[:, rows], expected, atol=1e-5)


def test_held_out_log_likelihood_and_the_global_rng_is_left_alone() -> None:
    model = _regression()
    result = _exact_result(model)
    X_test = torch.randn(4, 3, dtype=torch.float64)
    y_test = torch.randn(4, dtype=torch.float64)
    state = torch.get_rng_state()
    held_out = result.log_likelihood(100, seed=3, data={"X": X_test, "y": y_test})
    draws = result.predictive(100, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    beta = result.sample(100, seed=3)["beta"]
    assert torch.allclose(held_out, Normal(beta @ X_test.T, 0.8).log_prob(y_test))
    assert torch.equal(draws["y"], result.predictive(100, seed=3)["y"])
    assert not torch.equal(draws["y"], result.predictive(100, seed=4)["y"])
    # seed=None draws from (and advances) the global stream.
    torch.manual_seed(11)
    first = result.predictive(10, seed=None)["y"]
    torch.manual_seed(11)
    assert torch.equal(first, result.predictive(10, seed=None)["y"])
    assert not torch.equal(first, result.predictive(10, seed=None)["y"])


def test_eight_schools_derived_theta_is_in_every_draw() -> None:
    model = st.models.EightSchools()
    result = FitResult(family=st.families.FullRankGaussian(model.dim, init_scale=0.5), model=model)
    draws = result.sample(500, seed=0)
    assert list(draws) == ["mu", "tau", "theta_tilde", "theta"]
    expected = draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_tilde"]
    assert torch.equal(draws["theta"], expected)
    assert list(result.sample(5, derived=False)) == ["mu", "tau", "theta_tilde"]
    assert "theta[7]" in result.posterior_summary(100)


def test_predictive_errors_name_the_problem() -> None:
    result = _exact_result(_regression())
    with pytest.raises(ValueError, match=r"needs the input 'X'.*data=\{'X'"):
        result.predictive(5, data={"Z": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="length|rows|leading"):
        result.predictive(5, data={"X": torch.zeros(3, 3), "y": torch.zeros(4)})
    with pytest.raises(TypeError, match="mapping"):
        result.predictive(5, data=torch.zeros(3, 3))
    funnel = FitResult(st.families.MeanFieldGaussian(2), st.models.Funnel(2))
    with pytest.raises(ValueError, match="no data"):
        funnel.predictive(5)
    with pytest.raises(ValueError, match="no data"):
        funnel.log_likelihood(5)

    class Coin(st.models.Model):
        def __init__(self, flips: torch.Tensor) -> None:
            super().__init__()
            self.add_param("p", support=constraints.unit_interval)
            self.set_data(flips=flips)

        def log_prior(self, params):
            return torch.zeros_like(params["p"])

        def log_likelihood(self, params, batch):
            p = params["p"].unsqueeze(-1)
            return (batch["flips"] * p.log() + (1 - batch["flips"]) * F.softplus(-p).neg()).sum(-1)

    coin = FitResult(st.families.MeanFieldGaussian(1), Coin(torch.ones(5)))
    with pytest.raises(NotImplementedError, match="does not implement simulate"):
        coin.predictive(5)
    with pytest.raises(NotImplementedError, match="pointwise_log_likelihood"):
        coin.log_likelihood(5)


def test_pyro_model_without_a_data_plate_has_a_posterior_predictive() -> None:
    """Eight-schools-like: each point has its own latent, so there is no data plate and no
    data array on the model, yet the bridge simulates the whole model. With q = N(m, 1e-12)
    (theta = m to rounding), y~ = m + sigma * eps: the replicated mean is m and the
    variance sigma^2, each within 4.5 Monte Carlo s.e."""
    import pyro
    import pyro.distributions as dist

    from svi_torch.models import PyroModel

    y = torch.tensor([28.0, 8.0, -3.0, 7.0], dtype=torch.float64)
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0], dtype=torch.float64)

    def schools(y: torch.Tensor, sigma: torch.Tensor) -> None:
        with pyro.plate("schools", len(y)):
            theta = pyro.sample("theta", dist.Normal(torch.zeros_like(y), 10.0))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    model = PyroModel(schools, y, sigma)
    assert model.num_data == 0 and not model.data
    family = st.families.MeanFieldGaussian(4, init_scale=1e-6).double()
    m = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    with torch.no_grad():
        family.loc.copy_(m)
    draws = FitResult(family, model).predictive(S, seed=0)["y"]
    assert draws.shape == (S, 4)
    assert ((draws.mean(0) - m).abs() < Z * sigma / math.sqrt(S)).all()
    assert ((draws.var(0) / sigma**2 - 1).abs() < Z * math.sqrt(2 / (S - 1))).all()
