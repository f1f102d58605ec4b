# %% [markdown]
# # 1. Bayesian inference and the intractable evidence
#
# A Bayesian model has a prior $p(\theta)$ over parameters and a likelihood
# $p(D \mid \theta)$ of the data. Bayes' rule turns them into the posterior
#
# $$
# p(\theta \mid D) = \frac{p(D \mid \theta)\, p(\theta)}{p(D)},
# \qquad
# p(D) = \int p(D \mid \theta)\, p(\theta)\, d\theta .
# $$
#
# The numerator, the *joint* $p(\theta, D) = p(D \mid \theta) p(\theta)$, is cheap: one
# evaluation of the prior and the likelihood. The denominator, the *evidence* (marginal
# likelihood) $p(D)$, is an integral over every parameter value. Everything in this course
# is about that integral: where it can be computed, why it usually cannot, and what
# variational inference does instead.
#
# In `svi_torch` a model gives the log joint through `model.log_joint(z)`; we use it here to
# compute the evidence by brute force, on a grid.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

import svi_torch as st

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # quadrature sums many tiny numbers: use float64

# %% [markdown]
# ## One dimension: the evidence by quadrature
#
# Our first model is the normal mean with known noise, `st.models.NormalMean`:
# $\mu \sim \mathcal{N}(0, 1)$, $x_i \mid \mu \sim \mathcal{N}(\mu, 1)$ for $i = 1..N$.
# It is conjugate, so `model.log_evidence()` knows $\log p(D)$ exactly and we can check the
# grid against it.
#
# On a grid $\mu_1 < \dots < \mu_m$ with spacing $\Delta$, the evidence is approximately
# $p(D) \approx \Delta \sum_j p(\mu_j, D)$. The joint is tiny (here about $e^{-30}$), so we
# add it up in log space: $\log p(D) \approx \log\Delta + \operatorname{logsumexp}_j \log p(\mu_j, D)$.

# %%
x = st.models.normal_mean_data(num_data=20, true_mean=0.8, noise_scale=1.0, seed=0).double()
model = st.models.NormalMean(x, noise_scale=1.0, prior_loc=0.0, prior_scale=1.0)


def log_evidence_on_grid(model, axes):
    """log p(D) by the rectangle rule on the product grid of 1-D ``axes``."""
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    # likelihood_scale=1: the full data, unscaled
    log_joint = model.log_joint(mesh, likelihood_scale=1.0).total
    log_cell = sum(math.log(a[1] - a[0]) for a in axes)
    return torch.logsumexp(log_joint, 0).item() + log_cell, mesh, log_joint


exact = model.log_evidence().item()
print(f"exact log p(D) = {exact:.10f}")
for m in [5, 10, 20, 50, 200]:
    grid = torch.linspace(-5, 5, m)
    approx, _, _ = log_evidence_on_grid(model, [grid])
    print(f"m = {m:4d} grid points: log p(D) = {approx:.10f}   error = {abs(approx - exact):.2e}")

# %%
grid = torch.linspace(-5, 5, 200)
quad_1d, mesh, log_joint = log_evidence_on_grid(model, [grid])
# The rectangle rule on a smooth, rapidly decaying integrand converges very fast: with 200
# points it is exact to far below float64 round-off of the sum (~1e-12 here).
assert abs(quad_1d - exact) < 1e-8, (quad_1d, exact)

# The posterior is the joint divided by the evidence.
posterior_on_grid = (log_joint - quad_1d).exp()
exact_posterior = model.exact_posterior()  # N(mu_N, s_N^2)
prior = torch.distributions.Normal(0.0, 1.0)
likelihood = model.log_joint(mesh, likelihood_scale=1.0).log_likelihood.exp()

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(grid, prior.log_prob(grid).exp(), label="prior $p(\\mu)$")
ax.plot(
    grid, likelihood / (likelihood.sum() * (grid[1] - grid[0])), "--", label="likelihood (rescaled)"
)
ax.plot(grid, posterior_on_grid, lw=3, alpha=0.5, label="joint / evidence (grid)")
ax.plot(grid, exact_posterior.log_prob(grid[:, None]).exp(), "k:", label="exact posterior")
ax.set_xlim(-3, 3)
ax.set_xlabel("$\\mu$")
ax.legend()
plt.show()

grid_mean = (posterior_on_grid * grid).sum() * (grid[1] - grid[0])
print(f"posterior mean: grid {grid_mean.item():.6f}, exact {exact_posterior.mean.item():.6f}")
assert abs(grid_mean.item() - exact_posterior.mean.item()) < 1e-8

# %% [markdown]
# ## Two dimensions: a model with no closed form
#
# Logistic regression, $\beta \sim \mathcal{N}(0, I_2)$,
# $y_i \sim \mathrm{Bernoulli}(\sigma(x_i^\top \beta))$, is not conjugate: the evidence
#
# $$
# p(D) = \int \prod_{i=1}^N \sigma(x_i^\top\beta)^{y_i}\,(1 - \sigma(x_i^\top\beta))^{1-y_i}
#        \, \mathcal{N}(\beta; 0, I)\, d\beta
# $$
#
# has no closed form: a product of $N$ sigmoids times a Gaussian cannot be integrated
# analytically. In two dimensions a grid still does it. We watch the estimate settle as the
# grid gets finer; the change between successive grids is our error estimate.

# %%
X, y, beta_true = st.models.logistic_data(num_data=50, dim=2, seed=3)
logistic = st.models.BayesianLogisticRegression(X.double(), y.double(), prior_scale=1.0)

