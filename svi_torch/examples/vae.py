"""A small variational autoencoder on generated data, next to probabilistic PCA.

Data lie near a curved 2-D manifold in :math:`\\mathbb{R}^p` (a random tanh network of a
2-D Gaussian, plus noise). The VAE has a local latent :math:`z_i \\sim \\mathcal{N}(0, I_2)`
per point, an MLP decoder :math:`x_i \\mid z_i \\sim \\mathcal{N}(g_\\theta(z_i), \\sigma^2 I)`
(:math:`\\theta, \\sigma` model parameters) and an amortized encoder
:math:`q_\\phi(z_i \\mid x_i)`; ``fit`` trains both with minibatches (each per-point term
scaled by :math:`N/B`). Its ELBO is a lower bound on its own :math:`\\log p_\\theta(X)`; when
it exceeds probabilistic PCA's *exact maximum* log-likelihood, the nonlinear model
explains the data better than any linear-Gaussian one of the same latent dimension.

Run: ``python -m svi_torch.examples.vae --steps 3000``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

import svi_torch as st
from svi_torch.data import Batch
from svi_torch.families import AmortizedGaussian, inverse_softplus
from svi_torch.models import LocalLatentModel, estimate_local_elbo, ppca_maximum_likelihood

__all__ = ["GaussianVAE", "manifold_data", "run", "main"]


class GaussianVAE(LocalLatentModel):
    """Decoder :math:`x_i \\mid z_i \\sim \\mathcal{N}(g_\\theta(z_i), \\sigma^2 I)` with an MLP
    :math:`g_\\theta`; prior :math:`z_i \\sim \\mathcal{N}(0, I)`.

    Args:
        x: data ``(N, p)``.
        latent_dim: :math:`d`.
        hidden_dims: decoder hidden sizes.
    """

    def __init__(self, x: Tensor, latent_dim: int = 2, hidden_dims: Sequence[int] = (32,)):
        super().__init__(latent_dim)
        self.set_data(x=x)
        sizes = [latent_dim, *hidden_dims]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        self.decoder = nn.Sequential(*layers, nn.Linear(sizes[-1], x.shape[1]))
        self.raw_noise = nn.Parameter(inverse_softplus(x.std(0).mean().item()))

    def log_likelihood(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        mean = self.decoder(params["z"])  # (S, B, p)
        return Normal(mean, F.softplus(self.raw_noise)).log_prob(batch["x"]).sum(-1)


def manifold_data(
    num_data: int = 2000, data_dim: int = 8, noise_scale: float = 0.1, seed: int = 0
) -> Tensor:
    """Points :math:`x_i = A_2 \\tanh(A_1 z_i + b) + \\epsilon_i`, :math:`z_i \\sim \\mathcal{N}(0,
    I_2)`, :math:`\\epsilon_i \\sim \\mathcal{N}(0, \\text{noise\\_scale}^2 I)`."""
    g = torch.Generator().manual_seed(seed)
    A1 = 1.5 * torch.randn(16, 2, generator=g)
    b = torch.randn(16, generator=g)
    A2 = torch.randn(data_dim, 16, generator=g) / 4
    z = torch.randn(num_data, 2, generator=g)
    return torch.tanh(z @ A1.mT + b) @ A2.mT + noise_scale * torch.randn(
        num_data, data_dim, generator=g
    )


def run(
    num_data: int = 2000,
    steps: int = 3000,
    batch_size: int = 100,
    lr: float = 1e-2,
    seed: int = 0,
) -> dict[str, float]:
    """Fit the VAE; return per-point figures: its ELBO (with standard error) and PPCA's
    exact maximum log-likelihood on the same data."""
    torch.manual_seed(seed)
    x = manifold_data(num_data, seed=seed)
    model = GaussianVAE(x, latent_dim=2)
    family = AmortizedGaussian(model.dim, context_dim=x.shape[1], hidden_dims=(32,))
    st.fit(
        model,
        family,
        st.objectives.ELBO(num_particles=1),
        steps=steps,
        batch_size=batch_size,
        method=st.methods.SGD(lr=lr),
        seed=seed,
    )
    elbo, se = estimate_local_elbo(model, family, num_particles=50)
    *_, ppca_log_lik = ppca_maximum_likelihood(x, 2)
    return {
        "vae_elbo_per_point": elbo / num_data,
        "vae_elbo_se_per_point": se / num_data,
        "ppca_max_log_lik_per_point": ppca_log_lik.item() / num_data,
        "vae_noise_scale": F.softplus(model.raw_noise).item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    figures = run(args.num_data, args.steps, args.batch_size, args.lr, args.seed)
    for key, value in figures.items():
        print(f"{key} {value:.4f}")
    gain = figures["vae_elbo_per_point"] - figures["ppca_max_log_lik_per_point"]
    print(f"vae_elbo_minus_ppca_per_point {gain:.4f}")
    return 0 if math.isfinite(gain) else 1


if __name__ == "__main__":
    sys.exit(main())
