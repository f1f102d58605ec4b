"""``svi_torch.compat``: the only place that names private torch entry points, and each
one's public fallback gives the same numbers, from a unit call up to a whole fit."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import svi_torch as st
from svi_torch import compat

PACKAGE = Path(st.__file__).parent
COMPAT = PACKAGE / "compat.py"

# Private torch names: torch._x, torch.x._y, the optimizer's hook dicts, the nn.Module
# dicts, private constraint classes, and `from torch... import _x`.
PRIVATE = [
    re.compile(p)
    for p in (
        r"\btorch\._",
        r"\btorch\.[\w.]*\._\w",
        r"_engine_run_backward",
        r"_optimizer_step_(pre|post)_hooks",
        r"_global_optimizer_",
        r"_amp_foreach",
        r"_foreach_(norm|lerp|mul|add)",
        r"\._C\.",
        r"\._(buffers|parameters|modules)\b",
        r"constraints\._[A-Za-z]",
        r"from torch[\w.]* import \(?\s*_",
    )
]


def _hits(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for n, line in enumerate(lines, 1)
        if any(p.search(line) for p in PRIVATE)
    ]


def test_no_private_torch_name_outside_compat():
    sources = sorted(p for p in PACKAGE.rglob("*.py") if p != COMPAT)
    assert len(sources) > 50  # the whole package, not an empty glob
    hits = [hit for path in sources for hit in _hits(path)]
    assert hits == [], "private torch names outside svi_torch/compat.py:\n" + "\n".join(hits)
    # The patterns do find the names where they are (the check above can fail).
    found = "\n".join(_hits(COMPAT))
    for name in ("_engine_run_backward", "_optimizer_step_pre_hooks", "_amp_foreach", "._buffers"):
        assert name in found


def test_compat_imports_nothing_from_svi_torch():
    source = COMPAT.read_text()
    assert not re.search(r"^\s*(from|import)\s+(\.|svi_torch)", source, re.MULTILINE)


def test_every_probe_passes_on_the_pinned_torch():
    # Otherwise the fits below would compare the fallback with itself.
    assert compat.available() == dict.fromkeys(compat.available(), True)


def test_the_environment_variable_forces_every_fallback(monkeypatch):
    def load(value: str | None):
        if value is None:
            monkeypatch.delenv("SVI_TORCH_COMPAT_FALLBACK", raising=False)
        else:
            monkeypatch.setenv("SVI_TORCH_COMPAT_FALLBACK", value)
        spec = importlib.util.spec_from_file_location("compat_copy", COMPAT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    assert load("1").fallbacks_forced()
    assert not load("0").fallbacks_forced()
    assert not load(None).fallbacks_forced()
    forced = load("1")
    module = nn.Module()
    module.register_buffer("x", torch.ones(2))
    assert forced.module_buffers(module).keys() == {"x"}
    assert forced.fallback_counts["module_buffers"] == 1


def test_force_fallbacks_nests_and_restores():
    assert not compat.fallbacks_forced()
    with compat.force_fallbacks():
        assert compat.fallbacks_forced()
        with compat.force_fallbacks(False):
            assert not compat.fallbacks_forced()
        assert compat.fallbacks_forced()
    assert not compat.fallbacks_forced()


@pytest.fixture
def counts():
    compat.fallback_counts.clear()
    yield compat.fallback_counts
    compat.fallback_counts.clear()


def _both(fn):
    """``fn()`` on the private path, then forced to the fallback."""
    direct = fn()
    with compat.force_fallbacks():
        fallback = fn()
    return direct, fallback


def test_unit_results_agree_bit_for_bit(counts):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, generator=g), torch.randn(3, 3, generator=g, dtype=torch.float32)]
    direct, fallback = _both(lambda: compat.total_norm(grads))
    assert torch.equal(direct, fallback)
    assert torch.equal(direct, torch.nn.utils.get_total_norm(grads))
    mixed = [grads[0], grads[1].double()]  # two dtypes: get_total_norm on both paths
    assert torch.equal(*_both(lambda: compat.total_norm(mixed)))

    ends = [torch.randn(5, generator=g), torch.randn(2, 2, generator=g)]
    starts = [torch.randn(5, generator=g), torch.randn(2, 2, generator=g)]

    def lerp():
        out = [s.clone() for s in starts]
        compat.foreach_lerp_(out, ends, 0.125)
        return out

    for a, b in zip(*_both(lerp), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, starts[0] if a.dim() == 1 else starts[1])

    for bad in (float("nan"), float("inf")):
        tensors = [torch.tensor(1.0), torch.tensor([2.0, bad, 3.0])]
        found, one = torch.zeros(()), torch.ones(())
        check = lambda t=tensors, f=found, o=one: compat.all_finite(t, f, o)  # noqa: E731
        assert _both(check) == (False, False)
        assert float(found) == 0.0  # reset for the next call
    found, one = torch.zeros(()), torch.ones(())
    assert _both(lambda: compat.all_finite([torch.tensor([1e-30, -5.0])], found, one)) == (
        True,
        True,
    )

    module = nn.Module()
    module.register_buffer("x", torch.ones(2))
    module.register_buffer("y", torch.zeros(1))
    module.child = nn.Module()
    module.child.register_buffer("z", torch.ones(1))
    direct, fallback = _both(lambda: compat.module_buffers(module))
    assert direct == fallback and list(direct) == ["x", "y"]
    assert direct["x"] is module.x

    assert counts == {
        "total_norm": 2,
        "foreach_lerp_": 1,
        "all_finite": 3,
        "module_buffers": 1,
    }


def test_step_hooks_are_seen_and_the_fallback_assumes_them(counts):
    param = nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param], lr=0.1)
    assert _both(lambda: compat.optimizer_has_step_hooks(opt)) == (False, True)
    handle = opt.register_step_post_hook(lambda *args: None)
    assert _both(lambda: compat.optimizer_has_step_hooks(opt)) == (True, True)
    handle.remove()
    handle = register_optimizer_step_pre_hook(lambda *args: None)  # a global one
    try:
        assert compat.optimizer_has_step_hooks(opt)
    finally:
        handle.remove()
    assert not compat.optimizer_has_step_hooks(opt)
    assert counts == {"optimizer_has_step_hooks": 2}


def test_run_backward_inside_vmap_gives_torchs_own_error():
    x = torch.zeros(3, requires_grad=True)

    def inner(v):
        y = (v * x).sum()
        compat.run_backward((y,), (torch.ones_like(y),))
        return y

    with pytest.raises(RuntimeError, match="functorch transform"):
        torch.func.vmap(inner)(torch.ones(2, 3))


# -- the hot path, private against fallback ------------------------------------------------


class _NanEverySeventh(torch.autograd.Function):
    """Identity forward; a NaN gradient on every seventh backward pass."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _NanEverySeventh.calls += 1
        if _NanEverySeventh.calls % 7 == 0:
            return torch.full_like(grad, float("nan"))
        return grad


