"""Pathfinder as a method (st.fit(..., method="pathfinder")) and as a start (init="pathfinder")."""

from __future__ import annotations

import math

import pytest
import torch

import svi_torch as st
from svi_torch.divergences import kl_mvn
from svi_torch.methods.pathfinder import PathfinderWarning
from svi_torch.methods.starts import initialize
from svi_torch.models import BayesianLinearRegression, regression_data
from svi_torch.models.targets import DensityTarget

F64 = torch.float64


def regression(dim: int, num_data: int = 200):
    X, y, _ = regression_data(num_data, dim, correlation=0.5, seed=0)
    model = BayesianLinearRegression(X.double(), y.double())
    return model, model.exact_posterior()


def kl_to_posterior(family, posterior) -> float:
    """Analytic KL(q||p) = E_q[log q - log p] of two Gaussians."""
    with torch.no_grad():
        return float(
            kl_mvn(
                family.loc.double(),
                family.covariance().double(),
                posterior.mean,
                posterior.covariance_matrix,
            )
        )


class StudentTarget(DensityTarget):
    """Independent Student-t (nu = 2) coordinates: tails no Gaussian holds."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.register_buffer("df", torch.tensor(2.0, dtype=F64))

    def distribution(self):
        return torch.distributions.Independent(
            torch.distributions.StudentT(self.df).expand((self.dim,)), 1
        )


def test_fit_places_the_family_at_the_best_gaussian_and_returns_the_resampled_draws():
    """D = 5 conjugate regression: the best Gaussian is the posterior (KL measured 0), and
    sample() gives Pathfinder's resampled draws, whose mean is the posterior mean within its
    Monte Carlo error (1000 draws, about 880 distinct: 5 s.e. of 500 effective draws)."""
    model, posterior = regression(5)
    family = st.families.FullRankGaussian(model.dim)
    result = st.fit(model, family, method="pathfinder")
    assert kl_to_posterior(family, posterior) < 0.01
    draws = result.sample()
    assert draws["beta"].shape == (1000, 5)
    torch.testing.assert_close(draws["beta"], result.draws, rtol=0, atol=0)  # identity support
    sd = posterior.variance.sqrt()
    assert bool(((draws["beta"].mean(0) - posterior.mean).abs() < 5 * sd / math.sqrt(500)).all())
    assert result.diagnostics is not None and result.diagnostics.reading == "good"
    stages = [d.stage for d in result.decisions]
    assert stages == ["path 0", "path 1", "path 2", "path 3", "pooling", "family", "k-hat"]
    assert result.grad_evals == sum(d.grad_evals for d in result.decisions) > 0
    assert result.method == "pathfinder()" and result.steps > 0
    assert "distinct of 1000" in result.decisions[4].reason


def test_fixed_draws_are_never_invented_and_survive_save_and_load(tmp_path):
    model, _ = regression(3)
    result = st.fit(model, st.families.MeanFieldGaussian(model.dim), method="pathfinder")
    assert torch.equal(result.sample(10)["beta"], result.draws[:10])
    with pytest.raises(ValueError, match="holds 1000 fixed draws"):
        result.sample(1001)
    table = result.summary()  # default: all 1000 draws, k-hat from the pooled weights
    assert table.num_samples == 1000 and table.khat == result.diagnostics.khat
    assert result.log_likelihood().shape == (1000, model.num_data)
    again = st.load_result(result.save(tmp_path / "fit.pt"), model=model)
    assert torch.equal(again.draws, result.draws)
    assert torch.equal(again.sample()["beta"], result.sample()["beta"])


def test_dominated_weights_are_reported_as_decisions_not_returned_as_a_clean_fit():
    """Student-t (nu = 2) tails: bad k-hat, one draw holding much of the weight; all of it
    is in result.decisions (and warned), none of it passes silently."""
    model = StudentTarget(5)
    with pytest.warns(PathfinderWarning, match="k-hat"):
        result = st.fit(model, st.families.FullRankGaussian(5), method="pathfinder")
    assert result.diagnostics.reading == "bad" and result.diagnostics.khat > 0.7
    warnings = [d.reason for d in result.decisions if d.stage == "warning"]
    assert any("k-hat" in w for w in warnings) and any("holds" in w for w in warnings)
    assert [d.outcome for d in result.decisions if d.stage == "pooling"] == ["bad"]


def test_bad_settings_and_inputs_are_refused_in_one_line():
    model, _ = regression(3)
    family = st.families.FullRankGaussian(model.dim)
    cases = [
        ({"batch_size": 50}, ValueError, "full-data log density"),
        ({"steps": 100}, ValueError, "max_iters"),
        ({"resume": True, "checkpoint_path": "x.pt"}, ValueError, "no training loop"),
    ]
    for settings, error, match in cases:
        with pytest.raises(error, match=match):
            st.fit(model, family, method="pathfinder", **settings)
    with pytest.raises(ValueError, match="objective IWAE"):
        st.fit(model, family, st.objectives.IWAE(num_particles=4), method="pathfinder")
    # A point mass is neither a Gaussian nor able to start from one (flows and mixtures can).
    with pytest.raises(TypeError, match="initialize_from_gaussian"):
        st.fit(model, st.families.Delta(model.dim), method="pathfinder")
    with pytest.raises(ValueError, match="resample"):
        st.methods.Pathfinder(resample="off")
    with pytest.raises(ValueError, match="num_paths"):
        st.methods.Pathfinder(num_paths=0)


def test_pathfinder_start_for_ngvi_and_sgd():
    """init="pathfinder": the family starts at Pathfinder's Gaussian (D = 5: the posterior)
    and the start's gradient evaluations are counted in the fit's."""
    model, posterior = regression(5)
    family = st.families.FullRankGaussian(model.dim).double()
    start = initialize(model, family, "pathfinder")
    assert start.method == "pathfinder" and start.map is None
    assert start.evaluations == start.pathfinder.num_grad_evals > 0
    assert kl_to_posterior(family, posterior) < 0.01
    ngvi = st.fit(
        model,
        st.families.FullRankGaussian(model.dim),
        method=st.methods.NGVI(init="pathfinder"),
        steps=20,
    )
    assert kl_to_posterior(ngvi.family, posterior) < 0.01
    assert ngvi.grad_evals > start.evaluations
    # A small Adam step keeps the family near its start; from the family as built it is far.
    near = st.fit(
        model,
        st.families.FullRankGaussian(model.dim),
        method=st.methods.SGD(init="pathfinder", lr=1e-3),
        steps=20,
    )
    far = st.fit(
        model,
        st.families.FullRankGaussian(model.dim),
        method=st.methods.SGD(init="prior", lr=1e-3),
        steps=20,
    )
    assert kl_to_posterior(near.family, posterior) < 0.1 < kl_to_posterior(far.family, posterior)


def test_the_config_form_builds_the_same_value():
    method = st.methods.resolve_method(
        {"name": "pathfinder", "options": {"num_paths": 2, "history_size": 3}}
    )
    assert method == st.methods.Pathfinder(num_paths=2, history_size=3)
    with pytest.raises(TypeError, match="no option"):
        st.methods.resolve_method({"name": "pathfinder", "options": {"lr": 0.1}})


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_pyro_model_with_flat_priors_and_float64_data(scale):
    """posteriordb's kind of model: flat priors, float64 data, raw scales (x 100 makes the
    posterior sds of beta 1e-4). The accuracy target of the posteriordb runner (median error
    < 0.1 sd, sd ratio 0.9-1.1) holds for the resampled draws."""
    from pyro_flat_models import regression_model

    model, coef, sd = regression_model(scale=scale)
    result = st.fit(model, st.families.FullRankGaussian(model.dim), method="pathfinder")
    draws = result.sample()
    fitted = torch.cat([draws["alpha"][:, None], draws["beta"]], 1)
    assert fitted.dtype == F64
    assert bool(((fitted.median(0).values - coef).abs() < 0.1 * sd).all())
    assert bool(((fitted.std(0) / sd - 1).abs() < 0.1).all())


def test_pyro_model_without_a_map_is_reported_not_raised():
    """Centred eight schools: Pathfinder's Gaussians fall into the funnel; the fit is returned
    with a bad k-hat and the warnings in its decisions, never an exception from torch."""
    from pyro_flat_models import schools_model

    with pytest.warns(PathfinderWarning):
        result = st.fit(schools_model(), st.families.FullRankGaussian(10), method="pathfinder")
    assert result.diagnostics.reading == "bad"
    assert any(d.stage == "warning" and "distinct" in d.reason for d in result.decisions)
    # The patience rule stops each path soon after its best iterate instead of at 1000.
    assert all("elbo_patience" in d.reason for d in result.decisions if d.stage.startswith("path"))


def test_points_where_the_models_linear_algebra_fails_have_zero_density():
    """A Cholesky that fails at some z (here [[1, z0], [z0, 1]], positive definite iff
    |z0| < 1) gives log p = -inf at those rows, wrapped by the bridge or not; the other rows
    keep their values and scores, and any other error still propagates."""
    from svi_torch.methods.density import log_density_and_score, tolerate_numerical_failures

    def log_density(z):
        values = []
        for row in z:
            one = torch.ones_like(row[0])
            matrix = torch.stack([torch.stack([one, row[0]]), torch.stack([row[0], one])])
            chol = torch.linalg.cholesky(matrix)
            values.append(-(row**2).sum() + 2 * torch.log(torch.diagonal(chol)).sum())
        return torch.stack(values)

    def wrapped(z):
        try:
            return log_density(z)
        except torch.linalg.LinAlgError as err:
            raise ValueError("the Pyro model raised LinAlgError") from err

    z = torch.tensor([[0.5, 1.0], [1.5, 0.0], [-0.2, 0.3]], dtype=torch.float64)
    for density in (log_density, wrapped):
        value, score = log_density_and_score(tolerate_numerical_failures(density), z)
        assert value[1] == -math.inf and torch.all(score[1] == 0)
        expected, expected_score = log_density_and_score(log_density, z[[0, 2]])
        torch.testing.assert_close(value[[0, 2]], expected, rtol=0, atol=0)
        torch.testing.assert_close(score[[0, 2]], expected_score, rtol=0, atol=0)

    def broken(z):
        raise KeyError("a bug in the model")

    with pytest.raises(KeyError, match="a bug"):
        tolerate_numerical_failures(broken)(z)
