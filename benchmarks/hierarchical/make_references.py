"""Make the hierarchical set's data and NUTS references (NumPyro, 4 chains, one CPU thread).

The data are synthetic, drawn once from fixed seeds (:func:`generate`) and kept in
``data/<data_name>.json``; an existing file is never redrawn unless ``--redraw-data``
is given, so a rerun samples the committed data. Each reference is NumPyro's NUTS on the
translation in :mod:`numpyro_models` (checked against the Pyro model in the tests), run
sequentially over 4 chains, summarised like posteriordb's records (``params`` with mean,
sd, q05, q50, q95, ess_bulk, ess_tail, rhat, mcse_mean; ``posterior_corr``;
``derived_params``) and written to ``reference/<name>.json.gz`` with the data copied in,
so :func:`benchmarks.posteriordb.spec.load_reference` reads it like any other record.

Where the centred model funnels (a group-level scale near zero with weakly informed
groups), NUTS on it diverges and is biased, so the reference samples the same posterior
non-centred: :class:`~numpyro.infer.reparam.LocScaleReparam` with ``centered=0`` on the
sites in :attr:`Settings.noncentered`, which keeps the centred value as a deterministic site
of the same name. The record's ``sampler`` entry says which sites, and the divergences.

Usage (repository root, one reference at a time; ``pip install -e .[bench]``)::

    PYTHONPATH=$PWD python benchmarks/hierarchical/make_references.py            # all
    PYTHONPATH=$PWD python benchmarks/hierarchical/make_references.py eight_schools-eight_schools_centered
    PYTHONPATH=$PWD python benchmarks/hierarchical/make_references.py --centered eight_schools-eight_schools_centered  # the centred pilot, writes nothing
"""

from __future__ import annotations

import os

# One JAX thread and one CPU device: the machine is shared, and the chains run one after the
# other (chain_method="sequential"), which also keeps each chain's draws reproducible.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # run as a script from the repository root
    sys.path.insert(0, str(HERE.parents[1]))

__all__ = ["Settings", "SETTINGS", "generate", "summarise", "make_reference", "main"]

DATA = HERE / "data"
REFERENCE = HERE / "reference"


# -- the data ----------------------------------------------------------------------------------


def _radon(rng: np.random.Generator) -> dict[str, Any]:
    # Unequal groups, as counties are in radon: the small ones barely inform their slope, so
    # sigma_b is weakly identified and the centred b funnels.
    sizes = [4, 6, 8, 12, 18, 25, 32, 45, 60, 90]
    group = np.repeat(np.arange(len(sizes)), sizes)
    x = (rng.random(group.size) < 0.6).astype(float)  # "floor": basement or not
    a = 1.4 + 0.4 * rng.standard_normal(len(sizes))
    b = -0.6 + 0.15 * rng.standard_normal(len(sizes))
    y = a[group] + b[group] * x + 0.75 * rng.standard_normal(group.size)
    return {"N": int(group.size), "J": len(sizes), "group": group, "x": x, "y": y}


def _binomial(rng: np.random.Generator) -> dict[str, Any]:
    n = np.array([7, 10, 12, 15, 18, 20, 25, 30, 35, 40, 50, 60])
    theta = -1.0 + 0.4 * rng.standard_normal(n.size)
    y = rng.binomial(n, 1.0 / (1.0 + np.exp(-theta)))
    return {"J": int(n.size), "n": n, "y": y}


def _eight_schools(rng: np.random.Generator) -> dict[str, Any]:
    del rng  # the classic data (Rubin 1981)
    return {
        "J": 8,
        "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
        "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],
    }


def _horseshoe(rng: np.random.Generator) -> dict[str, Any]:
    N, D = 100, 20
    X = rng.standard_normal((N, D))
    beta = np.zeros(D)
    beta[[0, 4, 9]] = [2.0, -1.5, 0.8]  # three signals, one of them weak
    y = 0.5 + X @ beta + rng.standard_normal(N)
    return {"N": N, "D": D, "X": X, "y": y}


