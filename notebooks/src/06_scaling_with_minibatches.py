# %% [markdown]
# # 6. Scaling with minibatches
#
# The ELBO contains a sum over all $N$ data points,
#
# $$
# \mathrm{ELBO}(q) = \mathbb{E}_q\Big[\sum_{i=1}^N \log p(x_i \mid z) + \log p(z) - \log q(z)\Big],
# $$
#
# so an exact gradient costs $O(N)$. Stochastic VI replaces the sum with a uniformly drawn
# minibatch $\mathcal{B}$ of $B$ points, scaled up by $N/B$:
#
# $$
# \widehat{\log p}(z, D) = \frac{N}{B}\sum_{i \in \mathcal{B}} \log p(x_i \mid z) + \log p(z),
# \qquad
# \mathbb{E}_{\mathcal{B}}\Big[\frac{N}{B}\sum_{i \in \mathcal{B}} \log p(x_i \mid z)\Big]
#   = \sum_{i=1}^N \log p(x_i \mid z),
# $$
#
# because each point lands in the batch with probability $B/N$. The estimate, and so its
# gradient, is unbiased, and a step costs $O(B)$ whatever $N$ is. This notebook measures
# that, then compares SVI with MCMC.

# %%
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import MCMC, NUTS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import svi_torch as st
from svi_torch.training import TensorBoardLogger

torch.manual_seed(0)

# %% [markdown]
# ## Unbiased stochastic gradients, numerically
#
# Fix a parameter value $z$ and compare the full-data gradient $\nabla_z \log p(z, D)$ with
# the average of many minibatch gradients; `model.log_joint(z, batch)` applies the $N/B$
# scale by default. Dropping the scale (`likelihood_scale=1`) gives a gradient that is
# biased by the factor $B/N$ on the likelihood part.

# %%
N, B, R = 5000, 50, 500
X, y, _ = st.models.logistic_data(num_data=N, dim=3, seed=0)
logistic = st.models.BayesianLogisticRegression(X, y)
z0 = torch.tensor([0.3, -0.2, 0.5])


def grad_log_joint(batch=None, likelihood_scale=None):
    z = z0.clone().requires_grad_(True)
    logistic.log_joint(z, batch, likelihood_scale).total.backward()
    return z.grad


full = grad_log_joint()
generator = torch.Generator().manual_seed(1)
scaled, unscaled = [], []
for _ in range(R):
    batch = logistic.index_data(torch.randperm(N, generator=generator)[:B])
    scaled.append(grad_log_joint(batch))
    unscaled.append(grad_log_joint(batch, likelihood_scale=1.0))
scaled, unscaled = torch.stack(scaled), torch.stack(unscaled)
se = scaled.std(0) / R**0.5
print("full-data gradient      :", full.numpy().round(3))
print("mean of N/B-scaled grads:", scaled.mean(0).numpy().round(3), "+-", se.numpy().round(3))
print("mean of unscaled grads  :", unscaled.mean(0).numpy().round(3))
# Mean of R iid minibatch gradients: within 4 standard errors per coordinate (three
# coordinates: false alarm probability < 3 * 6e-5).
assert bool(((scaled.mean(0) - full).abs() < 4 * se).all())
# Without the scale the likelihood part is B/N = 1% of its size: far outside the error bars.
assert bool(((unscaled.mean(0) - full).abs() > 20 * se).any())

# %% [markdown]
# ## Time per step does not grow with $N$
#
# The trainer draws a batch by indexing tensors already in memory, so a step touches $B$
# rows whatever $N$ is. We check the count directly (a model that records the size of every
# batch it sees), and time steps for $N$ from $10^3$ to $10^6$ with $B = 100$, beside
# full-data steps ($B = N$), whose cost grows linearly.


# %%
class CountingLogistic(st.models.BayesianLogisticRegression):
    """Logistic regression that records how many data rows each likelihood call sees."""

    def __init__(self, X, y):
        super().__init__(X, y)
        self.rows_seen = []

    def log_likelihood(self, params, batch):
        self.rows_seen.append(batch["X"].shape[0])
        return super().log_likelihood(params, batch)


