"""Cost of one training step through the Pyro bridge, against the same model written natively.

The model is a linear regression with unknown noise,
:math:`\\beta \\sim \\mathcal{N}(0, I_D)`, :math:`\\sigma \\sim \\mathrm{HalfNormal}(1)`,
:math:`y_i \\sim \\mathcal{N}(x_i^\\top\\beta, \\sigma^2)`, as

* ``native``: :class:`svi_torch.models.BayesianLinearRegression` (``noise_scale=None``);
* ``native-bcast``: the same native model computing what the broadcasting Pyro model
  computes (rows gathered by ``X[idx]``, means by ``(X * beta).sum(-1)`` instead of
  ``index_select`` and a matrix product), so that the model's own formulation and the
  bridge's overhead can be told apart;
* ``plate``: a Pyro model that broadcasts (``(X[idx] * beta).sum(-1)``), particles in one run
  under the particle plate;
* ``vmap``: the same model written for one draw (``X[idx] @ beta``), particles by
  ``torch.func.vmap``;
* ``loop``: the broadcasting Pyro model, one run per particle.

A step is what the trainer does: the ELBO of ``K`` particles on a minibatch of ``B`` rows
(likelihood scaled by ``N/B``), its backward pass and an Adam update of a mean-field
Gaussian. Each repeat times a block of steps of every variant in turn (paired, so a load
change on the machine hits all of them), in process CPU time (``time.process_time``: on a
shared machine, time spent waiting for a core is not counted); the table gives the median
time per step and the median over repeats of each variant's ratio to the native step of
the same repeat (and the quartiles of those ratios). One CPU thread.

Usage: ``python benchmarks/pyro_bridge_overhead.py [--rows N] [--dim D] [--batch B]
[--particles K] [--repeats R] [--steps S]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svi_torch.data import Batch  # noqa: E402
from svi_torch.families import MeanFieldGaussian  # noqa: E402
from svi_torch.models import BayesianLinearRegression, Model, PyroModel  # noqa: E402
from svi_torch.objectives import ELBO  # noqa: E402


def broadcasting(X: torch.Tensor, y: torch.Tensor) -> None:
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal((X[idx] * beta).sum(-1), sigma), obs=y[idx])


def one_draw(X: torch.Tensor, y: torch.Tensor) -> None:
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal(X[idx] @ beta, sigma), obs=y[idx])


class BroadcastRegression(BayesianLinearRegression):
    """The native regression, computed as the broadcasting Pyro model computes it."""

    def index_data(self, indices: torch.Tensor) -> Batch:
        return {"X": self.X[indices], "y": self.y[indices]}

    def log_likelihood(self, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        mean = (batch["X"] * params["beta"].unsqueeze(-2)).sum(-1)
        sigma = params["sigma"].unsqueeze(-1)
        return torch.distributions.Normal(mean, sigma).log_prob(batch["y"]).sum(-1)


def make_step(model: Model, particles: int, batch_size: int, seed: int) -> Callable[[], None]:
    """One trainer-like step: minibatch ELBO, backward, Adam."""
    torch.manual_seed(seed)
    family = MeanFieldGaussian(model.dim)
    optimizer = torch.optim.Adam(family.parameters(), lr=1e-2)
    objective = ELBO(num_particles=particles)
    generator = torch.Generator().manual_seed(seed)
    n = model.num_data
    scale = n / batch_size

    def step() -> None:
        indices = torch.randint(n, (batch_size,), generator=generator)
        batch = model.index_data(indices)
        optimizer.zero_grad(set_to_none=True)
        output = objective(family, model, batch, likelihood_scale=scale)
        output.loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.rows, args.dim, generator=g)
    y = X @ torch.randn(args.dim, generator=g) + 0.5 * torch.randn(args.rows, generator=g)
    models: dict[str, Model] = {
        "native": BayesianLinearRegression(X, y, noise_scale=None),
        "native-bcast": BroadcastRegression(X, y, noise_scale=None),
        "plate": PyroModel(broadcasting, X, y, data_plate="data", vectorize_particles="plate"),
        "vmap": PyroModel(one_draw, X, y, data_plate="data", vectorize_particles="vmap"),
        "loop": PyroModel(broadcasting, X, y, data_plate="data", vectorize_particles="loop"),
    }
    steps = {name: make_step(m, args.particles, args.batch, 0) for name, m in models.items()}
    for step in steps.values():  # warm-up
        for _ in range(max(args.steps // 5, 5)):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.process_time()
            for _ in range(args.steps):
                step()
            times[name].append((time.process_time() - start) / args.steps * 1e6)
    native = times["native"]
    print(f"`{' '.join(['python', *sys.argv])}`\n")
    print(
        f"N={args.rows}, D={args.dim}, B={args.batch}, K={args.particles}; median of "
        f"{args.repeats} paired repeats of {args.steps} steps; one thread; torch "
        f"{torch.__version__}, pyro {pyro.__version__}\n"
    )
    print("| path | CPU us per step | ratio to native | ratio quartiles |")
    print("|---|---|---|---|")
    for name, values in times.items():
        ratios = [v / n for v, n in zip(values, native, strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(
            f"| {name} | {statistics.median(values):.0f} | {statistics.median(ratios):.2f} "
            f"| {low:.2f} to {high:.2f} |"
        )


if __name__ == "__main__":
    main()
