"""Natural-gradient Gaussian VI: exact one-step landing, minibatch convergence, safety, errors."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import svi_torch as st
from svi_torch.families import FullRankGaussian, LowRankGaussian, MeanFieldGaussian
from svi_torch.methods.natural_gradient import NaturalGradientVI
from svi_torch.models import BayesianLinearRegression, Model, NormalMean, regression_data
from svi_torch.objectives import ELBO


def _exact_kl(family, model) -> float:
    """KL(q||p) = E_q[log q - log p] between two Gaussians, in closed form (float64)."""
    post = model.exact_posterior()
    with torch.no_grad():
        q = MultivariateNormal(family.loc.double(), family.covariance().double())
    p = MultivariateNormal(post.mean.double(), post.covariance_matrix.double())
    return kl_divergence(q, p).item()


@pytest.fixture(scope="module")
def correlated_regression():
    X, y, _ = regression_data(2000, 3, correlation=0.6, seed=1)
    return BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)


@pytest.mark.parametrize("family_cls", [FullRankGaussian, MeanFieldGaussian])
def test_one_full_batch_step_of_size_one_lands_on_the_posterior(family_cls):
    # Uncentred, correlated predictors: an ill-conditioned posterior, far from N(0, 0.1^2).
    X, y, _ = regression_data(200, 4, correlation=0.8, seed=3, offset=2.0)
    model = BayesianLinearRegression(X.double(), y.double(), noise_scale=0.7, prior_scale=2.0)
    family = family_cls(model.dim).double()
    result = st.fit(
        model,
        family,
        method=st.methods.NGVI(step_size=1.0, schedule="constant", init="prior"),
        steps=1,
        seed=0,
    )
    assert result.steps == 1
    post = model.exact_posterior()
    precision = model.posterior_precision()
    # The log joint is quadratic: its Hessian is -Lambda everywhere, and the antithetic pair
    # averages the gradient at exactly m, so the step is exact up to rounding.
    torch.testing.assert_close(family.loc.detach(), post.mean, rtol=0, atol=1e-10)
    if family_cls is FullRankGaussian:
        expected = post.covariance_matrix
    else:  # the mean-field optimum: sigma_d^2 = 1 / Lambda_dd
        expected = torch.diag_embed(1 / torch.diagonal(precision))
    torch.testing.assert_close(family.covariance().detach(), expected, rtol=1e-9, atol=0)


def test_ngvi_reaches_the_posterior_within_2000_minibatch_steps(correlated_regression):
    model = correlated_regression
    family = FullRankGaussian(model.dim)
    result = st.fit(
        model, family, method=st.methods.NGVI(init="prior"), batch_size=64, steps=2000, seed=0
    )
    assert result.steps <= 2000
    kl = _exact_kl(family, model)
    assert kl < 0.01, f"KL(q||p) = {kl:.4f} nats after {result.steps} steps"


@pytest.mark.slow
def test_meanfield_ngvi_converges_to_inverse_precision_diagonal(correlated_regression):
    model = correlated_regression
    family = MeanFieldGaussian(model.dim)
    st.fit(
        model,
        family,
        method=st.methods.NGVI(step_size=0.03, init="prior"),
        batch_size=64,
        steps=2000,
        seed=1,
    )
    expected = 1 / torch.diagonal(model.posterior_precision())
    post = model.exact_posterior()
    with torch.no_grad():
        ratio = family.variance() / expected
        mean_err = ((family.mean() - post.mean) / post.stddev).abs().max().item()
    # Averaged over ~1000 steps of 64 points (30 epochs), the precision's minibatch noise is
    # well below 1%; 3% leaves room for the finite averaging window.
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=0.03, rtol=0)
    assert mean_err < 0.05


def test_lowrank_family_is_projected_after_each_step(correlated_regression):
    model = correlated_regression
    family = LowRankGaussian(model.dim, rank=1)
    result = st.fit(model, family, method=st.methods.NGVI(), batch_size=64, steps=300, seed=0)
    assert result.skipped_steps == 0
    assert bool(torch.isfinite(family.covariance()).all())
    post = model.exact_posterior()
    with torch.no_grad():
        mean_err = ((family.loc - post.mean) / post.stddev).abs().max().item()
    assert mean_err < 0.2


class _TwoBumps(Model):
    """Density-only target, not log-concave: an equal mixture of N(-2, 1) and N(2, 1) in 1-D
    times a N(0, 1) in a second coordinate. Its Hessian is positive between the bumps."""

    def __init__(self) -> None:
        super().__init__()
        self.add_param("x")
        self.add_param("w")

    def log_prior(self, params):
        x = params["x"]
        mix = torch.logaddexp(-0.5 * (x - 2) ** 2, -0.5 * (x + 2) ** 2)
        return mix - 0.5 * params["w"] ** 2


def test_precision_stays_positive_definite_on_a_non_log_concave_target():
    model = _TwoBumps()
    family = FullRankGaussian(model.dim, init_scale=3.0)
    loop = st.methods.NGVI(step_size=0.5, init="prior", num_particles=2).prepare(
        model, family, None, st.training.TrainConfig(steps=200, log_every=1)
    )
    smallest = []

    class Watch:
        def on_log(self, state, step, metrics):
            smallest.append(torch.linalg.eigvalsh(loop.rule.ngvi.precision).min().item())

    loop.callbacks.append(Watch())
    result = loop.run()
    assert result.skipped_steps == 0
    # A wide q straddles both bumps, where E_q[-Hessian] is negative: the plain update
    # would lose definiteness, and the iBLR correction must have been used.
    assert loop.rule.ngvi.fallbacks > 0
    assert min(smallest) > 0
    assert bool(torch.isfinite(family.covariance()).all())


def test_ngvi_resume_matches_uninterrupted_run(tmp_path, correlated_regression):
    model = correlated_regression
    settings = dict(batch_size=32, steps=300, seed=5, log_every=50)
    reference = FullRankGaussian(model.dim)
    st.fit(model, reference, method="ngvi", **settings)
    ckpt = tmp_path / "ngvi.pt"
    first = FullRankGaussian(model.dim)
    config = st.training.TrainConfig(**settings, checkpoint_path=ckpt)
    # Stop mid-epoch and mid-refine, as if the process had been killed.
    paused = st.methods.NGVI().prepare(model, first, None, config).run(stop_at=170)
    assert paused.steps == 170
    final = FullRankGaussian(model.dim)
    st.fit(model, final, method="ngvi", **settings, checkpoint_path=ckpt, resume=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, final.state_dict()[key]), key


@pytest.mark.slow
def test_stop_rule_fires_and_reports_its_reason(correlated_regression):
    model = correlated_regression
    family = FullRankGaussian(model.dim)
    monitor = st.training.ConvergenceMonitor(window=250, patience=3)
    result = st.fit(
        model,
        family,
        method=st.methods.NGVI(),
        batch_size=64,
        steps=8000,
        convergence=monitor,
        seed=0,
    )
    assert result.steps < 8000
    assert result.stop_reason.startswith("converged")
    assert _exact_kl(family, model) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(momentum=0.9), TypeError, "has no option\\(s\\) \\['momentum'\\]"),
        (dict(curvature="bfgs"), ValueError, "NGVI curvature must be one of"),
        (dict(step_size=2.0), ValueError, "must be in \\(0, 1\\]"),
        (dict(objective=ELBO(num_particles=2, gradient="stl"), step_size=0.5), None, None),
    ],
)
def test_bad_ngvi_settings_get_clear_errors(kwargs, error, message):
    x = torch.randn(50)
    model = NormalMean(x)
    objective = kwargs.pop("objective", None)
    if error is None:  # any ELBO is accepted (ngvi maximises the ELBO itself)
        method = st.methods.NGVI(**kwargs)
        st.fit(model, FullRankGaussian(1), objective, method=method, steps=5)
        return
    with pytest.raises(error, match=message):
        st.fit(model, FullRankGaussian(1), method={"name": "ngvi", "options": kwargs}, steps=5)


def test_ngvi_rejects_non_gaussian_families_and_other_objectives():
    from svi_torch.families import VariationalFamily

    class Laplace(VariationalFamily):
        def __init__(self, dim):
            super().__init__(dim)
            self.loc = torch.nn.Parameter(torch.zeros(dim))

        def forward(self, context=None):
            return torch.distributions.Independent(torch.distributions.Laplace(self.loc, 1.0), 1)

    model = NormalMean(torch.randn(50))
    with pytest.raises(TypeError, match="needs a Gaussian family"):
        st.fit(
            model,
            Laplace(1),
            method=st.methods.NGVI(init="prior"),
            steps=5,
        )

    class OtherObjective(ELBO):
        pass

    with pytest.raises(ValueError, match="cannot use the objective OtherObjective"):
        st.fit(model, FullRankGaussian(1), OtherObjective(), method=st.methods.NGVI(), steps=5)


def test_one_step_of_the_update_object_matches_the_formula():
    """Lambda' = (1-rho) Lambda + rho H and m' = m + rho Lambda'^{-1} g, checked by hand."""
    torch.manual_seed(0)
    model = NormalMean(torch.randn(40, dtype=torch.float64) + 1.0, noise_scale=1.0)
    family = FullRankGaussian(1, init_scale=0.5).double()
    ngvi = NaturalGradientVI(model, family)
    rho, m0, lam0 = 0.3, family.loc.detach().clone(), 1 / 0.25
    ngvi.step(None, 1.0, rho)
    hess = 1 + 40  # prior precision + N / sigma^2
    lam1 = (1 - rho) * lam0 + rho * hess
    grad = -(m0 - 0.0) + (model.x - m0).sum()  # exact at m (antithetic pair, linear gradient)
    m1 = m0 + rho * grad / lam1
    torch.testing.assert_close(ngvi.precision, torch.tensor([[lam1]], dtype=torch.float64))
    torch.testing.assert_close(ngvi.loc, m1)