sizes = [1_000, 10_000, 100_000, 1_000_000]
minibatch_ms, fullbatch_ms = [], []
for n in sizes:
    Xn, yn, _ = st.models.logistic_data(num_data=n, dim=5, seed=0)
    model_n = CountingLogistic(Xn, yn)
    # optimizer="adam": plain minibatch SGD steps (the "auto" default would start natural-
    # gradient VI from a full-data Laplace fit, which is not what we time here)
    result = st.fit(
        model_n,
        st.families.MeanFieldGaussian(5),
        batch_size=100,
        steps=200,
        method=st.methods.SGD(),
        seed=0,
    )
    minibatch_ms.append(1e3 * result.wall_time / result.steps)
    assert set(model_n.rows_seen) == {100}  # every step saw exactly B rows, for every N
    if n <= 100_000:
        full_result = st.fit(
            model_n,
            st.families.MeanFieldGaussian(5),
            batch_size=n,
            steps=50,
            method=st.methods.SGD(),
            seed=0,
        )
        fullbatch_ms.append(1e3 * full_result.wall_time / full_result.steps)
    print(f"N = {n:>9,d}: {minibatch_ms[-1]:6.2f} ms per step with B = 100")
print("full-data steps (B = N):", [f"{t:.2f} ms" for t in fullbatch_ms])
print(f"ratio N=1e6 / N=1e3 with B = 100: {minibatch_ms[-1] / minibatch_ms[0]:.2f}")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.loglog(sizes, minibatch_ms, "o-", label="minibatch, B = 100")
ax.loglog(sizes[: len(fullbatch_ms)], fullbatch_ms, "s--", label="full data, B = N")
ax.set_xlabel("N")
ax.set_ylabel("ms per step")
ax.legend()
plt.show()

# %% [markdown]
# ## Posterior variance shrinks like $1/N$
#
# For regular models the posterior concentrates: its variance falls like $1/N$. VI should
# reproduce that. We fit a mean-field Gaussian to linear regressions of growing $N$ and log
# each run to TensorBoard (one run directory per $N$); the exact mean-field optimum,
# $s_d^2 = 1/\Lambda_{dd}$, is the reference.
#
# A practical point shows up here. Minibatch noise in the gradient does not shrink with
# $N$ while the posterior width does, so the averaged SGD iterates resolve the posterior
# only when the run sees the data several times ($B \times \text{steps} \gtrsim$ a few
# $N$) with a step size below the posterior width. The settings below satisfy that up to
# $N = 10^4$; at $N = 10^5$ with the same budget the fitted variance is off by a factor of
# two or more.

# %%
logdir = Path("runs") / "06_scaling"
shutil.rmtree(logdir, ignore_errors=True)  # a re-run must not append to old event files

variance_rows = []
histories = {}
for n in [100, 1_000, 10_000]:
    Xn, yn, _ = st.models.regression_data(num_data=n, dim=2, correlation=0.5, seed=0)
    reg = st.models.BayesianLinearRegression(Xn, yn)
    family = st.families.MeanFieldGaussian(reg.dim, init_scale=0.01)
    logger = TensorBoardLogger(logdir / f"N={n}")
    result = st.fit(
        reg,
        family,
        st.objectives.ELBO(num_particles=4),
        batch_size=min(n, 1000),
        steps=1000,
        method=st.methods.SGD(lr=0.01),
        seed=0,
        log_every=50,
        loggers=[logger],
    )
    logger.close()
    histories[n] = result.history
    optimum = st.families.MeanFieldGaussian(reg.dim)
    optimum.set_moments(reg.exact_posterior().mean, reg.exact_posterior().covariance_matrix)
    vi_var, exact_var = family.variance().detach(), optimum.variance().detach()
    variance_rows.append((n, vi_var, exact_var))
    print(f"N = {n:6d}: VI variance {vi_var.numpy()}, mean-field optimum {exact_var.numpy()}")

