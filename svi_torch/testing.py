"""The family contract as a public helper: run :func:`check_family` on your own subclass.

>>> from svi_torch.families import MeanFieldGaussian
>>> check_family(MeanFieldGaussian(3))
"""

from __future__ import annotations

import copy
import io
import math

import torch
from torch import Tensor

from .families.base import VariationalFamily

__all__ = ["check_family"]


def check_family(
    family: VariationalFamily,
    context: Tensor | None = None,
    num_samples: int = 8,
    num_entropy_samples: int = 4000,
) -> None:
    """Check that ``family`` honours the :class:`VariationalFamily` contract.

    Checks, each failing with an ``AssertionError`` that says what is wrong:

    1. ``forward(context)`` returns a distribution with event shape ``(dim,)``;
    2. ``rsample_and_log_prob`` gives ``z`` of shape ``(S, *batch, dim)`` and a finite
       ``log q`` of shape ``(S, *batch)``, and ``log q`` equals the distribution's own
       ``log_prob`` and ``family.log_prob`` on those draws;
    3. ``weighted_rsample`` gives non-negative weights of the shape of ``log q`` that sum
       to one over the particles;
    4. the gradient of :math:`\\sum_s w_s [f(z_s) + \\log q(z_s)]` reaches every parameter
       (``f`` a fixed random quadratic);
    5. ``mean()`` and ``variance()`` have shape ``(*batch, dim)``, variances are
       non-negative; an analytic ``entropy()`` agrees with
       :math:`-\\frac1S\\sum_s \\log q(z_s)` within 5 Monte Carlo standard errors;
    6. ``log_prob_detached`` (when implemented) matches ``log q`` and has no gradient
       with respect to the parameters;
    7. ``state_dict`` survives ``torch.save``/``torch.load(weights_only=True)`` into a
       perturbed copy: same draws and densities under the same seed;
    8. ``.double()`` gives float64 draws; ``.to("cpu")`` works, and ``.cuda()`` when a GPU
       is present;
    9. ``repr`` names the class and ``dim=``.

    Args:
        family: the family to check (not modified: checks that move or perturb it work on
            copies).
        context: conditioning input for amortized families, e.g. ``(B, context_dim)``.
        num_samples: draws for the shape and gradient checks.
        num_entropy_samples: draws for the entropy check.

    Raises:
        AssertionError: naming the first broken part of the contract.
    """
    _check(isinstance(family, VariationalFamily), "is not a VariationalFamily subclass", family)
    name = type(family).__name__
    dim = family.dim
    dist = family(context)
    _check(
        tuple(dist.event_shape) == (dim,),
        f"forward() returned event shape {tuple(dist.event_shape)}, expected ({dim},)",
        family,
    )
    batch = tuple(dist.batch_shape)
    S = num_samples

    # 2. shapes and log densities.
    z, log_q = family.rsample_and_log_prob((S,), context)
    _check(
        tuple(z.shape) == (S, *batch, dim),
        f"rsample_and_log_prob gave z of shape {tuple(z.shape)}, expected {(S, *batch, dim)}",
        family,
    )
    _check(
        tuple(log_q.shape) == (S, *batch),
        f"rsample_and_log_prob gave log q of shape {tuple(log_q.shape)}, expected {(S, *batch)}",
        family,
    )
    _check(bool(torch.isfinite(log_q).all()), "log q has NaN/Inf values", family)
    # The distribution's log_prob right after sampling (flows reuse the layers' cache, so
    # non-invertible layers can still be scored on their own draws).
    _close(family(context).log_prob(z), log_q, "distribution.log_prob(z) != fused log q", family)
    _close(family.log_prob(z, context), log_q, "family.log_prob(z) != fused log q", family)

    # 3. weighted particles.
    z_w, log_q_w, weights = family.weighted_rsample(S, context)
    _check(
        weights.shape == log_q_w.shape and z_w.shape[:-1] == log_q_w.shape,
        f"weighted_rsample shapes z {tuple(z_w.shape)}, log q {tuple(log_q_w.shape)}, "
        f"weights {tuple(weights.shape)} do not line up",
        family,
    )
    _check(bool((weights >= 0).all()), "weighted_rsample gave negative weights", family)
    _close(weights.sum(0), torch.ones_like(weights[0]), "weights do not sum to 1", family)

    # 4. gradients reach every parameter.
    family.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)
    shift = torch.randn(dim, generator=generator).to(z_w)
    objective = (z_w - shift).square().sum(-1) + (z_w * shift).sum(-1) + log_q_w
    (weights * objective).sum().backward()
    for pname, p in family.named_parameters():
        if not p.requires_grad:
            continue
        _check(
            p.grad is not None and bool(torch.any(p.grad != 0)),
            f"no gradient reaches parameter {pname!r}: it must influence the draws or log q "
            "(create it in __init__ and use it in forward)",
            family,
        )
        _check(bool(torch.isfinite(p.grad).all()), f"gradient of {pname!r} is NaN/Inf", family)
    family.zero_grad(set_to_none=True)

    # 5. moments and entropy.
    with torch.no_grad():
        mean, variance = family.mean(context), family.variance(context)
    for label, value in (("mean", mean), ("variance", variance)):
        _check(
            tuple(value.shape) == (*batch, dim),
            f"{label}() has shape {tuple(value.shape)}, expected {(*batch, dim)}",
            family,
        )
    _check(bool((variance >= 0).all()), "variance() has negative entries", family)
    if family.has_analytic_entropy:
        with torch.no_grad():
            _, draws = family.rsample_and_log_prob((num_entropy_samples,), context)
            mc = -draws.double().mean(0)
            se = draws.double().std(0) / math.sqrt(num_entropy_samples)
            entropy = family.entropy(context).double()
        gap = (entropy - mc).abs().max().item()
        _check(
            bool(((entropy - mc).abs() <= 5 * se + 1e-6).all()),
            f"entropy() differs from the Monte Carlo -E[log q] by {gap:.4g} (> 5 standard errors)",
            family,
        )

    # 6. detached log density (sticking the landing).
    try:
        detached = family.log_prob_detached(z.detach(), context)
    except NotImplementedError:
        pass  # allowed: the family then does not support ELBO(gradient="stl")
    else:
        _check(not detached.requires_grad, "log_prob_detached has a parameter gradient", family)
        _close(detached, log_q.detach(), "log_prob_detached(z) != log q", family)

    # 7. save / load round trip into a perturbed copy.
    buffer = io.BytesIO()
    torch.save(family.state_dict(), buffer)
    restored = copy.deepcopy(family)
    with torch.no_grad():
        for p in restored.parameters():
            p.add_(0.5)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    _close(
        *(_seeded_draw(f, context) for f in (restored, family)),
        "a copy loaded from state_dict() draws differently",
        family,
    )

    # 8. dtype and device moves.
    double = copy.deepcopy(family).double()
    ctx64 = context.double() if context is not None else None
    z64, log_q64 = double.rsample_and_log_prob((2,), ctx64)
    _check(
        z64.dtype == torch.float64 and log_q64.dtype == torch.float64,
        f".double() gave draws of dtype {z64.dtype} and log q of {log_q64.dtype}",
        family,
    )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        moved = copy.deepcopy(family).to(device)
        ctx = context.to(device) if context is not None else None
        z_dev, log_q_dev = moved.rsample_and_log_prob((2,), ctx)
        _check(
            z_dev.device.type == device and log_q_dev.device.type == device,
            f".to({device!r}) left draws on {z_dev.device}",
            family,
        )

    # 9. repr.
    text = repr(family)
    _check(
        name in text and f"dim={dim}" in text,
        f"repr {text!r} should name {name} and dim={dim} (call super().extra_repr())",
        family,
    )


def _seeded_draw(family: VariationalFamily, context: Tensor | None) -> Tensor:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1234)
        z, log_q = family.rsample_and_log_prob((4,), context)
    return torch.cat([z.flatten(), log_q.flatten()])


def _check(condition: bool, message: str, family: object) -> None:
    if not condition:
        raise AssertionError(f"check_family({type(family).__name__}): {message}")


def _close(actual: Tensor, expected: Tensor, message: str, family: object) -> None:
    # float32 sums of log densities carry ~1e-6 relative error per term.
    rtol, atol = (1e-4, 1e-4) if actual.dtype == torch.float32 else (1e-8, 1e-8)
    try:
        torch.testing.assert_close(actual.detach(), expected.detach(), rtol=rtol, atol=atol)
    except AssertionError as err:
        raise AssertionError(f"check_family({type(family).__name__}): {message}\n{err}") from None