def test_stein_curvature_estimates_the_expected_hessian():
    """E_q[Lambda (z - m) g^T] = E_q[Hessian] (Stein's lemma); here the Hessian is -A."""
    from svi_torch.curvature import stein_hessian

    torch.manual_seed(0)
    dim, draws = 3, 200_000
    A = torch.tensor([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]], dtype=torch.float64)
    loc = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    precision = torch.eye(dim, dtype=torch.float64) * 2.0
    z = loc + torch.randn(draws, dim, dtype=torch.float64) / 2.0**0.5
    grad = -(z - 1.0) @ A  # gradient of -(z - 1)' A (z - 1) / 2
    estimate = stein_hessian(z, grad, loc, precision)
    # Each entry is a mean of 2e5 products of O(1) Gaussians times O(4) gradients: s.e. < 0.02.
    torch.testing.assert_close(estimate, -A, atol=0.06, rtol=0)
    diagonal = stein_hessian(z, grad, loc, torch.diagonal(precision))
    torch.testing.assert_close(diagonal, -torch.diagonal(A), atol=0.06, rtol=0)


def _ill_conditioned_regression(num_data: int, dim: int, condition: float):
    """Uncentred, correlated predictors scaled over a factor sqrt(condition) (the
    construction of ``benchmarks/convergence.py``): a float32 model and the float64 exact
    posterior (a float32 posterior is itself 0.007 nats off at D = 100)."""
    X, _, beta = regression_data(num_data, dim, correlation=0.3, seed=0, offset=1.0)
    X = X * torch.logspace(0, 0.5 * torch.log10(torch.tensor(condition)).item(), dim)
    y = X @ beta + torch.randn(num_data, generator=torch.Generator().manual_seed(7))
    post = BayesianLinearRegression(X.double(), y.double()).exact_posterior()
    evals = torch.linalg.eigvalsh(post.covariance_matrix)
    return BayesianLinearRegression(X, y), post, (evals.max() / evals.min()).item()


