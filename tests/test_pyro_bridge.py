"""PyroModel: Pyro models fitted with svi_torch families, checked against exact answers,
against the same model written as an svi_torch Model, and against Pyro's own SVI."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from torch.distributions import MultivariateNormal, constraints, kl_divergence

import svi_torch as st
from svi_torch.data import MinibatchStream
from svi_torch.families import FullRankGaussian
from svi_torch.models import (
    AutoRegressive,
    EightSchools,
    NormalMean,
    PyroModel,
    normal_mean_data,
)
from svi_torch.models.hierarchical import EIGHT_SCHOOLS_SIGMA, EIGHT_SCHOOLS_Y
from svi_torch.models.pyro import PyroModelError
from svi_torch.models.timeseries import lag_matrix
from svi_torch.objectives import ELBO
from svi_torch.training.schedule import LRSchedule

# -- Pyro models, written as Pyro users write them ------------------------------------------


def normal_mean(x, noise_scale=2.0):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)) as idx:
        pyro.sample("obs", dist.Normal(mu, noise_scale), obs=x[idx])


def eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def regression(X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal((X[idx] * beta).sum(-1), sigma), obs=y[idx])


SCHOOLS_Y = torch.tensor(EIGHT_SCHOOLS_Y)
SCHOOLS_SIGMA = torch.tensor(EIGHT_SCHOOLS_SIGMA)


# -- the log joint ---------------------------------------------------------------------------


def test_log_joint_and_gradient_equal_the_svi_torch_model():
    bridge = PyroModel(eight_schools, SCHOOLS_Y, SCHOOLS_SIGMA)
    native = EightSchools()
    assert list(bridge.param_specs) == ["mu", "tau", "theta_tilde"]
    assert bridge.dim == native.dim == 10
    assert bridge.vectorize_particles
    z = torch.randn(3, 5, bridge.dim, requires_grad=True)
    ours = bridge.log_joint(z)
    (grad,) = torch.autograd.grad(ours.total.sum(), z)
    theirs = native.log_joint(z)
    (expected_grad,) = torch.autograd.grad(theirs.total.sum(), z)
    assert ours.total.shape == (3, 5)
    torch.testing.assert_close(ours.total, theirs.total)
    torch.testing.assert_close(ours.log_det_jacobian, theirs.log_det_jacobian)
    torch.testing.assert_close(grad, expected_grad)


def test_autoregressive_model_equals_its_pyro_version():
    """The AR(K) built-in (posteriordb arK) against the same model written in Pyro."""
    y = torch.randn(60, generator=torch.Generator().manual_seed(2)).cumsum(0) * 0.1
    lags = lag_matrix(y, 3)
    # Row t holds (y[t-1], y[t-2], y[t-3]) for the target y[t], t = 3..59.
    torch.testing.assert_close(lags[0], torch.stack([y[2], y[1], y[0]]))
    torch.testing.assert_close(lags[-1], torch.stack([y[58], y[57], y[56]]))

    def ar(lags, target):
        alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
        beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([3]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
        with pyro.plate("data", len(target)) as idx:
            mean = alpha + (lags[idx] * beta).sum(-1)
            pyro.sample("y", dist.Normal(mean, sigma), obs=target[idx])

    native = AutoRegressive(y, order=3)
    bridge = PyroModel(ar, lags, y[3:], data_plate="data")
    assert native.num_data == bridge.num_data == 57
    z = torch.randn(5, native.dim)
    torch.testing.assert_close(native.log_joint(z).total, bridge.log_joint(z).total)
    idx = torch.tensor([4, 9, 30])
    torch.testing.assert_close(
        native.log_joint(z, native.index_data(idx)).total,
        bridge.log_joint(z, bridge.index_data(idx)).total,
    )


def test_minibatch_log_joint_averages_to_the_full_data_log_joint_over_an_epoch():
    seen_batch_sizes = []
    X = torch.randn(120, 3, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([0.5, -1.0, 2.0]) + 0.3 * torch.randn(120)

    def recording(X, y):
        beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
        with pyro.plate("data", len(y)) as idx:
            seen_batch_sizes.append(len(idx))
            pyro.sample("y", dist.Normal((X[idx] * beta).sum(-1), sigma), obs=y[idx])

    model = PyroModel(recording, X, y, data_plate="data")
    assert model.num_data == 120
    z = torch.randn(4, model.dim)
    full = model.log_joint(z)
    params, log_det = model.constrain(z)
    # Independent of Pyro: the same log joint written with torch.distributions.
    by_hand = (
        torch.distributions.Normal(0.0, 1.0).log_prob(params["beta"]).sum(-1)
        + torch.distributions.HalfNormal(2.0).log_prob(params["sigma"])
        + torch.distributions.Normal(params["beta"] @ X.T, params["sigma"][:, None])
        .log_prob(y)
        .sum(-1)
        + log_det
    )
    torch.testing.assert_close(full.total, by_hand)

    stream = MinibatchStream(120, 30, seed=3)
    seen_batch_sizes.clear()
    estimates = []
    for _ in range(stream.steps_per_epoch):
        indices = stream.next_indices()
        batch = model.index_data(indices)
        estimates.append(model.log_joint(z, batch, likelihood_scale=120 / 30).total)
    # The bridge hands the plate B indices, never N: O(batch) work per step.
    assert seen_batch_sizes == [30] * 4
    estimates = torch.stack(estimates)
    # Each batch is a different, noisy estimate; equal-size batches over an epoch partition
    # the data, so their mean is exactly the full-data log joint (up to float rounding).
    assert float((estimates - full.total).abs().min()) > 1.0
    torch.testing.assert_close(estimates.mean(0), full.total, rtol=1e-5, atol=1e-3)
    # The default likelihood_scale is N/B too: Pyro's plate scale is not applied twice.
    batch = model.index_data(torch.arange(30))
    torch.testing.assert_close(
        model.log_joint(z, batch).total, model.log_joint(z, batch, likelihood_scale=4.0).total
    )


def test_likelihood_scale_rescales_only_the_data_plate():
    x = normal_mean_data(50, seed=1)
    bridge = PyroModel(normal_mean, x, data_plate="data")
    native = NormalMean(x, noise_scale=2.0)
    z = torch.randn(6, 1)
    batch = torch.arange(10)
    for scale in (1.0, 5.0, 7.5):
        ours = bridge.log_joint(z, bridge.index_data(batch), likelihood_scale=scale)
        theirs = native.log_joint(z, native.index_data(batch), likelihood_scale=scale)
        torch.testing.assert_close(ours.log_likelihood, theirs.log_likelihood)
        torch.testing.assert_close(ours.log_prior, theirs.log_prior)
    params, _ = bridge.constrain(z)
    torch.testing.assert_close(
        bridge.log_likelihood(params, bridge.index_data(batch)),
        native.log_likelihood(params, native.index_data(batch)),
    )


def test_model_written_for_one_draw_is_vectorised_by_vmap():
    def matmul_regression(X, y):
        beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
        with pyro.plate("data", len(y)) as idx:
            pyro.sample("y", dist.Normal(X[idx] @ beta, sigma), obs=y[idx])  # no broadcasting

    X, y = torch.randn(40, 3), torch.randn(40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # vmap handles it: no fallback, no warning
        one_draw = PyroModel(matmul_regression, X, y, data_plate="data")
    assert one_draw.particle_path == "vmap" and one_draw.vectorize_particles
    vectorised = PyroModel(regression, X, y, data_plate="data")
    assert vectorised.particle_path == "plate"
    z = torch.randn(2, 3, one_draw.dim)
    torch.testing.assert_close(one_draw.log_joint(z).total, vectorised.log_joint(z).total)
    with pytest.raises(
        PyroModelError, match="does not vectorise over particles: plate: RuntimeError"
    ):
        PyroModel(matmul_regression, X, y, data_plate="data", vectorize_particles="plate")


# -- fits --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bridge_recovers_conjugate_normal_posterior_with_minibatches():
    x = normal_mean_data(5000, true_mean=1.3, noise_scale=2.0, seed=4)
    model = PyroModel(normal_mean, x, data_plate="data")
    exact = NormalMean(x, noise_scale=2.0, prior_loc=0.0, prior_scale=1.0)
    family = FullRankGaussian(model.dim)
    result = st.fit(
        model,
        family,
        ELBO(num_particles=16),
        batch_size=100,
        steps=3000,
        method=st.methods.SGD(lr=3e-2),
        seed=1,
    )
    post = exact.exact_posterior()
    with torch.no_grad():
        mean_err = ((family.mean() - post.mean).abs() / post.stddev).max().item()
        var_ratio = (family.variance() / post.variance).item()
        q = MultivariateNormal(family.loc.double(), family.covariance().double())
    assert mean_err < 0.05, f"mean is {mean_err:.3f} posterior sd off"
    assert abs(var_ratio - 1) < 0.05, f"variance ratio {var_ratio:.3f}"
    kl = kl_divergence(
        q, MultivariateNormal(post.mean.double(), post.covariance_matrix.double())
    ).item()
    assert kl < 0.01, f"KL(q||p) = {kl:.4f} nats"
    # ELBO = log p(D) - KL(q||p): below the exact evidence (up to 4 s.e.) and close to it.
    elbo, se = result.elbo(20000)
    log_z = exact.log_evidence().item()
    assert elbo <= log_z + 4 * se
    assert log_z - elbo < 0.05 + 4 * se
    summary = result.posterior_summary(4000)
    assert list(summary) == ["mu"]
    assert list(result.sample(10)) == ["mu"]


def _moments(draws: torch.Tensor) -> tuple[float, float, float, float]:
    """Mean, sd and their Monte Carlo standard errors from ``S`` independent draws:
    se(mean) = sd / sqrt(S), se(sd) = sd * sqrt((kurtosis - 1) / (4 S)) (delta method)."""
    x = draws.reshape(-1).double()
    n = x.numel()
    mean, sd = x.mean(), x.std()
    kurtosis = ((x - mean) ** 4).mean() / sd**4
    return (
        mean.item(),
        sd.item(),
        (sd / math.sqrt(n)).item(),
        (sd * torch.sqrt((kurtosis - 1) / (4 * n))).item(),
    )


def _assert_same_posterior(ours: dict, theirs: dict, label: str) -> None:
    """Posterior means and sds of mu and tau agree within Monte Carlo error.

    Both sides are Monte Carlo summaries of S = 20000 draws (se from :func:`_moments`);
    the allowed gap is 4 combined standard errors plus the optimiser's own tolerance,
    which the exactness tests pin at 0.05 posterior sd for means and 5% for sds.
    """
    for name in ("mu", "tau"):
        m1, s1, se_m1, se_s1 = _moments(ours[name])
        m2, s2, se_m2, se_s2 = _moments(theirs[name])
        mean_tol = 4 * math.hypot(se_m1, se_m2) + 0.05 * s2
        sd_tol = 4 * math.hypot(se_s1, se_s2) + 0.05 * s2
        assert abs(m1 - m2) < mean_tol, f"{label}: {name} mean {m1:.3f} vs {m2:.3f}"
        assert abs(s1 - s2) < sd_tol, f"{label}: {name} sd {s1:.3f} vs {s2:.3f}"


def _q_draws(result, num: int = 20000) -> dict:
    """Draws of the fitted Gaussian q itself: the comparisons are of the q's the three fits
    reach (the default result's draws are q importance-resampled towards the posterior)."""
    from svi_torch.posterior.draws import constrained_draws, draw_latents

    return constrained_draws(result.model, draw_latents(result.family, num, 0)[0])


@pytest.fixture(scope="module")
def schools_bridge_fit():
    torch.manual_seed(0)
    model = PyroModel(eight_schools, SCHOOLS_Y, SCHOOLS_SIGMA)
    family = FullRankGaussian(model.dim)
    result = st.fit(model, family, ELBO(num_particles=8), steps=2000, seed=1)
    torch.manual_seed(100)
    return result, _q_draws(result)


@pytest.mark.slow
def test_eight_schools_in_pyro_matches_the_svi_torch_model(schools_bridge_fit):
    result, bridge_draws = schools_bridge_fit
    assert result.skipped_steps == 0
    assert bool((bridge_draws["tau"] > 0).all())
    native = EightSchools()
    family = FullRankGaussian(native.dim)
    # A different seed: the two fits share no random numbers, so they agree only if the
    # bridge computes the same posterior.
    native_result = st.fit(native, family, ELBO(num_particles=8), steps=2000, seed=2)
    torch.manual_seed(101)
    _assert_same_posterior(bridge_draws, _q_draws(native_result), "bridge vs svi_torch")


@pytest.mark.slow
def test_eight_schools_in_pyro_matches_pyro_automultivariatenormal(schools_bridge_fit):
    _, bridge_draws = schools_bridge_fit
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    guide = AutoMultivariateNormal(eight_schools)
    steps = 3000
    # The optimiser and schedule svi_torch uses by default (Adam, constant then cosine
    # decay), through Pyro's own LambdaLR; 16 vectorised particles keep Pyro's Monte Carlo
    # entropy gradient quiet enough for its final iterate to settle at the optimum of the
    # same full-rank family.
    schedule = LRSchedule("auto", steps)
    optim = pyro.optim.LambdaLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-2}, "lr_lambda": schedule.factor}
    )
    svi = SVI(
        eight_schools,
        guide,
        optim,
        Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1),
    )
    for _ in range(steps):
        svi.step(SCHOOLS_Y, SCHOOLS_SIGMA)
        optim.step()
    draws = Predictive(
        eight_schools, guide=guide, num_samples=20000, return_sites=("mu", "tau"), parallel=True
    )(SCHOOLS_Y, SCHOOLS_SIGMA)
    pyro.clear_param_store()
    _assert_same_posterior(bridge_draws, draws, "bridge vs Pyro AutoMultivariateNormal")


