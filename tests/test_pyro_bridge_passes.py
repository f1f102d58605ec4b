"""PyroModel full-data passes, deterministic sites, simulation and pointwise log likelihood,
each checked against Pyro's own trace or a formula."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import Normal

from svi_torch.models import PyroModel
from svi_torch.models.pyro import PyroModelError

N = 53  # not a multiple of the chunk size below: the last chunk is ragged
G = torch.Generator().manual_seed(0)
X = torch.randn(N, 2, generator=G)
Y = X @ torch.tensor([1.0, -0.5]) + 0.4 * torch.randn(N, generator=G)
W = torch.randn(N, generator=G)  # a second observed series
KEEP = torch.rand(N, generator=G) > 0.3  # observed points; the others are masked out


def masked_scaled(X, y, w, keep, data_plate=True):
    """A data-plate model with a masked site, a scaled site and factors in and out of the plate."""
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 0.5))
    shift = pyro.sample("shift", dist.Normal(0.0, 2.0))
    pyro.factor("shrink", -0.5 * (beta**2).sum(-1))  # a prior term written as a factor
    with pyro.plate("data", len(y)) as idx:
        mean = (X[idx] * beta).sum(-1)  # broadcasts over leading particle dims
        with poutine.mask(mask=keep[idx]):
            pyro.sample("y", dist.Normal(mean, sigma), obs=y[idx])
        with poutine.scale(scale=0.25):
            pyro.sample("w", dist.Normal(shift, 1.0), obs=w[idx])
        pyro.factor("robust", -0.1 * (y[idx] - mean).abs())


def pyro_log_prob_sum(values, indices=None):
    """Pyro's own Trace.log_prob_sum of the conditioned model, one draw."""
    data = dict(values)
    if indices is not None:
        data["data"] = indices
    with pyro.validation_enabled(False):
        trace = poutine.trace(poutine.condition(masked_scaled, data=data)).get_trace(X, Y, W, KEEP)
        return trace.log_prob_sum()


@pytest.mark.parametrize("data_plate", ["data", None])
def test_full_log_joint_is_pyros_log_prob_sum_with_mask_scale_and_factors(data_plate):
    model = PyroModel(masked_scaled, X, Y, W, KEEP, data_plate=data_plate)
    assert model.particle_path == "plate"
    # Chunks of 10 rows: 6 runs, every latent and outside-plate site counted once.
    model.full_data_chunk_rows = lambda num_points=1: 10
    z = torch.randn(2, 3, model.dim, generator=torch.Generator().manual_seed(1))
    params, log_det = model.constrain(z)
    expected = torch.stack(
        [
            pyro_log_prob_sum({k: v[i, j] for k, v in params.items()}) + log_det[i, j]
            for i in range(2)
            for j in range(3)
        ]
    ).reshape(2, 3)
    full = model.full_log_joint(z)
    assert full.shape == (2, 3)
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model.log_joint(z).total, full)
    # The mask matters (a model without it gives another number), and so does the scale.
    unmasked = PyroModel(masked_scaled, X, Y, W, torch.ones(N, dtype=torch.bool))
    assert float((unmasked.full_log_joint(z) - full).abs().min()) > 1.0


def test_minibatch_log_joint_is_pyros_subsampled_trace():
    model = PyroModel(masked_scaled, X, Y, W, KEEP, data_plate="data")
    z = torch.randn(4, model.dim, generator=torch.Generator().manual_seed(2))
    params, log_det = model.constrain(z)
    indices = torch.tensor([0, 7, 8, 30, 52])
    batch = model.index_data(indices)
    # Pyro scales the plate's sites by N/B itself: likelihood_scale=N/B is the same number.
    expected = torch.stack(
        [
            pyro_log_prob_sum({k: v[i] for k, v in params.items()}, indices) + log_det[i]
            for i in range(4)
        ]
    )
    ours = model.log_joint(z, batch, likelihood_scale=N / 5)
    torch.testing.assert_close(ours.total, expected, rtol=1e-5, atol=1e-4)
    # The factor outside the plate is a prior-side term, not rescaled with the batch.
    half = model.log_joint(z, batch, likelihood_scale=N / 10)
    shrink = -0.5 * (params["beta"] ** 2).sum(-1)
    torch.testing.assert_close(
        2 * (ours.log_likelihood - shrink), (half.log_likelihood - shrink) * 4, rtol=1e-5, atol=1e-4
    )


def schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def gp(x, y):
    """A latent GP written for one draw: f = L eta, a deterministic site of shape (N,)."""
    length = pyro.sample("length", dist.InverseGamma(3.0, 3.0))
    eta = pyro.sample("eta", dist.Normal(0.0, 1.0).expand([len(x)]).to_event(1))
    K = torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length**2) + 1e-4 * torch.eye(len(x))
    f = pyro.deterministic("f", torch.linalg.cholesky(K) @ eta)
    pyro.sample("y", dist.Normal(f, 0.3).to_event(1), obs=y)