@pytest.mark.parametrize(
    "num_data, dim, condition",
    [(100_000, 5, 1e4), pytest.param(10_000, 100, 1e3, marks=pytest.mark.slow)],
)
def test_default_fit_reaches_the_posterior_on_ill_conditioned_regressions(num_data, dim, condition):
    """Issue 5's target: defaults, batch 64, KL(q||p) < 0.01 within 2000 steps.

    Measured over seeds 0 and 1: 0.002 (D = 5) and 0.0008 (D = 100) nats; the former
    default step size B/(4N) gave 0.013 and 0.034 here, so the bound can fail.
    """
    model, post, cond = _ill_conditioned_regression(num_data, dim, condition)
    assert cond > 1e4  # the posterior covariance really is ill-conditioned
    family = FullRankGaussian(model.dim)
    result = st.fit(model, family, batch_size=64, steps=2000, seed=0)
    assert result.steps <= 2000 and result.method == "auto -> ngvi from laplace"
    with torch.no_grad():
        q = MultivariateNormal(family.loc.double(), family.covariance().double())
    kl = kl_divergence(q, MultivariateNormal(post.mean, post.covariance_matrix)).item()
    assert kl < 0.01, f"KL(q||p) = {kl:.4f} nats"


def test_averaged_natural_parameters_keep_an_ill_conditioned_mean():
    """Averaging (Lambda, Lambda m) and solving back must not lose the mean to rounding."""
    dim = 60
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)))[0]
    precision = basis @ torch.diag(torch.logspace(2, 6.5, dim)) @ basis.T  # cond 3e4
    precision = 0.5 * (precision + precision.T)
    loc = torch.linspace(-1, 1, dim)
    model = NormalMean(torch.zeros(3), prior_scale=1.0)  # only used for its type checks
    family = FullRankGaussian(dim)
    ngvi = NaturalGradientVI.__new__(NaturalGradientVI)
    ngvi.model, ngvi.family, ngvi.diagonal, ngvi.diagonal_q = model, family, False, False
    ngvi.loc, ngvi.precision = loc.clone(), precision.clone()
    ngvi.count = 0
    ngvi.precision_sum = torch.zeros(dim, dim, dtype=torch.float64)
    ngvi.shift_sum = torch.zeros(dim, dtype=torch.float64)
    for _ in range(1000):
        ngvi.accumulate()
    ngvi.apply_average()
    error = (ngvi.loc - loc).double()
    # Whitened error sqrt(d' Lambda d): the KL it costs is half its square.
    whitened = torch.sqrt(error @ precision.double() @ error).item()
    assert whitened < 0.01, whitened


