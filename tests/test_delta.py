"""Delta: a point mass whose ELBO is log p(z, D), i.e. MAP in the unconstrained space."""

from __future__ import annotations

import math

import torch
from torch.distributions import HalfNormal, constraints

import svi_torch as st
from svi_torch.families import Delta
from svi_torch.models import Model, NormalMean, normal_mean_data
from svi_torch.objectives import ELBO


def test_delta_fit_is_the_map_of_a_conjugate_model():
    model = NormalMean(normal_mean_data(200, true_mean=1.0, seed=0))
    family = Delta(model.dim)
    st.fit(model, family, ELBO(), steps=800, method=st.methods.SGD(lr=5e-2), seed=0)
    # Gaussian posterior: MAP = posterior mean. No sampling noise: the draw is the point.
    post_mean = model.exact_posterior().mean
    torch.testing.assert_close(family.loc.detach(), post_mean, atol=1e-3, rtol=0)
    assert family.entropy().item() == 0.0
    assert torch.all(family.variance() == 0)


class _HalfNormalScale(Model):
    """Only a prior: sigma ~ HalfNormal(1). Its MAP in sigma is 0 (the density's mode)."""

    def __init__(self):
        super().__init__()
        self.add_param("sigma", support=constraints.positive)

    def log_prior(self, params):
        return HalfNormal(1.0).log_prob(params["sigma"])


def test_delta_is_map_in_the_unconstrained_space():
    # With sigma = exp(z), log p(z) = log HalfNormal(e^z) + z, maximised at sigma = 1
    # (d/dz [-e^{2z}/2 + z] = 0), not at the constrained mode sigma = 0.
    model = _HalfNormalScale()
    family = Delta(model.dim)
    st.fit(model, family, ELBO(), steps=800, method=st.methods.SGD(lr=5e-2), seed=0)
    sigma = math.exp(family.loc.item())
    assert abs(sigma - 1.0) < 1e-3