def test_deterministic_sites_come_per_particle_with_their_values():
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    model = PyroModel(schools, y, sigma)
    assert model.derived_shapes == {"theta": (8,)}
    z = torch.randn(5, 2, model.dim, generator=torch.Generator().manual_seed(3))
    params, _ = model.constrain(z)
    theta = model.derived(params)["theta"]
    assert theta.shape == (5, 2, 8)
    torch.testing.assert_close(
        theta, params["mu"][..., None] + params["tau"][..., None] * params["theta_tilde"]
    )
    x = torch.linspace(0.0, 3.0, 12)
    process = PyroModel(gp, x, torch.sin(x))
    assert process.particle_path == "vmap" and process.derived_shapes == {"f": (12,)}
    z = torch.randn(4, process.dim, generator=torch.Generator().manual_seed(4))
    params, _ = process.constrain(z)
    f = process.derived(params)["f"]
    for i in range(4):
        length = params["length"][i]
        K = torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length**2) + 1e-4 * torch.eye(12)
        torch.testing.assert_close(f[i], torch.linalg.cholesky(K) @ params["eta"][i])


def regression(X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal((X[idx] * beta).sum(-1), sigma), obs=y[idx])


def one_draw(X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    pyro.sample("y", dist.Normal(X @ beta, sigma).to_event(1), obs=y)


@pytest.mark.parametrize("case", ["plate", "vmap", "loop"])
def test_simulated_data_have_the_likelihoods_moments(case):
    if case == "plate":
        model = PyroModel(regression, X, Y, data_plate="data")
        batch = model.index_data(torch.tensor([2, 11, 40]))
        rows = X[[2, 11, 40]]
    else:
        model = PyroModel(one_draw, X, Y, vectorize_particles=case)
        batch, rows = None, X
    assert model.particle_path == case
    draws = 4000 if case != "loop" else 400
    beta, sigma = torch.tensor([1.0, -0.5]), torch.tensor(0.4)
    params = {"beta": beta.expand(draws, 2), "sigma": sigma.expand(draws)}
    torch.manual_seed(5)
    y = model.simulate(params, batch)["y"]
    assert y.shape == (draws, rows.shape[0])
    # Each column is N(x_i beta, sigma^2): mean within 4 s.e. (sigma / sqrt(S)), sd within
    # 4 s.e. of a normal sd (sigma / sqrt(2 S)).
    mean_err = (y.mean(0) - rows @ beta).abs().max()
    sd_err = (y.std(0) - sigma).abs().max()
    assert mean_err < 4 * sigma / math.sqrt(draws), float(mean_err)
    assert sd_err < 4 * sigma / math.sqrt(2 * draws), float(sd_err)
    # Independent draws: the particles do not share their noise.
    assert float(torch.corrcoef(y[:, :2].T)[0, 1].abs()) < 4 / math.sqrt(draws)


def test_pointwise_log_likelihood_per_data_point():
    model = PyroModel(masked_scaled, X, Y, W, KEEP, data_plate="data")
    model.full_data_chunk_rows = lambda num_points=1: 10
    z = torch.randn(3, model.dim, generator=torch.Generator().manual_seed(6))
    params, _ = model.constrain(z)
    mean = params["beta"] @ X.T
    by_hand = (
        Normal(mean, params["sigma"][:, None]).log_prob(Y) * KEEP
        + 0.25 * Normal(params["shift"][:, None], 1.0).log_prob(W)
        - 0.1 * (Y - mean).abs()
    )
    pointwise = model.pointwise_log_likelihood(params, None)
    assert pointwise.shape == (3, N)
    torch.testing.assert_close(pointwise, by_hand, rtol=1e-5, atol=1e-5)
    indices = torch.tensor([4, 9, 17])
    part = model.pointwise_log_likelihood(params, model.index_data(indices))
    torch.testing.assert_close(part, by_hand[:, indices], rtol=1e-5, atol=1e-5)
    # Summed, the data plate's share of log_likelihood (the outside factor is not data).
    shrink = -0.5 * (params["beta"] ** 2).sum(-1)
    torch.testing.assert_close(
        part.sum(-1), model.log_likelihood(params, model.index_data(indices)) - shrink
    )


def test_pointwise_log_likelihood_without_a_data_plate_follows_the_one_site_rule():
    model = PyroModel(one_draw, X, Y)
    z = torch.randn(4, model.dim, generator=torch.Generator().manual_seed(7))
    params, _ = model.constrain(z)
    pointwise = model.pointwise_log_likelihood(params, None)
    by_hand = Normal(params["beta"] @ X.T, params["sigma"][:, None]).log_prob(Y)
    torch.testing.assert_close(pointwise, by_hand)
    # Two observed sites and discovery off: which entries are the points is not known.
    two = PyroModel(masked_scaled, X, Y, W, KEEP, data_plate=None)
    with pytest.raises(
        PyroModelError, match="no data plate \\(data_plate=None\\).*exactly one observed site"
    ):
        two.pointwise_log_likelihood(two.constrain(torch.zeros(two.dim))[0], None)