# -- errors ------------------------------------------------------------------------------------


def test_discrete_latent_site_is_rejected_by_name():
    def mixture_label(x):
        k = pyro.sample("label", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(3.0 * k, 1.0), obs=x)

    with pytest.raises(PyroModelError, match="latent site 'label'.*discrete.*marginalise"):
        PyroModel(mixture_label, torch.tensor(1.0))


def test_missing_observed_value_is_reported_with_the_site_name():
    def model(x, y=None):
        slope = pyro.sample("slope", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)) as idx:
            pyro.sample("y", dist.Normal(slope * x[idx], 1.0), obs=None if y is None else y[idx])

    x = torch.randn(20)
    # Declared observed, but called without y: obs=None.
    with pytest.raises(PyroModelError, match="site 'y'.*obs is None.*observed value is missing"):
        PyroModel(model, x, observed=["y"])
    # In the data plate, a latent where data belong is the same slip.
    with pytest.raises(
        PyroModelError, match="latent site 'y'.*data plate.*observed value is missing"
    ):
        PyroModel(model, x, data_plate="data")
    # A NaN in the data is a missing value too.
    y = torch.randn(20)
    y[3] = math.nan
    with pytest.raises(PyroModelError, match="observed site 'y'.*1 NaN/Inf.*missing"):
        PyroModel(model, x, y, data_plate="data")
    # With the data, the same model is fine.
    assert PyroModel(model, x, torch.randn(20), data_plate="data", observed=["y"]).dim == 1


