"""The ArviZ export, checked with ArviZ's own functions as a user would call them.

ArviZ 1.x is installed by ``requirements-dev.txt`` / the Makefile (the ``arviz`` extra).
``az.plot_dist`` and ``az.plot_ppc_dist`` are ArviZ 1.x's names for 0.x's
``plot_posterior`` and ``plot_ppc``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import arviz as az
import matplotlib
import numpy as np
import pytest
import torch
import xarray as xr

import svi_torch as st
from svi_torch.training.result import FitResult

matplotlib.use("Agg")


def _exact_result(model: st.models.ConjugateModel) -> FitResult:
    posterior = model.exact_posterior()
    family = st.families.FullRankGaussian(model.dim).double()
    family.set_moments(posterior.mean, posterior.covariance_matrix)
    return FitResult(
        family=family, model=model, history={"step": [10.0, 20.0], "elbo": [-40.0, -31.5]}
    )


def _regression(num_data: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    X, y, _ = st.models.regression_data(num_data, 2, correlation=0.3, seed=seed)
    return X.double(), y.double()


def exact_loo(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y_i | y_-i), i = 1..N, by refitting the conjugate model without point i."""
    out = []
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        model = st.models.BayesianLinearRegression(X[keep], y[keep])
        out.append(model.exact_posterior_predictive(X[i : i + 1]).log_prob(y[i : i + 1]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def schools() -> FitResult:
    model = st.models.EightSchools()
    return st.fit(
        model,
        st.families.FullRankGaussian(model.dim),
        steps=300,
        method=st.methods.SGD(lr=0.05),
        seed=0,
        progress=False,
    )


def test_groups_dims_and_sample_stats(schools: FitResult) -> None:
    dt = schools.to_arviz(num_samples=400, seed=3)
    assert isinstance(dt, xr.DataTree)
    assert {
        "posterior",
        "posterior_predictive",
        "observed_data",
        "log_likelihood",
        "sample_stats",
    } <= set(dt.children)
    post = dt["posterior"]
    assert dict(post.sizes) == {"chain": 1, "draw": 400, "theta_tilde_dim_0": 8, "theta_dim_0": 8}
    assert post["theta"].dims == ("chain", "draw", "theta_dim_0")
    draws = schools.sample(400, seed=3)
    assert np.array_equal(post["tau"].values[0], draws["tau"].double().numpy())  # constrained
    assert np.array_equal(post["theta"].values[0], draws["theta"].double().numpy())  # derived
    stats = dt["sample_stats"]
    lp, log_q = stats["lp"].values[0], stats["log_q"].values[0]
    z = schools.model.unconstrain({k: draws[k] for k in ("mu", "tau", "theta_tilde")})
    with torch.no_grad():
        assert np.allclose(lp, schools.model.full_log_joint(z).double().numpy(), atol=1e-3)
        assert np.allclose(log_q, schools.family.log_prob(z).double().numpy(), atol=1e-3)
    assert np.allclose(stats["log_weight"].values, lp - log_q)
    assert stats["weight"].values.sum() == pytest.approx(1.0)
    attrs = stats.attrs
    assert np.array_equal(attrs["elbo_trace"], schools.history["elbo"])
    assert attrs["khat_reading"] in ("good", "ok", "bad") and math.isfinite(attrs["khat"])
    assert attrs["elbo"] == pytest.approx(float(np.mean(lp - log_q)))
    assert np.array_equal(dt["observed_data"]["y"].values, schools.model.y.numpy())
    assert dt["log_likelihood"]["y"].dims == ("chain", "draw", "y_dim_0")


def test_netcdf_round_trip_and_posterior_means_equal_the_summary(
    schools: FitResult, tmp_path: Path
) -> None:
    dt = schools.to_arviz(num_samples=1000, seed=5)
    path = tmp_path / "posterior.nc"
    dt.to_netcdf(path)
    back = az.from_netcdf(path)
    for group in dt.children:
        assert back[group].to_dataset().identical(dt[group].to_dataset()), group
    summary = schools.posterior_summary(1000, seed=5)
    means = back["posterior"].mean(("chain", "draw"))
    for j in range(8):
        assert float(means["theta"][j]) == pytest.approx(summary[f"theta[{j}]"]["mean"], rel=1e-12)
    assert float(means["tau"]) == pytest.approx(summary["tau"]["mean"], rel=1e-12)
    table = az.summary(back, kind="stats")
    assert table.loc["mu", "mean"] == pytest.approx(summary["mu"]["mean"], abs=0.01)


def test_az_loo_matches_exact_leave_one_out_and_flags_an_outlier() -> None:
    X, y = _regression(20)
    result = _exact_result(st.models.BayesianLinearRegression(X, y))
    dt = result.to_arviz(num_samples=4000, seed=0)
    loo = az.loo(dt, pointwise=True)
    exact = exact_loo(X, y)
    # The criterion: within the reported standard error of elpd_loo.
    assert abs(loo.elpd - exact.sum().item()) < loo.se
    # Per point, within 5 Monte Carlo errors of PSIS: mcse_i ~ sd_w(p_i) / (E_w[p_i] sqrt(n_eff)),
    # p_si = exp(log lik), w the smoothed LOO weights (measured max 3.7 over seeds 0-5).
    ll = torch.as_tensor(dt["log_likelihood"]["y"].values[0]).double()
    w = torch.softmax(torch.as_tensor(loo.log_weights.values)[:, 0, :].T.double(), 0)
    p = ll.exp()
    mean = (w * p).sum(0)
    mcse = ((w * (p - mean) ** 2).sum(0) * (w**2).sum(0)).sqrt() / mean
    elpd_i = torch.as_tensor(loo.elpd_i.values).reshape(-1).double()
    assert torch.all((elpd_i - exact).abs() < 5 * mcse)
    assert float(loo.pareto_k.max()) < 0.7
    # An influential outlier (high leverage, far off the line) gets k > 0.7.
    X[0] = torch.tensor([3.0, -3.0], dtype=torch.float64)
    y[0] = 12.0
    dt = _exact_result(st.models.BayesianLinearRegression(X, y)).to_arviz(4000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ's high-k warning is the point here
        k = az.loo(dt, pointwise=True).pareto_k.values.reshape(-1)
    assert k[0] > 0.7 and k[0] == k.max()


def test_approximate_posterior_loo_reads_log_p_and_log_q_from_sample_stats() -> None:
    X, y = _regression(20, seed=1)
    dt = _exact_result(st.models.BayesianLinearRegression(X, y)).to_arviz(2000, seed=1)
    stats = dt["sample_stats"]
    approx = az.loo_approximate_posterior(
        dt, log_p=stats["lp"].values.ravel(), log_q=stats["log_q"].values.ravel()
    )
    plain = az.loo(dt)
    # q is the exact posterior: the correction for q != p changes nothing beyond rounding.
    assert approx.elpd == pytest.approx(plain.elpd, abs=1e-6)


def test_plots_render_to_files(schools: FitResult, tmp_path: Path) -> None:
    dt = schools.to_arviz(num_samples=300)
    for name, plot in (("dist", az.plot_dist), ("ppc", az.plot_ppc_dist)):
        kwargs = {"var_names": ["mu", "tau"]} if name == "dist" else {}
        collection = plot(dt, backend="matplotlib", **kwargs)
        out = tmp_path / f"{name}.png"
        collection.savefig(out)
        assert out.stat().st_size > 10_000, name


def test_models_without_a_likelihood_export_the_posterior_only() -> None:
    result = FitResult(st.families.MeanFieldGaussian(2), st.models.Funnel(2))
    dt = result.to_arviz(100)
    assert set(dt.children) == {"posterior", "sample_stats"}
    assert "elbo_trace" not in dt["sample_stats"].attrs  # no training history to store
