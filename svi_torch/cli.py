"""The ``svi-torch`` command line: builds objects from settings and calls the library."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _quickstart() -> int:
    """Built-in default run: full-rank Gaussian VI on a correlated Bayesian linear regression."""
    import torch

    import svi_torch as st

    X, y, _ = st.models.regression_data(num_data=4000, dim=5, correlation=0.6, seed=0)
    model = st.models.BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)
    family = st.families.FullRankGaussian(model.dim)
    result = st.fit(
        model,
        family,
        st.objectives.ELBO(num_particles=16),
        batch_size=64,
        steps=3000,
        lr=3e-2,
        seed=0,
        progress=None,
    )
    post = model.exact_posterior()
    with torch.no_grad():
        q = torch.distributions.MultivariateNormal(family.loc, family.covariance())
        kl = torch.distributions.kl_divergence(q, post).item()
    elbo, se = result.elbo(4000)
    print(f"steps: {result.steps}  ({result.steps_per_second:.0f} steps/s)")
    print(f"ELBO: {elbo:.3f} +- {se:.3f}   log p(D): {model.log_evidence().item():.3f}")
    print(f"KL(q || exact posterior): {kl:.4f} nats")
    for name, stats in result.posterior_summary().items():
        print(f"  {name:8s} mean {stats['mean']:+.4f}  sd {stats['sd']:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="svi-torch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train (no config: the built-in quickstart)")
    args = parser.parse_args(argv)
    if args.command == "train":
        return _quickstart()
    return 2


if __name__ == "__main__":
    sys.exit(main())
