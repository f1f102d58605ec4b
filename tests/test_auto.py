"""The automatic method: each mechanism on a model built to need it, and its decision log."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import Laplace, MultivariateNormal, Normal, kl_divergence

import svi_torch as st
from svi_torch.families import FullRankGaussian, MeanFieldGaussian
from svi_torch.models import BayesianLinearRegression, Model, regression_data


def _kl_to_exact(family, model) -> float:
    post = model.exact_posterior()
    with torch.no_grad():
        q = MultivariateNormal(family.loc.double(), family.covariance().double())
    exact = MultivariateNormal(post.mean.double(), post.covariance_matrix.double())
    return kl_divergence(q, exact).item()


@pytest.fixture(scope="module")
def regression():
    X, y, _ = regression_data(2000, 4, correlation=0.6, seed=3)
    return BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)


def test_default_fit_logs_map_laplace_ngvi_and_khat_and_is_exact(regression):
    family = FullRankGaussian(regression.dim)
    result = st.fit(regression, family, batch_size=64, steps=2000, seed=0)
    assert [d.stage for d in result.decisions] == ["map", "ngvi from laplace", "k-hat"]
    assert result.method == "auto -> ngvi from laplace"
    assert result.decisions[0].outcome == "ok" and "MAP found" in result.decisions[0].reason
    assert result.decisions[-1].outcome == "good"
    assert result.diagnostics is not None and result.diagnostics.khat < 0.5
    # Gradient evaluations: the MAP search's plus the steps' (each B/N of the data).
    assert result.grad_evals == pytest.approx(sum(d.grad_evals for d in result.decisions))
    assert result.grad_evals > result.decisions[0].grad_evals > 0
    assert "\n" not in result.decision_summary and "ngvi from laplace" in result.decision_summary
    assert _kl_to_exact(family, regression) < 0.01


def test_an_explicit_elbo_trains_exactly_as_the_default(regression):
    """Which method runs does not depend on whether the default objective is spelt out."""
    implicit, explicit = FullRankGaussian(regression.dim), FullRankGaussian(regression.dim)
    st.fit(regression, implicit, batch_size=64, steps=300, seed=1)
    st.fit(regression, explicit, st.objectives.ELBO(), batch_size=64, steps=300, seed=1)
    for key, value in implicit.state_dict().items():
        assert torch.equal(value, explicit.state_dict()[key]), key


class _Cliff(Model):
    """N(3, 0.2^2) on x > 1; -inf or NaN below 1, so the start at 0 is infeasible."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.add_param("x")
        self.kind = kind

    def log_prior(self, params):
        x = params["x"]
        value = Normal(3.0, 0.2).log_prob(x)
        if self.kind == "nan":
            return value + 0.0 * torch.log(x - 1.0)  # NaN where x < 1
        return torch.where(x < 1.0, -math.inf, value)

    def log_likelihood(self, params, batch):
        return torch.zeros_like(params["x"])


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_an_infeasible_start_is_left_for_a_dispersed_one(kind):
    model = _Cliff(kind)
    family = FullRankGaussian(1)
    result = st.fit(model, family, seed=0)
    assert result.decisions[0].outcome == "ok"
    # The posterior is Gaussian to 1e-40 (the cliff is 10 sd away): q is exact.
    with torch.no_grad():
        assert abs(family.loc.item() - 3.0) < 0.01 * 0.2
        assert abs(family.covariance().item() ** 0.5 / 0.2 - 1) < 0.01


class _Quartic(Model):
    """p(x, y) ∝ exp(-x^4 - y^2 / 2): the curvature at the MAP is zero in x."""

    def __init__(self) -> None:
        super().__init__()
        self.add_param("x")
        self.add_param("y")

    def log_prior(self, params):
        return -(params["x"] ** 4) - 0.5 * params["y"] ** 2

    def log_likelihood(self, params, batch):
        return torch.zeros_like(params["x"])


def test_a_map_whose_hessian_is_singular_is_not_used_as_a_laplace_start():
    model = _Quartic()
    family = FullRankGaussian(2)
    result = st.fit(model, family, seed=0)
    assert result.decisions[0].outcome == "not a MAP"
    assert "not negative definite" in result.decisions[0].reason
    assert "laplace" not in result.method
    # The Gaussian optimum of the ELBO: E_q[x^4] = 3 s^4, so -3 s^4 + log(s) peaks at
    # s^4 = 1/12 (variance 0.2887); y is exactly N(0, 1). The stochastic fixed point of
    # NGVI sits slightly low (E[Lambda] = 12 E[1/Lambda] > 12 / E[Lambda]); in KL(q || q*)
    # terms 10% in variance is 0.0025 nats.
    with torch.no_grad():
        variance = family.variance()
    assert abs(variance[0].item() / (1 / math.sqrt(12)) - 1) < 0.1, variance
    assert abs(variance[1].item() - 1) < 0.1, variance