ns = torch.tensor([float(r[0]) for r in variance_rows])
vi_vars = torch.stack([r[1] for r in variance_rows])
log_n = ns.log()
design = torch.stack([log_n, torch.ones_like(log_n)], -1)
slopes = torch.linalg.lstsq(design, vi_vars.log()).solution[0]
print("log-log slope of VI variance against N, per coordinate:", slopes.numpy().round(3))
# 1/N scaling: slope -1. The fitted variances are within ~10% of the optimum at every N
# (SGD noise), which moves a slope over two decades by at most log10(1.1^2)/2 ~ 0.04.
assert bool(((slopes + 1).abs() < 0.1).all())
for n, vi_var, exact_var in variance_rows:
    assert bool(((vi_var / exact_var - 1).abs() < 0.25).all()), n

# %% [markdown]
# ### The TensorBoard logs of the study
#
# `TensorBoardLogger` wrote one event file per run. `tensorboard --logdir runs/06_scaling`
# shows them interactively; here we read them back with TensorBoard's own
# `EventAccumulator` and draw the curves from the event files.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
for n in histories:
    events = EventAccumulator(str(logdir / f"N={n}"))
    events.Reload()
    variance = events.Scalars("posterior/variance_mean")
    elbo = events.Scalars("elbo/smoothed")
    ax1.semilogy([e.step for e in variance], [e.value for e in variance], label=f"N = {n}")
    ax2.plot([e.step for e in elbo], [e.value / n for e in elbo], label=f"N = {n}")
    # The event files hold exactly what the run logged (TensorBoard stores float32).
    assert [e.step for e in variance] == [int(s) for s in histories[n]["step"]]
    logged = torch.tensor(histories[n]["posterior/variance_mean"], dtype=torch.float32)
    assert torch.allclose(torch.tensor([e.value for e in variance]), logged, rtol=1e-6)
ax1.set_xlabel("step")
ax1.set_title("posterior/variance_mean")
ax1.legend()
ax2.set_xlabel("step")
ax2.set_ylim(-3, -1)
ax2.set_title("elbo/smoothed per data point")
plt.show()

# %% [markdown]
# ## Batch size and particles against wall time
#
# Two knobs set the noise of a gradient step: the batch size $B$ (minibatch noise) and the
# number of particles $K$ (Monte Carlo noise from $z \sim q$). Both cost time. At a fixed
# $q$ we measure the variance of the ELBO gradient (summed over the variational
# parameters) from 100 draws, and the time per draw.

# %%
Xg, yg, _ = st.models.regression_data(num_data=10_000, dim=5, correlation=0.5, seed=0)
reg = st.models.BayesianLinearRegression(Xg, yg)
q = st.families.MeanFieldGaussian(reg.dim, init_scale=0.05)
q.loc.data.copy_(reg.exact_posterior().mean + 0.05)
table = []
for B_ in [10, 100, 1000]:
    for K in [1, 10]:
        objective = st.objectives.ELBO(num_particles=K)
        grads, start = [], time.perf_counter()
        for _ in range(100):
            idx = torch.randint(0, reg.num_data, (B_,), generator=generator)
            q.zero_grad()
            objective(
                q, reg, reg.index_data(idx), likelihood_scale=reg.num_data / B_
            ).loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in q.parameters()]))
        ms = 1e3 * (time.perf_counter() - start) / 100
        table.append((B_, K, torch.stack(grads).var(0).sum().item(), ms))
print(f"{'B':>5s} {'K':>3s} {'gradient variance':>18s} {'ms per step':>12s}")
for B_, K, var, ms in table:
    print(f"{B_:5d} {K:3d} {var:18.4g} {ms:12.2f}")
var_of = {(b, k): v for b, k, v, _ in table}
# Minibatch noise falls like 1/B: from B=10 to B=1000 the variance drops by well over 10x
# (the 100-draw variance estimates have ~14% relative error, far below these margins).
assert var_of[(1000, 1)] < var_of[(10, 1)] / 10
# Particles only remove the Monte Carlo part: once B is large, K=10 cuts the variance by
# well over 2x; at B=10 the minibatch noise dominates and particles barely help.
assert var_of[(1000, 10)] < var_of[(1000, 1)] / 2

fig, ax = plt.subplots(figsize=(5, 3.5))
for K in [1, 10]:
    rows = [r for r in table if r[1] == K]
    ax.loglog([r[3] for r in rows], [r[2] for r in rows], "o-", label=f"K = {K}")
    for b, _, v, ms in rows:
        ax.annotate(f"B={b}", (ms, v), fontsize=7)
