"""Pyro's NUTS on suite posteriors against the posteriordb reference (a validation of the
translations: a faithful model sampled long enough reproduces the reference summaries).

For each posterior: a start chosen by the user's usual remedy for multimodality (MAP by
Adam from ``--starts`` dispersed points, :math:`u \\sim \\mathcal{U}(-2, 2)` in the
unconstrained space as Stan initialises, keeping the best), then one NUTS chain of
``--warmup`` + ``--draws`` iterations (Pyro's defaults: target acceptance 0.8, tree depth
10, diagonal mass matrix). Reported per reference quantity :math:`j`:

- the mean error in reference sds, :math:`|\\bar x_j - \\mu_j| / s_j`, whose Monte Carlo
  error is about :math:`1/\\sqrt{\\mathrm{ESS}_j}`;
- the sd ratio :math:`\\hat s_j / s_j`;
- the quantile error :math:`\\max_{q \\in \\{5, 50, 95\\}} |\\hat x_{j,q} - x_{j,q}| /
  (x_{j,95} - x_{j,5})`, the figure for quantities without a finite variance.

Usage::

    nice -n 10 python -m benchmarks.posteriordb.nuts_part2 NAME [NAME ...] \\
        --warmup 500 --draws 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.stats import effective_sample_size
from torch import Tensor
from torch.distributions import biject_to

from .posteriors import load_posteriors
from .spec import Posterior, load_reference

__all__ = ["run", "compare", "map_start"]


def _init_unconstrained_uniform(site: Mapping[str, Any], radius: float = 2.0) -> Tensor:
    """:math:`T(u)`, :math:`u \\sim \\mathcal{U}(-r, r)`: Pyro's ``init_to_uniform`` without its
    draw from the prior (flat ``ImproperUniform`` priors cannot be sampled)."""
    fn = site["fn"]
    transform = biject_to(fn.support)
    u = (2 * torch.rand(transform.inverse_shape(fn.shape()), dtype=torch.float64) - 1) * radius
    return transform(u)


def _max_plate_nesting(posterior: Posterior, kwargs: Mapping[str, Any]) -> int:
    """How many batch dims the model's plates use (Pyro would guess it by sampling)."""
    model = InitMessenger(_init_unconstrained_uniform)(posterior.pyro_model)
    trace = poutine.trace(model).get_trace(**kwargs)
    dims = [-f.dim for s in trace.nodes.values() for f in s.get("cond_indep_stack", ())]
    return max(dims, default=0)


