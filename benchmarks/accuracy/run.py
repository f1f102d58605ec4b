"""Accuracy against posteriordb reference posteriors, and against Pyro's own SVI.

For each reference posterior (eight schools non-centered, sblrc, arK) this fits, at one
fixed budget (steps x particles, Adam at the same base learning rate):

* svi_torch families (mean-field, low-rank, full-rank, flow) on the svi_torch model,
* the same families on the Pyro model through :class:`svi_torch.models.PyroModel`,
* Pyro's ``SVI`` + ``Trace_ELBO`` (vectorised particles, the same Adam and schedule) with ``AutoNormal``, ``AutoLowRankMultivariateNormal``,
  ``AutoMultivariateNormal`` and ``AutoIAFNormal`` on the Pyro model,

and scores each fit with ``S`` draws from :math:`q` against the reference MCMC summaries:

* mean error :math:`|\\bar\\theta_q - \\bar\\theta_{ref}| / sd_{ref}` (mean and max over the
  reference quantities),
* sd ratio :math:`sd_q / sd_{ref}` (min, median, max),
* max :math:`|\\rho_q - \\rho_{ref}|` over the reference correlation matrix,
* PSIS :math:`\\hat k` of the importance weights :math:`\\log w_s = \\log p(\\theta_s, D) -
  \\log q(\\theta_s)` (Vehtari et al.: below 0.5 the importance-corrected estimates are
  reliable, above 0.7 :math:`q` misses mass the posterior has),
* ELBO :math:`= \\frac1S\\sum_s \\log w_s` with its standard error,
* wall and CPU seconds of the fit (the CPU column is the stable one on a shared machine).

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/accuracy/run.py --out benchmarks/accuracy/RESULTS.md
    PYTHONPATH=$PWD python benchmarks/accuracy/run.py --quick      # smoke test, ~1 min
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer import autoguide as ag
from pyro.ops.stats import fit_generalized_pareto
from pyro.poutine.util import site_is_subsample
from torch import Tensor

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from models import Posterior, load_posteriors  # noqa: E402

import svi_torch as st  # noqa: E402
from svi_torch.families import (  # noqa: E402
    FullRankGaussian,
    LowRankGaussian,
    MeanFieldGaussian,
    NormalizingFlow,
    VariationalFamily,
)
from svi_torch.models import Model, PyroModel  # noqa: E402
from svi_torch.objectives import ELBO  # noqa: E402
from svi_torch.training.schedule import LRSchedule  # noqa: E402

MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"


# -- the flow family --------------------------------------------------------------------------


def make_flow(dim: int) -> VariationalFamily:
    """A 2-layer inverse autoregressive flow (svi_torch's ``NormalizingFlow``)."""
    return NormalizingFlow(dim, transform="iaf", layers=2, init_scale=0.1)


def flow_source() -> str:
    return 'svi_torch.families.NormalizingFlow(transform="iaf", layers=2)'


FAMILIES: dict[str, Callable[[int], VariationalFamily]] = {
    "mean-field": lambda d: MeanFieldGaussian(d),
    "low-rank (r=2)": lambda d: LowRankGaussian(d, rank=2),
    "full-rank": lambda d: FullRankGaussian(d),
    "flow (IAF x2)": make_flow,
}

GUIDES: dict[str, Callable[[Callable], ag.AutoGuide]] = {
    "AutoNormal": lambda m: ag.AutoNormal(m),
    "AutoLowRankMVN (r=2)": lambda m: ag.AutoLowRankMultivariateNormal(m, rank=2),
    "AutoMultivariateNormal": lambda m: ag.AutoMultivariateNormal(m),
    "AutoIAFNormal (x2)": lambda m: ag.AutoIAFNormal(m, num_transforms=2),
}


# -- scoring ----------------------------------------------------------------------------------


def psis_khat(log_weights: Tensor) -> float:
    """Pareto :math:`\\hat k` of the upper tail of the importance weights (PSIS).

    Fits a generalized Pareto distribution (``pyro.ops.stats.fit_generalized_pareto``) to
    the :math:`M = \\min(S/5, 3\\sqrt S)` largest weights' exceedances over the next
    largest one, as in Vehtari et al. (2015-2024), Pareto smoothed importance sampling.
    """
    lw = log_weights.double().reshape(-1)
    lw = lw[torch.isfinite(lw)]
    num = lw.numel()
    tail = int(min(num / 5, 3 * math.sqrt(num)))
    if tail < 5:
        return math.nan
    top = torch.sort(lw, descending=True).values[: tail + 1]
    shift = top[0]
    exceed = torch.exp(top[:tail] - shift) - torch.exp(top[tail] - shift)
    if int((exceed > 0).sum()) < 5:
        # The largest weight dominates the rest by more than e^700: an infinitely heavy tail.
        return math.inf
    try:
        k, _ = fit_generalized_pareto(exceed)
    except ZeroDivisionError:
        return math.inf
    return float(k)


@dataclass
class Score:
    posterior: str
    method: str
    family: str
    mean_err_avg: float
    mean_err_max: float
    sd_ratio_min: float
    sd_ratio_med: float
    sd_ratio_max: float
    corr_err_max: float
    khat: float
    elbo: float
    elbo_se: float
    wall_s: float
    cpu_s: float


def score(
    posterior: Posterior,
    draws: dict[str, Tensor],
    log_weights: Tensor,
    method: str,
    family: str,
    wall: float,
    cpu: float,
) -> Score:
    names, ref_mean, ref_sd = posterior.reference_moments()
    quantities = posterior.quantities(draws)
    values = torch.stack([quantities[n].double().reshape(-1) for n in names], -1)
    err = (values.mean(0) - ref_mean).abs() / ref_sd
    ratio = values.std(0) / ref_sd
    corr_names = posterior.correlation["order"]
    ref_corr = torch.tensor(posterior.correlation["matrix"], dtype=torch.float64)
    fitted = torch.corrcoef(torch.stack([quantities[n].double() for n in corr_names]))
    lw = log_weights.double()
    finite = lw[torch.isfinite(lw)]
    return Score(
        posterior.name,
        method,
        family,
        err.mean().item(),
        err.max().item(),
        ratio.min().item(),
        ratio.median().item(),
        ratio.max().item(),
        (fitted - ref_corr).abs().max().item(),
        psis_khat(lw),
        finite.mean().item() if finite.numel() == lw.numel() else -math.inf,
        (finite.std() / math.sqrt(finite.numel())).item(),
        wall,
        cpu,
    )


# -- fitting ----------------------------------------------------------------------------------


@dataclass
class Budget:
    steps: int
    particles: int
    lr: float
    samples: int
    seed: int


def fit_svi_torch(model: Model, family: VariationalFamily, budget: Budget):
    torch.manual_seed(budget.seed)
    wall, cpu = time.perf_counter(), time.process_time()
    st.fit(
        model,
        family,
        ELBO(num_particles=budget.particles),
        steps=budget.steps,
        method=st.methods.SGD(lr=budget.lr),
        seed=budget.seed,
        log_every=max(1, budget.steps),
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.manual_seed(budget.seed + 1)
    with torch.no_grad():
        z, log_q = family.rsample_and_log_prob((budget.samples,))
        log_w = model.log_joint(z).total - log_q
        draws, _ = model.constrain(z)
    return draws, log_w, wall, cpu


def fit_pyro(posterior: Posterior, make_guide, bridge: PyroModel, budget: Budget):
    nesting = bridge.max_plate_nesting
    pyro.clear_param_store()
    pyro.set_rng_seed(budget.seed)
    model, args = posterior.pyro_model, posterior.pyro_args
    guide = make_guide(model)
    # The same optimiser and learning-rate schedule as svi_torch's default (torch Adam,
    # constant then cosine decay over the second half); Pyro has no iterate averaging.
    schedule = LRSchedule("auto", budget.steps)
    optim = pyro.optim.LambdaLR(
        {
            "optimizer": torch.optim.Adam,
            "optim_args": {"lr": budget.lr},
            "lr_lambda": schedule.factor,
        }
    )
    elbo = Trace_ELBO(
        num_particles=budget.particles, vectorize_particles=True, max_plate_nesting=nesting
    )
    svi = SVI(model, guide, optim, elbo)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(budget.steps):
        svi.step(*args)
        optim.step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pyro.set_rng_seed(budget.seed + 1)
    with torch.no_grad():
        shapes = {name: spec.shape for name, spec in bridge.param_specs.items()}
        draws, log_w = pyro_draws(model, guide, args, budget.samples, nesting, shapes)
    pyro.clear_param_store()
    return draws, log_w, wall, cpu


def pyro_draws(
    model, guide, args, num: int, nesting: int, shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, Tensor], Tensor]:
    """Vectorised draws :math:`\\theta_s \\sim q` from a Pyro guide and
    :math:`\\log w_s = \\log p(\\theta_s, D) - \\log q(\\theta_s)` from the replayed model."""
    with pyro.plate("_draws", num, dim=-(nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()

    def total(trace) -> Tensor:
        out = torch.zeros(num, dtype=torch.float64)
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            lp = site["log_prob"]
            if lp.dim() <= nesting:
                out = out + lp.sum().double()
            else:
                lp = lp.reshape(lp.shape[: lp.dim() - nesting] + (-1,)).sum(-1).reshape(-1)
                out = out + lp.double()
        return out

    # Latent values have shape (num, 1, ..., *site shape): drop the broadcast singletons.
    draws = {
        name: model_trace.nodes[name]["value"].reshape((num,) + shape)
        for name, shape in shapes.items()
    }
    return draws, total(model_trace) - total(guide_trace)


# -- the run ----------------------------------------------------------------------------------


def run(posteriors: list[Posterior], budget: Budget, log=print) -> list[Score]:
    scores = []
    for posterior in posteriors:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            bridge = PyroModel(
                posterior.pyro_model, *posterior.pyro_args, data_plate=posterior.data_plate
            )
        if not bridge.vectorize_particles:
            raise RuntimeError(f"the Pyro model of {posterior.name} should vectorise")
        native = posterior.native()
        if list(native.param_specs) != list(bridge.param_specs):
            raise RuntimeError(f"{posterior.name}: native and Pyro site names differ")
        for method, model in (("svi_torch", native), ("svi_torch + PyroModel", bridge)):
            for family_name, make in FAMILIES.items():
                torch.manual_seed(budget.seed)
                family = make(model.dim)
                draws, log_w, wall, cpu = fit_svi_torch(model, family, budget)
                scores.append(score(posterior, draws, log_w, method, family_name, wall, cpu))
                log(_line(scores[-1]))
        for guide_name, make_guide in GUIDES.items():
            draws, log_w, wall, cpu = fit_pyro(posterior, make_guide, bridge, budget)
            scores.append(score(posterior, draws, log_w, "Pyro SVI", guide_name, wall, cpu))
            log(_line(scores[-1]))
    return scores


def _run_one(directory: Path, name: str, budget: Budget, threads: int) -> list[Score]:
    """One posterior in a worker process (posteriors hold closures, so reload by name)."""
    torch.set_num_threads(threads)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    return run(load_posteriors(directory, [name]), budget, log=lambda line: print(line, flush=True))


def _line(s: Score) -> str:
    return (
        f"{s.posterior:13s} {s.method:22s} {s.family:24s} err {s.mean_err_max:6.2f} "
        f"sd {s.sd_ratio_min:5.2f}-{s.sd_ratio_max:5.2f} khat {s.khat:5.2f} "
        f"elbo {s.elbo:10.2f} cpu {s.cpu_s:6.1f}s"
    )


def _fmt(x: float, digits: int = 2) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    return f"{x:.{digits}f}"


def markdown(scores: list[Score], budget: Budget, command: str, total_wall: float) -> str:
    lines = [
        f"Generated by `{command}` in {total_wall:.0f} s wall time.",
        "",
        f"Budget for every fit: {budget.steps} steps, {budget.particles} particles, Adam at "
        f"lr {budget.lr:g} (svi_torch: its default schedule, constant then cosine decay with "
        "iterate averaging over the second half; Pyro: the same torch Adam and lr schedule "
        f"through pyro.optim.LambdaLR, without averaging). Scores from {budget.samples} draws "
        f"of q, seed {budget.seed}. Flow: "
        f"{flow_source()}. torch {torch.__version__}, pyro {pyro.__version__}, "
        f"{torch.get_num_threads()} thread(s), Python {platform.python_version()}.",
        "",
        "Columns: mean error |E_q - E_ref| / sd_ref (average and max over the reference "
        "quantities); sd_q / sd_ref (min, median, max); max |corr_q - corr_ref| over the "
        "reference correlation matrix; PSIS k-hat of log p(theta, D) - log q(theta) (< 0.5 "
        "good, > 0.7 q misses posterior mass); ELBO ± its Monte Carlo s.e.; wall and CPU "
        "seconds of the fit (the machine was shared: CPU seconds are the stable figure).",
        "",
    ]
    for name in dict.fromkeys(s.posterior for s in scores):
        lines += [
            f"### {name}",
            "",
            "| method | family | mean err avg | mean err max | sd ratio min | sd ratio med | "
            "sd ratio max | max Δcorr | k-hat | ELBO | wall s | CPU s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in scores:
            if s.posterior != name:
                continue
            lines.append(
                f"| {s.method} | {s.family} | {_fmt(s.mean_err_avg)} | {_fmt(s.mean_err_max)} "
                f"| {_fmt(s.sd_ratio_min)} | {_fmt(s.sd_ratio_med)} | {_fmt(s.sd_ratio_max)} "
                f"| {_fmt(s.corr_err_max)} | {_fmt(s.khat)} | {_fmt(s.elbo, 1)} ± "
                f"{_fmt(s.elbo_se, 1)} | {_fmt(s.wall_s, 1)} | {_fmt(s.cpu_s, 1)} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_results(path: Path, table: str) -> None:
    """Replace the generated block of ``path`` (between markers), keeping the prose."""
    block = f"{MARK_START}\n{table}\n{MARK_END}"
    if path.exists():
        text = path.read_text()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            _, tail = rest.split(MARK_END, 1)
            path.write_text(head + block + tail)
            return
    path.write_text(f"# Accuracy against posteriordb and Pyro\n\n{block}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--posteriordb",
        type=Path,
        default=REPO.parent / "shared" / "posteriordb",
        help="folder of the reference posteriors (default: ../shared/posteriordb)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budget")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps per fit")
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--samples", type=int, default=None, help="draws of q for scoring")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--jobs", type=int, default=1, help="posteriors fitted in parallel processes"
    )
    parser.add_argument(
        "--posteriors", nargs="*", default=None, help="subset: eight_schools sblrc arK"
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown file to (re)write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budget = Budget(
        steps=args.steps or (40 if args.quick else 3000),
        particles=args.particles,
        lr=args.lr,
        samples=args.samples or (400 if args.quick else 4000),
        seed=args.seed,
    )
    try:
        posteriors = load_posteriors(args.posteriordb, args.posteriors)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.getLogger("pyro").setLevel(logging.WARNING)
    start = time.perf_counter()
    if args.jobs > 1 and len(posteriors) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(posteriors)), mp_context=context) as pool:
            futures = [
                pool.submit(_run_one, args.posteriordb, p.name, budget, args.threads)
                for p in posteriors
            ]
            scores = [s for f in futures for s in f.result()]
    else:
        scores = run(posteriors, budget)
    total = time.perf_counter() - start
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    command = "PYTHONPATH=$PWD python benchmarks/accuracy/run.py " + shlex.join(shown)
    table = markdown(scores, budget, command.strip(), total)
    print(table)
    if args.out is not None:
        write_results(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
