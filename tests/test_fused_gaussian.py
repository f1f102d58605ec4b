"""The fused Gaussian paths equal the torch.distributions computations they replace."""

from __future__ import annotations

import pytest
import torch

from svi_torch.families import FullRankGaussian, MeanFieldGaussian


def _perturbed(cls, dim=4):
    family = cls(dim, init_loc=torch.linspace(-1, 1, dim), init_scale=0.6).double()
    with torch.no_grad():
        for p in family.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return family


@pytest.mark.parametrize("cls", [MeanFieldGaussian, FullRankGaussian])
def test_fused_sample_and_log_q_equal_the_distribution(cls):
    family = _perturbed(cls)
    torch.manual_seed(5)
    z, log_q = family.rsample_and_log_prob((6, 2))
    torch.manual_seed(5)
    reference = family().rsample((6, 2))
    # Same noise stream, same sample; log q from the noise equals log_prob of the sample.
    torch.testing.assert_close(z, reference)
    torch.testing.assert_close(log_q, family().log_prob(z))
    torch.manual_seed(5)
    torch.testing.assert_close(family.rsample((6, 2)), reference)
    torch.testing.assert_close(family.entropy(), family().entropy())


@pytest.mark.parametrize("cls", [MeanFieldGaussian, FullRankGaussian])
def test_fused_log_q_has_the_reparameterized_gradient(cls):
    """d/dphi of log q(z(eps, phi), phi) is the same whichever way log q is computed.

    Through z the location cancels exactly (z - mu = L eps), so the fused form, which never
    sees mu, and the distribution's log_prob agree on a zero gradient for it.
    """
    family = _perturbed(cls)
    torch.manual_seed(2)
    _, log_q = family.rsample_and_log_prob((5,))
    fused = torch.autograd.grad(
        log_q.sum(), list(family.parameters()), allow_unused=True, materialize_grads=True
    )
    torch.manual_seed(2)
    dist = family()
    reference = torch.autograd.grad(
        dist.log_prob(dist.rsample((5,))).sum(),
        list(family.parameters()),
        allow_unused=True,
        materialize_grads=True,
    )
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want)


def test_analytic_entropy_probe_is_cached_per_instance():
    family = MeanFieldGaussian(3)
    calls = []
    original = family.entropy

    def counting_entropy(context=None):
        calls.append(1)
        return original(context)

    family.entropy = counting_entropy
    assert all(family.has_analytic_entropy for _ in range(5))
    assert len(calls) == 1


@pytest.mark.parametrize("cls", [MeanFieldGaussian, FullRankGaussian])
def test_fused_sample_and_entropy_equal_the_separate_calls(cls):
    family = _perturbed(cls)
    torch.manual_seed(3)
    z, entropy = family.rsample_and_entropy((5,))
    torch.manual_seed(3)
    torch.testing.assert_close(z, family.rsample((5,)))
    torch.testing.assert_close(entropy, family().entropy())
    # The same gradients reach the parameters as through rsample + entropy.
    torch.manual_seed(3)
    fused = torch.autograd.grad((z.sum() + entropy), list(family.parameters()))
    torch.manual_seed(3)
    separate = family.rsample((5,)).sum() + family.entropy()
    for a, b in zip(fused, torch.autograd.grad(separate, list(family.parameters())), strict=True):
        torch.testing.assert_close(a, b)


def test_fused_sample_and_entropy_call_a_subclass_override():
    class Tempered(MeanFieldGaussian):
        def entropy(self, context=None):
            return 2.0 * super().entropy(context)

    family = Tempered(3, init_scale=0.5)
    _, entropy = family.rsample_and_entropy((2,))
    torch.testing.assert_close(entropy, 2.0 * MeanFieldGaussian.entropy(family))


def test_fused_sample_uses_a_subclass_scale_tril():
    class Shrunk(FullRankGaussian):
        @property
        def scale_tril(self):
            return 0.5 * super().scale_tril

    family = Shrunk(3, init_scale=0.8)
    torch.manual_seed(1)
    z, _ = family.rsample_and_entropy((4,))
    torch.manual_seed(1)
    torch.testing.assert_close(z, family.rsample((4,)))


def test_full_rank_sample_ignores_the_upper_triangle_and_gives_it_no_gradient():
    family = _perturbed(FullRankGaussian, dim=5)  # every entry of tril perturbed
    torch.manual_seed(3)
    z, _ = family.rsample_and_entropy((7,))
    torch.manual_seed(3)
    eps = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(z, family.loc + eps @ family.scale_tril.mT)
    (z**3).sum().backward()
    upper = torch.ones(5, 5, dtype=torch.bool).triu()
    assert torch.equal(family.tril.grad[upper], torch.zeros(15, dtype=torch.float64))
    assert (family.tril.grad[~upper] != 0).all()


def test_large_full_rank_sampling_function_equals_autograd(monkeypatch):
    from svi_torch.families import gaussian

    def sample_and_grads(min_dim: int):
        monkeypatch.setattr(gaussian, "FULL_RANK_FUNCTION_MIN_DIM", min_dim)
        torch.manual_seed(0)
        family = _perturbed(FullRankGaussian, dim=6)
        torch.manual_seed(4)
        z, entropy = family.rsample_and_entropy((3, 2))
        ((z**3).sum() + entropy).backward()
        return z, [p.grad for p in family.parameters()]

    z_fn, grads_fn = sample_and_grads(min_dim=6)  # the custom Function (D = 6 >= 6)
    z_ag, grads_ag = sample_and_grads(min_dim=7)  # plain autograd
    torch.testing.assert_close(z_fn, z_ag)
    for got, want in zip(grads_fn, grads_ag, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.equal(grads_fn[-1].triu(), torch.zeros(6, 6, dtype=torch.float64))
    eps = torch.randn(4, 5, dtype=torch.float64)
    tril = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian._StrictLowerMatmul.apply(eps, t), (tril,))