ax.set_xlabel("ms per gradient")
ax.set_ylabel("gradient variance")
ax.legend()
plt.show()

# %% [markdown]
# The two noises add: at $B = 10$ the minibatch noise dominates and ten particles barely
# help; at $B = 1000$ the Monte Carlo noise is a large share and $K = 10$ cuts it.
# On a CPU the small batches are dominated by fixed per-step overhead, so a larger batch is
# almost free until it fills the hardware; that is where minibatching starts to pay. On a
# GPU the flat region is much longer.
#
# ## SVI beside MCMC (Pyro's NUTS)
#
# NUTS draws (correlated) samples whose averages converge to the exact posterior
# expectations; VI returns the closest member of its family. On a conjugate linear
# regression both can be checked against the exact posterior. NUTS runs on the very same
# log density: its `potential_fn` is minus `model.log_joint`.

# %%
Xs, ys, _ = st.models.regression_data(num_data=500, dim=3, correlation=0.5, seed=2)
small = st.models.BayesianLinearRegression(Xs, ys)
exact = small.exact_posterior()
exact_mean, exact_sd = exact.mean, exact.covariance_matrix.diagonal().sqrt()

start = time.perf_counter()
vi = st.fit(
    small,
    st.families.FullRankGaussian(small.dim),
    steps=1000,
    method=st.methods.SGD(lr=0.02),
    seed=0,
)
vi_seconds = time.perf_counter() - start
vi_draws = vi.sample(4000)["beta"]


def potential(params):
    return -small.log_joint(params["z"].unsqueeze(0)).total.squeeze(0)


pyro.set_rng_seed(0)
start = time.perf_counter()
mcmc = MCMC(
    NUTS(potential_fn=potential),
    num_samples=300,
    warmup_steps=200,
    initial_params={"z": torch.zeros(small.dim)},
    disable_progbar=True,
)
mcmc.run()
nuts_seconds = time.perf_counter() - start
nuts_draws = mcmc.get_samples()["z"]

print(f"{'method':8s} {'seconds':>8s} {'max |mean err| / sd':>20s} {'sd ratio range':>16s}")
errors = {}
for name, draws, seconds in [("VI", vi_draws, vi_seconds), ("NUTS", nuts_draws, nuts_seconds)]:
    mean_err = ((draws.mean(0) - exact_mean).abs() / exact_sd).max().item()
    ratio = draws.std(0) / exact_sd
    errors[name] = (mean_err, ratio)
    print(
        f"{name:8s} {seconds:8.1f} {mean_err:20.3f} "
        f"{ratio.min().item():7.3f}-{ratio.max().item():.3f}"
    )

# %% [markdown]
# Tolerances: 300 NUTS draws with an effective sample size of at least ~150 give a Monte
# Carlo error of the mean of at most $\mathrm{sd}/\sqrt{150} \approx 0.08\,\mathrm{sd}$ and of
# the sd about $1/\sqrt{2 \cdot 150} \approx 6\%$; we allow four times those. The VI
# family contains this posterior, so its errors are the SGD noise plus the 4000-draw
# summary error ($0.016\,\mathrm{sd}$), for which $0.1\,\mathrm{sd}$ and 10 % are ample.

# %%
assert errors["NUTS"][0] < 0.32
assert bool(((errors["NUTS"][1] - 1).abs() < 0.24).all())
assert errors["VI"][0] < 0.1
assert bool(((errors["VI"][1] - 1).abs() < 0.10).all())
print(f"NUTS took {nuts_seconds / vi_seconds:.1f}x as long as SVI here")

# %% [markdown]
# **Summary.** Scaling the minibatch likelihood by $N/B$ keeps the gradient unbiased; a
# step costs $O(B)$, flat in $N$; the fitted posterior variance falls like $1/N$, as the
# exact one does, provided the run sees the data a few times. NUTS is asymptotically exact
# and needs no family, at a higher cost per effective sample and a cost per step that grows
# with $N$, since every leapfrog step needs the full-data gradient.
