"""Every method at its defaults on the fifteen posteriordb posteriors, against Pyro's SVI.

For each posterior of the suite (``benchmarks/posteriordb/posteriors/``) and each method
this fits the posterior, draws from the fit and scores the draws against posteriordb's
reference (NUTS) summaries:

* **svi_torch** at its defaults, ``st.fit(PyroModel(model_fn, **data), family)``, with a
  full-rank Gaussian (``auto``), a mean-field Gaussian (``auto-meanfield``), a normalizing
  flow (``auto-flow``), and the native svi_torch model where one exists
  (``auto-native``); the explicit methods ``ngvi`` and ``sgd`` (Adam on the ELBO, the
  "ELBO-SGD" baseline), ``pathfinder`` and ``bam`` where they are registered;
* **Pyro** ``SVI`` + ``Trace_ELBO`` with ``AutoMultivariateNormal`` and ``AutoNormal`` at the
  settings Pyro's tutorials use (Adam, lr 0.01, 5000 steps, one particle:
  ``pyro-amvn``, ``pyro-normal``), and ``AutoMultivariateNormal`` at the best of the
  learning rates 0.001, 0.01 and 0.1 by final ELBO (``pyro-amvn-best``). Pyro's own
  ``init_loc_fn``\\ s draw from the prior, which flat priors cannot, so the guides start
  where a user would make them: Stan's uniform start in :math:`[-2, 2]` unconstrained
  (``benchmarks/posteriordb/sites.py``).

* **NUTS, what a user would run instead** (issue 26; the ``bench`` extra, asked for by name
  with ``--methods``): ``nutpie`` on a PyMC model of the posterior and ``numpyro-nuts``
  (NumPyro's NUTS) on a NumPyro model (``benchmarks/posteriordb/nuts_models/``, each
  checked against the Stan density by ``tests/test_posteriordb_nuts_models.py``), both at
  their defaults with one chain of ``NUTS_TUNE`` = 1000 warmup and ``NUTS_DRAWS`` = 1000
  draws (200 + 200 with ``--quick``), seeded by ``--seed``, scored on those 1000 draws (fewer effective draws than the
  VI rows' 2000 independent ones, so their scores are noisier: about :math:`1/\\sqrt{ESS}`
  sd, ESS 300-1000). nutpie runs cold: its child process finds empty PyTensor and numba
  caches (``PYTENSOR_FLAGS=base_compiledir=``, ``NUMBA_CACHE_DIR`` in the job's temporary
  folder), as a changed model does; the compile of a second, warm process is reported
  beside it. A NUTS row's divergent transitions count as its warning for the verdict.

Each (posterior, method) runs in a fresh process with a time limit (``--timeout``), so one
that hangs or crashes is a row that says so, not a lost run. Per row: completed or the
error; median and max :math:`|\\bar\\theta_q - \\bar\\theta_{ref}| / sd_{ref}` over the reference
quantities, the max naming its quantity; :math:`sd_q / sd_{ref}` min and max, each naming
its quantity, and the median (quantities whose reference sd is not a target, e.g.
one_comp's :math:`K_m, V_m`, are left out of the sd ratios); the worst tail-quantile
errors :math:`|q05_q - q05_{ref}| / sd_{ref}` and :math:`|q95_q - q95_{ref}| / sd_{ref}`,
naming the quantity (for a quantity with no finite variance the scale is the sd of a normal
with the reference's 90% interval); max :math:`|\\rho_q - \\rho_{ref}|`; PSIS
:math:`\\hat k` of :math:`\\log p(\\theta, D) - \\log q(\\theta)`; the ELBO; wall and CPU
seconds; gradient evaluations (full-data units: a Pyro step on the full data is one per
particle); and for svi_torch the method the fit ended on (``result.method``).

**The verdict** (issue 25) judges the worst quantity, not the median, since a hierarchical
scale too narrow is a wrong answer even when every other quantity is right. The target is
every reference quantity within ``MEAN_TOL`` = 0.2 reference sds in mean and within
``SD_RATIO_RANGE`` = [0.8, 1.25] in sd ratio. A fit that meets it is **right**. One that
misses it is **flagged** when the fit itself warned: a ``RuntimeWarning`` (or Pathfinder's
warning) raised during the fit, captured in the child process, or its own k-hat read "bad"
(``result.diagnostics.reading``). Otherwise it is **WRONG**: "(no warning; doubted ...)"
when the result listed the quantities it doubts (``result.diagnostics.doubtful``) but
raised nothing, "(silent)" when it said nothing at all. A Pyro fit never reads its own
k-hat, so only a warning flags it. The k-hat column is the fit's own diagnosis
(``result.diagnose()``, the value its summary, printout and export state).

**Monte Carlo error, and what the target tolerates.** The scores are computed from
``--draws`` independent draws of q (2000 by default; the issue's figures used 4000), so a
score carries noise even for an exact q: a mean's standard error is :math:`1/\\sqrt{ESS}`
sd (0.022 at 2000, 0.016 at 4000), an sd ratio's is about :math:`\\sqrt{(\\kappa - 1)/(4
ESS)}` for kurtosis :math:`\\kappa` (0.016 for a normal at 2000, 0.025 for a heavy-tailed
scale with :math:`\\kappa = 6`); the reference's own error is smaller (posteriordb's NUTS
ESS is about 10 000: 0.01 sd in mean, so 0.024 sd together with q's at 2000). The
worst of :math:`K` quantities is about :math:`\\sqrt{2 \\ln 2K}` of these (2.8 for
:math:`K = 26`): at most about 0.07 sd in mean and 0.07 in sd ratio at 2000 draws, well
inside 0.2 sd and [0.8, 1.25], so a miss is q's error, not the scorer's. The tails
are noisier: a normal's q05 has standard error :math:`\\sqrt{0.05 \\cdot 0.95 / ESS} /
\\varphi(1.645) \\approx` 0.047 sd at 2000 draws, and the worst of 26 about 0.13 sd, which is
why the quantile errors are reported and not part of the target. Pathfinder's result is
its 1000 importance-resampled draws (the row's note says so), copies among them, so its
ESS is at most 1000 and every noise above grows as :math:`1/\\sqrt{ESS}`.

**One thread per fit.** Every child process runs with OpenMP, MKL, OpenBLAS and numba at
one thread and JAX on one CPU device with single-threaded Eigen (``ONE_THREAD_ENV``);
nutpie samples with ``cores=1``. CPU seconds are the child's own (all its threads).

**The NUTS columns** (shown when a NUTS row is in the run): ``compile s``, the compilation
inside the fit's time (nutpie: CPU s of building the PyMC model and
``nutpie.compile_pymc_model`` with empty caches; NumPyro: the durations JAX reports for
tracing, lowering and compiling, in wall s, converted to CPU s at the fit's CPU-per-wall
share, 1 on a quiet machine, since JAX reports no CPU time per compilation; NumPyro
compiles the warmup's and the draws' loops separately); the sampling time is the rest of
the CPU s; ``divergences`` after warmup; ``CPU ÷ nutpie`` and ``CPU ÷ numpyro-nuts``, each
row's CPU s over that NUTS's CPU s on the same posterior. Gradient evaluations of a NUTS
row are its leapfrog steps over warmup and draws (nutpie's ``n_steps``, NumPyro's
``num_steps``). The section "svi_torch `auto` against NUTS" puts per posterior the default's
CPU s and gradient evaluations beside each NUTS's (nutpie as compile + sampling and its warm
compile), with the ratios default ÷ NUTS and their medians.

The posteriors come from :func:`load_posteriors`, the one place that reads the posterior
sets (``SOURCES``: posteriordb's fifteen; another set of :class:`Posterior` specs with its
own reference folder is one more :class:`Source`).

Usage (repository root; ``pip install -e .[posteriordb]`` for the ODE models)::

    python benchmarks/posteriordb/run.py --jobs 2 --out benchmarks/posteriordb/RESULTS.md
    python benchmarks/posteriordb/run.py --quick          # a smoke test, about a minute
    python benchmarks/posteriordb/run.py --rows rows.jsonl ...  # resumable: finished fits kept
    python benchmarks/posteriordb/run.py --posteriors eight_schools-eight_schools_noncentered --methods auto pyro-amvn
    python benchmarks/posteriordb/run.py --methods auto nutpie numpyro-nuts  # issue 26's table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.posteriordb import posteriors as posteriordb  # noqa: E402
from benchmarks.posteriordb.sites import init_to_unconstrained_uniform  # noqa: E402
from benchmarks.posteriordb.spec import Posterior, Reference, load_reference  # noqa: E402

if TYPE_CHECKING:
    from pyro.infer.autoguide import AutoGuide

MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"
SVI_METHODS = (
    "auto",
    "auto-native",
    "auto-meanfield",
    "auto-flow",
    "ngvi",
    "sgd",
    "pathfinder",
    "bam",
)
PYRO_METHODS = ("pyro-amvn", "pyro-normal", "pyro-amvn-best")
#: The NUTS a user would run instead (issue 26): not in the default --methods, since they
#: need the ``bench`` extra; ask for them by name.
NUTS_METHODS = ("nutpie", "numpyro-nuts")
#: NUTS at Stan's budget: one chain of NUTS_TUNE warmup (tuning) and NUTS_DRAWS draws.
NUTS_TUNE, NUTS_DRAWS = 1000, 1000
#: One thread per fit for every library in a child process: BLAS/OpenMP, numba, and JAX's
#: CPU client (one device, Eigen single-threaded).
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false "
    "intra_op_parallelism_threads=1",
}
PYRO_STEPS = 5000
PYRO_LR = 0.01
PYRO_LR_GRID = (1e-3, 1e-2, 1e-1)
#: Issue 25's target for every reference quantity: mean within MEAN_TOL reference sds, sd
#: ratio within SD_RATIO_RANGE (module docstring: what Monte Carlo error leaves of it).
MEAN_TOL = 0.2
SD_RATIO_RANGE = (0.8, 1.25)
#: The standard normal's 95% quantile: a normal's 90% interval is 2 * NORMAL_Q95 sds wide.
NORMAL_Q95 = 1.6448536269514722


@dataclass(frozen=True)
class Source:
    """A set of posteriors of the same :class:`Posterior` spec and where their references are.

    Attributes:
        load: every posterior of the set by name.
        reference_root: the folder of their reference records (``<name>.json`` or
            ``.json.gz``); ``None`` for :func:`load_reference`'s own places (posteriordb's).
    """

    load: Callable[[], dict[str, Posterior]]
    reference_root: Path | None = None


#: The posterior sets the runner knows; another set (say hierarchical models with their
#: own NUTS references) is one more entry here.
SOURCES: tuple[Source, ...] = (Source(posteriordb.load_posteriors),)


@cache
def _catalogue() -> dict[str, tuple[Posterior, Source]]:
    found: dict[str, tuple[Posterior, Source]] = {}
    for source in SOURCES:
        for name, posterior in source.load().items():
            if name in found:
                raise ValueError(f"posterior {name!r} is in two sources")
            found[name] = (posterior, source)
    return found


def load_posteriors(names: list[str] | None = None) -> dict[str, Posterior]:
    """Every posterior of every source by name (or those in ``names``, in order; an unknown
    name is a ``KeyError``: ``main`` names the known ones first)."""
    found = {name: entry[0] for name, entry in _catalogue().items()}
    return found if names is None else {n: found[n] for n in names}


def reference_for(name: str) -> Reference:
    """The NUTS reference of posterior ``name``, read from its source's folder."""
    return load_reference(name, _catalogue()[name][1].reference_root)


