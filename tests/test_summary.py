"""The posterior table, seeds that make figures repeatable, repr, and the constrained plots."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import svi_torch as st
from svi_torch.training.result import FitResult


def _exact_regression() -> FitResult:
    X, y, _ = st.models.regression_data(60, 3, correlation=0.3, seed=2)
    model = st.models.BayesianLinearRegression(X.double(), y.double())
    posterior = model.exact_posterior()
    family = st.families.FullRankGaussian(model.dim).double()
    family.set_moments(posterior.mean, posterior.covariance_matrix)
    return FitResult(family=family, model=model, history={"step": [1.0], "elbo": [-90.0]})


def _schools() -> FitResult:
    model = st.models.EightSchools()
    family = st.families.MeanFieldGaussian(model.dim, init_scale=0.3)
    with torch.no_grad():
        family.loc[1] = math.log(3.0)  # tau's unconstrained coordinate: log tau
    return FitResult(family=family, model=model)


def test_same_seed_gives_the_same_summary_twice_and_other_seeds_do_not() -> None:
    result = _exact_regression()
    first, second = result.summary(2000), result.summary(2000)
    assert torch.equal(first.values, second.values) and str(first) == str(second)
    assert first.khat == second.khat
    assert not torch.equal(first.values, result.summary(2000, seed=1).values)
    for method in (result.sample, result.elbo, result.diagnose):
        a, b = method(500), method(500)
        assert all(torch.equal(a[k], b[k]) for k in a) if isinstance(a, dict) else a == b, (
            method.__name__
        )
    state = torch.get_rng_state()
    result.summary(500)
    result.elbo(300)
    result.diagnose(300)
    assert torch.equal(state, torch.get_rng_state())


def test_summary_columns_are_the_draws_statistics_with_their_monte_carlo_error() -> None:
    result = _exact_regression()
    num = 8000
    table = result.summary(num, seed=3)
    draws = result.sample(num, seed=3)["beta"].double()
    assert table.names == ["beta[0]", "beta[1]", "beta[2]"]
    assert torch.allclose(table.values[:, 0], draws.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(table.values[:, 1], draws.std(0), rtol=0, atol=1e-12)
    assert torch.allclose(table.values[:, 5], draws.std(0) / math.sqrt(num))
    assert torch.allclose(table.values[:, 2], draws.quantile(0.05, dim=0))
    # q is the exact posterior: the means lie within 4.5 Monte Carlo errors of the truth,
    # and k-hat is good (importance weights constant up to rounding).
    exact = result.model.exact_posterior()
    assert torch.all((table.values[:, 0] - exact.mean).abs() < 4.5 * table.values[:, 5])
    assert table.khat is not None and table.khat < 0.5 and table.khat_reading == "good"
    assert result.posterior_summary(num, seed=3)["beta[1]"] == {
        k: v for k, v in table["beta[1]"].items() if k != "mcse_mean"
    }


def test_summary_prints_as_a_table_and_converts_to_pandas() -> None:
    result = _schools()
    table = result.summary(1000)
    text = str(table)
    lines = text.splitlines()
    assert lines[0].split() == ["mean", "sd", "q05", "q50", "q95", "mcse_mean"]
    assert [line.split()[0] for line in lines[1:-1]] == table.names
    assert table.names[:2] == ["mu", "tau"] and table.names[-1] == "theta[7]"
    assert "PSIS k-hat" in lines[-1] and "1000 draws" in lines[-1]
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["mean", "sd", "q05", "q50", "q95", "mcse_mean"]
    assert frame.loc["tau", "mean"] == pytest.approx(table["tau"]["mean"])
    assert frame.attrs["khat"] == table.khat
    # tau is summarised in the constrained space: exp of a N(log 3, 0.3^2) has mean 3 e^0.045.
    assert table["tau"]["mean"] == pytest.approx(
        3 * math.exp(0.045), abs=4.5 * table["tau"]["mcse_mean"]
    )
    with pytest.raises(KeyError, match="no row"):
        table["sigma"]


def test_repr_is_a_few_lines_whatever_the_history() -> None:
    result = _exact_regression()
    result.history = {"step": [float(s) for s in range(20_000)], "elbo": [-1.0] * 20_000}
    result.steps = 20_000
    text = repr(result)
    assert len(text.splitlines()) <= 4 and len(text) < 400
    assert "FullRankGaussian" in text and "20000 steps" in text


def test_marginals_are_drawn_in_the_constrained_space() -> None:
    result = _schools()
    fig = result.marginals_figure(num_samples=4000)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(panels)[:3] == ["mu", "tau", "theta_tilde[0]"]
    tau = panels["tau"]
    heights = [p.get_height() for p in tau.patches]
    peak = tau.patches[max(range(len(heights)), key=heights.__getitem__)]
    # log-normal(log 3, 0.3^2): the mode is 3 e^{-0.09} = 2.74; the histogram's tallest bin
    # is near it (in log tau it would sit near 1.1).
    assert 2.0 < peak.get_x() + peak.get_width() / 2 < 3.5
    assert tau.get_xlim()[0] >= -0.5
    # A given reference is drawn beside q.
    ref = {"mu": torch.randn(1000), "tau": torch.rand(1000) * 5}
    fig = result.marginals_figure(reference=ref, max_panels=2)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["q", "reference"]


def test_exact_posterior_marginals_use_closed_forms_for_real_parameters() -> None:
    result = _exact_regression()
    fig = result.marginals_figure()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["q", "exact posterior"]
    q_line, ref_line = ax.get_lines()[:2]
    # q is exact: the two density curves coincide.
    assert torch.allclose(
        torch.as_tensor(q_line.get_ydata()), torch.as_tensor(ref_line.get_ydata()), rtol=1e-6
    )


def test_ppc_figure_of_a_pyro_model_takes_the_observed_data() -> None:
    """A Pyro model's data are its sites' ``obs``, not arrays on the model: the check reads
    them from the model (or takes them passed). The p-value is the share of replicated
    means at or above the observed one, as in the test below."""
    import pyro
    import pyro.distributions as dist

    from svi_torch.models import PyroModel

    y = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1.0

    def normal_mean(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 10.0))
        with pyro.plate("data", len(y)) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    model = PyroModel(normal_mean, y)
    family = st.families.MeanFieldGaussian(1).double()
    with torch.no_grad():
        family.loc.fill_(float(y.mean()))
    result = FitResult(family=family, model=model)
    assert torch.equal(model.observed_values()["y"], y)
    given = result.ppc_figure(num_samples=200, observed={"y": y})
    fig = result.ppc_figure(num_samples=200)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [ax.get_title() for ax in given.axes]
    assert titles[0] == "y: empirical CDFs"
    p = float(titles[1].rsplit("= ", 1)[1])
    replicated = result.predictive(200)["y"].double().mean(-1)
    assert p == pytest.approx((replicated >= y.mean()).double().mean().item(), abs=0.006)


def test_ppc_figure_reports_a_predictive_p_value_per_statistic() -> None:
    result = _exact_regression()
    fig = result.ppc_figure(num_samples=200)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "y: empirical CDFs"
    assert titles[1].startswith("T = mean(y); p = ") and titles[2].startswith("T = sd(y); p = ")
    p = float(titles[1].rsplit("= ", 1)[1])
    replicated = result.predictive(200)["y"].double().mean(-1)
    assert p == pytest.approx(
        (replicated >= result.model.y.mean()).double().mean().item(), abs=0.006
    )
