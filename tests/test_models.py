"""Models: constraints, Jacobians, unbiased minibatch log joints, exact posteriors, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, constraints

import svi_torch as st
from svi_torch.data import MinibatchStream
from svi_torch.models import (
    BayesianLinearRegression,
    BayesianLogisticRegression,
    EightSchools,
    Model,
    NormalMean,
    regression_data,
)


class Constrained(Model):
    """One parameter of each support kind; flat priors, no data term."""

    def __init__(self) -> None:
        super().__init__()
        self.add_param("a", (2,), constraints.real)
        self.add_param("b", (), constraints.positive)
        self.add_param("c", (3,), constraints.unit_interval)
        self.add_param("d", (4,), constraints.simplex)
        self.add_param("e", (), constraints.interval(-2.0, 5.0))
        self.add_param("f", (), constraints.greater_than(1.0))
        self.set_data(x=torch.zeros(3))

    def log_prior(self, params):
        return torch.zeros_like(params["b"])

    def log_likelihood(self, params, batch):
        return torch.zeros_like(params["b"])


def test_constrain_maps_into_each_support():
    model = Constrained()
    assert model.dim == 2 + 1 + 3 + 3 + 1 + 1  # the simplex has K - 1 free coordinates
    z = torch.randn(1000, model.dim) * 3
    params, log_det = model.constrain(z)
    assert params["a"].shape == (1000, 2) and params["d"].shape == (1000, 4)
    assert bool((params["b"] > 0).all())
    assert bool(((params["c"] > 0) & (params["c"] < 1)).all())
    torch.testing.assert_close(params["d"].sum(-1), torch.ones(1000))
    assert bool(((params["e"] > -2) & (params["e"] < 5)).all())
    assert bool((params["f"] > 1).all())
    assert log_det.shape == (1000,) and bool(torch.isfinite(log_det).all())


def test_log_det_jacobian_matches_autograd():
    model = Constrained()
    z = torch.randn(model.dim, dtype=torch.float64)

    def scalar_params(z_):
        params, _ = model.constrain(z_)
        # Exclude the simplex: its Jacobian is not square in the constrained space.
        return torch.cat([params[k].reshape(-1) for k in ("a", "b", "c", "e", "f")])

    keep = [i for i in range(model.dim) if not 6 <= i < 9]
    jac = torch.autograd.functional.jacobian(scalar_params, z)[:, keep]
    expected = torch.linalg.slogdet(jac).logabsdet
    _, log_det = model.constrain(z)
    params, _ = model.constrain(z)
    d_part = model._param_specs["d"]
    simplex_ldj = d_part.transform.log_abs_det_jacobian(z[6:9], params["d"])
    torch.testing.assert_close(log_det - simplex_ldj, expected)


def test_unconstrain_inverts_constrain():
    model = Constrained()
    z = torch.randn(5, model.dim, dtype=torch.float64)
    params, _ = model.constrain(z)
    torch.testing.assert_close(model.unconstrain(params), z)


def test_flat_names_cover_every_scalar():
    model = EightSchools()
    names = model.flat_names()
    assert names[:3] == ["mu", "tau", "theta_tilde[0]"] and len(names) == 10


def test_minibatch_log_joint_is_unbiased_over_an_epoch():
    X, y, _ = regression_data(1000, 4, correlation=0.5, seed=3)
    model = BayesianLinearRegression(X.double(), y.double())
    z = torch.randn(6, model.dim, dtype=torch.float64) * 0.3
    full = model.log_joint(z).total
    stream = MinibatchStream(model.num_data, batch_size=50, seed=7)
    estimates = []
    for _ in range(stream.steps_per_epoch):
        idx = stream.next_indices()
        batch = model.index_data(idx)
        estimates.append(model.log_joint(z, batch).total)
    assert stream.epoch == 1 and stream.position == 0
    # An epoch covers every point once, so the average equals the full-data value exactly.
    torch.testing.assert_close(torch.stack(estimates).mean(0), full)


def test_minibatch_stream_shuffles_per_epoch_and_resumes():
    stream = MinibatchStream(10, batch_size=4, seed=1)
    # Two full batches per epoch; the 2 left-over points wait for the next shuffle.
    assert stream.steps_per_epoch == 2
    first_epoch = torch.cat([stream.next_indices() for _ in range(2)])
    assert first_epoch.unique().numel() == 8 and stream.epoch == 1
    state = stream.state_dict()
    nxt = stream.next_indices()
    assert nxt.shape == (4,)
    resumed = MinibatchStream(10, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.next_indices(), nxt)
    second_epoch = torch.cat([nxt, stream.next_indices()])
    assert not torch.equal(first_epoch, second_epoch)


def test_minibatch_stream_draws_every_point_equally_often():
    """Dropping the remainder per epoch keeps every point equally likely over epochs."""
    stream = MinibatchStream(10, batch_size=4, seed=3)
    counts = torch.zeros(10)
    epochs = 2000
    for _ in range(2 * epochs):
        counts += torch.bincount(stream.next_indices(), minlength=10)
    # Each point is drawn with probability 0.8 per epoch: count ~ Binomial(2000, 0.8),
    # s.d. = sqrt(2000 * 0.8 * 0.2) = 17.9; allow 4 s.d.
    assert (counts - 0.8 * epochs).abs().max() < 4 * 17.9


def test_normal_mean_posterior_and_evidence_match_closed_forms():
    x = st.models.normal_mean_data(20, true_mean=0.7, noise_scale=2.0, seed=0).double()
    model = NormalMean(x, noise_scale=2.0, prior_loc=0.5, prior_scale=3.0)
    post = model.exact_posterior()
    precision = 1 / 9 + 20 / 4
    assert post.variance.item() == pytest.approx(1 / precision)
    assert post.mean.item() == pytest.approx((0.5 / 9 + x.sum().item() / 4) / precision)
    # Evidence from the dense multivariate normal marginal.
    cov = 4 * torch.eye(20, dtype=torch.float64) + 9 * torch.ones(20, 20, dtype=torch.float64)
    dense = torch.distributions.MultivariateNormal(torch.full((20,), 0.5, dtype=torch.float64), cov)
    assert model.log_evidence().item() == pytest.approx(dense.log_prob(x).item(), rel=1e-10)


def test_linear_regression_evidence_matches_dense_marginal():
    X, y, _ = regression_data(30, 3, correlation=0.4, seed=2)
    X, y = X.double(), y.double()
    model = BayesianLinearRegression(X, y, noise_scale=0.5, prior_scale=2.0)
    cov = 0.25 * torch.eye(30, dtype=torch.float64) + 4.0 * X @ X.T
    dense = torch.distributions.MultivariateNormal(torch.zeros(30, dtype=torch.float64), cov)
    assert model.log_evidence().item() == pytest.approx(dense.log_prob(y).item(), rel=1e-8)


def test_unknown_noise_scale_is_a_positive_parameter():
    X, y, _ = regression_data(50, 2, seed=0)
    model = BayesianLinearRegression(X, y, noise_scale=None)
    assert model.dim == 3
    assert model.param_specs["sigma"].support is constraints.positive
    with pytest.raises(ValueError, match="only known for a fixed noise_scale"):
        model.exact_posterior()


def test_eight_schools_likelihood_is_the_textbook_density():
    model = EightSchools()
    z = torch.randn(model.dim)
    params, _ = model.constrain(z)
    theta = params["mu"] + params["tau"] * params["theta_tilde"]
    expected = Normal(theta, model.sigma).log_prob(model.y).sum()
    torch.testing.assert_close(model.log_likelihood(params, model.data), expected)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BayesianLinearRegression(torch.zeros(5, 2), torch.zeros(4)), "5 rows but y has 4"),
        (
            lambda: BayesianLinearRegression(torch.tensor([[math.nan, 1.0]]), torch.zeros(1)),
            "NaN/Inf",
        ),
        (lambda: NormalMean(np.array([1.0, np.inf])), "NaN/Inf"),
        (lambda: NormalMean(torch.zeros(0)), "empty"),
        (lambda: NormalMean(["a", "b"]), "numeric|numbers"),
        (lambda: NormalMean(torch.zeros(3), noise_scale=-1.0), "noise_scale must be a positive"),
        (
            lambda: BayesianLogisticRegression(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 2.0])),
            "only 0 and 1",
        ),
    ],
)
def test_bad_data_gets_a_clear_error(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_unmappable_or_discrete_support_is_rejected():
    model = Model()
    with pytest.raises(ValueError, match="discrete support"):
        model.add_param("k", (), constraints.nonnegative_integer)
    with pytest.raises(ValueError, match="cannot map the support"):
        model.add_param("s", (), _Unregistered())


class _Unregistered(constraints.Constraint):
    """A continuous constraint biject_to has no transform for."""

    def check(self, value):
        return value > 0


def test_data_check_finds_one_bad_entry_and_accepts_sums_that_overflow():
    X = torch.randn(3000, 5)
    for bad in (math.nan, math.inf, -math.inf):
        Xbad = X.clone()
        Xbad[2999, 4] = bad
        with pytest.raises(ValueError, match="X contains 1 NaN/Inf"):
            BayesianLinearRegression(Xbad, torch.zeros(3000))
    # Finite values whose float32 sum overflows are data, not an error.
    huge = torch.full((4, 2), 3e38)
    model = BayesianLinearRegression(huge, torch.zeros(4))
    assert torch.equal(model.X, huge)