def test_model_that_raises_is_reported_with_model_site_and_original_error():
    def broken(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.HalfNormal(1.0))
        return x / (loc * 0.0 + scale).reshape(5)  # shape bug after 'scale'

    with pytest.raises(
        PyroModelError, match=r"model 'test_model_.*broken' raised RuntimeError.*after site 'scale'"
    ) as info:
        PyroModel(broken, torch.ones(3))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "Trace Shapes" not in str(info.value)

    def fails_later(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        if bool((loc.abs() > 100).any()):
            raise ArithmeticError("loc out of range")
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    model = PyroModel(fails_later, torch.tensor(0.5))
    with pytest.raises(
        PyroModelError, match="raised ArithmeticError while evaluating.*after site 'loc'"
    ):
        model.log_joint(torch.full((2, 1), 500.0))


def test_unmappable_support_and_param_sites_are_rejected_by_name():
    class OddSupport(dist.Normal):
        support = constraints.dependent

    def odd(x):
        w = pyro.sample("w", OddSupport(0.0, 1.0))
        pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    with pytest.raises(PyroModelError, match="latent site 'w'.*biject_to cannot map"):
        PyroModel(odd, torch.tensor(0.0))

    def with_param(x):
        w = pyro.param("w", torch.tensor(0.0))
        loc = pyro.sample("loc", dist.Normal(w, 1.0))
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    with pytest.raises(PyroModelError, match="pyro.param site 'w'"):
        PyroModel(with_param, torch.tensor(0.0))
    pyro.clear_param_store()

    with pytest.raises(PyroModelError, match="no plate of that name; its plates are \\['data'\\]"):
        PyroModel(normal_mean, torch.randn(5), data_plate="obs")


def test_samples_and_summary_are_keyed_by_site_name():
    X, y = torch.randn(64, 3), torch.randn(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a vectorisable model must not warn
        model = PyroModel(regression, X, y, data_plate="data")
    family = FullRankGaussian(model.dim)
    result = st.fit(model, family, ELBO(num_particles=2), batch_size=16, steps=20, seed=0)
    draws = result.sample(7)
    assert {k: tuple(v.shape) for k, v in draws.items()} == {"beta": (7, 3), "sigma": (7,)}
    assert bool((draws["sigma"] > 0).all())
    assert list(result.posterior_summary(100)) == ["beta[0]", "beta[1]", "beta[2]", "sigma"]
