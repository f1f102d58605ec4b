"""Validate the suite's Pyro translations: Pyro's NUTS on each, compared with the reference.

Each Pyro model is sampled with Pyro's NUTS at Stan's defaults (diagonal mass matrix,
target acceptance 0.8, maximum tree depth 10, a start drawn uniformly on
:math:`(-2, 2)` in the unconstrained space) and every reference quantity is compared with
posteriordb's NUTS reference:

* the mean error in reference sds, :math:`|\\bar x - \\mu_{\\text{ref}}| / s_{\\text{ref}}`;
* its z-score against the Monte Carlo error of both runs,
  :math:`z = (\\bar x - \\mu_{\\text{ref}}) / \\sqrt{\\mathrm{MCSE}^2 + \\mathrm{MCSE}_{\\text{ref}}^2}`,
  with :math:`\\mathrm{MCSE} = s / \\sqrt{\\mathrm{ESS}}` (Pyro's
  ``effective_sample_size``) and the reference's ``mcse_mean`` (else
  :math:`s_{\\text{ref}}/\\sqrt{n_{\\text{ref}}}`);
* the sd ratio :math:`s / s_{\\text{ref}}` and its z-score
  :math:`z_s = (s - s_{\\text{ref}}) / \\sqrt{\\mathrm{se}_s^2 + \\mathrm{se}_{\\text{ref}}^2}`,
  with :math:`\\mathrm{se}_s = \\mathrm{sd}(d^2) / (2 s \\sqrt{\\mathrm{ESS}(d^2)})` from the
  squared deviations :math:`d^2 = (x - \\bar x)^2` (delta method; their ESS, not the mean's,
  which NUTS's antithetic draws can push above the number of draws) and
  :math:`\\mathrm{se}_{\\text{ref}} = s_{\\text{ref}}/\\sqrt{2 n_{\\text{ref}}}`.

A translation is read as consistent with the reference when every :math:`|z| \\le 4` and
every :math:`|z_s| \\le 4` (with up to 26 quantities, 52 statistics, a false alarm has
probability about 0.3% if they were Gaussian). The markdown report (one summary row per
posterior, then one row per quantity) goes to ``--out`` with the command that made it;
``--save-draws DIR`` keeps each posterior's draws of the reference quantities
(``DIR/<name>.npz``), and ``--from-draws DIR`` writes the report from them without sampling.

Example::

    PYTHONPATH=$PWD nice -n 10 python benchmarks/posteriordb/validate_nuts.py --posteriors arK-arK \\
        --warmup 500 --num-samples 500 --chains 1 --seed 0
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size
from torch import Tensor

from benchmarks.posteriordb.posteriors import load_posteriors
from benchmarks.posteriordb.sites import init_to_unconstrained_uniform, trace_model
from benchmarks.posteriordb.spec import Posterior, Reference, load_reference

__all__ = ["QuantityCheck", "PosteriorCheck", "SavedRun", "run_nuts", "compare", "main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "NUTS.md"
Z_LIMIT = 4.0


@dataclass(frozen=True)
class QuantityCheck:
    """One reference quantity: the reference and NUTS summaries and their comparison."""

    name: str
    ref_mean: float
    ref_sd: float
    mean: float
    sd: float
    ess: float
    z: float
    z_sd: float

    @property
    def error_in_sds(self) -> float:
        return abs(self.mean - self.ref_mean) / self.ref_sd

    @property
    def sd_ratio(self) -> float:
        return self.sd / self.ref_sd

    @property
    def consistent(self) -> bool:
        return abs(self.z) <= Z_LIMIT and abs(self.z_sd) <= Z_LIMIT


@dataclass
class PosteriorCheck:
    """One posterior's NUTS run and its comparison with the reference."""

    name: str
    seconds: float
    divergences: int
    draws: int
    quantities: list[QuantityCheck] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return all(q.consistent for q in self.quantities)


