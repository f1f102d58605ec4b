"""Gaussian mixtures: the stratified ELBO reaches the weights and recovers separated modes."""

from __future__ import annotations

import math

import pytest
import torch

import svi_torch as st
from svi_torch.families import GaussianMixture, MeanFieldGaussian
from svi_torch.models import BimodalTarget
from svi_torch.objectives import ELBO
from svi_torch.registry import FAMILIES
from svi_torch.training.logging import MemoryLogger

TRUE_WEIGHT = 0.3  # of the mode at +4 e_1; the other mode, at -4 e_1, has 0.7


@pytest.fixture(scope="module")
def bimodal():
    return BimodalTarget(dim=2, separation=8.0, weight=TRUE_WEIGHT)


def test_mixture_puts_mass_on_both_modes_with_the_true_weights(bimodal):
    family = GaussianMixture(2, components=2)
    st.fit(
        bimodal, family, ELBO(num_particles=8), steps=600, method=st.methods.SGD(lr=5e-2), seed=0
    )
    with torch.no_grad():
        weights, locs = family.weights, family.locs
    # Assign each component to the mode nearest its mean; each mode must get one.
    first = locs[:, 0] > 0
    assert first.sum() == 1, f"both components sit on one mode: means {locs.tolist()}"
    estimated = weights[first].item()
    assert abs(estimated - TRUE_WEIGHT) < 0.1, f"weight of the +4 mode {estimated:.3f}"
    torch.testing.assert_close(locs[first][0], bimodal.modes[0], atol=0.3, rtol=0)
    torch.testing.assert_close(locs[~first][0], bimodal.modes[1], atol=0.3, rtol=0)
    # The modes barely overlap (separation 8 sd), so the fitted mixture is nearly exact:
    # KL(q||p) = log Z - ELBO with log Z = 0 must be small. 4000 draws give s.e. < 0.01.
    elbo, se = st.training.result.estimate_elbo(bimodal, family, 4000)
    assert -elbo < 0.05 + 4 * se


def test_single_gaussian_sits_on_one_mode(bimodal):
    family = MeanFieldGaussian(2, init_loc=torch.tensor([0.5, 0.0]))
    st.fit(
        bimodal, family, ELBO(num_particles=8), steps=600, method=st.methods.SGD(lr=5e-2), seed=0
    )
    loc, scale = family.loc.detach(), family.scale.detach()
    # Reverse KL is mode-seeking: one mode, unit scale, rather than spreading over both
    # (a moment-matched Gaussian would have sd sqrt(1 + 16 * 0.21) ~ 2.1 along e_1).
    assert min((loc - m).norm().item() for m in bimodal.modes) < 0.3, loc
    assert scale.max().item() < 1.2, scale


def test_stratified_estimate_is_unbiased_for_the_elbo(bimodal):
    # The stratified estimator and plain draws from the mixture estimate the same ELBO.
    torch.manual_seed(1)
    family = GaussianMixture(2, components=3, init_scale=1.0, init_spread=2.0).double()
    with torch.no_grad():
        family.logits.copy_(torch.tensor([0.5, -0.3, 0.1]))
        z, log_q, w = family.weighted_rsample(20000)
        stratified = w * (bimodal.log_joint(z).total - log_q)
        strat_mean = stratified.sum().item()
        # Variance of the stratified sum: sum_c pi_c^2 Var_c / K, estimated per component.
        per = (bimodal.log_joint(z).total - log_q).reshape(20000, 3)
        strat_se = math.sqrt(((family.weights**2) * per.var(0) / 20000).sum().item())
        z2, log_q2 = family.rsample_and_log_prob((60000,))
        plain = bimodal.log_joint(z2).total - log_q2
    plain_se = plain.std().item() / math.sqrt(plain.numel())
    diff = abs(strat_mean - plain.mean().item())
    assert diff < 5 * math.hypot(strat_se, plain_se), (strat_mean, plain.mean().item())


def test_gradient_reaches_the_mixture_weights(bimodal):
    family = GaussianMixture(2, components=2)
    loss = ELBO(num_particles=4)(family, bimodal, None).loss
    loss.backward()
    assert family.logits.grad is not None and family.logits.grad.abs().sum() > 0
    # Plain draws (a sampled component) carry no gradient to the weights through z.
    family.zero_grad()
    z, _ = family.rsample_and_log_prob((16,))
    z.sum().backward()
    assert family.logits.grad is None or torch.all(family.logits.grad == 0)


def test_mixture_log_prob_is_the_weighted_sum_of_components():
    family = GaussianMixture(3, components=2, covariance="full").double()
    z = torch.randn(7, 3, dtype=torch.float64)
    comps = family.component_distribution()
    expected = torch.logsumexp(family.weights.log() + comps.log_prob(z[:, None, :]), -1)
    torch.testing.assert_close(family.log_prob(z), expected)


def test_mixture_from_registry_logs_posterior_variance(bimodal):
    family = FAMILIES.get("mixture").factory(bimodal.dim, components=2, covariance="full")
    logger = MemoryLogger()
    st.fit(bimodal, family, ELBO(num_particles=2), steps=40, log_every=20, loggers=[logger])
    steps = [step for step, _ in logger.scalars["posterior/variance_mean"]]
    assert steps == [20, 40]
    assert all(v > 0 and math.isfinite(v) for _, v in logger.scalars["posterior/variance_mean"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"components": 0}, "components must be a positive int"),
        ({"covariance": "banded"}, "covariance must be"),
        ({"init_spread": -1.0}, "init_spread"),
    ],
)
def test_bad_mixture_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2, **kwargs)


def test_a_mixture_started_from_a_gaussian_has_its_covariance_in_every_component():
    scale_tril = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    loc = torch.tensor([2.0, -1.0])
    covariance = scale_tril @ scale_tril.T
    for kind in ("full", "diag"):
        mixture = GaussianMixture(2, components=3, covariance=kind)
        mixture.initialize_from_gaussian(loc, covariance)
        components = mixture.component_distribution()
        expected = covariance if kind == "full" else torch.diag_embed(covariance.diagonal())
        cov = (
            components.covariance_matrix
            if kind == "full"
            else torch.diag_embed(components.variance)
        )
        torch.testing.assert_close(cov, expected.expand(3, 2, 2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixture.weights, torch.full((3,), 1 / 3))
        # Means half a standard deviation around loc (whitened offsets of a fixed N(0, I) draw).
        offsets = torch.linalg.solve_triangular(scale_tril, (mixture.locs - loc).T, upper=False).T
        assert 0 < offsets.norm(dim=-1).max() < 3 * 0.5 * 2**0.5