@dataclass
class Row:
    """One (posterior, method) fit and its scores; NaN where a score does not apply.

    One JSON line of a ``--rows`` file (``asdict``); every field has a default, so a line
    written before a field existed still loads. ``*_at`` name the quantity of the score
    beside them; ``fit_warnings``, ``fit_reading`` and ``doubtful`` are what the fit told
    its user, read by :func:`verdict`.
    """

    posterior: str
    method: str
    status: str = "ok"
    ended_on: str = ""
    mean_err_med: float = math.nan
    mean_err_max: float = math.nan
    sd_ratio_min: float = math.nan
    sd_ratio_med: float = math.nan
    sd_ratio_max: float = math.nan
    corr_err_max: float = math.nan
    khat: float = math.nan
    elbo: float = math.nan
    elbo_se: float = math.nan
    wall_s: float = math.nan
    cpu_s: float = math.nan
    grad_evals: float = math.nan
    notes: list[str] = field(default_factory=list)
    # Issue 25's worst-quantity scores. Rows written before these fields (old ``--rows``
    # files) load with the defaults, which the table prints as "n/a".
    mean_err_at: str = ""
    sd_ratio_min_at: str = ""
    sd_ratio_max_at: str = ""
    q05_err_max: float = math.nan
    q05_err_at: str = ""
    q95_err_max: float = math.nan
    q95_err_at: str = ""
    #: What the fit itself said: the messages of the warnings it raised (``None``: not
    #: recorded, a row from before this field), its own k-hat reading and the quantities it
    #: doubts (``result.diagnostics.doubtful`` where the library gives it).
    fit_warnings: list[str] | None = None
    fit_reading: str = ""
    doubtful: list[str] = field(default_factory=list)
    #: NUTS rows (issue 26), NaN elsewhere and in rows written before these fields:
    #: seconds of compilation (nutpie: CPU s of building the PyMC model and
    #: ``compile_pymc_model`` with an empty cache; NumPyro: JAX's trace, lowering and
    #: compile events, wall s at the fit's CPU-per-wall share); CPU s of warmup and
    #: sampling without it;
    #: nutpie's compile CPU s in a fresh process that finds the cold run's cache (warm);
    #: divergent transitions after warmup.
    compile_s: float = math.nan
    sample_s: float = math.nan
    warm_compile_s: float = math.nan
    divergences: float = math.nan


