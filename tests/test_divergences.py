"""KL divergences: closed forms against Monte Carlo, non-negativity, zero, and asymmetry."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Categorical,
    Independent,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    StudentT,
)

from svi_torch.divergences import KLEstimate, forward_kl, kl, kl_mvn, kl_normal, reverse_kl


def _mvn(seed: int, dim: int = 3) -> MultivariateNormal:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return MultivariateNormal(
        torch.randn(dim, generator=g, dtype=torch.float64), A @ A.T + 0.5 * torch.eye(dim)
    )


def _pairs():
    d = torch.float64
    return {
        "normal": (
            Normal(torch.tensor(0.3, dtype=d), 0.8),
            Normal(torch.tensor(-0.5, dtype=d), 1.7),
        ),
        "mvn": (_mvn(1), _mvn(2)),
        "lowrank": (
            LowRankMultivariateNormal(
                torch.zeros(3, dtype=d), 0.5 * torch.ones(3, 1, dtype=d), torch.ones(3, dtype=d)
            ),
            LowRankMultivariateNormal(
                torch.ones(3, dtype=d),
                torch.tensor([[1.0], [0.0], [-1.0]], dtype=d),
                torch.full((3,), 2.0, dtype=d),
            ),
        ),
        "independent": (
            Independent(
                Normal(torch.tensor([0.0, 1.0], dtype=d), torch.tensor([1.0, 0.5], dtype=d)), 1
            ),
            Independent(
                Normal(torch.tensor([0.5, 0.0], dtype=d), torch.tensor([2.0, 1.0], dtype=d)), 1
            ),
        ),
    }


@pytest.mark.parametrize("name", ["normal", "mvn", "lowrank", "independent"])
@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_analytic_and_monte_carlo_agree_within_four_standard_errors(name, direction):
    q, p = _pairs()[name]
    exact = kl(q, p, direction=direction)
    assert exact.method == "analytic" and exact.stderr.item() == 0.0
    mc = kl(q, p, direction=direction, method="mc", num_samples=20_000, seed=3)
    assert mc.method == "mc" and mc.num_samples == 20_000
    # The MC estimate is a mean of 20k iid terms: |error| < 4 se fails with prob ~6e-5.
    assert abs(mc.value.item() - exact.value.item()) < 4 * mc.stderr.item()
    assert mc.stderr.item() < 0.05 * max(exact.value.item(), 0.1)


def test_auto_falls_back_to_monte_carlo_for_mixtures_and_errors_when_analytic_is_forced():
    mixture = MixtureSameFamily(
        Categorical(torch.tensor([0.3, 0.7])), Normal(torch.tensor([-2.0, 2.0]), 1.0)
    )
    q = Normal(torch.tensor(1.0), 1.5)
    est = reverse_kl(q, mixture, num_samples=50_000, seed=0)
    assert est.method == "mc"
    # Check against deterministic quadrature of E_q[log q - log p] on a fine grid.
    z = torch.linspace(-15, 15, 200_001, dtype=torch.float64)
    qd = Normal(torch.tensor(1.0, dtype=torch.float64), 1.5)
    pd = MixtureSameFamily(
        Categorical(torch.tensor([0.3, 0.7], dtype=torch.float64)),
        Normal(torch.tensor([-2.0, 2.0], dtype=torch.float64), 1.0),
    )
    integrand = qd.log_prob(z).exp() * (qd.log_prob(z) - pd.log_prob(z))
    quadrature = torch.trapezoid(integrand, z).item()
    assert abs(est.value.item() - quadrature) < 4 * est.stderr.item()
    with pytest.raises(ValueError, match="no closed-form KL"):
        kl(q, mixture, method="analytic")


@pytest.mark.parametrize("name", ["normal", "mvn", "lowrank", "independent"])
def test_kl_is_non_negative_in_both_directions(name):
    q, p = _pairs()[name]
    assert reverse_kl(q, p).value.item() > 0
    assert forward_kl(q, p).value.item() > 0


def test_kl_is_exactly_zero_for_equal_distributions():
    d = Normal(torch.tensor(0.3), 1.7)
    assert kl(d, d).value.item() == 0.0
    assert kl(d, d, method="mc", num_samples=100).value.item() == 0.0  # log q - log p = 0 per draw
    assert kl_normal(0.3, 1.7, 0.3, 1.7).item() == 0.0
    m = MultivariateNormal(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    assert kl(m, m).value.item() == 0.0
    assert kl_mvn(m.mean, m.covariance_matrix, m.mean, m.covariance_matrix).item() == 0.0


def test_kl_asymmetry_on_a_stated_pair_matches_hand_computation():
    # q = N(0, 1), p = N(1, 2^2). By hand, KL(N(m1,s1^2)||N(m2,s2^2)) = log(s2/s1) +
    # (s1^2 + (m1-m2)^2)/(2 s2^2) - 1/2:
    #   KL(q||p) = log 2 + (1 + 1)/8 - 1/2 = 0.693147 - 0.25 = 0.443147
    #   KL(p||q) = log(1/2) + (4 + 1)/2 - 1/2 = -0.693147 + 2 = 1.306853
    q, p = Normal(0.0, 1.0), Normal(1.0, 2.0)
    assert reverse_kl(q, p).value.item() == pytest.approx(math.log(2) - 0.25, abs=1e-6)
    assert forward_kl(q, p).value.item() == pytest.approx(2 - math.log(2), abs=1e-6)
    assert kl_normal(0.0, 1.0, 1.0, 2.0).item() == pytest.approx(0.443147, abs=1e-6)
    assert kl_normal(1.0, 2.0, 0.0, 1.0).item() == pytest.approx(1.306853, abs=1e-6)


def test_closed_forms_match_torch_registered_kl():
    q, p = _mvn(4), _mvn(5)
    ours = kl_mvn(q.mean, q.covariance_matrix, p.mean, p.covariance_matrix)
    assert ours.item() == pytest.approx(kl(q, p).value.item(), rel=1e-10)
    # Univariate as a 1-D MVN.
    one = kl_mvn(
        torch.tensor([0.0]), torch.tensor([[1.0]]), torch.tensor([1.0]), torch.tensor([[4.0]])
    )
    assert one.item() == pytest.approx(kl_normal(0.0, 1.0, 1.0, 2.0).item(), abs=1e-6)


def test_direction_is_recorded_and_printed():
    est = forward_kl(Normal(0.0, 1.0), Normal(1.0, 2.0))
    assert isinstance(est, KLEstimate) and est.direction == "forward"
    assert str(est).startswith("KL(p||q)")
    assert str(reverse_kl(Normal(0.0, 1.0), Normal(1.0, 2.0))).startswith("KL(q||p)")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="Distribution"):
        kl(Normal(0.0, 1.0), 3.0)
    with pytest.raises(ValueError, match="direction"):
        kl(Normal(0.0, 1.0), Normal(0.0, 2.0), direction="backward")
    with pytest.raises(ValueError, match="event shape"):
        kl(Normal(0.0, 1.0), _mvn(0))
    with pytest.raises(ValueError, match="num_samples"):
        kl(StudentT(3.0), Normal(0.0, 1.0), num_samples=1)
    with pytest.raises(ValueError, match="positive"):
        kl_normal(0.0, -1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="positive definite"):
        kl_mvn(torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2))


def test_the_value_is_detached_for_reading_and_the_graph_kept_under_differentiable():
    """`kl(...).value` printed `tensor(0.0012, grad_fn=...)`; it now prints a plain number,
    and the analytic KL's gradient is still there for a user who minimises it."""
    loc = torch.tensor(0.3, requires_grad=True)
    est = kl(Normal(loc, 1.0), Normal(0.0, 1.0))
    assert not est.value.requires_grad and "grad_fn" not in repr(est.value)
    assert float(est) == pytest.approx(0.045, abs=1e-6)  # loc^2 / 2
    est.differentiable.backward()
    assert loc.grad.item() == pytest.approx(0.3)  # d/dloc loc^2/2
    mc = kl(Normal(loc, 1.0), Normal(0.0, 1.0), method="mc", num_samples=100, seed=0)
    assert not mc.value.requires_grad and mc.differentiable is None
