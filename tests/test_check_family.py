"""check_family passes on every family in the package and the guide's Student-t, and catches
broken families with a message that names the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

import svi_torch as st
from svi_torch.examples.student_t import StudentTFamily
from svi_torch.families import (
    AmortizedGaussian,
    Delta,
    FullRankGaussian,
    GaussianMixture,
    LowRankGaussian,
    MeanFieldGaussian,
    NormalizingFlow,
    VariationalFamily,
)
from svi_torch.families.flows import TRANSFORMS
from svi_torch.registry import FAMILIES
from svi_torch.testing import check_family

DIM = 3
CONTEXT = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))

GLOBAL_FAMILIES = {
    "meanfield": lambda: MeanFieldGaussian(DIM),
    "fullrank": lambda: FullRankGaussian(DIM),
    "lowrank": lambda: LowRankGaussian(DIM, rank=2),
    "mixture_diag": lambda: GaussianMixture(DIM, components=3),
    "mixture_full": lambda: GaussianMixture(DIM, components=2, covariance="full"),
    "delta": lambda: Delta(DIM, init_loc=0.5),
    "student_t": lambda: StudentTFamily(DIM),
    **{
        f"flow_{name}": (lambda name=name: NormalizingFlow(DIM, transform=name, layers=2))
        for name in TRANSFORMS
    },
}
AMORTIZED_FAMILIES = {
    "amortized_diag": lambda: AmortizedGaussian(2, context_dim=4),
    "amortized_linear": lambda: AmortizedGaussian(2, context_dim=4, hidden_dims=()),
    "amortized_lowrank": lambda: AmortizedGaussian(DIM, 4, covariance="lowrank", rank=2),
    "amortized_iaf": lambda: AmortizedGaussian(2, context_dim=4, flow="iaf"),
}


@pytest.mark.parametrize("name", sorted(GLOBAL_FAMILIES))
def test_check_family_passes_on_every_global_family(name):
    check_family(GLOBAL_FAMILIES[name]())


@pytest.mark.parametrize("name", sorted(AMORTIZED_FAMILIES))
def test_check_family_passes_on_amortized_families(name):
    check_family(AMORTIZED_FAMILIES[name](), context=CONTEXT)


def test_every_registered_family_is_covered():
    covered = {type(make()) for make in [*GLOBAL_FAMILIES.values(), *AMORTIZED_FAMILIES.values()]}
    registered = {entry.factory for entry in FAMILIES.entries()}
    assert registered <= covered, f"registered but not checked: {registered - covered}"


class _UnusedParameter(MeanFieldGaussian):
    def __init__(self, dim):
        super().__init__(dim)
        self.forgotten = nn.Parameter(torch.zeros(dim))


class _WrongFusedDensity(MeanFieldGaussian):
    def rsample_and_log_prob(self, sample_shape=(), context=None):
        z, log_q = super().rsample_and_log_prob(sample_shape, context)
        return z, log_q + 1.0


class _WrongEventShape(VariationalFamily):
    def __init__(self, dim):
        super().__init__(dim)
        self.loc = nn.Parameter(torch.zeros(dim))

    def forward(self, context=None):
        return Normal(self.loc, 1.0)  # forgot Independent(..., 1)


class _NoDimInRepr(MeanFieldGaussian):
    def extra_repr(self):
        return "oops"


class _WrongEntropy(MeanFieldGaussian):
    def entropy(self, context=None):
        return super().entropy(context) + 0.5


@pytest.mark.parametrize(
    ("family", "message"),
    [
        (_UnusedParameter(DIM), "no gradient reaches parameter 'forgotten'"),
        (_WrongFusedDensity(DIM), "distribution.log_prob"),
        (_WrongEventShape(DIM), "event shape"),
        (_NoDimInRepr(DIM), "repr"),
        (_WrongEntropy(DIM), "entropy"),
    ],
)
def test_check_family_catches_broken_families(family, message):
    with pytest.raises(AssertionError, match=message):
        check_family(family)


def test_student_t_family_from_config_path_trains():
    # A config names a user's class as "module:ClassName"; the factory is called as
    # factory(model.dim, **kwargs), exactly as for built-in names.
    entry = FAMILIES.get("svi_torch.examples.student_t:StudentTFamily")
    model = st.models.NormalMean(st.models.normal_mean_data(200, true_mean=1.0, seed=0))
    family = entry.factory(model.dim, init_scale=0.5)
    st.fit(
        model,
        family,
        st.objectives.ELBO(num_particles=8),
        steps=300,
        method=st.methods.SGD(lr=3e-2),
        seed=0,
    )
    post = model.exact_posterior()
    # The posterior sd is 1/sqrt(201) ~ 0.07; a t family's location must land within 0.5 sd.
    assert abs(family.loc.item() - post.mean.item()) < 0.5 * post.stddev.item()
    assert isinstance(family(), Independent)
