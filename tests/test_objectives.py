"""IWAE, Renyi and forward-KL objectives: bound ordering, limits, unbiased DReG, use in fit."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal

import svi_torch as st
from svi_torch.data import Batch
from svi_torch.divergences import kl_mvn
from svi_torch.families import FullRankGaussian
from svi_torch.models import BayesianLinearRegression, GaussianMixtureTarget, Model, NormalMean
from svi_torch.objectives import ELBO, IWAE, ForwardKL, RenyiELBO
from svi_torch.registry import OBJECTIVES


@pytest.fixture(scope="module")
def normal_mean():
    x = torch.randn(20, generator=torch.Generator().manual_seed(7)) + 1.0
    return NormalMean(x.double(), noise_scale=1.0, prior_scale=2.0)


def _offset_family(model, shift: float, scale_factor: float) -> FullRankGaussian:
    """A Gaussian q near but not at the exact posterior (so every bound is strict)."""
    post = model.exact_posterior()
    family = FullRankGaussian(model.dim).double()
    family.set_moments(post.mean + shift * post.stddev, scale_factor**2 * post.covariance_matrix)
    return family


def _replicates(objective, family, model, num: int) -> Tensor:
    with torch.no_grad():
        return torch.stack([-objective(family, model, None).loss for _ in range(num)])


def test_elbo_le_iwae_k_le_log_evidence_and_the_gap_shrinks_with_k(normal_mean):
    model = normal_mean
    # A q narrower than the posterior and off-centre: heavy-ish weights, so the gap closes
    # slowly enough to be measured at K = 10 and 100 (gaps ~0.50, 0.25, 0.08 nats).
    family = _offset_family(model, shift=1.0, scale_factor=0.7)
    log_evidence = model.log_evidence().item()
    post = model.exact_posterior()
    with torch.no_grad():
        q = family()
        exact_elbo = (
            log_evidence
            - kl_mvn(q.mean, q.covariance_matrix, post.mean, post.covariance_matrix).item()
        )
    means, ses = {}, {}
    for k in (1, 10, 100):
        # 1600 replicate bounds: se ~ 0.02, 0.013, 0.009 nats, against gap steps of 0.25, 0.17.
        values = _replicates(IWAE(num_particles=k), family, model, 1600)
        means[k], ses[k] = values.mean().item(), values.std().item() / math.sqrt(1600)
    # IWAE_1 is the ELBO estimator: its replicate mean matches the exact ELBO within 4 se.
    assert abs(means[1] - exact_elbo) < 4 * ses[1]
    for k in (1, 10, 100):
        assert means[k] <= log_evidence + 4 * ses[k]
    # Strictly increasing in K beyond Monte Carlo error: the gap log p(D) - IWAE_K shrinks.
    for small, large in ((1, 10), (10, 100)):
        assert means[large] - means[small] > 4 * math.hypot(ses[small], ses[large])
    gaps = [log_evidence - means[k] for k in (1, 10, 100)]
    assert gaps[0] > gaps[1] > gaps[2] > -4 * ses[100]


def test_iwae_equals_log_evidence_at_the_exact_posterior(normal_mean):
    model = normal_mean
    family = FullRankGaussian(1).double()
    post = model.exact_posterior()
    family.set_moments(post.mean, post.covariance_matrix)
    # With q = p(z | D) every weight equals p(D): the bound is exact for every draw, up to
    # float64 rounding of the softplus round trip in set_moments (relative ~1e-9 of 30 nats).
    value = -IWAE(num_particles=7)(family, model, None).loss
    assert value.item() == pytest.approx(model.log_evidence().item(), abs=1e-6)


def test_renyi_at_alpha_one_is_the_elbo_and_is_continuous_there(normal_mean):
    model = normal_mean
    family = _offset_family(model, shift=0.5, scale_factor=0.7)
    for alpha in (1, 1.0):
        torch.manual_seed(11)
        renyi = RenyiELBO(alpha=alpha, num_particles=16)(family, model, None)
        torch.manual_seed(11)
        elbo = ELBO(num_particles=16, entropy="mc")(family, model, None)
        assert renyi.loss.item() == pytest.approx(elbo.loss.item(), abs=1e-10)
    # Near alpha = 1 on the same draws: L_a = mean(log w) + (1 - a)/2 * var_emp(log w) + O((1-a)^2).
    eps = 1e-4
    torch.manual_seed(12)
    z, log_q = family.rsample_and_log_prob((16,))
    log_w = (model.log_joint(z).total - log_q).detach()
    expected = log_w.mean() + eps / 2 * log_w.var(unbiased=False)
    torch.manual_seed(12)
    near = -RenyiELBO(alpha=1 - eps, num_particles=16)(family, model, None).loss
    assert near.item() == pytest.approx(
        expected.item(), abs=10 * eps**2 * log_w.var().item() + 1e-9
    )
    # alpha = 0 is the IWAE bound on the same draws.
    torch.manual_seed(13)
    renyi0 = RenyiELBO(alpha=0.0, num_particles=16)(family, model, None).loss
    torch.manual_seed(13)
    iwae = IWAE(num_particles=16)(family, model, None).loss
    assert renyi0.item() == pytest.approx(iwae.item(), abs=1e-10)


def test_renyi_bound_decreases_in_alpha(normal_mean):
    model = normal_mean
    family = _offset_family(model, shift=1.0, scale_factor=1.5)
    values = []
    for alpha in (-1.0, 0.0, 0.5, 1.0, 2.0):
        torch.manual_seed(5)  # same draws: monotone by the power-mean inequality, exactly
        values.append(-RenyiELBO(alpha=alpha, num_particles=32)(family, model, None).loss.item())
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


class _LearnablePriorMean(Model):
    """mu ~ N(m, 1), x_i ~ N(mu, 1), with the prior mean m a model parameter (empirical Bayes)."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.prior_loc = nn.Parameter(torch.tensor(0.3, dtype=x.dtype))
        self.add_param("mu")
        self.set_data(x=x)

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        return Normal(self.prior_loc, 1.0).log_prob(params["mu"])

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        return Normal(params["mu"].unsqueeze(-1), 1.0).log_prob(batch["x"]).sum(-1)


