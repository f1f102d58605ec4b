"""Density-only targets with hard geometry: Neal's funnel, a banana, two separated modes.

They have no data (``num_data == 0``): ``log_prior`` is the whole log density and
``fit`` trains on it. Each density here is *normalised*, so :math:`\\log Z = 0`
(:meth:`log_normalizer`) and any ELBO estimate gives the reverse KL directly:
:math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q - \\log p] = \\log Z - \\mathrm{ELBO}`.
Each also draws exact samples (:meth:`sample`), for the forward KL
:math:`\\mathrm{KL}(p\\|q) = \\mathbb{E}_p[\\log p - \\log q]` or for checks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import Normal

from ..registry import MODELS
from .base import Model

__all__ = ["Funnel", "Banana", "BimodalTarget"]


class _Target(Model):
    """A normalised density on :math:`\\mathbb{R}^D` given by ``log_prior``."""

    def log_normalizer(self) -> float:
        """:math:`\\log Z = \\log \\int p(z)\\,dz = 0`: the density is normalised."""
        return 0.0

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        return torch.zeros_like(next(iter(params.values()))[..., 0])


@MODELS.register("funnel", "Neal's funnel, density only (log Z = 0)")
class Funnel(_Target):
    """Neal's funnel: :math:`v \\sim \\mathcal{N}(0, s^2)`, :math:`x_k \\mid v \\sim
    \\mathcal{N}(0, e^{v})`, :math:`k = 1..D-1`.

    The scale of :math:`x` changes by orders of magnitude with :math:`v`: no single
    Gaussian fits both the neck and the mouth.

    Args:
        dim: total dimension :math:`D \\ge 2` (one :math:`v`, :math:`D-1` :math:`x`'s).
        v_scale: :math:`s` (Neal used 3).
    """

    def __init__(self, dim: int = 2, v_scale: float = 3.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an int >= 2, got {dim!r}")
        if not v_scale > 0:
            raise ValueError(f"v_scale must be positive, got {v_scale!r}")
        self.v_scale = float(v_scale)
        self.add_param("v")
        self.add_param("x", shape=(dim - 1,))

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        v, x = params["v"], params["x"]
        log_p_v = Normal(0.0, self.v_scale).log_prob(v)
        return log_p_v + Normal(0.0, (0.5 * v).exp()[..., None]).log_prob(x).sum(-1)

    def sample(self, num_samples: int, seed: int = 0) -> Tensor:
        """Exact draws of :math:`z = (v, x)`, shape ``(num_samples, D)``."""
        g = torch.Generator().manual_seed(seed)
        v = self.v_scale * torch.randn(num_samples, 1, generator=g)
        x = (0.5 * v).exp() * torch.randn(num_samples, self.dim - 1, generator=g)
        return torch.cat([v, x], -1)


@MODELS.register("banana", "banana-shaped density, density only (log Z = 0)")
class Banana(_Target):
    """A banana (Haario et al. 1999): :math:`z_1 \\sim \\mathcal{N}(0, a^2)`,
    :math:`z_2 \\mid z_1 \\sim \\mathcal{N}(b(z_1^2 - a^2), 1)`.

    The shear :math:`(z_1, z_2) \\mapsto (z_1, z_2 - b(z_1^2 - a^2))` has unit Jacobian, so
    the density is normalised; its mean is 0 and its curvature grows with :math:`b`.

    Args:
        scale: :math:`a`.
        curvature: :math:`b`.
    """

    def __init__(self, scale: float = 1.0, curvature: float = 1.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        self.scale, self.curvature = float(scale), float(curvature)
        self.add_param("z", shape=(2,))

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        z1, z2 = params["z"][..., 0], params["z"][..., 1]
        shift = self.curvature * (z1.square() - self.scale**2)
        return Normal(0.0, self.scale).log_prob(z1) + Normal(0.0, 1.0).log_prob(z2 - shift)

    def sample(self, num_samples: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        z1 = self.scale * torch.randn(num_samples, generator=g)
        z2 = self.curvature * (z1.square() - self.scale**2) + torch.randn(num_samples, generator=g)
        return torch.stack([z1, z2], -1)


class BimodalTarget(_Target):
    """Two unit-covariance Gaussian modes at :math:`\\pm\\frac{\\delta}{2} e_1` with weights
    :math:`(\\pi, 1 - \\pi)`.

    With separation :math:`\\delta \\gtrsim 6` the modes barely overlap, and the reverse KL
    :math:`\\mathrm{KL}(q\\|p)` of a single Gaussian is minimised on one mode.

    Args:
        dim: dimension :math:`D`.
        separation: :math:`\\delta`, distance between the modes.
        weight: :math:`\\pi`, the weight of the mode at :math:`+\\frac{\\delta}{2} e_1`.
    """

    def __init__(self, dim: int = 2, separation: float = 8.0, weight: float = 0.3) -> None:
        super().__init__()
        if not 0 < weight < 1:
            raise ValueError(f"weight must be in (0, 1), got {weight!r}")
        self.weight = float(weight)
        self.add_param("z", shape=(dim,))
        centre = torch.zeros(dim)
        centre[0] = separation / 2
        self.register_buffer("modes", torch.stack([centre, -centre]))

    def log_prior(self, params: Mapping[str, Tensor]) -> Tensor:
        z = params["z"][..., None, :]  # (..., 1, D) against the two modes
        log_w = torch.tensor([self.weight, 1 - self.weight]).log().to(z)
        log_n = Normal(self.modes.to(z), 1.0).log_prob(z).sum(-1)
        return torch.logsumexp(log_w + log_n, -1)

    def sample(self, num_samples: int, seed: int = 0) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        first = torch.rand(num_samples, generator=g) < self.weight
        z = torch.randn(num_samples, self.dim, generator=g)
        return z + torch.where(first[:, None], self.modes[0], self.modes[1])