def test_batched_hessians_equal_the_loop_of_reverse_passes():
    from svi_torch.curvature import _batched_hessian, _loop_hessian, log_joint_fn

    X, y, _ = st.models.logistic_data(300, 4, seed=2)
    for model in (st.models.BayesianLogisticRegression(X, y), st.models.EightSchools()):
        model = model.double()
        density = log_joint_fn(model, None, None)
        z = torch.randn(3, model.dim, dtype=torch.float64)
        for a, b in zip(_batched_hessian(density, z), _loop_hessian(density, z), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_loaded_state_is_copied_not_aliased():
    """Averaging after load_state_dict must not write into the state it was loaded from."""
    torch.manual_seed(0)
    model = NormalMean(torch.randn(40, dtype=torch.float64) + 1.0, noise_scale=1.0)
    ngvi = NaturalGradientVI(model, FullRankGaussian(1, init_scale=0.5).double())
    ngvi.accumulate()
    saved = ngvi.state_dict()
    kept = {k: v.clone() for k, v in saved.items() if torch.is_tensor(v)}
    other = NaturalGradientVI(model, FullRankGaussian(1, init_scale=0.5).double())
    other.load_state_dict(saved)
    other.accumulate()
    for key, value in kept.items():
        assert torch.equal(saved[key], value), key
    assert torch.equal(other.precision_sum, 2 * kept["precision_sum"])