def plate_nesting(posterior: Posterior, kwargs: Mapping[str, object]) -> int:
    """How many batch dims the model's plates use: NUTS is told rather than left to guess,
    since Pyro's guess traces the model by sampling its priors, which flat priors cannot."""
    trace = trace_model(posterior.pyro_model, kwargs)
    dims = [-f.dim for s in trace.nodes.values() for f in s.get("cond_indep_stack", ()) if f.dim]
    return max(dims, default=0)


def _deterministic_sites(posterior: Posterior, kwargs: Mapping[str, object]) -> list[str]:
    trace = trace_model(posterior.pyro_model, kwargs)
    return [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and s["infer"].get("_deterministic", False)
    ]


def _with_deterministic(
    posterior: Posterior, kwargs: Mapping[str, object], samples: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The latent draws plus the model's ``pyro.deterministic`` sites, one trace per draw."""
    names = _deterministic_sites(posterior, kwargs)
    if not names:
        return dict(samples)
    num = next(iter(samples.values())).shape[0]
    values: dict[str, list[Tensor]] = {n: [] for n in names}
    for i in range(num):
        conditioned = poutine.condition(posterior.pyro_model, {k: v[i] for k, v in samples.items()})
        trace = poutine.trace(conditioned).get_trace(**kwargs)
        for n in names:
            values[n].append(trace.nodes[n]["value"])
    return {**samples, **{n: torch.stack(v) for n, v in values.items()}}


def run_nuts(
    posterior: Posterior,
    ref: Reference,
    *,
    num_samples: int,
    warmup: int,
    chains: int,
    seed: int,
    max_tree_depth: int = 10,
    full_mass: bool = False,
    jit: bool = True,
) -> tuple[dict[str, Tensor], float, int]:
    """NUTS draws of the reference quantities, shape ``(chains, draws)`` each; seconds; divergences."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    kwargs = posterior.pyro_data(ref.data)
    kernel = NUTS(
        posterior.pyro_model,
        init_strategy=init_to_unconstrained_uniform,
        max_tree_depth=max_tree_depth,
        full_mass=full_mass,
        target_accept_prob=0.8,
        max_plate_nesting=plate_nesting(posterior, kwargs),
        jit_compile=jit,
        ignore_jit_warnings=True,
    )
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup,
        num_chains=chains,
        disable_progbar=True,
        mp_context="spawn" if chains > 1 else None,
    )
    start = time.perf_counter()
    mcmc.run(**kwargs)
    seconds = time.perf_counter() - start
    grouped = mcmc.get_samples(group_by_chain=True)
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in grouped.items()}
    quantities = posterior.quantities(_with_deterministic(posterior, kwargs, flat))
    by_chain = {k: v.reshape(chains, num_samples) for k, v in quantities.items()}
    diagnostics = mcmc.diagnostics().get("divergences", {})
    divergences = sum(len(v) for v in diagnostics.values())
    return by_chain, seconds, divergences


def compare(ref: Reference, draws: Mapping[str, Tensor]) -> list[QuantityCheck]:
    """Per reference quantity, NUTS draws ``(chains, draws)`` against the reference summaries."""
    checks = []
    n_ref = int(ref.record.get("n_draws", 10000))
    for name, stats in ref.params.items():
        x = draws[name].double()
        ess = float(effective_sample_size(x, chain_dim=0, sample_dim=1))
        mean, sd = float(x.mean()), float(x.std())
        mcse = sd / math.sqrt(max(ess, 1.0))
        ref_mcse = float(stats.get("mcse_mean", stats["sd"] / math.sqrt(n_ref)))
        z = (mean - stats["mean"]) / math.sqrt(mcse**2 + ref_mcse**2)
        # The sd's error comes from the squared deviations, whose ESS is often far below the
        # mean's on NUTS chains (antithetic for the mean, not for the spread).
        sq = (x - mean) ** 2
        ess_sq = float(effective_sample_size(sq, chain_dim=0, sample_dim=1))
        se_sd = float(sq.std()) / math.sqrt(max(ess_sq, 1.0)) / (2 * sd)
        ref_se_sd = stats["sd"] / math.sqrt(2 * n_ref)
        z_sd = (sd - stats["sd"]) / math.sqrt(se_sd**2 + ref_se_sd**2)
        checks.append(QuantityCheck(name, stats["mean"], stats["sd"], mean, sd, ess, z, z_sd))
    return checks


@dataclass(frozen=True)
class SavedRun:
    """One posterior's NUTS draws of the reference quantities ``(chains, draws)`` and how
    they were made."""

    draws: dict[str, Tensor]
    seconds: float
    divergences: int
    settings: str
    command: str

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"q:{k}": v.numpy() for k, v in self.draws.items()}
        np.savez(
            path,
            seconds=self.seconds,
            divergences=self.divergences,
            settings=self.settings,
            command=self.command,
            **arrays,
        )

    @classmethod
    def load(cls, path: Path) -> SavedRun:
        if not path.is_file():
            raise FileNotFoundError(f"no saved draws at {path}; run with --save-draws first")
        with np.load(path) as saved:
            draws = {k[2:]: torch.from_numpy(saved[k]) for k in saved.files if k[:2] == "q:"}
            return cls(
                draws,
                float(saved["seconds"]),
                int(saved["divergences"]),
                str(saved["settings"]),
                str(saved["command"]),
            )


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def render(checks: Sequence[PosteriorCheck], command: str, settings: str) -> str:
    """The markdown report: command, summary rows, a reading, then one table per posterior."""
    lines = [
        "# Pyro NUTS on the suite's Pyro translations, against the posteriordb references",
        "",
        "Made by:",
        "",
        "```",
        command,
        "```",
        "",
        f"Settings: {settings}. Per quantity: abs(err)/sd = |mean error| / ref sd; z = mean "
        "error / sqrt(MCSE^2 + ref MCSE^2); sd ratio = NUTS sd / ref sd and z_sd its z-score "
        "(see the module docstring); ESS of the mean. Consistent: every |z| <= 4 and every "
        "|z_sd| <= 4.",
        "",
        "| posterior | time (s) | draws | divergences | median / max abs(err)/sd | max abs(z) "
        "| sd ratio min / median / max | max abs(z_sd) | min ESS | consistent |",
        "|---|---:|---:|---:|---|---:|---|---:|---:|---|",
    ]
    for c in checks:
        err = np.array([q.error_in_sds for q in c.quantities])
        z = np.array([abs(q.z) for q in c.quantities])
        ratio = np.array([q.sd_ratio for q in c.quantities])
        z_sd = max(abs(q.z_sd) for q in c.quantities)
        ess = min(q.ess for q in c.quantities)
        lines.append(
            f"| {c.name} | {c.seconds:.0f} | {c.draws} | {c.divergences} | "
            f"{np.median(err):.3f} / {err.max():.3f} | {z.max():.2f} | "
            f"{ratio.min():.2f} / {np.median(ratio):.2f} / {ratio.max():.2f} | {z_sd:.2f} | "
            f"{ess:.0f} | {'yes' if c.consistent else 'no'} |"
        )
    lines += ["", "## Reading", ""]
    lines += _reading(checks)
    for c in checks:
        lines += [
            "",
            f"## {c.name}",
            "",
            "| quantity | ref mean | ref sd | NUTS mean | NUTS sd | abs(err)/sd | z | sd ratio "
            "| z_sd | ESS |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for q in c.quantities:
            flag = "" if q.consistent else " **"
            lines.append(
                f"| {q.name}{flag} | {_fmt(q.ref_mean)} | {_fmt(q.ref_sd)} | {_fmt(q.mean)} | "
                f"{_fmt(q.sd)} | {q.error_in_sds:.3f} | {q.z:+.2f} | {q.sd_ratio:.3f} | "
                f"{q.z_sd:+.2f} | {q.ess:.0f} |"
            )
    return "\n".join(lines) + "\n"


def _reading(checks: Sequence[PosteriorCheck]) -> list[str]:
    good = [c.name for c in checks if c.consistent]
    bad = [c for c in checks if not c.consistent]
    out = []
    if good:
        out.append(
            f"- Consistent with the reference ({len(good)} of {len(checks)}): "
            + ", ".join(good)
            + ". Their NUTS means and sds lie within 4 Monte Carlo standard errors of the "
            "reference's: the Pyro translation targets the reference posterior, to the "
            "precision of this run."
        )
    for c in bad:
        worst = [q for q in c.quantities if not q.consistent]
        names = ", ".join(
            f"{q.name} (z {q.z:+.1f}, sd ratio {q.sd_ratio:.2f}, z_sd {q.z_sd:+.1f})"
            for q in worst[:4]
        )
        more = f" and {len(worst) - 4} more" if len(worst) > 4 else ""
        out.append(
            f"- Not consistent: {c.name}, {len(worst)} of {len(c.quantities)} quantities: "
            f"{names}{more}; {c.divergences} divergences in {c.draws} draws."
        )
    return out


def main(argv: Sequence[str] | None = None) -> list[PosteriorCheck]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posteriors", nargs="*", default=None, help="names (default: all)")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tree-depth", type=int, default=10)
    parser.add_argument("--full-mass", action="store_true", help="dense mass matrix")
    parser.add_argument(
        "--no-jit",
        action="store_true",
        help="evaluate the potential without torch.jit (about 10x slower per gradient)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--save-draws", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--from-draws", type=Path, default=None, metavar="DIR", help="report saved draws"
    )
    args = parser.parse_args(argv)
    for flag in ("num_samples", "warmup", "chains", "max_tree_depth"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be a positive integer")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    posteriors = load_posteriors(args.posteriors)
    settings = (
        f"{args.chains} chain(s) x ({args.warmup} warmup + {args.num_samples} draws), seed "
        f"{args.seed}, max tree depth {args.max_tree_depth}, "
        f"{'dense' if args.full_mass else 'diagonal'} mass matrix, target acceptance 0.8, "
        f"float64, one thread, {'no JIT' if args.no_jit else 'JIT-compiled potential'}"
    )
    command = "PYTHONPATH=$PWD python benchmarks/posteriordb/validate_nuts.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    checks = []
    for name, posterior in posteriors.items():
        ref = load_reference(name)
        if args.from_draws is not None:
            run = SavedRun.load(args.from_draws / f"{name}.npz")
            settings = run.settings
            sampled_by = run.command
        else:
            draws, seconds, divergences = run_nuts(
                posterior,
                ref,
                num_samples=args.num_samples,
                warmup=args.warmup,
                chains=args.chains,
                seed=args.seed,
                max_tree_depth=args.max_tree_depth,
                full_mass=args.full_mass,
                jit=not args.no_jit,
            )
            run = SavedRun(draws, seconds, divergences, settings, command)
        if args.save_draws is not None:
            run.save(args.save_draws / f"{name}.npz")
        num_draws = math.prod(next(iter(run.draws.values())).shape)
        check = PosteriorCheck(name, run.seconds, run.divergences, num_draws)
        check.quantities = compare(ref, run.draws)
        checks.append(check)
        print(
            f"{name}: {run.seconds:.0f} s, {run.divergences} divergences, "
            f"consistent={check.consistent}",
            flush=True,
        )
    if args.from_draws is not None:
        command = f"{sampled_by}\n# report written from its saved draws by\n{command}"
    args.out.write_text(render(checks, command, settings))
    print(f"wrote {args.out}")
    return checks


if __name__ == "__main__":
    main()