# -- scoring ----------------------------------------------------------------------------------


def score(
    row: Row, posterior: Posterior, draws: dict[str, torch.Tensor], sd_free: tuple[str, ...]
) -> None:
    """Fill the accuracy columns of ``row`` from named constrained draws."""
    score_quantities(row, posterior.quantities(draws), reference_for(posterior.name), sd_free)


def _worst(values: torch.Tensor, names: list[str], largest: bool = True) -> tuple[float, str]:
    """The largest (or smallest) entry of ``values`` and the quantity it belongs to."""
    index = int(values.argmax() if largest else values.argmin())
    return float(values[index]), names[index]


def score_quantities(
    row: Row,
    quantities: Mapping[str, torch.Tensor],
    reference: Reference,
    sd_free: tuple[str, ...] = (),
) -> None:
    """Fill the accuracy columns of ``row`` from draws of the reference quantities.

    Args:
        row: the row to fill.
        quantities: draws keyed by the reference's names, each of shape ``(draws,)``.
        reference: the NUTS summaries (``params``: mean, sd, q05, q95 per quantity) and
            correlations.
        sd_free: quantities whose reference sd is not a target (left out of the sd ratios;
            their quantile errors are scaled by the reference's 90% interval instead).
    """
    names = list(reference.params)
    values = torch.stack([quantities[n].double().reshape(-1) for n in names], -1)

    def ref(key: str, among: list[str]) -> torch.Tensor:
        return torch.tensor([reference.params[n][key] for n in among], dtype=torch.float64)

    ref_sd = ref("sd", names)
    err = (values.mean(0) - ref("mean", names)).abs() / ref_sd
    row.mean_err_med = statistics.median(err.tolist())
    row.mean_err_max, row.mean_err_at = _worst(err, names)
    judged = [i for i, n in enumerate(names) if n not in sd_free]
    if judged:
        judged_names = [names[i] for i in judged]
        ratios = values[:, judged].std(0) / ref_sd[judged]
        row.sd_ratio_med = statistics.median(ratios.tolist())
        row.sd_ratio_min, row.sd_ratio_min_at = _worst(ratios, judged_names, largest=False)
        row.sd_ratio_max, row.sd_ratio_max_at = _worst(ratios, judged_names)
    # Tail quantiles in reference sds. A quantity with no finite posterior variance has a
    # reference sd that is a Monte Carlo artefact, so its scale is the sd a normal with the
    # reference's 90% interval would have.
    tails = [n for n in names if "q05" in reference.params[n] and "q95" in reference.params[n]]
    if tails:
        columns = [names.index(n) for n in tails]
        q05, q95 = ref("q05", tails), ref("q95", tails)
        interval_sd = (q95 - q05) / (2 * NORMAL_Q95)
        scale = torch.where(
            torch.tensor([n in sd_free for n in tails]), interval_sd, ref_sd[columns]
        )
        fitted = torch.quantile(values[:, columns], torch.tensor([0.05, 0.95]).double(), dim=0)
        row.q05_err_max, row.q05_err_at = _worst((fitted[0] - q05).abs() / scale, tails)
        row.q95_err_max, row.q95_err_at = _worst((fitted[1] - q95).abs() / scale, tails)
    order = [n for n in reference.corr_order if n in quantities]
    if len(order) > 1:
        index = [reference.corr_order.index(n) for n in order]
        ref_corr = torch.as_tensor(reference.corr, dtype=torch.float64)[index][:, index]
        fitted = torch.corrcoef(torch.stack([quantities[n].double().reshape(-1) for n in order]))
        gap = (fitted - ref_corr).abs()
        row.corr_err_max = (
            float(gap[torch.isfinite(gap)].max()) if bool(torch.isfinite(gap).any()) else math.nan
        )


def sd_free_quantities(posterior: Posterior) -> tuple[str, ...]:
    """Reference quantities whose sd is not a target (no finite posterior variance)."""
    return posterior.sd_free


def alarms(caught: list[warnings.WarningMessage]) -> list[str]:
    """The messages of the warnings by which a fit told its user not to trust it.

    A ``RuntimeWarning`` (svi_torch's k-hat and health warnings are of this kind) or
    Pathfinder's own warning of unreliable draws; a deprecation or performance notice is
    not a word about the answer. Each message once, shortened to its first clause.
    """
    names = {"PathfinderWarning"}  # a UserWarning, matched by name: Pyro rows lack svi_torch
    kept = [
        w for w in caught if issubclass(w.category, RuntimeWarning) or w.category.__name__ in names
    ]
    return sorted({str(w.message).split(";")[0][:120] for w in kept})


# -- svi_torch --------------------------------------------------------------------------------


def _family(kind: str, dim: int):
    import svi_torch as st

    if kind == "meanfield":
        return st.families.MeanFieldGaussian(dim)
    if kind == "flow":
        return st.families.NormalizingFlow(dim)
    return st.families.FullRankGaussian(dim)


def fit_svi_torch(posterior: Posterior, method: str, draws: int, seed: int, quick: bool) -> Row:
    import svi_torch as st
    from svi_torch.models import PyroModel

    row = Row(posterior.name, method)
    reference = reference_for(posterior.name)
    data = posterior.pyro_data(reference.data)
    if method == "auto-native":
        if posterior.native is None:
            row.status = "n/a (no native model)"
            return row
        model = posterior.native(reference.data)
    else:
        model = PyroModel(posterior.pyro_model, data_plate=posterior.data_plate, **data)
    kind = {"auto-meanfield": "meanfield", "auto-flow": "flow"}.get(method, "fullrank")
    family = _family(kind, model.dim)
    chosen = {"auto-native": "auto", "auto-meanfield": "auto", "auto-flow": "auto"}.get(
        method, method
    )
    if chosen not in st.methods.METHODS and chosen != "auto":
        st.methods.resolve_method("auto")  # registers the built-ins
        if chosen not in st.methods.METHODS:
            row.status = f"n/a (no method {chosen!r} registered)"
            return row
    settings: dict[str, Any] = {"seed": seed}
    if quick:
        settings["steps"] = 300
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = st.fit(model, family, method=chosen, **settings)
    row.wall_s, row.cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    row.notes += sorted({str(w.message).split(";")[0][:120] for w in caught})
    row.fit_warnings = alarms(caught)
    if result.diagnostics is not None:
        row.fit_reading = result.diagnostics.reading
        # The quantities the fit doubts (issue 25, point 4); absent from older libraries.
        row.doubtful = list(getattr(result.diagnostics, "doubtful", ()) or ())
    row.ended_on = result.method
    row.grad_evals = result.grad_evals
    if result.draws is not None and result.draws.shape[0] < draws:
        # Pathfinder's result is its importance-resampled draws (1000 at its defaults): score
        # all of them rather than ask for more than it holds.
        row.notes.append(f"scored on the fit's {result.draws.shape[0]} fixed draws")
        draws = result.draws.shape[0]
    score(row, posterior, result.sample(draws, seed=seed + 1), sd_free_quantities(posterior))
    try:
        # The fit's own diagnosis (the one its summary, printout and export state).
        diagnostics = result.diagnose()
        row.khat, row.elbo, row.elbo_se = diagnostics.khat, diagnostics.elbo, diagnostics.elbo_se
    except (ValueError, TypeError, NotImplementedError) as err:
        row.notes.append(f"no k-hat: {' '.join(str(err).split())[:120]}")
    return row


