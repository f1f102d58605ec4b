"""BayesianNeuralNetwork: shapes over particle dimensions and the likelihood against a loop."""

from __future__ import annotations

import math

import pytest
import torch

from svi_torch.models import BayesianNeuralNetwork, bnn_data

D, H = 3, 5


def _reference_log_joint_terms(model, params, X, y):
    """Per-particle log likelihood and log prior, one data point and one weight at a time."""
    s0, sigma = model.prior_scale, model.noise_scale
    lik, prior = [], []
    for k in range(params["b2"].shape[0]):
        W1, b1, w2, b2 = (params[n][k] for n in ("W1", "b1", "w2", "b2"))
        total = 0.0
        for i in range(X.shape[0]):
            f = float(b2)
            for h in range(H):
                f += float(w2[h]) * math.tanh(
                    sum(float(X[i, d] * W1[d, h]) for d in range(D)) + b1[h]
                )
            if model.likelihood == "classification":
                total += float(y[i]) * f - math.log1p(math.exp(f))
            else:
                total += -0.5 * ((float(y[i]) - f) / sigma) ** 2 - math.log(
                    sigma * math.sqrt(2 * math.pi)
                )
        lik.append(total)
        weights = torch.cat([W1.flatten(), b1, w2, b2.reshape(1)])
        prior.append(
            sum(
                -0.5 * (float(w) / s0) ** 2 - math.log(s0 * math.sqrt(2 * math.pi)) for w in weights
            )
        )
    return torch.tensor(lik, dtype=torch.float64), torch.tensor(prior, dtype=torch.float64)


@pytest.mark.parametrize("likelihood", ["regression", "classification"])
def test_log_likelihood_and_prior_match_a_loop(likelihood):
    X, y = bnn_data(7, D, hidden=H, likelihood=likelihood, seed=1)
    model = BayesianNeuralNetwork(
        X, y, hidden=H, likelihood=likelihood, prior_scale=0.7, noise_scale=0.4
    ).double()
    z = torch.randn(4, model.dim, dtype=torch.float64)
    params, _ = model.constrain(z)
    expected_lik, expected_prior = _reference_log_joint_terms(model, params, model.X, model.y)
    torch.testing.assert_close(model.log_likelihood(params, model.data), expected_lik)
    torch.testing.assert_close(model.log_prior(params), expected_prior)


def test_shapes_over_particle_dimensions():
    X, y = bnn_data(11, D, hidden=H, seed=0)
    model = BayesianNeuralNetwork(X, y, hidden=H)
    assert model.dim == D * H + 2 * H + 1
    z = torch.randn(2, 3, model.dim)
    params, log_det = model.constrain(z)
    assert params["W1"].shape == (2, 3, D, H) and params["b2"].shape == (2, 3)
    assert model.predict(params, X).shape == (2, 3, 11)
    joint = model.log_joint(z, model.index_data(torch.arange(4)))
    assert joint.log_likelihood.shape == joint.log_prior.shape == log_det.shape == (2, 3)
    # Particles are independent: the batched value equals the value for each one alone.
    single = model.log_likelihood(model.constrain(z[1, 2])[0], model.data)
    torch.testing.assert_close(model.log_likelihood(params, model.data)[1, 2], single)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden=0), "hidden"),
        (dict(likelihood="poisson"), "likelihood"),
        (dict(prior_scale=-1.0), "positive"),
    ],
)
def test_bad_settings_get_clear_errors(kwargs, message):
    X, y = bnn_data(5, D, hidden=H, seed=0)
    with pytest.raises(ValueError, match=message):
        BayesianNeuralNetwork(X, y, **kwargs)


def test_classification_rejects_non_binary_labels():
    X, _ = bnn_data(5, D, hidden=H, seed=0)
    with pytest.raises(ValueError, match="0 and 1"):
        BayesianNeuralNetwork(X, torch.arange(5.0), likelihood="classification")
