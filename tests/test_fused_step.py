"""The trainer's optimizer shortcuts are bit for bit ``optimizer.step()`` / ``zero_grad()``."""

from __future__ import annotations

import pytest
import torch

import svi_torch as st
import svi_torch.methods.sgd as sgd_module
from svi_torch.training.fused_step import FusedAdamStep, optimizer_step, optimizer_zero_grad


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(5,), (5, 5)]]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (torch.optim.Adam, {}),
        (torch.optim.Adam, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}),
        (torch.optim.AdamW, {"weight_decay": 0.05, "betas": (0.8, 0.99)}),
    ],
)
def test_fused_step_equals_optimizer_step_bit_for_bit(cls, kwargs):
    a, b = _params(0), _params(0)
    opt_a = cls(a, lr=0.03, fused=True, **kwargs)
    opt_b = cls(b, lr=0.03, fused=True, **kwargs)
    fast = optimizer_step(opt_b)
    assert isinstance(fast, FusedAdamStep)
    g = torch.Generator().manual_seed(1)
    for step in range(25):
        grads = [torch.randn(p.shape, generator=g) for p in a]
        for p, q, grad in zip(a, b, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        if step == 10:  # learning-rate changes are read every call
            for opt in (opt_a, opt_b):
                opt.param_groups[0]["lr"] = 0.007
        if step == 15:  # a roll-back replaces the state tensors: still read every call
            saved = opt_b.state_dict()
            opt_b.load_state_dict(saved)
            opt_a.load_state_dict(opt_a.state_dict())
        opt_a.step()
        fast()
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q)
    for p, q in zip(a, b, strict=True):
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]), key


def test_other_optimizers_and_hooks_use_step():
    params = _params(0)
    sgd = torch.optim.SGD(params, lr=0.1)
    assert optimizer_step(sgd) == sgd.step
    unfused = torch.optim.Adam(params, lr=0.1, foreach=False)
    assert optimizer_step(unfused) == unfused.step
    adam = torch.optim.Adam(params, lr=0.1, fused=True)
    fast = optimizer_step(adam)
    calls = []
    adam.register_step_post_hook(lambda *args: calls.append(1))
    for p in params:
        p.grad = torch.ones_like(p)
    fast()  # first step: Adam creates its state in step()
    fast()  # a hook is registered: step() again, so the hook runs
    assert calls == [1, 1]


def test_zero_grad_shortcut_clears_every_group_and_keeps_overrides():
    params = _params(0)
    extra = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam(params, lr=0.1, fused=True)
    zero_grad = optimizer_zero_grad(adam)
    adam.add_param_group({"params": [extra]})  # added after the shortcut was made
    adam.load_state_dict(adam.state_dict())  # replaces the param_groups list
    for p in [*params, extra]:
        p.grad = torch.ones_like(p)
    zero_grad()
    assert all(p.grad is None for p in [*params, extra])

    calls = []

    class Logged(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            calls.append(set_to_none)
            super().zero_grad(set_to_none)

    logged = Logged(params, lr=0.1)
    optimizer_zero_grad(logged)()
    assert calls == [True]


def test_trainer_uses_the_shortcuts_and_matches_the_plain_step(monkeypatch):
    def run(use_shortcut: bool) -> list[torch.Tensor]:
        model = st.models.BayesianLinearRegression(*st.models.regression_data(300, 3, seed=4)[:2])
        family = st.families.FullRankGaussian(model.dim)
        config = st.training.TrainConfig(steps=60, batch_size=32, seed=0)
        loop = st.methods.SGD(lr=0.02).prepare(model, family, st.objectives.ELBO(2), config)
        rule = loop.rule
        assert isinstance(rule._optimizer_step, FusedAdamStep)
        if use_shortcut:
            loop.run()
        else:
            rule._optimizer_step = rule.optimizer.step
            rule._zero_grad = lambda: rule.optimizer.zero_grad(set_to_none=True)
            with monkeypatch.context() as patch:
                patch.setattr(sgd_module, "backward", lambda loss: loss.backward())
                loop.run()
        return [p.detach().clone() for p in family.parameters()]

    for fast, plain in zip(run(True), run(False), strict=True):
        assert torch.equal(fast, plain)