# -- Pyro ---------------------------------------------------------------------------------------


def _pyro_fit(
    posterior: Posterior, data: dict[str, Any], guide_name: str, lr: float, steps: int, seed: int
) -> AutoGuide:
    import pyro
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer import autoguide as ag

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = posterior.pyro_model
    make = {"amvn": ag.AutoMultivariateNormal, "normal": ag.AutoNormal}[guide_name]
    # Pyro's own init functions draw from the prior first, which a flat (ImproperUniform)
    # prior cannot do: a user writes Stan's start (uniform in [-2, 2] unconstrained) by hand.
    guide = make(model, init_loc_fn=init_to_unconstrained_uniform)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for _ in range(steps):
        svi.step(**data)
    return guide


def _pyro_log_weights(posterior: Posterior, data: dict[str, Any], guide, num: int):
    """Constrained draws of a fitted guide and :math:`\\log p(\\theta, D) - \\log q(\\theta)`.

    Both densities in the constrained space (the guide's includes its Jacobian), so the
    ratio is the posterior's importance weight; one trace per draw, which works for models
    written for one draw too.
    """
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    def total(trace) -> float:
        trace.compute_log_prob()
        return sum(
            float(site["log_prob"].sum())
            for site in trace.nodes.values()
            if site["type"] == "sample" and not site_is_subsample(site)
        )

    draws: dict[str, list[torch.Tensor]] = {}
    log_w = []
    with torch.no_grad():
        for _ in range(num):
            guide_trace = poutine.trace(guide).get_trace(**data)
            model_trace = poutine.trace(
                poutine.replay(posterior.pyro_model, trace=guide_trace)
            ).get_trace(**data)
            log_w.append(total(model_trace) - total(guide_trace))
            for name, site in model_trace.nodes.items():
                if (
                    site["type"] == "sample"
                    and not site["is_observed"]
                    and not site_is_subsample(site)
                    or site["type"] == "sample"
                    and site["infer"].get("_deterministic")
                ):
                    draws.setdefault(name, []).append(site["value"].detach())
    return {k: torch.stack(v) for k, v in draws.items()}, torch.tensor(log_w, dtype=torch.float64)


def fit_pyro(posterior: Posterior, method: str, draws: int, seed: int, quick: bool) -> Row:
    from svi_torch.diagnostics import psis_khat

    # The data are float64 (as JSON gives them) and an autoguide makes its parameters in the
    # default dtype: a Pyro user sets float64 as the default (this runs in its own process).
    torch.set_default_dtype(torch.float64)
    row = Row(posterior.name, method)
    reference = reference_for(posterior.name)
    data = posterior.pyro_data(reference.data)
    steps = 300 if quick else PYRO_STEPS
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide = _fit_pyro_guide(row, posterior, data, method, draws, seed, steps)
    row.wall_s, row.cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    # A Pyro fit says nothing about its own accuracy: only a warning it raised counts.
    row.fit_warnings = alarms(caught)
    samples, log_w = _pyro_log_weights(posterior, data, guide, draws)
    score(row, posterior, samples, sd_free_quantities(posterior))
    finite = log_w[torch.isfinite(log_w)]
    if finite.numel() == log_w.numel():
        row.elbo = float(log_w.mean())
        row.elbo_se = float(log_w.std() / math.sqrt(log_w.numel()))
        row.khat = psis_khat(log_w).value
    else:
        row.notes.append(f"{log_w.numel() - finite.numel()} draws with a non-finite weight")
    return row


