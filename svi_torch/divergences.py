"""Kullback–Leibler divergences between distributions: analytic where known, else Monte Carlo.

The KL divergence from :math:`a` to :math:`b` is

.. math::

    \\mathrm{KL}(a \\,\\|\\, b) = \\mathbb{E}_{z \\sim a}[\\log a(z) - \\log b(z)] \\ge 0,

zero exactly when :math:`a = b`, and not symmetric. Throughout, ``q`` is the approximation
(the variational family) and ``p`` the target (the posterior), and the direction is
always named:

* **reverse** (exclusive) :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q - \\log p]`, what VI
  minimises (maximising the ELBO); mode-seeking, it tends to underestimate variance;
* **forward** (inclusive) :math:`\\mathrm{KL}(p\\|q) = \\mathbb{E}_p[\\log p - \\log q]`,
  mass-covering, it tends to overestimate spread (its Gaussian optimum matches moments).

:func:`kl` uses ``torch.distributions.kl_divergence`` when a closed form is registered for
the pair of types (Normal, MultivariateNormal, LowRankMultivariateNormal, Independent, ...)
and otherwise averages :math:`\\log a(z) - \\log b(z)` over draws :math:`z \\sim a` (mixtures
have no closed form). :func:`kl_normal` and :func:`kl_mvn` spell the Gaussian formulas out
for teaching.

Example:
    >>> from torch.distributions import Normal
    >>> q, p = Normal(0.0, 1.0), Normal(1.0, 2.0)
    >>> round(reverse_kl(q, p).value.item(), 4), round(forward_kl(q, p).value.item(), 4)
    (0.4431, 1.3069)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

__all__ = ["KLEstimate", "kl", "reverse_kl", "forward_kl", "kl_normal", "kl_mvn"]

Direction = Literal["reverse", "forward"]
Method = Literal["auto", "analytic", "mc"]


@dataclass(frozen=True)
class KLEstimate:
    """A KL divergence with its Monte Carlo standard error.

    Attributes:
        value: the estimate, detached, for reading (a tensor of the distributions' batch
            shape; ``float(estimate)`` for a scalar).
        stderr: :math:`\\hat\\sigma/\\sqrt{S}` for Monte Carlo, exactly zero when analytic.
        method: ``"analytic"`` or ``"mc"``.
        direction: ``"reverse"`` for :math:`\\mathrm{KL}(q\\|p)`, ``"forward"`` for
            :math:`\\mathrm{KL}(p\\|q)`.
        num_samples: draws used (0 when analytic).
        differentiable: the analytic value with its autograd graph, to minimise a KL by
            gradients (e.g. ``kl(family(), p).differentiable.backward()``); ``None`` for
            Monte Carlo, whose draws are taken without gradients.
    """

    value: Tensor
    stderr: Tensor
    method: str
    direction: str
    num_samples: int = 0
    differentiable: Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A value printed or stored should not carry (and keep alive) a graph.
        object.__setattr__(self, "value", torch.as_tensor(self.value).detach())
        object.__setattr__(self, "stderr", torch.as_tensor(self.stderr).detach())

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        formula = "KL(q||p)" if self.direction == "reverse" else "KL(p||q)"
        if self.method == "analytic":
            return f"{formula} = {float(self.value):.6g} (analytic)"
        return (
            f"{formula} = {float(self.value):.6g} ± {float(self.stderr):.2g} "
            f"(MC, S={self.num_samples})"
        )


def kl(
    q: Distribution,
    p: Distribution,
    direction: Direction = "reverse",
    method: Method = "auto",
    num_samples: int = 10_000,
    seed: int | None = None,
) -> KLEstimate:
    """KL divergence between the approximation ``q`` and the target ``p`` in a named direction.

    * ``direction="reverse"``: :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q(z) - \\log p(z)]`
      (what VI minimises; mode-seeking).
    * ``direction="forward"``: :math:`\\mathrm{KL}(p\\|q) = \\mathbb{E}_p[\\log p(z) - \\log q(z)]`
      (mass-covering).

    The Monte Carlo estimate draws :math:`z_s` from the distribution the expectation is
    under and reports :math:`\\bar d \\pm \\hat\\sigma_d/\\sqrt{S}` with
    :math:`d_s = \\log a(z_s) - \\log b(z_s)`.

    Args:
        q: the approximation (e.g. ``family()``).
        p: the target; same event shape as ``q``.
        direction: ``"reverse"`` or ``"forward"``.
        method: ``"auto"`` (analytic if torch has the pair registered, else Monte Carlo),
            ``"analytic"`` (raise if there is no closed form) or ``"mc"``.
        num_samples: :math:`S` for Monte Carlo.
        seed: seed the Monte Carlo draws without touching the global RNG state.

    Returns:
        A :class:`KLEstimate`.

    Example:
        >>> from torch.distributions import Normal
        >>> kl(Normal(0.0, 1.0), Normal(0.0, 1.0)).value
        tensor(0.)
    """
    if not isinstance(q, Distribution) or not isinstance(p, Distribution):
        raise TypeError(
            "q and p must be torch.distributions.Distribution objects, got "
            f"{type(q).__name__} and {type(p).__name__}; call family() to get q's distribution"
        )
    if direction not in ("reverse", "forward"):
        raise ValueError(
            f"direction must be 'reverse' (KL(q||p)) or 'forward' (KL(p||q)), got {direction!r}"
        )
    if method not in ("auto", "analytic", "mc"):
        raise ValueError(f"method must be 'auto', 'analytic' or 'mc', got {method!r}")
    if q.event_shape != p.event_shape:
        raise ValueError(
            f"q has event shape {tuple(q.event_shape)} but p has {tuple(p.event_shape)}; "
            "a KL divergence needs distributions over the same space"
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
    a, b = (q, p) if direction == "reverse" else (p, q)
    if method != "mc":
        try:
            value = kl_divergence(a, b)
        except NotImplementedError:
            if method == "analytic":
                raise ValueError(
                    f"no closed-form KL is registered for ({type(a).__name__}, "
                    f"{type(b).__name__}); use method='mc' or method='auto'"
                ) from None
        else:
            zero = torch.zeros_like(value.detach())
            return KLEstimate(value, zero, "analytic", direction, differentiable=value)
    return _monte_carlo_kl(a, b, direction, num_samples, seed)


def _monte_carlo_kl(
    a: Distribution, b: Distribution, direction: str, num_samples: int, seed: int | None
) -> KLEstimate:
    """:math:`\\frac1S\\sum_s \\log a(z_s) - \\log b(z_s)`, :math:`z_s \\sim a`."""
    with torch.no_grad(), torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        z = a.sample((num_samples,))
        diff = a.log_prob(z) - b.log_prob(z)
    value = diff.mean(0)
    stderr = diff.std(0) / math.sqrt(num_samples)
    return KLEstimate(value, stderr, "mc", direction, num_samples)


def reverse_kl(q: Distribution, p: Distribution, **kwargs: object) -> KLEstimate:
    """Reverse (exclusive) :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q(z) - \\log p(z)]`.

    The divergence VI minimises: :math:`\\mathrm{ELBO}(q) = \\log p(D) - \\mathrm{KL}(q\\|p)`.
    It is mode-seeking (``q`` avoids regions where ``p`` is small) and tends to
    underestimate variance. Keyword arguments go to :func:`kl`.
    """
    return kl(q, p, direction="reverse", **kwargs)  # type: ignore[arg-type]


def forward_kl(q: Distribution, p: Distribution, **kwargs: object) -> KLEstimate:
    """Forward (inclusive) :math:`\\mathrm{KL}(p\\|q) = \\mathbb{E}_p[\\log p(z) - \\log q(z)]`.

    Arguments keep the order ``(q, p)`` of :func:`reverse_kl`: ``q`` is the approximation,
    ``p`` the target, and the expectation is under ``p``. Mass-covering: ``q`` must put
    density wherever ``p`` does. Keyword arguments go to :func:`kl`.
    """
    return kl(q, p, direction="forward", **kwargs)  # type: ignore[arg-type]


def kl_normal(
    mu1: Tensor | float, s1: Tensor | float, mu2: Tensor | float, s2: Tensor | float
) -> Tensor:
    """:math:`\\mathrm{KL}(\\mathcal{N}(\\mu_1, s_1^2) \\| \\mathcal{N}(\\mu_2, s_2^2))`, elementwise.

    .. math::

        \\log\\frac{s_2}{s_1} + \\frac{s_1^2 + (\\mu_1 - \\mu_2)^2}{2 s_2^2} - \\frac12.

    Example:
        >>> round(kl_normal(0.0, 1.0, 1.0, 2.0).item(), 6)
        0.443147
    """
    mu1, s1, mu2, s2 = (
        torch.as_tensor(x, dtype=torch.get_default_dtype()) for x in (mu1, s1, mu2, s2)
    )
    if torch.any(s1 <= 0) or torch.any(s2 <= 0):
        raise ValueError("standard deviations s1 and s2 must be positive")
    return torch.log(s2 / s1) + (s1**2 + (mu1 - mu2) ** 2) / (2 * s2**2) - 0.5


def kl_mvn(m1: Tensor, S1: Tensor, m2: Tensor, S2: Tensor) -> Tensor:
    """:math:`\\mathrm{KL}(\\mathcal{N}(m_1, S_1) \\| \\mathcal{N}(m_2, S_2))` in :math:`k` dimensions.

    .. math::

        \\frac12\\Big[\\mathrm{tr}(S_2^{-1}S_1) + (m_2 - m_1)^\\top S_2^{-1}(m_2 - m_1) - k
            + \\log\\det S_2 - \\log\\det S_1\\Big],

    computed with Cholesky factors :math:`S_i = L_i L_i^\\top`:
    :math:`\\mathrm{tr}(S_2^{-1}S_1) = \\|L_2^{-1}L_1\\|_F^2` and
    :math:`\\log\\det S_i = 2\\sum_j \\log (L_i)_{jj}`.

    Example:
        >>> import torch
        >>> kl_mvn(torch.zeros(2), torch.eye(2), torch.zeros(2), 4 * torch.eye(2))
        tensor(0.6363)
    """
    m1, S1, m2, S2 = (torch.as_tensor(x) for x in (m1, S1, m2, S2))
    k = m1.shape[-1]
    if S1.shape[-2:] != (k, k) or S2.shape[-2:] != (k, k) or m2.shape[-1] != k:
        raise ValueError(
            f"shapes do not match: m1 {tuple(m1.shape)}, S1 {tuple(S1.shape)}, "
            f"m2 {tuple(m2.shape)}, S2 {tuple(S2.shape)}; expected (k,), (k, k), (k,), (k, k)"
        )
    L1, info1 = torch.linalg.cholesky_ex(S1)
    L2, info2 = torch.linalg.cholesky_ex(S2)
    if torch.any(info1 != 0) or torch.any(info2 != 0):
        raise ValueError("S1 and S2 must be symmetric positive definite covariance matrices")
    M = torch.linalg.solve_triangular(L2, L1, upper=False)
    trace = M.square().sum((-2, -1))
    diff = torch.linalg.solve_triangular(L2, (m2 - m1).unsqueeze(-1), upper=False).squeeze(-1)
    mahalanobis = diff.square().sum(-1)
    log_det1 = 2 * torch.diagonal(L1, dim1=-2, dim2=-1).log().sum(-1)
    log_det2 = 2 * torch.diagonal(L2, dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - k + log_det2 - log_det1)
