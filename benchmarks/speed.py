"""Per-step speed and peak memory of svi_torch against a hand loop, Pyro and NumPyro.

Every figure is the median over repeats of ms per step (warm-up excluded), with the
methods interleaved repeat by repeat so that a change in machine load hits all of them
alike. The ratios are taken against the hand-written torch loop measured in the same run.

* **svi_torch**: ``TrainingLoop.train_step`` of the SGD method (what ``fit`` runs each step).
* **hand**: a hand-written torch loop of the same maths: same family parameterisation
  (softplus scales, Cholesky factor), same estimator (one batched draw of K particles,
  analytic Gaussian entropy), same minibatch draw (a permutation per epoch, sliced on the
  device), same optimizer (fused Adam).
* **pyro**: ``SVI`` + ``AutoNormal`` (mean-field) / ``AutoMultivariateNormal`` (full rank)
  + ``Trace_ELBO`` with a subsampled ``plate``, the standard Pyro way.
* **numpyro**: the same in NumPyro with ``jax.jit(svi.update)`` (``bench`` extra; skipped
  with a note when not installed).

Run ``python benchmarks/speed.py`` (full, about 4 minutes on 2 CPU cores) or
``--quick`` (a smoke test of seconds). ``--device cuda`` runs torch on the GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import svi_torch as st

HIDDEN = 50
LR = 1e-2
INIT_SCALE = 0.1


@dataclass(frozen=True)
class Case:
    model: str  # "logreg" or "bnn"
    num_data: int
    dim: int  # input dimension
    batch_size: int
    family: str  # "meanfield" or "fullrank"

    @property
    def label(self) -> str:
        return f"{self.model} N={self.num_data:.0e} D={self.dim} B={self.batch_size} {self.family}"


# -- data and models -------------------------------------------------------------------
def make_data(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    if case.model == "logreg":
        X, y, _ = st.models.logistic_data(case.num_data, case.dim, seed=0)
        return X, y
    return st.models.bnn_data(case.num_data, case.dim, hidden=HIDDEN, seed=0)


def make_model(case: Case, X: torch.Tensor, y: torch.Tensor) -> st.models.Model:
    if case.model == "logreg":
        return st.models.BayesianLogisticRegression(X, y)
    return st.models.BayesianNeuralNetwork(X, y, hidden=HIDDEN)


def make_family(case: Case, dim: int) -> st.families.VariationalFamily:
    cls = (
        st.families.MeanFieldGaussian
        if case.family == "meanfield"
        else st.families.FullRankGaussian
    )
    return cls(dim, init_scale=INIT_SCALE)


# -- the four step functions -----------------------------------------------------------
def svi_torch_step(case: Case, X, y, device: str, particles: int = 1) -> Callable[[], object]:
    model = make_model(case, X, y)
    family = make_family(case, model.dim)
    config = st.training.TrainConfig(steps=10**9, batch_size=case.batch_size, device=device, seed=0)
    loop = st.methods.SGD(lr=LR).prepare(model, family, st.objectives.ELBO(particles), config)
    return loop.train_step


def hand_step(case: Case, X, y, device: str, particles: int = 1) -> Callable[[], object]:
    X, y = X.to(device), y.to(device)
    n, b, d = case.num_data, case.batch_size, case.dim
    dim = d if case.model == "logreg" else d * HIDDEN + 2 * HIDDEN + 1
    loc = torch.zeros(dim, device=device, requires_grad=True)
    raw = torch.full((dim,), math.log(math.expm1(INIT_SCALE)), device=device, requires_grad=True)
    params = [loc, raw]
    if case.family == "fullrank":
        tril = torch.zeros(dim, dim, device=device, requires_grad=True)
        params.append(tril)
    opt = torch.optim.Adam(params, lr=LR, fused=True)
    const = 0.5 * math.log(2 * math.pi)
    state = {"perm": torch.randperm(n).to(device), "pos": 0}

    def log_lik(z, xb, yb):
        if case.model == "logreg":
            logits = z @ xb.T
            return (yb * logits - F.softplus(logits)).sum(-1)
        k = z.shape[0]
        W1 = z[:, : d * HIDDEN].reshape(k, d, HIDDEN)
        b1 = z[:, d * HIDDEN : d * HIDDEN + HIDDEN]
        w2 = z[:, d * HIDDEN + HIDDEN : -1]
        b2 = z[:, -1]
        h = torch.tanh(torch.einsum("nd,kdh->knh", xb, W1) + b1[:, None, :])
        f = torch.einsum("knh,kh->kn", h, w2) + b2[:, None]
        return (-0.5 * (yb - f).square() - const).sum(-1)

    def step():
        if state["pos"] + b > n:
            state["perm"], state["pos"] = torch.randperm(n).to(device), 0
        idx = state["perm"][state["pos"] : state["pos"] + b]
        state["pos"] += b
        xb, yb = X.index_select(0, idx), y.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        diag = F.softplus(raw)
        eps = torch.randn(particles, dim, device=device)
        if case.family == "meanfield":
            z = loc + eps * diag
        else:
            z = loc + eps * diag + eps @ tril.tril(-1).mT
        log_prior = (-0.5 * z.square() - const).sum(-1)
        entropy = diag.log().sum() + dim * (0.5 + const)
        elbo = (log_lik(z, xb, yb) * (n / b) + log_prior).mean() + entropy
        (-elbo).backward()
        opt.step()

    return step


def pyro_step(case: Case, X, y, device: str) -> Callable[[], object]:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    X, y = X.to(device), y.to(device)
    d = case.dim
    zero = torch.zeros((), device=device)

    def model(X, y):
        if case.model == "logreg":
            beta = pyro.sample("beta", dist.Normal(zero, 1.0).expand([d]).to_event(1))
            with pyro.plate("data", case.num_data, subsample_size=case.batch_size) as idx:
                pyro.sample("obs", dist.Bernoulli(logits=X[idx] @ beta), obs=y[idx])
            return
        W1 = pyro.sample("W1", dist.Normal(zero, 1.0).expand([d, HIDDEN]).to_event(2))
        b1 = pyro.sample("b1", dist.Normal(zero, 1.0).expand([HIDDEN]).to_event(1))
        w2 = pyro.sample("w2", dist.Normal(zero, 1.0).expand([HIDDEN]).to_event(1))
        b2 = pyro.sample("b2", dist.Normal(zero, 1.0))
        with pyro.plate("data", case.num_data, subsample_size=case.batch_size) as idx:
            f = torch.tanh(X[idx] @ W1 + b1) @ w2 + b2
            pyro.sample("obs", dist.Normal(f, 1.0), obs=y[idx])

    pyro.clear_param_store()
    guide_cls = AutoNormal if case.family == "meanfield" else AutoMultivariateNormal
    guide = guide_cls(model, init_scale=INIT_SCALE)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    return lambda: svi.step(X, y)


def numpyro_step(case: Case, X, y) -> Callable[[], object]:
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    X, y = jax.numpy.asarray(X.numpy()), jax.numpy.asarray(y.numpy())
    d = case.dim

    def model(X, y):
        if case.model == "logreg":
            beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
            with numpyro.plate("data", case.num_data, subsample_size=case.batch_size) as idx:
                numpyro.sample("obs", dist.Bernoulli(logits=X[idx] @ beta), obs=y[idx])
            return
        W1 = numpyro.sample("W1", dist.Normal(0.0, 1.0).expand([d, HIDDEN]).to_event(2))
        b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
        w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
        b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", case.num_data, subsample_size=case.batch_size) as idx:
            f = jax.numpy.tanh(X[idx] @ W1 + b1) @ w2 + b2
            numpyro.sample("obs", dist.Normal(f, 1.0), obs=y[idx])

    guide_cls = AutoNormal if case.family == "meanfield" else AutoMultivariateNormal
    guide = guide_cls(model, init_scale=INIT_SCALE)
    svi = SVI(model, guide, numpyro.optim.Adam(LR), Trace_ELBO())
    holder = [svi.init(jax.random.PRNGKey(0), X, y)]
    update = jax.jit(svi.update)

    def step():
        holder[0], loss = update(holder[0], X, y)
        loss.block_until_ready()

    return step


# -- timing ----------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    steps: dict[str, Callable[[], object]], repeats: int, block_s: float, device: str
) -> dict[str, float]:
    """Median ms/step of each step function, blocks interleaved across methods."""
    sizes = {}
    for name, step in steps.items():
        for _ in range(5):  # warm-up: first calls build caches, compile, allocate
            step()
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        one = max(time.perf_counter() - start, 1e-5)
        sizes[name] = max(3, min(400, int(block_s / one)))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for repeat in range(repeats):
        # Every other repeat in reverse order, so that a drift of the machine's speed
        # within a repeat does not always favour the method measured first.
        for name in names if repeat % 2 == 0 else names[::-1]:
            step, n = steps[name], sizes[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(n):
                step()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / n * 1e3)
    medians = {name: statistics.median(v) for name, v in samples.items()}
    # Ratios between methods: the median over repeats of the ratio of the two blocks timed
    # side by side in that repeat, which cancels the slow drift of a shared or virtual
    # machine's speed that a ratio of medians keeps.
    for a in samples:
        for b in samples:
            if a != b:
                paired = [x / y for x, y in zip(samples[a], samples[b], strict=True)]
                medians[f"{a}/{b}"] = statistics.median(paired)
    return medians


# -- N-scaling ---------------------------------------------------------------------------
# PyTorch's own switch: CPU allocations of 2 MB or more are aligned and madvise'd to
# transparent huge pages. It is read once per process, before the first allocation.
THP_ENV = "THP_MEM_ALLOC_ENABLE"


def measure_scaling(
    scaling: list[tuple[str, int, int, int]], repeats: int, block_s: float, device: str
) -> dict[str, float]:
    """ms/step of svi_torch and of the hand loop at each N of ``scaling``, interleaved.

    Both gather B random rows a step; at N=1e6 the data (200 MB) no longer fit in the CPU
    caches and the rows come from DRAM, through page-table walks of 4 kB pages.
    """
    steps = {}
    for model_name, n, d, b in scaling:
        case = Case(model_name, n, d, b, "meanfield")
        X, y = make_data(case)
        steps[str(n)] = svi_torch_step(case, X, y, device)
        steps[f"hand {n}"] = hand_step(case, X, y, device)
    return time_interleaved(steps, repeats, block_s, device)


def measure_scaling_with_huge_pages(
    scaling: list[tuple[str, int, int, int]], repeats: int, block_s: float, threads: int
) -> dict[str, float]:
    """:func:`measure_scaling` in a child process started with ``THP_MEM_ALLOC_ENABLE=1``."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **{THP_ENV: "1"})
    args = [sys.executable, __file__, "--_scaling", json.dumps(scaling)]
    args += ["--repeats", str(repeats), "--block-s", str(block_s), "--threads", str(threads)]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"scaling probe failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- memory (one subprocess per measurement, so peaks do not mix) ----------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(case: Case, device: str, steps: int) -> dict[str, float]:
    """Peak memory of a run over (data + model + optimizer state), in this process."""
    torch.set_num_threads(1)
    # Warm up the same code path on tiny data, so that library pages and kernels loaded
    # on first use are not counted as the run's memory.
    tiny = Case(case.model, 2 * case.batch_size, case.dim, case.batch_size, case.family)
    tX, ty = make_data(tiny)
    warm = svi_torch_step(tiny, tX, ty, device)
    for _ in range(3):
        warm()
    del warm, tX, ty
    # The data exist before the run (how they were generated is not the run's cost): the
    # baseline is taken after they are made and the data bytes are added back below.
    X, y = make_data(case)
    data_in_base = 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kib("VmRSS:") * 1024
        data_in_base = X.numel() * X.element_size() + y.numel() * y.element_size()
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    model = make_model(case, X, y)
    family = make_family(case, model.dim)
    config = st.training.TrainConfig(steps=10**9, batch_size=case.batch_size, device=device)
    loop = st.methods.SGD(lr=LR).prepare(model, family, st.objectives.ELBO(), config)
    del X, y
    for _ in range(steps):
        loop.train_step()
    _sync(device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM:") * 1024 - base + data_in_base
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    data = nbytes(model.buffers())
    params = nbytes(family.parameters()) + nbytes(model.parameters())
    opt_state = nbytes(
        v for s in loop.rule.optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    need = data + params + opt_state
    return {"peak_mb": peak / 2**20, "need_mb": need / 2**20, "ratio": peak / need}


def measure_memory(case: Case, device: str, steps: int, runs: int = 5) -> dict[str, float]:
    """Median peak over ``runs`` fresh processes, with the smallest and largest ratio.

    For small data the peak RSS of one process moves by a few MB with where glibc's heap
    happens to put freed blocks (the full-rank BNN: single processes from 1.00 to 1.57 for
    the same code in two full runs), so one process is not a measurement.
    """
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    args = [sys.executable, __file__, "--_memory", json.dumps(case.__dict__), "--device", device]
    probes = []
    for _ in range(runs):
        out = subprocess.run(
            args + ["--_memory-steps", str(steps)], capture_output=True, text=True, env=env
        )
        if out.returncode != 0:
            raise RuntimeError(f"memory probe failed: {out.stderr[-2000:]}")
        probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratios = sorted(probe["ratio"] for probe in probes)
    median = next(p for p in probes if p["ratio"] == ratios[len(ratios) // 2])
    return {**median, "min_ratio": ratios[0], "max_ratio": ratios[-1]}


# -- the run ---------------------------------------------------------------------------
def _have_numpyro() -> bool:
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke test (seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch (and XLA) CPU threads")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--block-s", type=float, default=None, help="seconds per timed block")
    parser.add_argument("--no-pyro", action="store_true")
    parser.add_argument("--no-numpyro", action="store_true")
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    parser.add_argument("--_memory-steps", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--_scaling", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory:
        case = Case(**json.loads(args._memory))
        print(json.dumps(memory_probe(case, args.device, args._memory_steps)))
        return 0

    torch.set_num_threads(args.threads)
    if args._scaling:
        scaling = [tuple(s) for s in json.loads(args._scaling)]
        print(json.dumps(measure_scaling(scaling, args.repeats, args.block_s, "cpu")))
        return 0
    if args.threads == 1:
        # Same thread budget for XLA as for torch (set before jax is imported).
        os.environ.setdefault(
            "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    device = args.device
    if args.quick:
        sizes = [("logreg", 2000, 5, 50), ("bnn", 2000, 5, 50)]
        scaling = [("logreg", 500, 5, 50), ("logreg", 20000, 5, 50)]
        repeats, block_s = args.repeats or 2, args.block_s or 0.05
    else:
        sizes = [
            ("logreg", 10**4, 10, 100),
            ("logreg", 10**5, 100, 256),
            ("logreg", 10**6, 50, 1024),
            ("bnn", 10**5, 10, 256),
        ]
        scaling = [("logreg", 10**4, 50, 1024), ("logreg", 10**6, 50, 1024)]
        # Many short paired blocks: the median of 41 side-by-side ratios moved by 0.00-0.06
        # between runs on a 2-core virtual machine; 7 blocks of 0.25 s moved it by 0.1-0.2.
        repeats, block_s = args.repeats or 41, args.block_s or 0.05
    use_numpyro = not args.no_numpyro and not args.quick and device == "cpu"
    if use_numpyro and not _have_numpyro():
        print("note: numpyro/jax not installed (pip install -e .[bench]); NumPyro skipped")
        use_numpyro = False

    command = "python " + " ".join([Path(__file__).as_posix(), *sys.argv[1:]])
    print(f"# svi_torch speed benchmark: {command}")
    print(
        f"# torch {torch.__version__}, device {device}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, repeats {repeats} (median), warm-up excluded, "
        f"{THP_ENV}={os.environ.get(THP_ENV, 'unset')}"
    )
    rows = []
    data_cache: dict[tuple, tuple] = {}
    for model_name, n, d, b in sizes:
        for family in ("meanfield", "fullrank"):
            case = Case(model_name, n, d, b, family)
            key = (model_name, n, d)
            if key not in data_cache:
                data_cache.clear()
                data_cache[key] = make_data(case)
            X, y = data_cache[key]
            steps = {
                "svi_torch": svi_torch_step(case, X, y, device),
                "hand": hand_step(case, X, y, device),
            }
            if not args.no_pyro:
                steps["pyro"] = pyro_step(case, X, y, device)
            if use_numpyro:
                steps["numpyro"] = numpyro_step(case, X, y)
            ms = time_interleaved(steps, repeats, block_s, device)
            rows.append((case, ms))
            times = ", ".join(f"{k} {v:.3f}" for k, v in ms.items() if "/" not in k)
            print(f"  measured {case.label}: {times}")
            del steps
    data_cache.clear()

    # N-scaling at fixed B and D (the hand loop timed beside svi_torch), here and, on a
    # Linux CPU, again in a process whose large tensors sit on 2 MB pages.
    scale_ms = measure_scaling(scaling, repeats, block_s, device)
    huge_ms = None
    if device == "cpu" and sys.platform == "linux" and THP_ENV not in os.environ:
        huge_ms = measure_scaling_with_huge_pages(scaling, repeats, block_s, args.threads)
    model_name, n, d, b = sizes[0]
    case = Case(model_name, n, d, b, "meanfield")
    X, y = make_data(case)
    particle_ms = time_interleaved(
        {
            "K=1": svi_torch_step(case, X, y, device, particles=1),
            "K=16": svi_torch_step(case, X, y, device, particles=16),
        },
        repeats,
        block_s,
        device,
    )

    largest = max((s for s in sizes if s[0] == "logreg"), key=lambda s: s[1])
    bnn = next(s for s in sizes if s[0] == "bnn")
    memory_cases = [Case(*largest, "meanfield"), Case(*largest, "fullrank"), Case(*bnn, "fullrank")]
    memory = {
        c.label: measure_memory(c, device, 20 if args.quick else 50, 1 if args.quick else 5)
        for c in memory_cases
    }

    # -- the table ------------------------------------------------------------------
    methods = ["svi_torch", "hand"] + (["pyro"] if not args.no_pyro else [])
    methods += ["numpyro"] if use_numpyro else []
    print()
    header = f"| {'configuration':<44} | " + " | ".join(f"{m:>9}" for m in methods)
    header += " | svi/hand | pyro/svi |" + (" numpyro/svi |" if use_numpyro else "")
    print("ms per step (median over repeats); ratios: median of the per-repeat ratios")
    print(header)
    print("|" + "-" * (len(header) - 2) + "|")
    for case, ms in rows:
        line = f"| {case.label:<44} | " + " | ".join(f"{ms[m]:>9.3f}" for m in methods)
        line += f" | {ms['svi_torch/hand']:>8.2f} |"
        line += f" {ms['pyro/svi_torch']:>8.1f} |" if "pyro" in ms else "        - |"
        if use_numpyro:
            line += f" {ms['numpyro/svi_torch']:>11.2f} |"
        print(line)
    print()
    print("peak memory of a run (svi_torch, 50 steps; median of fresh processes, ratio range):")
    for label, mem in memory.items():
        print(
            f"  {label:<44} peak {mem['peak_mb']:8.1f} MB, data+model+optimizer "
            f"{mem['need_mb']:8.1f} MB, ratio {mem['ratio']:.2f} "
            f"({mem['min_ratio']:.2f}-{mem['max_ratio']:.2f})"
        )

    # -- targets --------------------------------------------------------------------
    print()
    print("targets (issue 8):")
    checks = []
    for case, ms in rows:
        checks.append((f"svi_torch <= 1.15 x hand, {case.label}", ms["svi_torch/hand"], 1.15, "<="))
    if not args.no_pyro and not args.quick:
        for case, ms in rows:
            if case.model == "logreg" and case.family == "meanfield":
                need = {10**4: 3, 10**5: 5, 10**6: 15}[case.num_data]
                checks.append(
                    (
                        f"pyro/svi_torch >= {need}, {case.label}",
                        ms["pyro/svi_torch"],
                        need,
                        ">=",
                    )
                )
    if use_numpyro:
        for case, ms in rows:
            if case.model == "logreg" and case.family == "meanfield" and case.num_data >= 10**5:
                checks.append(
                    (
                        f"numpyro/svi_torch >= 1, {case.label}",
                        ms["numpyro/svi_torch"],
                        1.0,
                        ">=",
                    )
                )
    small, large = sorted(s[1] for s in scaling)
    checks.append(
        (
            f"step(N={large:.0e}) / step(N={small:.0e}) at B={scaling[0][3]} D={scaling[0][2]}",
            scale_ms[f"{large}/{small}"],
            1.1,
            "<=",
        )
    )
    hand_scaling = scale_ms[f"hand {large}/hand {small}"]
    if huge_ms is not None:
        checks.append(
            (
                f"the same with {THP_ENV}=1 (2 MB pages)",
                huge_ms[f"{large}/{small}"],
                1.1,
                "<=",
            )
        )
    checks.append(("K=16 step / K=1 step < 16/2", particle_ms["K=16/K=1"], 8.0, "<"))
    for label, mem in memory.items():
        checks.append((f"peak memory / (data+model+opt) <= 1.3, {label}", mem["ratio"], 1.3, "<="))
    failed = 0
    for name, value, bound, op in checks:
        ok = {"<=": value <= bound, "<": value < bound, ">=": value >= bound}[op]
        failed += not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {value:.2f} ({op} {bound})")
    print(f"{len(checks) - failed}/{len(checks)} targets pass")
    print(
        f"(the hand loop's own step at N={large:.0e} over N={small:.0e}, same run: "
        f"{hand_scaling:.2f}"
        + (f"; with 2 MB pages: {huge_ms[f'hand {large}/hand {small}']:.2f})" if huge_ms else ")")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