def _separation(rng: np.random.Generator) -> dict[str, Any]:
    N, D = 60, 3
    X = rng.standard_normal((N, D))
    # x1 separates the classes except for the two points nearest its boundary, whose labels
    # are swapped: the likelihood then stays bounded but its ridge in beta[1] is long.
    y = (X[:, 0] > 0).astype(int)
    nearest = np.argsort(np.abs(X[:, 0]))[:2]
    y[nearest] = 1 - y[nearest]
    return {"N": N, "D": D, "X": X, "y": y}


def _hier_logit(rng: np.random.Generator) -> dict[str, Any]:
    N, J, D = 200, 5, 3
    group = np.repeat(np.arange(J), N // J)
    X = rng.standard_normal((N, D))
    alpha = -0.3 + 0.6 * rng.standard_normal(J)
    logits = alpha[group] + X @ np.array([1.0, -0.5, 0.25])
    y = (rng.random(N) < 1.0 / (1.0 + np.exp(-logits))).astype(int)
    return {"N": N, "J": J, "D": D, "group": group, "X": X, "y": y}


#: data name -> (seed, generator). A generator draws everything from its own seed, so one
#: data set can be redrawn without changing the others.
GENERATORS: dict[str, tuple[int, Callable[[np.random.Generator], dict[str, Any]]]] = {
    "radon_synth": (20251, _radon),
    "binomial_synth": (20252, _binomial),
    "eight_schools": (0, _eight_schools),
    "horseshoe_synth": (20254, _horseshoe),
    "separation_synth": (20255, _separation),
    "hier_logit_synth": (20256, _hier_logit),
}


def _jsonable(value: Any) -> Any:
    # Four decimals keep the files small; the references are drawn on the rounded data.
    if isinstance(value, np.ndarray):
        return (value.round(4) if value.dtype.kind == "f" else value).tolist()
    return value


def generate(data_name: str) -> dict[str, Any]:
    """The data set ``data_name`` drawn from its fixed seed, as JSON values."""
    seed, draw = GENERATORS[data_name]
    data = draw(np.random.default_rng(seed))
    return {key: _jsonable(value) for key, value in data.items()}


def load_data(data_name: str, redraw: bool = False) -> dict[str, Any]:
    """``data/<data_name>.json``, drawn and written first if absent (or ``redraw``)."""
    path = DATA / f"{data_name}.json"
    if redraw or not path.is_file():
        DATA.mkdir(exist_ok=True)
        path.write_text(json.dumps(generate(data_name), separators=(",", ":")) + "\n")
    return json.loads(path.read_text())


# -- the sampler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How one reference is drawn.

    Attributes:
        noncentered: sites sampled through ``LocScaleReparam(centered=0)`` (same posterior).
        derived: latent sites summarised in ``derived_params`` rather than scored, with the
            reason in ``notes`` (e.g. no finite posterior variance).
        warmup, draws: per chain; 4 chains.
        target_accept: NUTS' target acceptance probability.
        max_tree_depth: NUTS' tree depth limit.
        seed: the PRNG seed of the chains.
    """

    noncentered: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()
    warmup: int = 1500
    draws: int = 2500
    target_accept: float = 0.95
    max_tree_depth: int = 10
    seed: int = 0
    chains: int = 4


SETTINGS: dict[str, Settings] = {
    "radon_synth-varying_slopes_centered": Settings(noncentered=("a", "b")),
    "binomial_synth-binomial_hierarchy": Settings(noncentered=("theta",)),
    "eight_schools-eight_schools_centered": Settings(noncentered=("theta",), target_accept=0.99),
    "horseshoe_synth-horseshoe_regression": Settings(
        noncentered=("beta",),
        derived=("lambda",),
        warmup=2000,
        draws=3000,
        # At 0.99 the chains diverged 74 times in 12 000 draws; the smaller step size of
        # 0.995 halves that (36), and the two runs' summaries agree (README).
        target_accept=0.995,
        max_tree_depth=12,
    ),
    "separation_synth-logistic_near_separation": Settings(),
    "hier_logit_synth-hierarchical_logistic_flat_tau": Settings(
        noncentered=("alpha",), target_accept=0.99
    ),
}


def _rank_normal(x: np.ndarray) -> np.ndarray:
    """Rank-normalised draws (Vehtari et al. 2021), shape kept."""
    ranks = stats.rankdata(x, axis=None).reshape(x.shape)
    return stats.norm.ppf((ranks - 0.375) / (x.size + 0.25))


def _split(x: np.ndarray) -> np.ndarray:
    """(chains, draws) -> (2 chains, draws // 2): split chains, as R-hat and ESS use."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, half : 2 * half]], axis=0)


def diagnostics(x: np.ndarray) -> dict[str, float]:
    """Rank-normalised split R-hat, bulk and tail ESS, and the mean's MCSE of ``(chains, draws)``."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    z = _rank_normal(x)
    folded = _rank_normal(np.abs(x - np.median(x)))
    rhat = max(float(split_gelman_rubin(z)), float(split_gelman_rubin(folded)))
    ess_bulk = float(effective_sample_size(_split(z)))
    q05, q95 = np.quantile(x, [0.05, 0.95])
    ess_tail = min(
        float(effective_sample_size(_split((x <= q05).astype(float)))),
        float(effective_sample_size(_split((x >= q95).astype(float)))),
    )
    ess_mean = float(effective_sample_size(_split(x)))
    return {
        "ess_bulk": ess_bulk,
        "ess_tail": ess_tail,
        "rhat": rhat,
        "mcse_mean": float(np.std(x) / np.sqrt(ess_mean)),
    }


def summarise(per_chain: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """posteriordb's per-quantity summary of ``{quantity: (chains, draws)}``."""
    out = {}
    for name, x in per_chain.items():
        flat = x.reshape(-1)
        q05, q50, q95 = np.quantile(flat, [0.05, 0.5, 0.95])
        out[name] = {
            "mean": float(flat.mean()),
            "sd": float(flat.std(ddof=1)),
            "q05": float(q05),
            "q50": float(q50),
            "q95": float(q95),
            **diagnostics(x),
        }
    return out


def _by_quantity(
    quantities: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    samples: Mapping[str, np.ndarray],
    chains: int,
) -> dict[str, np.ndarray]:
    """Named quantities of grouped NumPyro samples ``(chains, draws, ...)``, per chain."""
    import torch

    flat = {k: torch.as_tensor(np.array(v).reshape((-1, *v.shape[2:]))) for k, v in samples.items()}
    return {name: value.numpy().reshape(chains, -1) for name, value in quantities(flat).items()}


def run_nuts(name: str, data: Mapping[str, Any], settings: Settings, centered: bool = False):
    """NUTS draws of ``name`` grouped by chain, the divergences per chain, and seconds."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.handlers import reparam
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.reparam import LocScaleReparam

    from benchmarks.hierarchical.numpyro_models import MODELS

    numpyro.enable_x64()
    model = MODELS[name]
    if settings.noncentered and not centered:
        model = reparam(
            model, config={s: LocScaleReparam(centered=0) for s in settings.noncentered}
        )
    kwargs = {k: (jnp.asarray(v) if isinstance(v, list) else v) for k, v in data.items()}
    kernel = NUTS(
        model, target_accept_prob=settings.target_accept, max_tree_depth=settings.max_tree_depth
    )
    mcmc = MCMC(
        kernel,
        num_warmup=settings.warmup,
        num_samples=settings.draws,
        num_chains=settings.chains,
        chain_method="sequential",
        progress_bar=False,
    )
    began = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(settings.seed), extra_fields=("diverging",), **kwargs)
    seconds = time.perf_counter() - began
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    diverging = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    return samples, diverging.sum(axis=1).tolist(), seconds


def make_reference(name: str, redraw_data: bool = False, centered: bool = False) -> dict[str, Any]:
    """Sample ``name`` and return its reference record (written unless ``centered``)."""
    import jax
    import numpyro

    from benchmarks.posteriordb.convert import stan_names
    from benchmarks.posteriordb.posteriors import load_posteriors

    posterior = load_posteriors([name])[name]
    data_name, model_name = name.split("-", 1)
    data = load_data(data_name, redraw_data)
    settings = SETTINGS[name]
    samples, divergences, seconds = run_nuts(name, data, settings, centered)
    chains = settings.chains
    params = summarise(_by_quantity(posterior.quantities, samples, chains))
    derived = (
        summarise(_by_quantity(lambda d: stan_names(d, list(settings.derived)), samples, chains))
        if settings.derived
        else {}
    )
    order = list(params)
    flat = np.stack(
        [_by_quantity(posterior.quantities, samples, chains)[n].reshape(-1) for n in order]
    )
    corr = np.round(np.corrcoef(flat), 3)
    every = {**params, **derived}
    sampler = {
        **asdict(settings),
        "centered": centered or not settings.noncentered,
        "divergences_per_chain": divergences,
        "max_rhat": max(s["rhat"] for s in every.values()),
        "min_ess_bulk": min(s["ess_bulk"] for s in every.values()),
        "min_ess_tail": min(s["ess_tail"] for s in every.values()),
        "seconds": round(seconds, 1),
        "numpyro": numpyro.__version__,
        "jax": jax.__version__,
    }
    record = {
        "name": name,
        "source": "svi_torch benchmarks/hierarchical/make_references.py (NumPyro NUTS)",
        "description": posterior.notes,
        "notes": _notes(settings),
        "data": data,
        "params": params,
        "derived_params": derived,
        "n_draws": settings.draws * chains,
        "n_chains": chains,
        "posterior_corr": {"order": order, "matrix": corr.tolist()},
        "model_name": model_name,
        "data_name": data_name,
        "keywords": [
            "hierarchical set",
            "synthetic data" if data_name.endswith("_synth") else "classic data",
        ],
        "sampler": sampler,
    }
    if not centered:
        REFERENCE.mkdir(exist_ok=True)
        path = REFERENCE / f"{name}.json.gz"
        # mtime=0: the same draws give the same bytes, so a rerun shows no spurious diff.
        with gzip.GzipFile(path, "wb", mtime=0) as raw:
            raw.write((json.dumps(record, indent=1) + "\n").encode())
    return record


def _notes(settings: Settings) -> str:
    notes = []
    if settings.noncentered:
        notes.append(
            f"NUTS sampled the same posterior non-centred in {list(settings.noncentered)} "
            "(LocScaleReparam(centered=0)); the draws are the centred quantities, computed per "
            "draw as loc + scale * standardised."
        )
    if settings.derived:
        notes.append(
            f"{list(settings.derived)} are in derived_params, not scored: the local scales "
            "of the null coefficients have half-Cauchy-like tails with no finite posterior "
            "variance, so their sds are Monte Carlo artefacts."
        )
    return " ".join(notes)


def table(names: list[str]) -> str:
    """The README's table of the stored references' sampler diagnostics (no sampling)."""
    from benchmarks.posteriordb.spec import load_reference

    lines = [
        "| posterior | quantities (+ derived) | sampled | warmup + draws x chains, target accept "
        "| divergences | max R-hat | min ESS bulk | min ESS tail | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        record = load_reference(name).record
        s = record["sampler"]
        form = "as written" if s["centered"] else f"non-centred {', '.join(s['noncentered'])}"
        lines.append(
            f"| {name} | {len(record['params'])} (+{len(record['derived_params'])}) | {form} "
            f"| ({s['warmup']} + {s['draws']}) x {s['chains']}, {s['target_accept']} "
            f"| {sum(s['divergences_per_chain'])} | {s['max_rhat']:.4f} "
            f"| {s['min_ess_bulk']:.0f} | {s['min_ess_tail']:.0f} | {s['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"of {sorted(SETTINGS)} (default: all)")
    parser.add_argument("--redraw-data", action="store_true", help="redraw data/ from the seeds")
    parser.add_argument(
        "--centered",
        action="store_true",
        help="sample the centred model and write nothing (a pilot)",
    )
    parser.add_argument(
        "--table", action="store_true", help="print the stored references' diagnostics table"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.names or list(SETTINGS)))
        return 0
    for name in args.names or list(SETTINGS):
        record = make_reference(name, args.redraw_data, args.centered)
        s = record["sampler"]
        print(
            f"{name}: max R-hat {s['max_rhat']:.4f}, min ESS bulk {s['min_ess_bulk']:.0f}, "
            f"tail {s['min_ess_tail']:.0f}, divergences {s['divergences_per_chain']}, "
            f"{s['seconds']} s" + (" (centred pilot, not written)" if args.centered else ""),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
