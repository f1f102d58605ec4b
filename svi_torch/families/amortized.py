"""Amortized families :math:`q_\\phi(z_i \\mid x_i)` for local latent variables.

A model with one latent :math:`z_i` per data point (probabilistic PCA, a variational
autoencoder) has a posterior over :math:`N` latents. Instead of :math:`N` sets of
variational parameters, an *encoder* network maps each data point :math:`x_i` (the
``context``) to the parameters of :math:`q(z_i \\mid x_i)`; the cost per step is
:math:`O(B)` and new points get a posterior in one forward pass (amortized VI, Kingma and
Welling 2014; Rezende et al. 2014). For a minibatch of ``B`` contexts ``forward`` returns
a distribution with batch shape ``(B,)`` and event shape ``(dim,)``; the ELBO scales its
per-point terms by :math:`N/B` (see :class:`~svi_torch.models.latent.LocalLatentModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    Normal,
    TransformedDistribution,
)

from ..registry import FAMILIES
from .base import VariationalFamily, inverse_softplus
from .flows import FlowLayers

__all__ = ["AmortizedGaussian"]


@FAMILIES.register("amortized", "encoder x_i -> q(z_i | x_i) for local latents, context_dim")
class AmortizedGaussian(VariationalFamily):
    """Encoder :math:`x_i \\mapsto q(z_i \\mid x_i)`: a diagonal or low-rank Gaussian, optionally
    followed by a flow.

    The encoder is an MLP (``hidden_dims`` empty: a linear map) with outputs
    :math:`\\mu(x)`, :math:`\\sigma(x) = \\mathrm{softplus}(\\cdot)` and, for
    ``covariance="lowrank"``, a factor :math:`W(x) \\in \\mathbb{R}^{D \\times r}`:
    :math:`q(z_i \\mid x_i) = \\mathcal{N}(\\mu(x_i), W(x_i)W(x_i)^\\top + \\mathrm{diag}\\,
    \\sigma(x_i)^2)`. With ``flow="iaf"`` (or any :class:`~svi_torch.families.flows.FlowLayers`
    transform) the Gaussian draw is pushed through ``flow_layers`` layers shared by all
    points, and :math:`\\log q` is accumulated on the forward pass.

    Args:
        dim: latent dimension per data point.
        context_dim: dimension of each context :math:`x_i` (last axis of ``context``).
        hidden_dims: encoder hidden sizes.
        covariance: ``"diag"`` or ``"lowrank"``.
        rank: columns of :math:`W(x)` for ``"lowrank"``.
        flow: optional flow transform name, e.g. ``"iaf"``.
        flow_layers: number of flow layers.
        init_scale: the encoder's output scale at initialisation (its last layer's bias).

    Example:
        >>> q = AmortizedGaussian(2, context_dim=5, hidden_dims=(32,))
        >>> z, log_q = q.rsample_and_log_prob((3,), context=torch.randn(10, 5))
        >>> z.shape, log_q.shape
        (torch.Size([3, 10, 2]), torch.Size([3, 10]))
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden_dims: Sequence[int] = (64,),
        covariance: Literal["diag", "lowrank"] = "diag",
        rank: int = 1,
        flow: str | None = None,
        flow_layers: int = 2,
        init_scale: float = 0.5,
    ) -> None:
        super().__init__(dim)
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
            raise ValueError(f"context_dim must be a positive int, got {context_dim!r}")
        if covariance not in ("diag", "lowrank"):
            raise ValueError(f"covariance must be 'diag' or 'lowrank', got {covariance!r}")
        if covariance == "lowrank" and not (isinstance(rank, int) and 1 <= rank <= dim):
            raise ValueError(f"rank must be an int in [1, dim={dim}], got {rank!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale!r}")
        self.context_dim = context_dim
        self.covariance_type = covariance
        self.rank = rank if covariance == "lowrank" else 0
        sizes = [context_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        head = nn.Linear(sizes[-1], dim * (2 + self.rank))
        with torch.no_grad():
            # Start near q = N(0, init_scale^2) whatever x is: small weights, fixed bias.
            head.weight.mul_(0.1)
            head.bias.zero_()
            head.bias[dim : 2 * dim] = inverse_softplus(init_scale)
        self.encoder = nn.Sequential(*layers, head)
        self.flow = FlowLayers(dim, flow, flow_layers) if flow is not None else None

    def _check_context(self, context: Tensor | None) -> Tensor:
        if context is None:
            raise ValueError(
                f"{type(self).__name__} maps each data point x_i (the context) to "
                "q(z_i | x_i) and needs context of shape (batch, context_dim); in a model "
                "with local latents the ELBO passes batch['context'] (LocalLatentModel adds it)"
            )
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context has last dimension {context.shape[-1]}, but the encoder expects "
                f"context_dim={self.context_dim}"
            )
        return context

    def gaussian(self, context: Tensor | None) -> Independent | LowRankMultivariateNormal:
        """The Gaussian :math:`q(\\cdot \\mid x)` before the flow."""
        out = self.encoder(self._check_context(context))
        d = self.dim
        loc, scale = out[..., :d], F.softplus(out[..., d : 2 * d])
        if self.covariance_type == "diag":
            return Independent(Normal(loc, scale, validate_args=False), 1)
        factor = out[..., 2 * d :].unflatten(-1, (d, self.rank))
        return LowRankMultivariateNormal(loc, factor, scale**2, validate_args=False)

    def forward(self, context: Tensor | None = None) -> Distribution:
        base = self.gaussian(context)
        if self.flow is None:
            return base
        return TransformedDistribution(base, self.flow.parts(), validate_args=False)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        base = self.gaussian(context)
        x = base.rsample(torch.Size(sample_shape))
        if self.flow is None:
            return x, base.log_prob(x)
        return self.flow.push_forward(x, base.log_prob(x))

    @property
    def has_analytic_entropy(self) -> bool:
        """Gaussian entropies are analytic; with a flow on top the ELBO uses Monte Carlo."""
        return self.flow is None

    def log_prob_detached(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        if self.flow is not None:
            raise NotImplementedError(
                "gradient='stl' needs log q(z) at detached parameters, which for a flow means "
                "inverting it; use ELBO(gradient='reparam') with a flow on top"
            )
        return super().log_prob_detached(z, context)

    def extra_repr(self) -> str:
        text = (
            f"dim={self.dim}, context_dim={self.context_dim}, covariance={self.covariance_type!r}"
        )
        return text + (f", rank={self.rank}" if self.rank else "")
