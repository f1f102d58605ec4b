"""The lean training step keeps its guarantees: NaN checks, metrics, model fast paths."""

from __future__ import annotations

import pickle

import pytest
import torch

import svi_torch as st
from svi_torch.objectives.base import LazyMetrics
from svi_torch.training.health import FiniteCheck


@pytest.mark.parametrize("where", ["loss", "gradient"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_finite_check_catches_a_bad_loss_or_a_single_bad_gradient_entry(where, value):
    check = FiniteCheck()
    loss, grads = torch.tensor(1.5), [torch.ones(3), torch.ones(2, 2, dtype=torch.float64)]
    assert check(loss, grads)
    if where == "loss":
        loss = torch.tensor(value)
    else:
        grads[1][1, 0] = value
    assert not check(loss, grads)
    # The flag is reset after a bad step: the next finite step passes again.
    assert check(torch.tensor(0.0), [torch.zeros(3)])
    # Values are left exactly as they were (the kernel multiplies by exactly 1).
    good = [torch.tensor([1e-30, 3.0, -7.25])]
    assert check(torch.tensor(2.0), good)
    assert torch.equal(good[0], torch.tensor([1e-30, 3.0, -7.25]))


def test_a_nan_gradient_with_a_finite_loss_is_skipped():
    """A NaN that appears only in the backward pass never reaches the parameters."""

    class NanGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return torch.full_like(grad, float("nan"))

    model = st.models.NormalMean(torch.randn(50))

    class Poisoned(st.families.MeanFieldGaussian):
        def rsample_and_entropy(self, sample_shape=(), context=None):
            z, entropy = super().rsample_and_entropy(sample_shape, context)
            return NanGradient.apply(z), entropy

    family = Poisoned(model.dim)
    before = [p.detach().clone() for p in family.parameters()]
    loop = st.methods.SGD().prepare(
        model, family, st.objectives.ELBO(), st.training.TrainConfig(steps=5, max_bad_steps=100)
    )
    assert loop.train_step() is None
    assert loop.state.skipped_steps == 1
    for p, b in zip(family.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


def test_lazy_metrics_compute_once_and_save_as_a_plain_dict():
    calls = []

    def compute():
        calls.append(1)
        return {"b": torch.tensor(2.0)}

    metrics = LazyMetrics(compute, a=torch.tensor(1.0))
    assert metrics["a"].item() == 1.0 and metrics.get("a").item() == 1.0
    assert calls == []  # reading a ready value computes nothing
    assert {k: v.item() for k, v in metrics.items()} == {"a": 1.0, "b": 2.0}
    assert len(metrics) == 2 and calls == [1]
    restored = pickle.loads(pickle.dumps(metrics))
    assert type(restored) is dict and restored["b"].item() == 2.0


def test_elbo_metrics_are_the_means_of_the_log_joint_terms():
    model = st.models.BayesianLinearRegression(*st.models.regression_data(40, 3, seed=1)[:2])
    family = st.families.FullRankGaussian(model.dim, init_scale=0.3)
    torch.manual_seed(0)
    out = st.objectives.ELBO(num_particles=7)(family, model, None)
    torch.manual_seed(0)
    z = family.rsample((7,))
    joint = model.log_joint(z)
    m = out.metrics
    torch.testing.assert_close(m["log_likelihood"], joint.log_likelihood.mean())
    torch.testing.assert_close(m["log_prior"], joint.log_prior.mean())
    torch.testing.assert_close(m["entropy"], family.entropy())
    torch.testing.assert_close(m["elbo"], joint.total.mean() + family.entropy())
    torch.testing.assert_close(out.loss, -m["elbo"])


def test_bnn_flat_prior_equals_the_per_parameter_prior():
    X, y = st.models.bnn_data(30, 3, hidden=4, seed=0)
    model = st.models.BayesianNeuralNetwork(X, y, hidden=4, prior_scale=0.7)
    z = torch.randn(5, model.dim)
    params, _ = model.constrain(z)
    torch.testing.assert_close(model.log_prior_from_z(z), model.log_prior(params))


def test_single_vector_parameter_is_z_itself_and_others_are_sliced():
    X, y, _ = st.models.logistic_data(20, 4, seed=0)
    logistic = st.models.BayesianLogisticRegression(X, y)
    z = torch.randn(3, 4)
    params, log_det = logistic.constrain(z)
    assert params["beta"] is z and torch.equal(log_det, torch.zeros(3))
    schools = st.models.EightSchools()
    z = torch.randn(2, schools.dim)
    params, log_det = schools.constrain(z)
    torch.testing.assert_close(schools.unconstrain(params), z)
    assert (log_det != 0).all()  # the positive scale has a Jacobian


@pytest.mark.parametrize(
    "indices",
    [
        torch.tensor([7, 0, 3, 3, 11]),  # the samplers' int64 rows (repeats allowed)
        torch.tensor([2, 5, 1], dtype=torch.int32),
        torch.arange(12) % 3 == 0,  # a boolean mask: plain indexing
        torch.tensor([[1, 2], [3, 4]]),  # a 2-D index: plain indexing
    ],
)
def test_index_data_gathers_the_same_rows_as_indexing(indices):
    g = torch.Generator().manual_seed(0)
    model = st.models.BayesianLinearRegression(torch.randn(12, 3, generator=g), torch.randn(12))
    model.set_data(X=torch.randn(12, 3, 2, generator=g), y=torch.randn(12, generator=g))
    batch = model.index_data(indices)
    for name, full in model.data.items():
        assert torch.equal(batch[name], full[indices]), name
