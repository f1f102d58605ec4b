"""Normalizing flows :math:`z = T_L \\circ \\dots \\circ T_1(x)`, :math:`x \\sim \\mathcal{N}(\\mu, \\mathrm{diag}(\\sigma^2))`.

The density follows from the change of variables,

.. math::

    \\log q(z) = \\log q_0(x) - \\sum_{l=1}^L \\log\\lvert\\det J_{T_l}(x_{l-1})\\rvert,

and is computed *while sampling* (:meth:`NormalizingFlow.rsample_and_log_prob`): each layer
returns its log-Jacobian on the forward pass, so no layer is ever inverted. That matters:
inverting an inverse-autoregressive layer takes :math:`D` sequential passes, and planar and
radial layers have no inverse at all.

The layers are Pyro's (``pyro.distributions.transforms``); this module only stacks them,
adds a fixed reversal between coupling layers (a coupling layer leaves its first half
unchanged) and registers them as submodules so ``parameters()`` and ``state_dict`` see them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pyro.distributions import transforms as T
from torch import Tensor, nn
from torch.distributions import Independent, Normal, Transform, TransformedDistribution

from ..registry import FAMILIES
from .base import VariationalFamily, inverse_softplus
from .gaussian import _initial_loc, _initial_scale

__all__ = ["NormalizingFlow", "FlowLayers", "TRANSFORMS"]


def _iaf(dim: int, hidden_dims: list[int] | None, **_: Any) -> nn.Module:
    return T.affine_autoregressive(dim, hidden_dims=hidden_dims)


def _spline_coupling(dim: int, hidden_dims: list[int] | None, count_bins: int, bound: float):
    return T.spline_coupling(dim, hidden_dims=hidden_dims, count_bins=count_bins, bound=bound)


def _spline_autoregressive(
    dim: int, hidden_dims: list[int] | None, count_bins: int, bound: float
) -> nn.Module:
    return T.spline_autoregressive(dim, hidden_dims=hidden_dims, count_bins=count_bins, bound=bound)


def _affine_coupling(dim: int, hidden_dims: list[int] | None, **_: Any) -> nn.Module:
    return T.affine_coupling(dim, hidden_dims=hidden_dims)


def _planar(dim: int, **_: Any) -> nn.Module:
    return T.planar(dim)


def _radial(dim: int, **_: Any) -> nn.Module:
    return T.radial(dim)


#: Layer name -> (factory, is a coupling layer, is invertible).
TRANSFORMS: dict[str, tuple[Callable[..., nn.Module], bool, bool]] = {
    "iaf": (_iaf, False, True),
    "spline_coupling": (_spline_coupling, True, True),
    "spline_autoregressive": (_spline_autoregressive, False, True),
    "affine_coupling": (_affine_coupling, True, True),
    "planar": (_planar, False, False),
    "radial": (_radial, False, False),
}


class FlowLayers(nn.Module):
    """A stack of Pyro transform modules, with reversals between coupling layers.

    Args:
        dim: event dimension :math:`D`.
        transform: one of :data:`TRANSFORMS` (``"iaf"``, ``"spline_coupling"``,
            ``"spline_autoregressive"``, ``"affine_coupling"``, ``"planar"``, ``"radial"``).
        layers: number of layers :math:`L \\ge 1`.
        hidden_dims: hidden sizes of the conditioner networks (Pyro's default if ``None``).
        count_bins: spline segments (spline layers only).
        bound: splines act on :math:`[-B, B]` and are the identity outside (spline layers).
    """

    def __init__(
        self,
        dim: int,
        transform: str = "iaf",
        layers: int = 2,
        hidden_dims: list[int] | tuple[int, ...] | None = None,
        count_bins: int = 8,
        bound: float = 3.0,
    ) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose one of {sorted(TRANSFORMS)}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive int, got {layers!r}")
        factory, coupling, invertible = TRANSFORMS[transform]
        if coupling and dim < 2:
            raise ValueError(
                f"transform {transform!r} splits z in two halves and needs dim >= 2, got "
                f"dim={dim}; use 'iaf', 'planar' or 'radial'"
            )
        if transform in ("iaf", "spline_autoregressive") and dim < 2:
            raise ValueError(
                f"transform {transform!r} is autoregressive and needs dim >= 2, got dim={dim}; "
                "use 'planar' or 'radial'"
            )
        hidden = list(hidden_dims) if hidden_dims is not None else None
        self.transform = transform
        self.coupling = coupling
        self.invertible = invertible
        self.layers = nn.ModuleList(
            factory(dim, hidden_dims=hidden, count_bins=count_bins, bound=bound)
            for _ in range(layers)
        )
        # Deterministic (not saved): the reversal never changes. One Permute object per
        # gap between layers, since each caches its own last (input, output) pair.
        self.register_buffer("reverse", torch.arange(dim - 1, -1, -1), persistent=False)
        self._permutes: list[T.Permute] = []

    def parts(self) -> list[Transform]:
        """The transforms in order, with a reversal between coupling layers."""
        if not self.coupling:
            return list(self.layers)
        if not self._permutes or self._permutes[0].permutation is not self.reverse:
            # Rebuilt after .to(device), which replaces the buffer.
            self._permutes = [T.Permute(self.reverse) for _ in range(len(self.layers) - 1)]
        parts: list[Transform] = [self.layers[0]]
        for permute, layer in zip(self._permutes, self.layers[1:], strict=True):
            parts += [permute, layer]
        return parts

    def push_forward(self, x: Tensor, log_q: Tensor) -> tuple[Tensor, Tensor]:
        """Push ``x`` (density ``log_q``) through the layers, subtracting log-Jacobians."""
        for part in self.parts():
            y = part(x)
            ladj = part.log_abs_det_jacobian(x, y)
            # Element-wise transforms return one term per coordinate; sum them.
            while ladj.dim() > log_q.dim():
                ladj = ladj.sum(-1)
            log_q = log_q - ladj
            x = y
        return x, log_q

    def start_at_identity(self) -> bool:
        """Make every layer the identity map, where its parametrisation allows; True if all did.

        Affine autoregressive and affine coupling layers output :math:`y = e^{s}x + t` from a
        network: its last linear layer set to zero gives :math:`s = t = 0`. Spline, planar
        and radial layers are left as built (False): Pyro's planar layer reparametrises
        :math:`u` to keep itself invertible, so no setting of its parameters is the identity.
        """
        every = True
        with torch.no_grad():
            for layer in self.layers:
                if isinstance(layer, T.AffineAutoregressive):
                    last = layer.arn.layers[-1]
                elif isinstance(layer, T.AffineCoupling):
                    last = layer.nn.layers[-1]
                else:
                    every = False
                    continue
                last.weight.zero_()
                last.bias.zero_()
        return every

    def clear_cache(self) -> None:
        """Forget what Pyro's layers cached from the last forward pass (inputs, outputs,
        log-Jacobians); the next ``log_prob`` then recomputes (or inverts) from scratch."""
        for part in [*self.modules(), *self._permutes]:
            if not isinstance(part, Transform):
                continue
            for name in list(vars(part)):
                if name == "_cached_x_y":
                    part._cached_x_y = None, None
                elif name.startswith("_cache") and name != "_cache_size":
                    setattr(part, name, None)

    def __getstate__(self) -> dict[str, Any]:
        # The caches hold non-leaf tensors, which deepcopy and pickle refuse.
        self.clear_cache()
        return super().__getstate__()

    def extra_repr(self) -> str:
        return f"transform={self.transform!r}, layers={len(self.layers)}"


@FAMILIES.register("flow", "normalizing flow (Pyro transforms), transform, layers")
class NormalizingFlow(VariationalFamily):
    """A normalizing flow over a learnable diagonal Gaussian base.

    ``forward`` returns ``TransformedDistribution(Normal(mu, sigma), layers)``; mean and
    variance are Monte Carlo (no closed form), the entropy is Monte Carlo in the ELBO.
    ``log_prob`` of an arbitrary ``z`` inverts the flow (sequential for autoregressive
    layers; impossible for ``"planar"`` and ``"radial"``, where only the draw just made is
    known, from Pyro's cache): training never needs it.

    Args:
        dim: dimension :math:`D`.
        transform: layer type, see :class:`FlowLayers`.
        layers: number of layers.
        hidden_dims, count_bins, bound: passed to the layers.
        init_loc, init_scale: the base Gaussian's initial mean and standard deviation.

    Example:
        >>> q = NormalizingFlow(2, transform="spline_coupling", layers=4)
        >>> z, log_q = q.rsample_and_log_prob((16,))
        >>> z.shape, log_q.shape
        (torch.Size([16, 2]), torch.Size([16]))
    """

    def __init__(
        self,
        dim: int,
        transform: str = "iaf",
        layers: int = 2,
        hidden_dims: list[int] | tuple[int, ...] | None = None,
        count_bins: int = 8,
        bound: float = 3.0,
        init_loc: Tensor | float = 0.0,
        init_scale: Tensor | float = 1.0,
    ) -> None:
        super().__init__(dim)
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.raw_scale = nn.Parameter(inverse_softplus(_initial_scale(dim, init_scale)))
        self.flow = FlowLayers(dim, transform, layers, hidden_dims, count_bins, bound)
        # A fixed affine map after the layers, z = a + A y: the identity until
        # initialize_from_gaussian places the flow at a Gaussian (saved with the state).
        self.register_buffer("out_loc", torch.zeros(dim))
        self.register_buffer("out_scale_tril", torch.eye(dim))
        self.register_buffer("has_affine", torch.zeros((), dtype=torch.bool))

    def base(self) -> Independent:
        """The base distribution :math:`\\mathcal{N}(\\mu, \\mathrm{diag}(\\sigma^2))`."""
        return Independent(Normal(self.loc, F.softplus(self.raw_scale), validate_args=False), 1)

    def _parts(self) -> list[Transform]:
        parts = self.flow.parts()
        if bool(self.has_affine):
            parts = [*parts, T.LowerCholeskyAffine(self.out_loc, self.out_scale_tril)]
        return parts

    def forward(self, context: Tensor | None = None) -> TransformedDistribution:
        return TransformedDistribution(self.base(), self._parts(), validate_args=False)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size | tuple[int, ...] = (), context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fused: :math:`\\log q(z)` accumulated from the layers' forward log-Jacobians."""
        base = self.base()
        x = base.rsample(torch.Size(sample_shape))
        z, log_q = self.flow.push_forward(x, base.log_prob(x))
        if bool(self.has_affine):
            z = self.out_loc + z @ self.out_scale_tril.mT
            log_q = log_q - torch.diagonal(self.out_scale_tril).log().sum()
        return z, log_q

    def initialize_from_gaussian(self, loc: Tensor, covariance: Tensor) -> None:
        """Start at :math:`\\mathcal{N}(m, \\Sigma)`: :math:`z = m + L y` with :math:`LL^\\top = \\Sigma`.

        The base becomes :math:`\\mathcal{N}(0, I)`, the layers the identity where their
        parametrisation has one (:meth:`FlowLayers.start_at_identity`: affine autoregressive
        and affine coupling; spline, planar and radial layers stay as built) and the fixed affine
        map after the layers carries the Gaussian, so that :math:`q` starts *at* the Gaussian
        solution and training learns only what it misses. The automatic method uses this to
        place a flow at the Laplace approximation before stochastic-gradient training.
        """
        with torch.no_grad():
            chol = torch.linalg.cholesky(covariance.double()).to(self.out_scale_tril)
            self.out_loc.copy_(loc.to(self.out_loc))
            self.out_scale_tril.copy_(chol)
            self.has_affine.fill_(True)
            self.flow.start_at_identity()
            self.loc.zero_()
            self.raw_scale.copy_(inverse_softplus(torch.ones_like(self.raw_scale)))

    def log_prob_detached(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError(
            "gradient='stl' needs log q(z) at detached parameters, which for a flow means "
            "inverting it; use ELBO(gradient='reparam') with NormalizingFlow"
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
