"""``training.backward.backward`` is ``loss.backward()``: same gradients, hooks and errors."""

from __future__ import annotations

import pytest
import torch

import svi_torch as st
from svi_torch import compat
from svi_torch.training.backward import backward


def _elbo_loss(seed: int) -> tuple[torch.Tensor, list[torch.nn.Parameter]]:
    X, y, _ = st.models.logistic_data(200, 4, seed=0)
    model = st.models.BayesianLogisticRegression(X, y)
    family = st.families.FullRankGaussian(model.dim, init_scale=0.3)
    torch.manual_seed(seed)
    batch = model.index_data(torch.arange(50))
    loss = st.objectives.ELBO(3)(family, model, batch, likelihood_scale=4.0).loss
    return loss, list(family.parameters())


@pytest.mark.parametrize("engine", ["direct", "fallback"])
def test_gradients_equal_loss_backward_bit_for_bit(engine):
    if engine == "direct" and not compat.available()["run_backward"]:
        pytest.skip("this torch lacks the private engine entry point")
    reference, ref_params = _elbo_loss(0)
    reference.backward()
    loss, params = _elbo_loss(0)
    for p in params:  # gradients accumulate into existing .grad, as backward() does
        p.grad = torch.full_like(p, 0.5)
    compat.fallback_counts.clear()
    # "fallback": as on a torch without the private entry point
    with compat.force_fallbacks(engine == "fallback"):
        backward(loss)
    assert compat.fallback_counts["run_backward"] == (engine == "fallback")
    for p, q in zip(params, ref_params, strict=True):
        assert torch.equal(p.grad, q.grad + 0.5)


def test_hooks_run_and_the_graph_is_freed():
    loss, params = _elbo_loss(1)
    seen = []
    params[0].register_hook(lambda grad: seen.append(grad.clone()))
    backward(loss)
    assert len(seen) == 1 and torch.equal(seen[0], params[0].grad)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        backward(loss)


def test_other_losses_take_the_public_path_with_torch_errors():
    with pytest.raises(RuntimeError, match="does not require grad"):
        backward(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        backward(torch.ones(3, requires_grad=True) * 2)


def test_a_custom_function_editing_its_gradient_in_place_does_not_leak():
    class Doubling(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.sum()

        @staticmethod
        def backward(ctx, grad):
            grad.mul_(2.0)  # bad practice, but must not change the next call's seed
            return grad.expand(3)

    x = torch.zeros(3, requires_grad=True)
    for _ in range(3):
        x.grad = None
        backward(Doubling.apply(x))
        assert torch.equal(x.grad, torch.full((3,), 2.0))