def test_posterior_sds_of_1e_minus_3_and_1e4_at_once_are_exact():
    """One coordinate pinned to 1e-3, one to 1e4: a condition number of 1e14."""
    g = torch.Generator().manual_seed(0)
    n = 1000
    X = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([31.6, 3.16e-6])
    y = X @ torch.tensor([0.5, 2e4], dtype=torch.float64) + torch.randn(n, generator=g).double()
    model = BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1e6)
    sds = model.exact_posterior().stddev
    assert sds[0] < 2e-3 and sds[1] > 5e3  # the scales this test is about
    family = FullRankGaussian(2)  # float32 as built: fit follows the model's float64
    st.fit(model, family, batch_size=100, steps=2000, seed=0)
    assert family.loc.dtype == torch.float64
    assert _kl_to_exact(family, model) < 0.01


class _Median(Model):
    """Laplace likelihood: the log-likelihood's Hessian is zero almost everywhere."""

    def __init__(self, y: torch.Tensor) -> None:
        super().__init__()
        self.add_param("mu")
        self.set_data(y=y)

    def log_prior(self, params):
        return Normal(0.0, 10.0).log_prob(params["mu"])

    def log_likelihood(self, params, batch):
        return Laplace(params["mu"][..., None], 1.0).log_prob(batch["y"]).sum(-1)


@pytest.mark.parametrize(
    ("family_class", "fallback"),
    [(FullRankGaussian, "bam from pathfinder"), (MeanFieldGaussian, "sgd from the best point")],
)
def test_natural_gradient_that_diverges_falls_back(family_class, fallback):
    """No MAP passes its checks (the Laplace likelihood has zero curvature almost
    everywhere), so the chain starts from Pathfinder; NGVI's ELBO falls; batch-and-match
    (scores only) from the same Pathfinder start takes over, or, for a mean-field family
    it cannot fit, SGD after NGVI from the best point fails too."""
    y = (torch.randn(300, generator=torch.Generator().manual_seed(0)) + 1.0).double()
    model = _Median(y)
    family = family_class(1)
    result = st.fit(model, family, seed=0)
    outcomes = {d.stage: d.outcome for d in result.decisions}
    # Zero curvature: NGVI's precision collapses to the prior's and the ELBO falls.
    assert outcomes["ngvi from pathfinder"] == "failed"
    assert [d.stage for d in result.decisions].count("pathfinder") == 1  # one run, shared
    if fallback == "sgd from the best point":
        assert outcomes["ngvi from the best point, smaller step"] == "failed"
    assert result.method == f"auto -> {fallback}"
    # Every evaluation counted once: the MAP search, Pathfinder, each stage's own loop.
    assert result.grad_evals == pytest.approx(sum(d.grad_evals for d in result.decisions))
    grid = torch.linspace(0, 2, 20001, dtype=torch.float64)
    log_post = Normal(0.0, 10.0).log_prob(grid) + Laplace(grid[:, None], 1.0).log_prob(y).sum(-1)
    w = torch.softmax(log_post, 0)
    mean = (w * grid).sum().item()
    sd = (w * (grid - mean) ** 2).sum().sqrt().item()
    with torch.no_grad():
        # Reverse KL(q || p) to a non-Gaussian posterior: close, not exact (sd 5% high here).
        assert abs(family.loc.item() - mean) < 0.1 * sd
        assert abs(family.covariance().item() ** 0.5 / sd - 1) < 0.15


def test_a_model_finite_nowhere_is_an_error_in_one_line():
    class Broken(Model):
        def __init__(self):
            super().__init__()
            self.add_param("x")

        def log_prior(self, params):
            return params["x"] * math.nan

        def log_likelihood(self, params, batch):
            return torch.zeros_like(params["x"])

    with pytest.raises(ValueError, match="not finite at any point tried") as info:
        st.fit(Broken(), FullRankGaussian(1), steps=10)
    assert "\n" not in str(info.value)


def test_a_high_khat_is_reported_with_its_reading_and_a_warning(regression):
    # Mean-field on a correlated posterior: the reverse KL(q || p) optimum is too narrow.
    X, y, _ = regression_data(500, 4, correlation=0.9, seed=0)
    model = BayesianLinearRegression(X, y)
    with pytest.warns(RuntimeWarning, match="PSIS k-hat of the fit is"):
        result = st.fit(model, MeanFieldGaussian(model.dim), steps=500, seed=0)
    assert result.decisions[-1].stage == "k-hat" and result.decisions[-1].outcome == "bad"
    assert result.diagnostics.khat > 0.7


