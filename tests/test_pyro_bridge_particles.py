"""PyroModel particle paths: the particle plate, torch.func.vmap and the loop give the same
log joint and gradients; the bridge picks the first that matches the loop."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from svi_torch.models import PyroModel
from svi_torch.models.pyro import PyroModelError

G = torch.Generator().manual_seed(0)
X = torch.randn(60, 3, generator=G)
Y = X @ torch.tensor([0.5, -1.0, 2.0]) + 0.3 * torch.randn(60, generator=G)
SERIES = (0.1 * torch.randn(40, generator=G)).cumsum(0)


def broadcasting(X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal((X[idx] * beta).sum(-1), sigma), obs=y[idx])


def one_draw(X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal(X[idx] @ beta, sigma), obs=y[idx])


def ar_loop(y):
    """AR(1) written as a Python loop over time steps, coefficients indexed by position."""
    coef = pyro.sample("coef", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(1.0))
    for t in range(1, len(y)):
        pyro.sample(f"y_{t}", dist.Normal(coef[0] + coef[1] * y[t - 1], sigma), obs=y[t])


def data_dependent(X, y):
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    # Python control flow on a latent's value: neither a particle plate nor vmap can take it.
    scale = sigma * 2.0 if bool(sigma > 1.0) else sigma
    pyro.sample("y", dist.Normal(X @ beta, scale).to_event(1), obs=y)


def log_joint_and_grad(model, z, batch=None):
    z = z.clone().requires_grad_(True)
    total = model.log_joint(z, batch).total
    (grad,) = torch.autograd.grad(total.sum(), z)
    return total.detach(), grad


@pytest.mark.parametrize(
    ("model_fn", "args", "plate"),
    [(one_draw, (X, Y), "data"), (ar_loop, (SERIES,), None)],
    ids=["matmul", "time-step-loop"],
)
def test_models_written_for_one_draw_vectorise_by_vmap_like_the_loop(model_fn, args, plate):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = PyroModel(model_fn, *args, data_plate=plate)
    assert model.particle_path == "vmap"
    loop = PyroModel(model_fn, *args, data_plate=plate, vectorize_particles=False)
    assert loop.particle_path == "loop"
    z = torch.randn(2, 5, model.dim, generator=torch.Generator().manual_seed(1))
    batch = model.index_data(torch.tensor([1, 5, 9, 33])) if plate else None
    for b in (None, batch) if plate else (None,):
        value, grad = log_joint_and_grad(model, z, b)
        expected, expected_grad = log_joint_and_grad(loop, z, b)
        assert value.shape == (2, 5)
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(grad, expected_grad)


def test_a_broadcasting_model_takes_the_plate_and_every_path_agrees():
    plate = PyroModel(broadcasting, X, Y, data_plate="data")
    assert plate.particle_path == "plate"
    z = torch.randn(7, plate.dim, generator=torch.Generator().manual_seed(2))
    value, grad = log_joint_and_grad(plate, z)
    for path in ("vmap", "loop"):
        other = PyroModel(broadcasting, X, Y, data_plate="data", vectorize_particles=path)
        assert other.particle_path == path
        other_value, other_grad = log_joint_and_grad(other, z)
        torch.testing.assert_close(other_value, value)
        torch.testing.assert_close(other_grad, grad)


def test_data_dependent_control_flow_falls_back_to_the_loop_saying_why():
    with pytest.warns(UserWarning) as record:
        model = PyroModel(data_dependent, X, Y)
    (warning,) = [w for w in record if "does not vectorise" in str(w.message)]
    text = str(warning.message)
    assert "plate: " in text and "vmap: " in text and "one by one" in text
    assert "\n" not in text
    assert model.particle_path == "loop" and not model.vectorize_particles
    z = torch.randn(6, model.dim, generator=torch.Generator().manual_seed(3))
    params, log_det = model.constrain(z)
    sigma = params["sigma"]
    scale = torch.where(sigma > 1.0, 2 * sigma, sigma)
    by_hand = (
        torch.distributions.Normal(0.0, 1.0).log_prob(params["beta"]).sum(-1)
        + torch.distributions.HalfNormal(2.0).log_prob(sigma)
        + torch.distributions.Normal(params["beta"] @ X.T, scale[:, None]).log_prob(Y).sum(-1)
        + log_det
    )
    torch.testing.assert_close(model.log_joint(z).total, by_hand)
    for request in (True, "vmap", "plate"):
        with pytest.raises(PyroModelError, match="does not vectorise over particles"):
            PyroModel(data_dependent, X, Y, vectorize_particles=request)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PyroModel(data_dependent, X, Y, vectorize_particles=False).dim == 4
    with pytest.raises(TypeError, match="vectorize_particles must be"):
        PyroModel(data_dependent, X, Y, vectorize_particles="fast")