def _paired_gradients(model, family, num_repeats: int, k: int) -> tuple[Tensor, Tensor]:
    params = [*family.parameters(), *model.parameters()]
    rows = {"reparam": [], "dreg": []}
    for r in range(num_repeats):
        for gradient in rows:
            torch.manual_seed(r)  # both estimators see the same draws: a paired comparison
            loss = IWAE(num_particles=k, gradient=gradient)(family, model, None).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows[gradient].append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
            )
    return torch.stack(rows["reparam"]), torch.stack(rows["dreg"])


def test_dreg_gradient_is_unbiased_for_the_iwae_gradient_and_less_noisy():
    x = torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    model = _LearnablePriorMean(x)
    family = FullRankGaussian(1, init_loc=0.2, init_scale=0.5).double()
    reparam, dreg = _paired_gradients(model, family, num_repeats=800, k=8)
    diff = reparam - dreg
    mean, se = diff.mean(0), diff.std(0) / math.sqrt(diff.shape[0])
    informative = se > 0  # the masked upper triangle of the Cholesky factor has zero gradient
    # Same expectation: the paired mean difference is within 4 standard errors (per coordinate).
    assert torch.all(mean[informative].abs() < 4 * se[informative])
    assert torch.all(mean[~informative] == 0)
    # The estimators really differ per draw (else the test could not fail) ...
    assert diff.abs().max() > 1e-3
    # ... and DReG has lower variance for the variational parameters (loc, raw_diag).
    var_reparam, var_dreg = reparam.var(0), dreg.var(0)
    for index in (0, 1):
        assert var_dreg[index] < var_reparam[index]
    # The model parameter (last) keeps the IWAE gradient: identical per draw.
    assert torch.allclose(reparam[:, -1], dreg[:, -1], atol=1e-10)


