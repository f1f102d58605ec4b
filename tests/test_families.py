"""The contract every Gaussian family satisfies, run over each of them."""

from __future__ import annotations

import io

import pytest
import torch
from torch.distributions import MultivariateNormal

from svi_torch.families import FullRankGaussian, LowRankGaussian, MeanFieldGaussian

DIM = 4
FAMILIES = {
    "meanfield": lambda **kw: MeanFieldGaussian(DIM, **kw),
    "fullrank": lambda **kw: FullRankGaussian(DIM, **kw),
    "lowrank": lambda **kw: LowRankGaussian(DIM, rank=2, **kw),
}


@pytest.fixture(params=sorted(FAMILIES))
def make_family(request):
    return FAMILIES[request.param]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(make_family, dtype):
    family = make_family().to(dtype)
    z, log_q = family.rsample_and_log_prob((7, 3))
    assert z.shape == (7, 3, DIM) and log_q.shape == (7, 3)
    assert z.dtype == dtype and log_q.dtype == dtype
    assert family.mean().shape == (DIM,) and family.variance().shape == (DIM,)
    assert family.entropy().shape == ()


def test_log_prob_matches_equivalent_multivariate_normal(make_family):
    family = make_family(init_loc=torch.arange(DIM) * 0.5, init_scale=0.7).double()
    cov = family.covariance().detach()
    reference = MultivariateNormal(family.loc.detach(), cov)
    z = reference.sample((50,))
    torch.testing.assert_close(family.log_prob(z), reference.log_prob(z))
    torch.testing.assert_close(family.entropy(), reference.entropy())
    torch.testing.assert_close(family.variance(), torch.diagonal(cov))


def test_initialisation_sets_mean_and_scale(make_family):
    family = make_family(init_loc=1.5, init_scale=0.3)
    torch.testing.assert_close(family.mean(), torch.full((DIM,), 1.5))
    # Low-rank starts with a tiny factor, so its variance is 0.3**2 + O(1e-4).
    torch.testing.assert_close(family.variance(), torch.full((DIM,), 0.09), atol=1e-3, rtol=0)


def test_sample_moments_match_analytic(make_family):
    family = make_family(init_loc=torch.linspace(-1, 1, DIM), init_scale=0.5).double()
    with torch.no_grad():
        z, _ = family.rsample_and_log_prob((40000,))
    # Standard error of a mean is sd/sqrt(n) = 0.5/200 = 0.0025; allow 5 s.e.
    torch.testing.assert_close(z.mean(0), family.mean(), atol=5 * 0.0025, rtol=0)
    # Var of the sample variance is 2 sigma^4 / n: s.e. 0.25*sqrt(2/40000) ~ 0.0018.
    torch.testing.assert_close(z.var(0), family.variance(), atol=5 * 0.0018, rtol=0)


def test_gradients_reach_every_parameter(make_family):
    family = make_family()
    z, log_q = family.rsample_and_log_prob((16,))
    (z.square().sum() + log_q.sum()).backward()
    for name, p in family.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), f"no gradient reaches {name}"


def test_state_dict_round_trip(make_family):
    family = make_family(init_loc=0.3, init_scale=0.2)
    with torch.no_grad():
        for p in family.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    buffer = io.BytesIO()
    torch.save(family.state_dict(), buffer)
    buffer.seek(0)
    restored = make_family()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    z = torch.randn(5, DIM)
    torch.testing.assert_close(restored.log_prob(z), family.log_prob(z))


def test_stl_log_prob_has_no_parameter_gradient(make_family):
    family = make_family()
    z = torch.randn(3, DIM)
    out = family.log_prob_detached(z).sum()
    assert not out.requires_grad


def test_repr_names_dimension(make_family):
    assert f"dim={DIM}" in repr(make_family())


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_dim_is_rejected(bad):
    with pytest.raises(ValueError, match="dim must be a positive int"):
        MeanFieldGaussian(bad)


def test_bad_init_is_rejected():
    with pytest.raises(ValueError, match="init_loc has shape"):
        FullRankGaussian(3, init_loc=torch.zeros(2))
    with pytest.raises(ValueError, match="init_scale must be positive"):
        MeanFieldGaussian(3, init_scale=-1.0)
    with pytest.raises(ValueError, match="rank must be"):
        LowRankGaussian(3, rank=5)


def test_set_moments_places_family_at_target():
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    loc = torch.tensor([0.5, -1.0], dtype=torch.float64)
    full = FullRankGaussian(2).double()
    full.set_moments(loc, cov)
    torch.testing.assert_close(full.covariance(), cov)
    meanfield = MeanFieldGaussian(2).double()
    meanfield.set_moments(loc, cov)
    # Mean-field optimum of KL(q||p): variances 1 / (precision diagonal).
    torch.testing.assert_close(meanfield.variance(), 1 / torch.diagonal(torch.linalg.inv(cov)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_family_runs_on_cuda(make_family):
    family = make_family().cuda()
    z, log_q = family.rsample_and_log_prob((4,))
    assert z.is_cuda and log_q.is_cuda