def test_the_readme_pyro_example_fits_from_laplace_without_a_warning():
    import pyro
    import pyro.distributions as dist

    from svi_torch.models import PyroModel

    def regression(X, y):
        beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
        with pyro.plate("data", len(y)) as idx:
            mean = (X[idx] * beta).sum(-1)
            pyro.sample("y", dist.Normal(mean, sigma), obs=y[idx])

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(2000, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = PyroModel(regression, X, y, data_plate="data")
        result = st.fit(model, FullRankGaussian(model.dim), batch_size=256, steps=1000, seed=0)
    assert result.method == "auto -> ngvi from laplace"
    summary = result.posterior_summary(2000)
    assert abs(summary["sigma"]["mean"] - 0.3) < 0.02
    assert abs(summary["beta[1]"]["mean"] + 2.0) < 0.02


class _SignalAt:
    def __init__(self, step):
        self.step = step

    def on_log(self, state, step, metrics):
        if step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_automatic_fit_resumes_to_the_uninterrupted_result(tmp_path, regression):
    settings = dict(batch_size=64, steps=800, seed=2, log_every=20)
    reference = FullRankGaussian(regression.dim)
    expected = st.fit(regression, reference, **settings)
    ckpt = tmp_path / "auto.pt"
    paused = st.fit(
        regression,
        FullRankGaussian(regression.dim),
        **settings,
        checkpoint_path=ckpt,
        callbacks=[_SignalAt(200)],
    )
    assert paused.stop_reason.startswith("interrupted by SIGINT at step 200")
    resumed = FullRankGaussian(regression.dim)
    final = st.fit(regression, resumed, **settings, checkpoint_path=ckpt, resume=True)
    assert final.steps == expected.steps and final.method == expected.method
    assert [d.stage for d in final.decisions] == [d.stage for d in expected.decisions]
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_method_settings_given_to_fit_say_which_method_value_to_pass(regression):
    with pytest.raises(TypeError, match=r"method=st\.methods\.SGD\(lr=0\.03\)"):
        st.fit(regression, FullRankGaussian(regression.dim), lr=0.03)
    with pytest.raises(TypeError, match=r"st\.methods\.NGVI\(step_size=0\.5\)"):
        st.fit(regression, FullRankGaussian(regression.dim), optimizer="ngvi", lr=0.5)
    with pytest.raises(ValueError, match="unknown method 'adamw'; choose one of"):
        st.fit(regression, FullRankGaussian(regression.dim), method="adamw")


class _CentredSchools(Model):
    """Eight schools, centred: the joint density grows without bound as tau -> 0 (no MAP)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_param("mu")
        self.add_param("tau", (), torch.distributions.constraints.positive)
        self.add_param("theta", (8,))
        y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64)
        sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)
        self.set_data(y=y, sigma=sigma)

    def log_prior(self, params):
        theta = Normal(params["mu"][..., None], params["tau"][..., None]).log_prob(params["theta"])
        half_cauchy = torch.distributions.HalfCauchy(5.0).log_prob(params["tau"])
        return Normal(0.0, 5.0).log_prob(params["mu"]) + half_cauchy + theta.sum(-1)

    def log_likelihood(self, params, batch):
        return Normal(params["theta"], batch["sigma"]).log_prob(batch["y"]).sum(-1)


@pytest.mark.slow
def test_a_posterior_without_a_map_is_fitted_from_pathfinder():
    """Centred eight schools: the MAP search finds no maximum; the chain's former first
    stage (NGVI from the best point) raised a set_moments error there. From Pathfinder's
    Gaussian NGVI completes: mu's mean and sd within 10% of NUTS's (4.4, 3.3; posteriordb
    eight_schools_noncentered). About a minute, mostly the MAP search (16 500 evaluations)."""
    model = _CentredSchools()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # k-hat 0.85: a funnel is no Gaussian
        result = st.fit(model, FullRankGaussian(model.dim), steps=300, seed=0)
    stages = [(d.stage, d.outcome) for d in result.decisions]
    assert stages[:3] == [
        ("map", "not a MAP"),
        ("pathfinder", "ok"),
        ("ngvi from pathfinder", "completed"),
    ]
    mu = result.posterior_summary()["mu"]
    assert abs(mu["mean"] - 4.4) < 0.44 and abs(mu["sd"] - 3.3) < 0.33


def test_the_final_q_is_diagnosed_once(regression, monkeypatch):
    """The last stage's final ELBO and the closing k-hat describe the same q: one full-data
    diagnosis serves both (two in all, with the stage's start), and a changed family is
    diagnosed again."""
    import svi_torch.methods.auto as auto_module

    calls = []
    real = auto_module.importance_draws

    def counting(model, family, num_samples):
        calls.append(torch.cat([t.detach().reshape(-1) for t in family.state_dict().values()]))
        return real(model, family, num_samples)

    monkeypatch.setattr(auto_module, "importance_draws", counting)
    result = st.fit(regression, FullRankGaussian(regression.dim), batch_size=64, steps=300, seed=0)
    assert result.method == "auto -> ngvi from laplace"
    assert len(calls) == 2 and not torch.equal(calls[0], calls[1])
    final = torch.cat([t.detach().reshape(-1) for t in result.family.state_dict().values()])
    assert torch.equal(calls[1], final)
    stage = next(d for d in result.decisions if d.stage == "k-hat")
    assert stage.reason.startswith(f"PSIS k-hat {result.diagnostics.khat_text} from 4000 draws")
