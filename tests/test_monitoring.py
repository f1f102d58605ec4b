"""Monitoring metrics: KL divergences, gradient-noise statistics, figure, RNG isolation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal, kl_divergence

import svi_torch as st
from svi_torch.training.logging import Chart, Dashboard, MemoryLogger, TensorBoardLogger
from svi_torch.training.loop import ELBO_EMA_WEIGHT, exponential_moments
from svi_torch.training.monitoring import (
    TrainingMonitor,
    dashboard,
    gradient_statistics,
    kl_to_posterior,
    kl_to_prior,
    marginals_figure,
    unconstrained_prior,
)


def _regression(num_data: int = 500, dim: int = 3) -> st.models.BayesianLinearRegression:
    X, y, _ = st.models.regression_data(num_data, dim, correlation=0.5, seed=3)
    return st.models.BayesianLinearRegression(X.double(), y.double())


def test_kl_to_posterior_is_zero_at_the_exact_posterior_and_matches_torch() -> None:
    model = _regression()
    post = model.exact_posterior()
    family = st.families.FullRankGaussian(model.dim).double()
    family.set_moments(post.mean, post.covariance_matrix)
    value, method = kl_to_posterior(family, post)
    assert method == "analytic" and abs(value) < 1e-8
    family = st.families.MeanFieldGaussian(model.dim).double()
    value, _ = kl_to_posterior(family, post)
    q = MultivariateNormal(family.loc.detach(), torch.diag(family.scale.detach() ** 2))
    assert value == pytest.approx(kl_divergence(q, post).item(), rel=1e-10)


def test_kl_to_prior_analytic_agrees_with_monte_carlo_through_the_model() -> None:
    # Both Gaussian: closed form. Check it against E_q[log q - log p(theta) - log|J|] from the
    # model's own log_prior, with S = 20000 draws; the tolerance is 4 Monte Carlo s.e.
    X, y, _ = st.models.logistic_data(300, 4, seed=0)
    model = st.models.BayesianLogisticRegression(X, y, prior_scale=2.0)
    family = st.families.FullRankGaussian(model.dim, init_loc=0.3, init_scale=0.5)
    with torch.no_grad():
        family.tril.normal_(0, 0.2)
    value, method = kl_to_prior(model, family)
    assert method == "analytic"
    with torch.no_grad():
        z, log_q = family.rsample_and_log_prob((20000,))
        params, log_det = model.constrain(z)
        terms = (log_q - model.log_prior(params) - log_det).double()
    assert value == pytest.approx(
        terms.mean().item(), abs=4 * terms.std().item() / math.sqrt(20000)
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: st.models.NormalMean(torch.randn(20).double(), prior_loc=0.7, prior_scale=1.5),
        lambda: _regression(),
        lambda: st.models.BayesianLogisticRegression(
            *st.models.logistic_data(50, 3, seed=0)[:2], prior_scale=2.0
        ),
    ],
)
def test_model_prior_hook_is_the_models_own_log_prior(make) -> None:
    # The hook (which replaced type checks in monitoring) must be the model's prior: log p(z)
    # equals log_prior(constrain(z)) + log|J| (zero here: real-valued parameters).
    model = make()
    prior = unconstrained_prior(model)
    assert prior is not None and prior.event_shape == (model.dim,)
    z = torch.randn(7, model.dim, dtype=prior.loc.dtype)
    params, log_det = model.constrain(z)
    expected = model.log_prior(params) + log_det
    assert torch.allclose(prior.log_prob(z), expected.to(z.dtype), atol=1e-5)


def test_model_prior_hook_is_none_without_a_gaussian_prior_in_z() -> None:
    X, y, _ = st.models.regression_data(50, 2, seed=0)
    assert unconstrained_prior(st.models.BayesianLinearRegression(X, y, noise_scale=None)) is None
    assert unconstrained_prior(st.models.Funnel()) is None


def test_kl_to_prior_falls_back_to_monte_carlo_for_constrained_parameters() -> None:
    model = st.models.EightSchools()
    assert unconstrained_prior(model) is None
    family = st.families.MeanFieldGaussian(model.dim, init_scale=0.5)
    torch.manual_seed(0)
    a, method = kl_to_prior(model, family, num_samples=4000)
    torch.manual_seed(1)
    b, _ = kl_to_prior(model, family, num_samples=4000)
    assert method == "mc" and a > 0
    # Two independent estimates differ by their noise only: the per-draw sd of
    # log q - log p0 here is below 3, so the s.e. of a difference is < 3 * sqrt(2/4000) = 0.07.
    assert abs(a - b) < 0.3


def test_gradient_statistics_match_the_analytic_variance_on_normal_mean() -> None:
    # NormalMean with all data in the batch: log p(z, D) = -(z - m_N)^2 / (2 s_N^2) + c.
    # With q = N(m, sigma^2), sigma = softplus(r), K particles z_k = m + sigma eps_k and the
    # analytic entropy log(sigma) + c, the loss gradient is
    #   d/dm = mean_k (z_k - m_N) / s_N^2,
    #   d/dr = sigmoid(r) [mean_k (z_k - m_N) eps_k / s_N^2 - 1/sigma],
    # so Var[d/dm] = sigma^2 / (K s_N^4) and, with a = m - m_N, Var(a eps + sigma eps^2) =
    # a^2 + 2 sigma^2, Var[d/dr] = sigmoid(r)^2 (a^2 + 2 sigma^2) / (K s_N^4).
    x = st.models.normal_mean_data(50, true_mean=1.0, seed=0).double()
    model = st.models.NormalMean(x)
    post = model.exact_posterior()
    m_n, s2_n = post.mean.item(), post.covariance_matrix.item()
    family = st.families.MeanFieldGaussian(1, init_loc=0.5, init_scale=0.3).double()
    K, draws = 4, 4000
    loop = st.methods.SGD().prepare(
        model,
        family,
        st.objectives.ELBO(num_particles=K),
        st.training.TrainConfig(batch_size=50, steps=1),
    )
    torch.manual_seed(0)
    variance, snr = gradient_statistics(loop.state, draws=draws)
    sigma, r, a = 0.3, family.raw_scale.item(), 0.5 - m_n
    var_m = sigma**2 / (K * s2_n**2)
    var_r = torch.sigmoid(torch.tensor(r)).item() ** 2 * (a**2 + 2 * sigma**2) / (K * s2_n**2)
    mean_m = a / s2_n
    mean_r = torch.sigmoid(torch.tensor(r)).item() * (sigma / s2_n - 1 / sigma)
    # Sample variance over R draws: relative sd <= sqrt(2 (kurtosis) / R); eps^2 terms have
    # kurtosis up to 15, so sqrt(15 / 4000) = 6% per coordinate; 5 sd -> 30% (loose), and the
    # SNR inherits half of that relative error through the square root.
    assert variance == pytest.approx(var_m + var_r, rel=0.3)
    assert snr == pytest.approx(math.hypot(mean_m, mean_r) / math.sqrt(var_m + var_r), rel=0.15)
    assert F.softplus(family.raw_scale).item() == pytest.approx(sigma)  # untouched


def test_monitoring_never_changes_the_training_trajectory() -> None:
    model = _regression(2000, 3)

    def train(callbacks: list) -> torch.Tensor:
        family = st.families.FullRankGaussian(model.dim).double()
        st.fit(
            model,
            family,
            st.objectives.ELBO(num_particles=2),
            method="sgd",
            batch_size=32,
            steps=120,
            log_every=20,
            callbacks=callbacks,
            seed=5,
        )
        return torch.cat([p.detach().reshape(-1) for p in family.parameters()])

    monitor = TrainingMonitor(grad_stats_every=40, grad_stats_draws=4, histogram_every=0)
    assert torch.equal(train([]), train([monitor]))


def test_monitor_metrics_and_histograms_reach_the_loggers() -> None:
    model = _regression(1000, 2)
    family = st.families.MeanFieldGaussian(model.dim).double()
    logger = MemoryLogger()
    seen: dict[int, dict] = {}

    class Histograms(MemoryLogger):
        def log_histograms(self, step, values):
            seen[step] = {k: v.clone() for k, v in values.items()}

    monitor = TrainingMonitor(grad_stats_every=100, grad_stats_draws=4, histogram_every=50)
    st.fit(
        model,
        family,
        batch_size=100,
        steps=200,
        convergence=False,
        log_every=25,
        loggers=[logger, Histograms()],
        callbacks=[monitor],
    )
    assert [s for s, _ in logger.scalars["kl/posterior"]] == list(range(25, 201, 25))
    assert [s for s, _ in logger.scalars["grad/variance"]] == [100, 200]
    assert sorted(seen) == [50, 100, 150, 200]
    assert seen[200]["family/loc"].shape == (2,) and bool((seen[200]["family/scale"] > 0).all())


def test_elbo_noise_band_has_the_spread_of_independent_estimates() -> None:
    """The band's variance is the estimates' variance, also around -5000 in float32."""
    sigma, steps, burn_in = 30.0, 20_000, 200
    g = torch.Generator().manual_seed(0)
    values = -5000.0 + sigma * torch.randn(steps, generator=g)
    mean, variance, kept = None, None, []
    for value in values:
        mean, variance = exponential_moments(mean, variance, value)
        kept.append(variance.item())
    w = ELBO_EMA_WEIGHT
    expected = 2 * (1 - w) / (2 - w) * sigma**2  # the update's steady state (its docstring)
    # One variance holds about (2 - w) / w = 39 values: relative sd sqrt(2/39) = 0.23; it is
    # an AR(1) with phi = 1 - w, integrated autocorrelation (1 + phi) / (1 - phi) = 39, so
    # the mean of 19800 has relative sd 0.23 / sqrt(19800 / 39) = 0.010. Four of them:
    assert sum(kept[burn_in:]) / (steps - burn_in) == pytest.approx(expected, rel=0.04)


def test_monitor_gives_loggers_the_dashboard_and_the_exact_variance_line() -> None:
    model = _regression(1000, 2)
    family = st.families.MeanFieldGaussian(model.dim).double()
    logger = MemoryLogger()
    st.fit(
        model,
        family,
        steps=100,
        log_every=25,
        loggers=[logger],
        callbacks=[TrainingMonitor(grad_stats_every=0, histogram_every=0)],
    )
    assert logger.dashboard == dashboard(posterior_known=True)
    exact = model.exact_posterior().variance.double().mean().item()
    assert {v for _, v in logger.scalars["posterior/exact_variance_mean"]} == {exact}
    lower, smoothed, upper = (
        [v for _, v in logger.scalars[tag]]
        for tag in ("elbo/band_lower", "elbo/smoothed", "elbo/band_upper")
    )
    assert all(lo < m < hi for lo, m, hi in zip(lower, smoothed, upper, strict=True))
    # The Time Series copies are the logger's business, not the history's.
    assert not [tag for tag in logger.scalars if tag.startswith("Overview/")]


def test_tensorboard_logger_writes_the_layout_with_the_run_and_copies_first_tags(
    tmp_path,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    board = Dashboard(
        {"first": (Chart("b", ("b",), band=("b_lo", "b_hi")),), "then": (Chart("a", ("a",)),)},
        first={"a": "a_copy"},
    )
    logger = TensorBoardLogger(tmp_path / "run", dashboard=board)
    for step in (1, 2):
        logger.log_scalars(step, {"a": float(step), "b": 0.0, "b_lo": -1.0, "b_hi": 1.0})
    logger.close()
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("custom_scalars__config__")  # once, however many steps
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == ["first", "then"]
    assert layout.category[0].chart[0].margin.series[0].upper == "b_hi"
    assert list(layout.category[1].chart[0].multiline.tag) == ["^a$"]
    assert [(e.step, e.value) for e in acc.Scalars("Overview/a_copy")] == [(1, 1.0), (2, 2.0)]


def test_marginals_figure_has_one_panel_per_coordinate_with_its_reference() -> None:
    model = _regression(200, 3)
    family = st.families.FullRankGaussian(model.dim).double()
    fig = marginals_figure(model, family, posterior=model.exact_posterior())
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    assert [t.get_text() for t in visible[0].get_legend().get_texts()] == ["q", "exact posterior"]
    X, y, _ = st.models.logistic_data(200, 14, seed=0)
    logistic = st.models.BayesianLogisticRegression(X, y)
    fig = marginals_figure(
        logistic, st.families.MeanFieldGaussian(14), prior=unconstrained_prior(logistic)
    )
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 12  # capped
    assert "prior" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