@pytest.mark.parametrize(
    "objective",
    [
        IWAE(num_particles=8, gradient="dreg"),
        RenyiELBO(alpha=0.5, num_particles=8),
    ],
    ids=["iwae-dreg", "renyi"],
)
def test_objectives_are_interchangeable_with_elbo_in_fit(objective):
    X, y, _ = st.models.regression_data(200, 2, seed=2)
    model = BayesianLinearRegression(X, y)
    family = FullRankGaussian(model.dim)
    result = st.fit(model, family, objective, steps=1000, method=st.methods.SGD(lr=5e-2), seed=0)
    post = model.exact_posterior()
    with torch.no_grad():
        q = family()
        kl = kl_mvn(
            q.mean.double(),
            q.covariance_matrix.double(),
            post.mean.double(),
            post.covariance_matrix.double(),
        )
    # The exact posterior is the optimum of every one of these bounds for a Gaussian family;
    # a KL of 0.02 nats is a close fit (averaged SGD reaches <1e-2 here). IWAE with the plain
    # reparam gradient is left out: its score term makes it far noisier (KL ~0.7 after the
    # same steps; see the estimators study), which is the reason DReG exists.
    assert kl.item() < 0.02
    assert {"elbo"} <= set(result.history)


def test_forward_kl_objective_needs_a_sampleable_target():
    model = NormalMean(torch.randn(5))
    with pytest.raises(TypeError, match="sample"):
        ForwardKL()(FullRankGaussian(1), model, None)
    target = GaussianMixtureTarget()
    out = ForwardKL(num_samples=4000, elbo_particles=4)(
        FullRankGaussian(1, init_scale=3.0), target, None
    )
    # Loss = cross-entropy = H[p] + KL(p||q) on the same draws, so forward_kl < cross_entropy.
    assert out.metrics["forward_kl"].item() < out.metrics["cross_entropy"].item()
    assert out.loss.requires_grad and set(out.metrics) == {"cross_entropy", "forward_kl", "elbo"}


def test_registry_names_build_the_objectives():
    assert OBJECTIVES.get("iwae").factory(num_particles=4, gradient="dreg") == IWAE(4, "dreg")
    assert OBJECTIVES.get("renyi").factory(alpha=0.0) == RenyiELBO(alpha=0.0)
    assert OBJECTIVES.get("forward_kl").factory(num_samples=8) == ForwardKL(num_samples=8)


def test_bad_objective_settings_raise():
    with pytest.raises(ValueError, match="gradient"):
        IWAE(gradient="stl")
    with pytest.raises(ValueError, match="num_particles"):
        IWAE(num_particles=0)
    with pytest.raises(TypeError, match="num_particles"):
        RenyiELBO(num_particles=2.5)
    with pytest.raises(ValueError, match="alpha"):
        RenyiELBO(alpha=math.inf)
    with pytest.raises(TypeError, match="alpha"):
        RenyiELBO(alpha="half")
    with pytest.raises(ValueError, match="num_samples"):
        ForwardKL(num_samples=0)


def test_targets_have_the_stated_moments():
    mixture = GaussianMixtureTarget()
    assert mixture.mean.item() == 0.0 and mixture.covariance.item() == pytest.approx(10.0)
    draws = mixture.sample(20_000).squeeze(-1)
    # se of a sample variance = sqrt((mu4 - sigma^4) / n); mu4 = E[(+-3 + e)^4] = 81 + 6*9 + 3
    # = 138, so se = sqrt(38 / 20000) = 0.044; allow 4 se.
    assert draws.var().item() == pytest.approx(10.0, abs=4 * math.sqrt(38 / 20_000))
    target = st.models.CorrelatedGaussianTarget(rho=0.6, sigma=2.0)
    assert target.meanfield_variance() == pytest.approx(0.64 * 4)
    assert isinstance(target.distribution(), MultivariateNormal)
    with pytest.raises(ValueError, match="rho"):
        st.models.CorrelatedGaussianTarget(rho=1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureTarget(weights=(1.0, -1.0))