estimates = {}
for m in [10, 20, 40, 80, 160]:
    axis = torch.linspace(-5, 5, m)
    estimates[m], _, _ = log_evidence_on_grid(logistic, [axis, axis])
    print(f"{m:4d} x {m:<4d} grid ({m * m:6d} evaluations): log p(D) = {estimates[m]:.8f}")

# Successive refinements agree to ~1e-9: the 160 x 160 value is accurate to that level.
assert abs(estimates[160] - estimates[80]) < 1e-6

# %%
axis = torch.linspace(-5, 5, 160)
log_z_2d, mesh2, log_joint2 = log_evidence_on_grid(logistic, [axis, axis])
density = (log_joint2 - log_z_2d).exp().reshape(160, 160)
cell = (axis[1] - axis[0]) ** 2
post_mean = (density[..., None] * mesh2.reshape(160, 160, 2)).sum((0, 1)) * cell
print("posterior mean of beta (grid):", post_mean.numpy().round(4))
print("true beta that made the data: ", beta_true.numpy().round(4))

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.contour(axis, axis, density.T, levels=8)
ax.plot(*post_mean, "k+", ms=12, label="posterior mean")
ax.plot(*beta_true, "rx", ms=8, label="true $\\beta$")
ax.set_xlim(post_mean[0] - 2, post_mean[0] + 2)
ax.set_ylim(post_mean[1] - 2, post_mean[1] + 2)
ax.set_xlabel("$\\beta_1$")
ax.set_ylabel("$\\beta_2$")
ax.legend()
ax.set_title("logistic regression posterior on a 160x160 grid")
plt.show()

# %% [markdown]
# ## Why grids do not scale: the cost explodes with dimension
#
# A grid with $m$ points per axis in $D$ dimensions has $m^D$ points. To see the accuracy
# that buys, we use a conjugate Bayesian linear regression (`st.models.BayesianLinearRegression`,
# whose `log_evidence()` is exact) in $D = 1, \dots, 4$ dimensions with the same $m = 12$
# points per axis, on the box $[-4, 4]^D$ that holds the prior's mass.

# %%
rows = []
for dim in [1, 2, 3, 4]:
    Xd, yd, _ = st.models.regression_data(num_data=10, dim=dim, correlation=0.3, seed=dim)
    reg = st.models.BayesianLinearRegression(Xd.double(), yd.double(), noise_scale=1.0)
    axis = torch.linspace(-4, 4, 12)
    start = time.perf_counter()
    approx, _, _ = log_evidence_on_grid(reg, [axis] * dim)
    seconds = time.perf_counter() - start
    error = abs(approx - reg.log_evidence().item())
    rows.append((dim, 12**dim, seconds, error))
    print(f"D = {dim}: {12**dim:6d} evaluations, {seconds * 1e3:7.1f} ms, |error| = {error:.2e}")

# Same m per axis, four times the dimension: the error has grown, not shrunk.
assert rows[-1][3] > rows[0][3]

# %% [markdown]
# With the same resolution per axis the error does not improve (it grows: every axis adds
# its own discretisation error) while the cost multiplies by $m$ with every dimension. Extrapolating the measured cost per evaluation
# (a model with 10 data points, so an optimistic one):

# %%
cost_per_eval = rows[-1][2] / rows[-1][1]
for dim in [5, 10, 20, 50]:
    evaluations = 12.0**dim
    seconds = evaluations * cost_per_eval
    print(
        f"D = {dim:3d}: 12^D = {evaluations:9.2e} evaluations, about {seconds:9.2e} s "
        f"= {seconds / 3.15e7:9.2e} years"
    )

# A 20-dimensional grid at 12 points per axis has 12**20 ~ 3.8e21 points.
assert 12.0**20 > 1e21

# %% [markdown]
# A modest logistic regression with 20 coefficients already needs $10^{21}$ evaluations on
# a coarse grid, and a Bayesian neural network has thousands of parameters. Smarter
# quadrature (sparse grids, Laplace's method) pushes the wall back a little, but the
# exponential growth remains.
#
# ## Latent-variable models: a sum with exponentially many terms
#
# Models with discrete latent variables hide a second kind of explosion. In a mixture of
# $K$ Gaussians each of $N$ points has an unknown component $c_i$, and the evidence sums over
# every assignment:
#
# $$
# p(D) = \int \sum_{c_1=1}^{K} \cdots \sum_{c_N=1}^{K} \prod_{i=1}^{N} \pi_{c_i}\,
#        \mathcal{N}(x_i; \mu_{c_i}, 1)\; p(\mu)\, d\mu .
# $$
#
# Expanding the product gives $K^N$ terms, each a Gaussian integral over $\mu$:

# %%
for K, N in [(2, 10), (3, 100), (5, 1000)]:
    print(f"K = {K}, N = {N:5d}: K^N = 10^{N * math.log10(K):.0f} assignment terms")

# %% [markdown]
# ## Where that leaves us
#
# * Conjugate models (normal mean, linear regression with known noise) have a closed-form
#   posterior and evidence. They are the exception, and the yardstick for everything else.
# * Non-conjugate models (logistic regression, hierarchical models) and latent-variable
#   models have none. A grid works in one or two dimensions, and its cost $m^D$ rules it
#   out beyond a handful.
# * The log joint $\log p(\theta, D)$ stays cheap in any dimension, and with minibatches it
#   is cheap for any $N$.
#
# Variational inference turns the integral into an optimisation that only ever evaluates
# the log joint at samples: pick a family $q(\theta)$ and make it close to the posterior
# in the sense of the reverse KL divergence, $\mathrm{KL}(q\|p) = \mathbb{E}_q[\log q - \log p]$.
# Notebook 2 introduces the KL divergence; notebook 3 turns it into the ELBO.