def _fit_pyro_guide(
    row: Row,
    posterior: Posterior,
    data: dict[str, Any],
    method: str,
    draws: int,
    seed: int,
    steps: int,
) -> AutoGuide:
    """The fitted guide of a Pyro row (the best learning rate's for ``pyro-amvn-best``)."""
    guide_name = "normal" if method == "pyro-normal" else "amvn"
    if method == "pyro-amvn-best":
        best = None
        for lr in PYRO_LR_GRID:
            try:
                guide = _pyro_fit(posterior, data, guide_name, lr, steps, seed)
                samples, log_w = _pyro_log_weights(posterior, data, guide, max(100, draws // 10))
            except (ValueError, RuntimeError) as err:
                row.notes.append(f"lr {lr:g}: {type(err).__name__}")
                continue
            finite = log_w[torch.isfinite(log_w)]
            elbo = float(finite.mean()) if finite.numel() == log_w.numel() else -math.inf
            if best is None or elbo > best[0]:
                best = (elbo, lr, guide)
        if best is None:
            raise RuntimeError("no learning rate of the grid completed")
        row.ended_on = f"lr {best[1]:g}"
        guide = best[2]
        row.grad_evals = steps * len(PYRO_LR_GRID)
        return guide
    row.ended_on = f"lr {PYRO_LR:g}"
    row.grad_evals = steps
    return _pyro_fit(posterior, data, guide_name, PYRO_LR, steps, seed)


# -- NUTS: nutpie (PyMC models) and NumPyro ---------------------------------------------------


def _nuts_unavailable(row: Row, posterior: Posterior, framework: str) -> bool:
    """Mark ``row`` n/a where the framework is not installed or the translation is not
    faithful (``nuts_models.NOT_FAITHFUL``); True when it did."""
    import importlib.util

    from benchmarks.posteriordb.nuts_models import NOT_FAITHFUL

    needed = {"numpyro": ("numpyro", "jax"), "pymc": ("pymc", "nutpie")}[framework]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        row.status = f"n/a ({', '.join(missing)} not installed: the bench extra)"
        return True
    reason = NOT_FAITHFUL.get((posterior.name, framework))
    if reason:
        row.status = f"n/a ({reason})"
        return True
    return False


def _score_nuts(row: Row, posterior: Posterior, draws: Mapping[str, Any], steps: float) -> None:
    """Scores, gradient evaluations and the divergence alarm of a NUTS row.

    ``draws``: the chain's draws by site name, leading draw dimension (NumPy arrays). A NUTS
    user reads divergent transitions as the sampler's warning, so they count as one for the
    verdict; NUTS has no k-hat or ELBO.
    """
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in draws.items()}
    score(row, posterior, tensors, sd_free_quantities(posterior))
    row.grad_evals = float(steps)
    row.fit_warnings = (
        [f"{row.divergences:.0f} divergent transitions"] if row.divergences > 0 else []
    )


def fit_numpyro_nuts(posterior: Posterior, method: str, draws: int, seed: int, quick: bool) -> Row:
    """NumPyro's NUTS at its defaults (diagonal mass matrix, target acceptance 0.8, tree
    depth 10, a uniform start on (-2, 2) unconstrained), one chain, float64.

    ``mcmc.warmup`` then ``mcmc.run``: gradient evaluations are the ``num_steps`` of both.
    ``compile_s`` is what JAX reports as tracing, lowering and compiling (its monitoring
    events, summed: the warmup's and the run's, since each compiles its own loop), wall
    seconds converted to CPU s at the fit's CPU-per-wall share (JAX reports no CPU time
    per compilation; the share is 1 on a quiet machine at one thread, and the raw wall
    figure is in the row's notes); ``sample_s`` is the fit's CPU s less that.
    """
    row = Row(posterior.name, method)
    if _nuts_unavailable(row, posterior, "numpyro"):
        return row
    import jax
    from numpyro.infer import MCMC, NUTS

    from benchmarks.posteriordb.nuts_models import numpyro_model, numpyro_models  # noqa: F401

    compile_s = [0.0]

    def listen(event: str, duration: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            compile_s[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    tune, kept = (200, 200) if quick else (NUTS_TUNE, NUTS_DRAWS)
    data = reference_for(posterior.name).data
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc = MCMC(
            NUTS(numpyro_model(posterior.name, data)),
            num_warmup=tune,
            num_samples=kept,
            num_chains=1,
            progress_bar=False,
        )
        mcmc.warmup(jax.random.PRNGKey(seed), extra_fields=("num_steps",), collect_warmup=True)
        warmup_steps = np.asarray(mcmc.get_extra_fields()["num_steps"]).sum()
        mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps", "diverging"))
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
        extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields().items()}
    row.wall_s, row.cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    # JAX reports wall durations only. On one thread the fit's CPU s per wall s is the share
    # of the time it ran (1 on a quiet machine); compilation is taken to have run at the
    # same share, so compile + sampling add up to CPU s as nutpie's do.
    row.notes.append(f"JAX compilation {compile_s[0]:.1f} wall s")
    row.compile_s = min(compile_s[0] * row.cpu_s / row.wall_s, row.cpu_s)
    row.sample_s = row.cpu_s - row.compile_s
    row.notes += sorted({str(w.message).split(";")[0][:120] for w in caught})
    row.divergences = float(extra["diverging"].sum())
    row.ended_on = f"{tune}+{kept}"
    _score_nuts(row, posterior, samples, warmup_steps + extra["num_steps"].sum())
    return row


def fit_nutpie(posterior: Posterior, method: str, draws: int, seed: int, quick: bool) -> Row:
    """nutpie on the PyMC model (numba backend, its defaults), one chain, one core.

    Cold: the parent points PyTensor's and numba's caches at an empty folder
    (``PYTENSOR_FLAGS=base_compiledir=...``, which holds PyTensor's C and numba caches, and
    ``NUMBA_CACHE_DIR``), as a changed model finds them. ``compile_s`` is the CPU s of
    building the model and ``nutpie.compile_pymc_model``; ``sample_s`` that of
    ``nutpie.sample`` (tuning and draws); ``warm_compile_s`` the compile CPU s of a fresh
    process that finds this run's cache. Gradient evaluations are the ``n_steps`` of
    tuning and draws.
    """
    row = Row(posterior.name, method)
    if _nuts_unavailable(row, posterior, "pymc"):
        return row
    import nutpie

    # Imported before the clock starts: compile_s is the model's build and compilation, not
    # PyMC's import (neither is torch's in the svi_torch rows).
    from benchmarks.posteriordb.nuts_models import pymc_model, pymc_models  # noqa: F401

    tune, kept = (200, 200) if quick else (NUTS_TUNE, NUTS_DRAWS)
    data = reference_for(posterior.name).data
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = nutpie.compile_pymc_model(pymc_model(posterior.name, data))
        row.compile_s = time.process_time() - cpu
        trace = nutpie.sample(
            compiled,
            draws=kept,
            tune=tune,
            chains=1,
            cores=1,
            seed=seed,
            progress_bar=False,
            save_warmup=True,
        )
    row.wall_s, row.cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    row.sample_s = row.cpu_s - row.compile_s
    row.notes += sorted({str(w.message).split(";")[0][:120] for w in caught})
    steps = float(trace.warmup_sample_stats["n_steps"].sum() + trace.sample_stats["n_steps"].sum())
    row.divergences = float(trace.sample_stats["diverging"].sum())
    row.ended_on = f"{tune}+{kept}"
    samples = {k: np.asarray(v)[0] for k, v in trace.posterior.data_vars.items()}
    _score_nuts(row, posterior, samples, steps)
    row.warm_compile_s = _nutpie_warm_compile(posterior.name)
    return row


def _nutpie_warm_compile(name: str) -> float:
    """Compile CPU s of ``name``'s PyMC model in a fresh process with this process's
    (now filled) caches: nutpie's "warm" start, a second run of an unchanged model."""
    command = [sys.executable, str(Path(__file__).resolve()), "--compile-only", name]
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return math.nan


def _compile_only(name: str) -> int:
    """``--compile-only NAME``: build and compile the PyMC model, print the CPU s."""
    import nutpie

    from benchmarks.posteriordb.nuts_models import pymc_model, pymc_models  # noqa: F401

    cpu = time.process_time()
    nutpie.compile_pymc_model(pymc_model(name, reference_for(name).data))
    print(time.process_time() - cpu)
    return 0


# -- one job, in its own process ------------------------------------------------------------------


def run_job(name: str, method: str, draws: int, seed: int, quick: bool) -> Row:
    torch.set_num_threads(1)
    posterior = load_posteriors([name])[name]
    fits = {"nutpie": fit_nutpie, "numpyro-nuts": fit_numpyro_nuts}
    fit = fits.get(method, fit_pyro if method.startswith("pyro-") else fit_svi_torch)
    try:
        return fit(posterior, method, draws, seed, quick)
    except Exception as err:  # a row that says what went wrong, not a lost run
        row = Row(name, method)
        row.status = f"error: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
        return row


def _worker(args: argparse.Namespace) -> int:
    row = run_job(args.worker[0], args.worker[1], args.draws, args.seed, args.quick)
    Path(args.worker[2]).write_text(json.dumps(asdict(row)))
    return 0


def run_isolated(
    name: str, method: str, args: argparse.Namespace, log: Callable[[str], None]
) -> Row:
    """One job in a fresh process with a time limit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            name,
            method,
            str(out),
        ]
        command += ["--draws", str(args.draws), "--seed", str(args.seed)]
        command += ["--quick"] if args.quick else []
        env = {**os.environ, "PYTHONPATH": str(REPO), **ONE_THREAD_ENV}
        if method == "nutpie":
            # Cold: PyTensor's C and numba caches and numba's own in this job's empty folder.
            env["PYTENSOR_FLAGS"] = f"base_compiledir={Path(tmp) / 'pytensor'}"
            env["NUMBA_CACHE_DIR"] = str(Path(tmp) / "numba")
        began = time.perf_counter()
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=args.timeout, env=env
            )
        except subprocess.TimeoutExpired:
            row = Row(name, method, status=f"timeout after {args.timeout:.0f} s")
            row.wall_s = time.perf_counter() - began
            log(_line(row))
            return row
        if out.is_file():
            row = Row(**json.loads(out.read_text()))
        else:
            tail = " ".join(proc.stderr.strip().splitlines()[-1:])[:200]
            row = Row(name, method, status=f"crashed (exit {proc.returncode}): {tail}")
    log(_line(row))
    return row


# -- the table -------------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _line(row: Row) -> str:
    return (
        f"{row.posterior[:40]:40s} {row.method:15s} {row.status[:40]:40s} "
        f"err {_fmt(row.mean_err_med)}/{_at(row.mean_err_max, row.mean_err_at, row)} "
        f"sd {_at(row.sd_ratio_min, row.sd_ratio_min_at, row)}-"
        f"{_at(row.sd_ratio_max, row.sd_ratio_max_at, row)} khat {_fmt(row.khat)} "
        f"wall {_fmt(row.wall_s, 1)}s {row.ended_on} | {verdict(row)}"
    )


def _recorded(row: Row) -> bool:
    """Whether ``row`` holds issue 25's fields (rows written before them do not)."""
    return row.fit_warnings is not None


def _at(value: float, name: str, row: Row) -> str:
    """A worst score and the quantity it belongs to, ``0.77 (tau)``; "n/a" for a row
    written before the names were recorded."""
    if not _recorded(row):
        return f"{_fmt(value)} (n/a)" if math.isfinite(value) else "n/a"
    return f"{_fmt(value)} ({name})" if name else _fmt(value)


def _meets_targets(row: Row) -> str:
    """Issue 12's accuracy targets: median mean error < 0.1 sd, median sd ratio 0.9-1.1."""
    if row.status != "ok":
        return "no"
    ok = row.mean_err_med < 0.1 and 0.9 <= row.sd_ratio_med <= 1.1
    if ok:
        return "yes"
    return "no (k-hat > 0.7 flags it)" if row.khat > 0.7 else "no"


def right_on_every_quantity(row: Row) -> bool:
    """Issue 25's target: every quantity's mean within :data:`MEAN_TOL` reference sds and
    every sd ratio in :data:`SD_RATIO_RANGE` (a NaN score is not right)."""
    low, high = SD_RATIO_RANGE
    return row.mean_err_max <= MEAN_TOL and low <= row.sd_ratio_min and row.sd_ratio_max <= high


def verdict(row: Row) -> str:
    """``"right"`` on every quantity; else ``"flagged (...)"`` when the fit said so, with
    what it said, or ``"WRONG (silent)"`` when it said nothing; ``"n/a"`` for a fit that did
    not complete or a row written before the fields the verdict reads."""
    if row.status != "ok" or not _recorded(row):
        return "n/a"
    if right_on_every_quantity(row):
        return "right"
    # Flagged means warned: a warning or a k-hat read "bad". A list of doubtful quantities
    # on the result, without a warning, is a remark the user may never read, so a miss with
    # only that is still a silent one (issue 25: "flagged with a warning").
    said = []
    if row.fit_warnings:
        said.append(f"{len(row.fit_warnings)} warning" + "s" * (len(row.fit_warnings) > 1))
    if row.fit_reading == "bad":
        said.append("k-hat bad")
    if said:
        return f"flagged ({'; '.join(said)})"
    if row.doubtful:
        shown = ", ".join(row.doubtful[:3])
        more = f" +{len(row.doubtful) - 3}" if len(row.doubtful) > 3 else ""
        return f"WRONG (no warning; doubted {shown}{more})"
    return "WRONG (silent)"


def markdown(
    rows: list[Row], command: str, total_wall: float, methods: list[str], reused: int = 0
) -> str:
    import pyro

    # Fits kept from earlier invocations (--rows) ran then, not in this invocation's time.
    timing = (
        f"in {total_wall:.0f} s wall time"
        if not reused
        else f"({reused} of the {len(rows)} fits recorded by earlier invocations with the "
        f"same --rows file; this one took {total_wall:.0f} s)"
    )
    lines = [
        f"Generated by `{command}` {timing}; torch {torch.__version__}, "
        f"pyro {pyro.__version__}{_nuts_versions(rows)}, Python {platform.python_version()}, "
        "one thread per fit, each fit in its own process.",
        "",
        "Columns: mean error |E_q θ - E_ref θ| / sd_ref (median and max over the reference "
        "quantities, the max naming its quantity); sd_q / sd_ref (min and max naming their "
        "quantities, and the median; quantities with no finite posterior variance left out); "
        "the worst tail-quantile errors |q05_q - q05_ref| / sd_ref and |q95_q - q95_ref| / "
        "sd_ref, naming the quantity; max |corr_q - corr_ref|; PSIS k-hat of log p(θ, D) - "
        "log q(θ) from the scored draws (< 0.5 good, 0.5-0.7 ok, > 0.7 bad); ELBO; wall and "
        "CPU seconds of the fit; gradient evaluations in full-data units; what the fit ended "
        "on (svi_torch: `result.method`; Pyro: the learning rate); issue 12's targets "
        "(medians); the verdict against issue 25's target, every quantity within "
        f"{MEAN_TOL} sd in mean and within [{SD_RATIO_RANGE[0]}, {SD_RATIO_RANGE[1]}] in sd "
        "ratio: right, flagged (missed, and the fit warned or read its own k-hat as bad) or "
        "WRONG (missed without a warning; 'doubted' when the result named the quantity among "
        "those it doubts). n/a: a "
        "row recorded before these scores.",
        "",
    ]
    posteriors = list(dict.fromkeys(r.posterior for r in rows))
    nuts = [m for m in NUTS_METHODS if any(r.method == m and r.status == "ok" for r in rows)]
    header = (
        "| method | status | ended on | err med | err max | sd min | sd med | sd max | "
        "q05 err | q95 err | max Δcorr | k-hat | ELBO | wall s | CPU s | grad evals | "
        "targets | verdict |"
    )
    if nuts:
        # Issue 26's columns, only where a NUTS row is in the run: compilation, divergences
        # and each row's CPU s over each NUTS's on the same posterior.
        header += " compile s | divergences | " + " | ".join(f"CPU ÷ {m}" for m in nuts) + " |"
        lines[2] += (
            " NUTS columns: compile s, the compilation inside CPU s (nutpie: model build and "
            "compile_pymc_model with an empty cache, CPU s; NumPyro: JAX's trace, lowering and "
            "compile, wall s at the fit's CPU-per-wall share); divergences after warmup; CPU ÷ nutpie and CPU ÷ "
            "numpyro-nuts, the row's CPU s over that NUTS's on the same posterior."
        )
    found = {(r.posterior, r.method): r for r in rows if r.status == "ok"}
    for name in posteriors:
        lines += [f"### {name}", "", header, "|" + "---|" * (18 + (2 + len(nuts) if nuts else 0))]
        for row in rows:
            if row.posterior != name:
                continue
            extra = ""
            if nuts:
                ratios = [_ratio(row.cpu_s, found.get((name, m))) for m in nuts]
                extra = (
                    f" {_fmt(row.compile_s, 1)} | {_fmt(row.divergences, 0)} | "
                    + " | ".join(ratios)
                    + " |"
                )
            lines.append(
                f"| {row.method} | {row.status} | {row.ended_on} | {_fmt(row.mean_err_med)} "
                f"| {_at(row.mean_err_max, row.mean_err_at, row)} "
                f"| {_at(row.sd_ratio_min, row.sd_ratio_min_at, row)} "
                f"| {_fmt(row.sd_ratio_med)} | {_at(row.sd_ratio_max, row.sd_ratio_max_at, row)} "
                f"| {_at(row.q05_err_max, row.q05_err_at, row)} "
                f"| {_at(row.q95_err_max, row.q95_err_at, row)} "
                f"| {_fmt(row.corr_err_max)} | {_fmt(row.khat)} "
                f"| {_fmt(row.elbo, 1)} | {_fmt(row.wall_s, 1)} | {_fmt(row.cpu_s, 1)} "
                f"| {_fmt(row.grad_evals, 0)} | {_meets_targets(row)} | {verdict(row)} |" + extra
            )
        lines.append("")
    lines += summary(rows, posteriors, methods)
    lines += evaluations_against_sgd(rows, posteriors)
    lines += against_nuts(rows, posteriors)
    return "\n".join(lines)


def _nuts_versions(rows: list[Row]) -> str:
    """ ", numpyro 0.22.0, jax ..." for the NUTS libraries of the run's NUTS rows (as this
    process finds them installed: the children ran with the same interpreter)."""
    from importlib.metadata import PackageNotFoundError, version

    wanted = {"numpyro-nuts": ("numpyro", "jax"), "nutpie": ("nutpie", "pymc")}
    packages = [p for r in rows if r.status == "ok" for p in wanted.get(r.method, ())]
    found = []
    for package in dict.fromkeys(packages):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return "".join(f", {f}" for f in found)


def _ratio(cpu_s: float, nuts: Row | None) -> str:
    """``cpu_s`` over a NUTS row's CPU s, "—" without one."""
    if nuts is None or not (nuts.cpu_s > 0) or not math.isfinite(cpu_s):
        return "—"
    return f"{cpu_s / nuts.cpu_s:.2f}"


def against_nuts(rows: list[Row], posteriors: list[str], default: str = "auto") -> list[str]:
    """Issue 26's comparison: per posterior, the svi_torch default's CPU s and gradient
    evaluations beside nutpie's (cold) and NumPyro NUTS's, and the ratios default ÷ NUTS;
    the median ratio over the posteriors with all three rows last. Empty without a
    ``default`` row and at least one NUTS row in ``rows``."""
    found = {(r.posterior, r.method): r for r in rows if r.status == "ok"}
    nuts = [m for m in NUTS_METHODS if any(k[1] == m for k in found)]
    if not nuts or not any(k[1] == default for k in found):
        return []
    lines = [
        f"### svi_torch `{default}` against NUTS",
        "",
        "CPU s of each fit in its own process, one thread. nutpie: cold (empty compile "
        "cache), as (compile + sampling), warm = compile CPU s with the cache filled; "
        "NumPyro: (compile + sampling). Grad evals: the default's in full-data units, "
        "NUTS's leapfrog steps of warmup and draws. Ratios: the default's over NUTS's "
        "(< 1: the default is cheaper).",
        "",
    ]
    head = f"| posterior | {default} CPU s | {default} grad evals | {default} verdict |"
    for m in nuts:
        head += f" {m} CPU s | {m} grad evals | {m} div | {m} verdict |"
    head += "".join(f" CPU ÷ {m} | evals ÷ {m} |" for m in nuts)
    lines += [head, "|" + "---|" * (4 + 6 * len(nuts))]
    cpu_ratios: dict[str, list[float]] = {m: [] for m in nuts}
    eval_ratios: dict[str, list[float]] = {m: [] for m in nuts}
    for name in posteriors:
        mine = found.get((name, default))
        if mine is None:
            continue
        cells = [name, _fmt(mine.cpu_s, 1), _fmt(mine.grad_evals, 0), verdict(mine)]
        ratio_cells = []
        for m in nuts:
            row = found.get((name, m))
            if row is None:
                cells += ["—"] * 4
                ratio_cells += ["—", "—"]
                continue
            split = f"{_fmt(row.cpu_s, 1)} ({_fmt(row.compile_s, 1)} + {_fmt(row.sample_s, 1)})"
            if math.isfinite(row.warm_compile_s):
                split += f", warm {_fmt(row.warm_compile_s, 1)}"
            cells += [split, _fmt(row.grad_evals, 0), _fmt(row.divergences, 0), verdict(row)]
            cpu, evals = mine.cpu_s / row.cpu_s, mine.grad_evals / row.grad_evals
            cpu_ratios[m].append(cpu)
            eval_ratios[m].append(evals)
            ratio_cells += [f"{cpu:.2f}", f"{evals:.2f}"]
        lines.append("| " + " | ".join(cells + ratio_cells) + " |")
    medians = [
        f"{statistics.median(v):.2f}" if v else "—"
        for m in nuts
        for v in (cpu_ratios[m], eval_ratios[m])
    ]
    lines.append("| median | | | |" + " | | | |" * len(nuts) + " " + " | ".join(medians) + " |")
    lines.append("")
    return lines


def summary(rows: list[Row], posteriors: list[str], methods: list[str]) -> list[str]:
    """Per method: fits completed, targets met, issue 25's verdicts, total time and gradient
    evaluations.

    "right", "flagged" and "silent" count the completed fits by :func:`verdict`; "n/a"
    counts the completed fits recorded before the verdict's fields, so the three need not
    add up to the completed fits.
    """
    lines = [
        "### Summary",
        "",
        "| method | completed | targets met | flagged by k-hat > 0.7 | right on every quantity "
        "| flagged | WRONG (no warning) | verdict n/a | total wall s | total grad evals |",
        "|" + "---|" * 10,
    ]
    for method in methods:
        mine = [r for r in rows if r.method == method and not r.status.startswith("n/a")]
        if not mine:
            continue
        done = [r for r in mine if r.status == "ok"]
        met = [r for r in done if _meets_targets(r) == "yes"]
        flagged = [r for r in done if _meets_targets(r) != "yes" and r.khat > 0.7]
        verdicts = [verdict(r).split(" (")[0] for r in done]
        wall = sum(r.wall_s for r in done)
        evals = sum(r.grad_evals for r in done if math.isfinite(r.grad_evals))
        lines.append(
            f"| {method} | {len(done)}/{len(mine)} | {len(met)} | {len(flagged)} | "
            f"{verdicts.count('right')} | {verdicts.count('flagged')} | "
            f"{verdicts.count('WRONG')} | {verdicts.count('n/a')} | {wall:.0f} | {evals:.0f} |"
        )
    lines.append("")
    return lines


def evaluations_against_sgd(rows: list[Row], posteriors: list[str]) -> list[str]:
    """Issue 20's comparison: gradient evaluations of Pathfinder and BaM against ELBO-SGD.

    Per posterior: each method's evaluations (full-data units) and whether it met the
    targets, and SGD's over theirs. SGD's count is its whole step budget (it has no stop
    at the target), so the ratio is fewer-evaluations-for-the-accuracy only where SGD met
    the targets too.
    """
    found = {(r.posterior, r.method): r for r in rows if r.status == "ok"}
    compared = [m for m in ("pathfinder", "bam", "auto") if any(k[1] == m for k in found)]
    if not compared or not any(k[1] == "sgd" for k in found):
        return []
    header = "| posterior | sgd evals (targets) | " + " | ".join(
        f"{m} evals (targets) | sgd / {m}" for m in compared
    )
    lines = [
        "### Gradient evaluations against ELBO-SGD",
        "",
        "Full-data units; (y) met the targets, (n) did not. SGD's count is its whole budget.",
        "",
        header + " |",
        "|" + "---|" * (2 + 2 * len(compared)),
    ]
    for name in posteriors:
        sgd = found.get((name, "sgd"))
        if sgd is None:
            continue
        cells = [name, f"{sgd.grad_evals:.0f} ({_meets_targets(sgd)[0]})"]
        for method in compared:
            row = found.get((name, method))
            if row is None:
                cells += ["—", "—"]
                continue
            cells += [
                f"{row.grad_evals:.0f} ({_meets_targets(row)[0]})",
                f"{sgd.grad_evals / row.grad_evals:.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


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
    path.write_text(f"# svi_torch on fifteen posteriordb posteriors\n\n{block}\n")


QUICK_POSTERIORS = (
    "eight_schools-eight_schools_noncentered",
    "kidiq-kidscore_interaction",
    "gp_pois_regr-gp_regr",
)
QUICK_METHODS = ("auto", "auto-native", "pyro-amvn")


def load_rows(path: Path | None) -> dict[tuple[str, str], Row]:
    """The fits recorded in a ``--rows`` file, by (posterior, method); a torn last line is
    dropped (the run was killed while writing it) and that fit runs again."""
    if path is None or not path.is_file():
        return {}
    rows: dict[tuple[str, str], Row] = {}
    for line in path.read_text().splitlines():
        try:
            row = Row(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        rows[(row.posterior, row.method)] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 posteriors, 3 methods, short budgets"
    )
    parser.add_argument(
        "--posteriors", nargs="*", default=None, help="posteriordb names (default: all)"
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help=f"of {SVI_METHODS + PYRO_METHODS + NUTS_METHODS} (default: all but NUTS's)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="fits run side by side")
    parser.add_argument("--draws", type=int, default=None, help="draws of q for the scores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per fit")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to (re)write")
    parser.add_argument(
        "--rows",
        type=Path,
        default=None,
        help="JSON-lines file each finished fit is appended to; fits already in it are "
        "reused, so a killed run resumes where it stopped",
    )
    parser.add_argument(
        "--worker", nargs=3, metavar=("POSTERIOR", "METHOD", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--compile-only", metavar="POSTERIOR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_only:
        return _compile_only(args.compile_only)
    if args.draws is None:
        args.draws = 400 if args.quick else 2000
    if args.worker:
        return _worker(args)
    if args.timeout is None:
        args.timeout = 600.0 if args.quick else 3600.0
    available = load_posteriors()
    names = args.posteriors or (list(QUICK_POSTERIORS) if args.quick else list(available))
    unknown = [n for n in names if n not in available]
    if unknown:
        print(
            f"error: unknown posterior(s) {unknown}; the suite has {sorted(available)}",
            file=sys.stderr,
        )
        return 2
    methods = args.methods or list(QUICK_METHODS if args.quick else SVI_METHODS + PYRO_METHODS)
    known = SVI_METHODS + PYRO_METHODS + NUTS_METHODS
    bad = [m for m in methods if m not in known]
    if bad:
        print(
            f"error: unknown method(s) {bad}; choose from {known}",
            file=sys.stderr,
        )
        return 2
    jobs = [(n, m) for n in names for m in methods]
    done = load_rows(args.rows)
    lock = threading.Lock()

    def run_or_reuse(job: tuple[str, str]) -> Row:
        if job in done:
            return done[job]
        row = run_isolated(*job, args, print)
        if args.rows is not None:
            with lock, args.rows.open("a") as stream:
                stream.write(json.dumps(asdict(row)) + "\n")
        return row

    began = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(run_or_reuse, jobs))
    total = time.perf_counter() - began
    shown = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/posteriordb/run.py " + shlex.join(shown)
    reused = sum(job in done for job in jobs)
    table = markdown(rows, command.strip(), total, methods, reused)
    print(table)
    if args.out is not None:
        write_results(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