class _Poisoned(st.families.FullRankGaussian):
    def rsample_and_entropy(self, sample_shape=(), context=None):
        z, entropy = super().rsample_and_entropy(sample_shape, context)
        return _NanEverySeventh.apply(z), entropy


def _fit(case: str) -> tuple[list[torch.Tensor], torch.Tensor, int]:
    X, y = st.models.regression_data(300, 3, seed=4)[:2]
    model = st.models.BayesianLinearRegression(X, y)
    settings = dict(steps=40, batch_size=32, seed=0, log_every=1, progress=False)
    if case == "ngvi":
        family = st.families.FullRankGaussian(model.dim)
        result = st.fit(model, family, method="ngvi", **settings)
    else:
        _NanEverySeventh.calls = 0
        family = (_Poisoned if case == "non-finite" else st.families.FullRankGaussian)(model.dim)
        # Clipping (the gradient norm) and the averaging phase (the second half of "auto").
        method = st.methods.SGD(lr=0.05, clip_grad_norm=2.0)
        result = st.fit(model, family, method=method, convergence=False, **settings)
    params = [p.detach().clone() for p in result.family.parameters()]
    losses = torch.tensor(result.history["loss"], dtype=torch.float64)
    assert result.steps == 40 and len(losses) == 40
    return params, losses, result.skipped_steps


# Which fallbacks each fit must have taken when forced (the test cannot pass vacuously).
EXPECTED = {
    "sgd": {
        "run_backward",
        "optimizer_has_step_hooks",
        "all_finite",
        "foreach_lerp_",
        "total_norm",
        "module_buffers",
    },
    "ngvi": {"module_buffers"},
}
EXPECTED["non-finite"] = EXPECTED["sgd"]


@pytest.mark.parametrize("case", ["sgd", "ngvi", "non-finite"])
def test_a_fit_is_bit_identical_with_every_fallback_forced(case, counts):
    params, losses, skipped = _fit(case)
    assert counts == {}  # the private paths ran
    with compat.force_fallbacks():
        fb_params, fb_losses, fb_skipped = _fit(case)
    assert EXPECTED[case] <= {name for name, n in counts.items() if n > 0}
    if case != "ngvi":
        # every one of the 40 steps went through backward, the check and the step
        assert counts["run_backward"] == 40 and counts["all_finite"] == 40
    assert skipped == fb_skipped == (5 if case == "non-finite" else 0)
    assert torch.isfinite(losses).all()
    assert torch.equal(losses, fb_losses)
    assert len(params) == len(fb_params) > 0
    for a, b in zip(params, fb_params, strict=True):
        assert torch.equal(a, b)


def test_a_dependent_support_is_refused_through_the_public_check():
    """``constraints.is_dependent`` (public) replaced ``isinstance(_, constraints._Dependent)``."""
    from types import SimpleNamespace

    from torch.distributions import constraints

    from svi_torch.models.pyro import PyroModelError
    from svi_torch.models.pyro_sites import check_latent_support

    with pytest.raises(PyroModelError, match="depends on other values"):
        check_latent_support("x", SimpleNamespace(support=constraints.dependent))
    fn = torch.distributions.Normal(0.0, 1.0)
    assert check_latent_support("x", fn) == torch.distributions.biject_to(fn.support)