def _potential(posterior: Posterior, kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Pyro's (initial unconstrained params, potential_fn, transforms) from a dispersed start."""
    init, potential_fn, transforms, _ = initialize_model(
        posterior.pyro_model,
        model_kwargs=dict(kwargs),
        max_plate_nesting=_max_plate_nesting(posterior, kwargs),
        init_strategy=_init_unconstrained_uniform,
    )
    return init, potential_fn, transforms


def map_start(
    posterior: Posterior, kwargs: Mapping[str, Any], starts: int, steps: int, seed: int
) -> tuple[dict[str, Tensor], list[float]]:
    """The best of ``starts`` Adam runs on the potential :math:`-\\log p(u \\mid D)` from
    dispersed points: unconstrained initial parameters, and every run's final potential."""
    pyro.set_rng_seed(seed)
    best: dict[str, Tensor] = {}
    finals: list[float] = []
    for _ in range(starts):
        init, potential_fn, _ = _potential(posterior, kwargs)
        params = {k: v.detach().clone().requires_grad_() for k, v in init.items()}
        optimiser = torch.optim.Adam(list(params.values()), lr=0.05)
        for _ in range(steps):
            optimiser.zero_grad()
            loss = potential_fn(params)
            if not torch.isfinite(loss):
                break
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            final = float(potential_fn(params))
        finals.append(final)
        if math.isfinite(final) and final <= min(f for f in finals if math.isfinite(f)):
            best = {k: v.detach().clone() for k, v in params.items()}
    if not best:
        raise RuntimeError(f"{posterior.name}: no MAP run ended at a finite potential")
    return best, finals


def compare(
    samples: Mapping[str, Tensor], params: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """Per reference quantity: mean error (ref sds), sd ratio, quantile error, ESS."""
    out = {}
    for key, ref in params.items():
        x = samples[key].double()
        q = torch.quantile(x, torch.tensor([0.05, 0.5, 0.95], dtype=x.dtype))
        span = ref["q95"] - ref["q05"]
        out[key] = {
            "mean_error_sd": abs(float(x.mean()) - ref["mean"]) / ref["sd"],
            "sd_ratio": float(x.std()) / ref["sd"],
            "quantile_error": max(
                abs(float(q[i]) - ref[k]) / span for i, k in enumerate(("q05", "q50", "q95"))
            ),
            "ess": float(effective_sample_size(x[None, :, None]).squeeze()),
        }
    return out


def run(
    name: str, warmup: int, draws: int, starts: int, map_steps: int, seed: int
) -> dict[str, Any]:
    """MAP start, then one NUTS chain; the comparison with the reference and the timings."""
    posterior = load_posteriors([name])[name]
    ref = load_reference(name)
    kwargs = posterior.pyro_data(ref.data)
    t0 = time.perf_counter()
    initial, finals = map_start(posterior, kwargs, starts, map_steps, seed)
    t1 = time.perf_counter()
    _, potential_fn, transforms = _potential(posterior, kwargs)
    pyro.set_rng_seed(seed)
    mcmc = MCMC(
        NUTS(potential_fn=potential_fn),
        num_samples=draws,
        warmup_steps=warmup,
        initial_params=initial,
        transforms=transforms,
        disable_progbar=True,
    )
    mcmc.run()
    t2 = time.perf_counter()
    samples = posterior.quantities(mcmc.get_samples())
    diagnostics = mcmc.diagnostics()
    divergences = diagnostics.get("divergences", {}).get("chain 0", [])
    return {
        "name": name,
        "warmup": warmup,
        "draws": draws,
        "map_potentials": finals,
        "map_seconds": t1 - t0,
        "nuts_seconds": t2 - t1,
        "divergences": len(divergences),
        "quantities": compare(samples, ref.params),
    }


def _table_row(result: Mapping[str, Any], quantile_only: Callable[[str], bool]) -> str:
    q = result["quantities"]
    by_sd = [v["mean_error_sd"] for k, v in q.items() if not quantile_only(k)]
    ratios = [v["sd_ratio"] for k, v in q.items() if not quantile_only(k)]
    return (
        f"| {result['name']} | {result['warmup']}+{result['draws']} | {statistics.median(by_sd):.3f} | "
        f"{max(by_sd):.3f} | {min(ratios):.2f}-{max(ratios):.2f} | "
        f"{max(v['quantile_error'] for v in q.values()):.3f} | "
        f"{min(v['ess'] for v in q.values()):.0f} | {result['divergences']} | "
        f"{result['map_seconds']:.0f} + {result['nuts_seconds']:.0f} |"
    )


_HEADER = (
    "| posterior | warmup+draws | median mean err (sd) | max mean err (sd) | sd ratio range "
    "| max quantile err | min ESS | divergences | MAP + NUTS s |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def report(results: list[Mapping[str, Any]], quantile_only: Callable[[str], bool]) -> str:
    """The markdown summary (one row per posterior; mean errors and sd ratios leave out the
    ``quantile_only`` quantities), then one row per quantity."""
    lines = [_HEADER, *(_table_row(r, quantile_only) for r in results), ""]
    lines += [
        "| posterior | quantity | mean err (sd) | sd ratio | quantile err | ESS |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for key, v in r["quantities"].items():
            mark = " (quantiles only)" if quantile_only(key) else ""
            lines.append(
                f"| {r['name']} | {key}{mark} | {v['mean_error_sd']:.3f} | {v['sd_ratio']:.2f} "
                f"| {v['quantile_error']:.3f} | {v['ess']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="posteriors to run (none: only --report)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--map-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, required=True, help="append one JSON line per posterior"
    )
    parser.add_argument("--report", type=Path, help="write the markdown report of --json here")
    parser.add_argument(
        "--quantile-only",
        nargs="*",
        default=["K_m", "V_m"],
        help="quantities without a finite variance: judged by quantiles only",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    for name in args.names:
        result = run(name, args.warmup, args.draws, args.starts, args.map_steps, args.seed)
        with args.json.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        print(_table_row(result, lambda k: k in args.quantile_only), flush=True)
    if args.report is not None:
        results = [json.loads(line) for line in args.json.read_text().splitlines() if line]
        args.report.write_text(report(results, lambda k: k in args.quantile_only))


if __name__ == "__main__":
    main()
