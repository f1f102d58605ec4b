# %% [markdown]
# # 2. The Kullback–Leibler divergence
#
# Variational inference measures how far an approximation $q$ is from a target $p$ with the
# Kullback–Leibler (KL) divergence. For densities $a$ and $b$ on the same space,
#
# $$
# \mathrm{KL}(a\|b) = \mathbb{E}_{z \sim a}\big[\log a(z) - \log b(z)\big]
#                  = \int a(z) \log\frac{a(z)}{b(z)}\, dz .
# $$
#
# It is the expected log-ratio, *under the first argument*. Which distribution goes first
# matters, so we always name the direction, with $q$ the approximation and $p$ the target:
#
# * **reverse** (exclusive) KL: $\mathrm{KL}(q\|p) = \mathbb{E}_q[\log q - \log p]$, what VI
#   minimises; mode-seeking, it tends to underestimate variance;
# * **forward** (inclusive) KL: $\mathrm{KL}(p\|q) = \mathbb{E}_p[\log p - \log q]$;
#   mass-covering, it tends to overestimate spread.
#
# `svi_torch.divergences` computes both: `reverse_kl(q, p)` and `forward_kl(q, p)` (same
# argument order, the direction in the name), analytic where torch has a closed form and
# Monte Carlo with a standard error otherwise.

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch.distributions import MultivariateNormal, Normal

import svi_torch as st
from svi_torch.divergences import forward_kl, kl, kl_mvn, kl_normal, reverse_kl
from svi_torch.models.targets import GaussianMixtureTarget
from svi_torch.training import estimate_elbo

torch.manual_seed(0)

# %% [markdown]
# ## Analytic KL between Gaussians, against a Monte Carlo estimate
#
# For two univariate Gaussians the expectation has a closed form:
#
# $$
# \mathrm{KL}\big(\mathcal{N}(\mu_1, s_1^2)\,\|\,\mathcal{N}(\mu_2, s_2^2)\big)
#   = \log\frac{s_2}{s_1} + \frac{s_1^2 + (\mu_1 - \mu_2)^2}{2 s_2^2} - \frac12 .
# $$
#
# The Monte Carlo estimate draws $z_s \sim a$ and averages $d_s = \log a(z_s) - \log b(z_s)$;
# its standard error is $\hat\sigma_d / \sqrt{S}$, so it shrinks like $1/\sqrt{S}$.

# %%
a, b = Normal(0.0, 1.0), Normal(1.0, 2.0)
analytic = kl_normal(0.0, 1.0, 1.0, 2.0).item()
by_hand = math.log(2.0 / 1.0) + (1.0**2 + (0.0 - 1.0) ** 2) / (2 * 2.0**2) - 0.5
print(f"KL(a||b) analytic: {analytic:.6f} (formula by hand {by_hand:.6f})")
assert abs(analytic - by_hand) < 1e-6

sizes = [10, 100, 1_000, 10_000, 100_000]
estimates = [kl(a, b, method="mc", num_samples=s, seed=s) for s in sizes]
for s, est in zip(sizes, estimates, strict=True):
    print(f"S = {s:6d}: {est}")
# Each estimate is a mean of S iid terms: within 4 standard errors of the truth with
# probability > 0.9999 (5 estimates: > 0.9997 together).
for est in estimates:
    assert abs(est.value.item() - analytic) < 4 * est.stderr.item()

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.errorbar(
    sizes,
    [e.value.item() for e in estimates],
    [2 * e.stderr.item() for e in estimates],
    fmt="o",
    capsize=3,
    label="Monte Carlo $\\pm$ 2 se",
)
ax.axhline(analytic, color="k", ls="--", label="analytic")
ax.set_xscale("log")
ax.set_xlabel("number of samples S")
ax.set_ylabel("KL(a||b)")
ax.legend()
plt.show()

# %% [markdown]
# In $D$ dimensions, with covariances $\Sigma_1, \Sigma_2$:
#
# $$
# \mathrm{KL}\big(\mathcal{N}(m_1, \Sigma_1)\,\|\,\mathcal{N}(m_2, \Sigma_2)\big) =
# \tfrac12\Big[\operatorname{tr}(\Sigma_2^{-1}\Sigma_1) + (m_2 - m_1)^\top\Sigma_2^{-1}(m_2 - m_1)
#   - D + \log\frac{\det\Sigma_2}{\det\Sigma_1}\Big].
# $$

# %%
m1, m2 = torch.zeros(3), torch.tensor([0.5, -0.5, 1.0])
S1 = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.0]])
S2 = torch.diag(torch.tensor([2.0, 1.0, 0.5]))
closed = kl_mvn(m1, S1, m2, S2).item()
mc = kl(MultivariateNormal(m1, S1), MultivariateNormal(m2, S2), method="mc", seed=0)
print(f"3-D Gaussians: closed form {closed:.4f}; {mc}")
assert abs(mc.value.item() - closed) < 4 * mc.stderr.item()

# %% [markdown]
# ## $\mathrm{KL} \ge 0$, with equality only for equal distributions
#
# Jensen's inequality for the concave logarithm gives
# $-\mathrm{KL}(a\|b) = \mathbb{E}_a[\log(b/a)] \le \log \mathbb{E}_a[b/a] = \log\int b = 0$,
# with equality only when $b/a$ is constant, i.e. $a = b$. We check it on 2000 random pairs
# of 3-D Gaussians and trace the KL as one Gaussian moves away from another.

# %%
generator = torch.Generator().manual_seed(0)
values = []
for _ in range(2000):
    # Pairs from far apart to nearly equal: b is a perturbation of a of random size.
    size = 10 ** (-3 * torch.rand((), generator=generator))
    mean = torch.randn(3, generator=generator)
    A1 = torch.randn(3, 3, generator=generator)
    A2 = A1 + size * torch.randn(3, 3, generator=generator)
    values.append(
        kl_mvn(
            mean,
            A1 @ A1.T + 0.1 * torch.eye(3),
            mean + size * torch.randn(3, generator=generator),
            A2 @ A2.T + 0.1 * torch.eye(3),
        )
    )
values = torch.stack(values)
print(
    f"2000 random pairs: smallest KL = {values.min().item():.2e}, largest {values.max().item():.2f}"
)
assert bool((values >= 0).all())

shifts = torch.linspace(-2, 2, 81)
ratios = torch.linspace(0.3, 3, 81)
kl_shift = kl_normal(0.0, 1.0, shifts, 1.0)  # = shift^2 / 2
kl_ratio = kl_normal(0.0, 1.0, 0.0, ratios)  # scale ratio only
assert torch.allclose(kl_shift, shifts**2 / 2, atol=1e-6)
# Zero exactly at equality, positive everywhere else.
assert reverse_kl(Normal(0.0, 1.0), Normal(0.0, 1.0)).value.item() == 0.0
assert kl_normal(0.0, 1.0, 0.01, 1.0).item() > 0
assert kl_normal(0.0, 1.0, 0.0, 1.01).item() > 0

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
ax1.plot(shifts, kl_shift)
ax1.set_xlabel("$\\mu_2$ (with $s_1 = s_2 = 1$, $\\mu_1 = 0$)")
ax1.set_ylabel("KL")
ax2.plot(ratios, kl_ratio)
ax2.set_xlabel("$s_2$ (with $\\mu_1 = \\mu_2 = 0$, $s_1 = 1$)")
for ax in (ax1, ax2):
    ax.axhline(0, color="0.7", lw=0.8)
plt.show()

# %% [markdown]
# ## Asymmetry, with numbers
#
# $\mathrm{KL}(q\|p) \ne \mathrm{KL}(p\|q)$ in general. Two cases:
#
# 1. $q = \mathcal{N}(0, 1)$ and $p = \mathcal{N}(1, 2^2)$, both directions in closed form.
# 2. A bimodal target $p = \tfrac12\mathcal{N}(-3, 1) + \tfrac12\mathcal{N}(3, 1)$ (a mixture:
#    no closed form, Monte Carlo) against a $q$ that sits on one mode, $\mathcal{N}(3, 1)$,
#    and against one that spans both, $\mathcal{N}(0, 10)$ (the mixture's mean and variance).

# %%
q, p = Normal(0.0, 1.0), Normal(1.0, 2.0)
rev, fwd = reverse_kl(q, p), forward_kl(q, p)
print(f"case 1: reverse {rev}   forward {fwd}")
assert abs(rev.value.item() - kl_normal(0.0, 1.0, 1.0, 2.0).item()) < 1e-6
assert abs(fwd.value.item() - kl_normal(1.0, 2.0, 0.0, 1.0).item()) < 1e-6
assert fwd.value.item() > 2.5 * rev.value.item()  # 1.3069 against 0.4431

bimodal = GaussianMixtureTarget().distribution()  # 0.5 N(-3, 1) + 0.5 N(3, 1), 1-D
one_mode = MultivariateNormal(torch.tensor([3.0]), torch.eye(1))
spanning = MultivariateNormal(torch.zeros(1), 10.0 * torch.eye(1))
table = {}
for name, cand in [("q on one mode  N(3, 1)", one_mode), ("q spanning     N(0, 10)", spanning)]:
    r = reverse_kl(cand, bimodal, num_samples=50_000, seed=1)
    f = forward_kl(cand, bimodal, num_samples=50_000, seed=2)
    table[name] = (r, f)
    print(
        f"{name}: reverse KL(q||p) = {r.value.item():.3f} +- {r.stderr.item():.3f}   "
        f"forward KL(p||q) = {f.value.item():.3f} +- {f.stderr.item():.3f}"
    )

(r_one, f_one), (r_span, f_span) = table.values()
# On one mode, q misses half of p's mass: the reverse KL pays only about log 2 = 0.693
# (log q - log p = log 2 - log(1 + p_other/q), and p_other/q is tiny where q has its mass),
# while the forward KL pays a lot (p's other mode sits where q's density is ~e^-18).
assert math.log(2) - 0.02 < r_one.value.item() < math.log(2)
assert f_one.value.item() > 5
# The broad q is preferred by the forward KL and penalised by the reverse KL.
assert f_span.value.item() < f_one.value.item()
assert r_span.value.item() > r_one.value.item()

# %% [markdown]
# The reverse KL $\mathbb{E}_q[\log q - \log p]$ averages over where $q$ puts mass, so a $q$
# that hides inside one mode is cheap (it never looks at the other mode), and $q$ is
# punished for mass where $p$ is small: **mode-seeking**. The forward KL
# $\mathbb{E}_p[\log p - \log q]$ averages over where $p$ puts mass, so any region of $p$
# that $q$ leaves uncovered costs $-\log q \to \infty$: **mass-covering**. Notebook 4 fits
# both and shows the pictures.
#
# ## Which direction VI uses, and why
#
# VI minimises the **reverse** KL to the posterior, $\mathrm{KL}(q\|p(\cdot\mid D))$. The
# reason is practical. Write $\log p(z \mid D) = \log p(z, D) - \log p(D)$:
#
# $$
# \mathrm{KL}(q\|p) = \mathbb{E}_q\big[\log q(z) - \log p(z, D)\big] + \log p(D)
#                   = -\mathrm{ELBO}(q) + \log p(D).
# $$
#
# The expectation is under $q$, which we choose and can sample, and the integrand needs
# only the *unnormalised* log joint; the unknown $\log p(D)$ is a constant. The forward KL
# $\mathbb{E}_{p(z\mid D)}[\log p(z \mid D) - \log q(z)]$ needs samples from the posterior,
# which is what we were trying to find in the first place.
#
# We check the identity on the conjugate normal-mean model, where the posterior is known:
# the ELBO estimated from $q$-samples and the log joint, plus $\log p(D)$, must give the
# analytic reverse KL.

# %%
x = st.models.normal_mean_data(num_data=30, true_mean=1.0, seed=0)
model = st.models.NormalMean(x)
q_family = st.families.MeanFieldGaussian(1, init_loc=0.5, init_scale=0.3)
elbo, se = estimate_elbo(model, q_family, num_samples=20_000)
with torch.no_grad():
    analytic_kl = reverse_kl(q_family(), model.exact_posterior()).value.item()
from_samples = -elbo + model.log_evidence().item()
print(f"-ELBO + log p(D) = {from_samples:.4f} +- {se:.4f}  (q-samples and the log joint)")
print(f"KL(q||p)         = {analytic_kl:.4f}           (analytic, needs the exact posterior)")
# The ELBO estimate is a mean of 20000 iid terms: 4 standard errors.
assert abs(from_samples - analytic_kl) < 4 * se

# %% [markdown]
# **Summary.** $\mathrm{KL}(a\|b) \ge 0$, zero only for $a = b$, and not symmetric. VI uses
# the reverse direction $\mathrm{KL}(q\|p) = \mathbb{E}_q[\log q - \log p]$ because it can be
# minimised with draws from $q$ and the unnormalised log joint alone; the price is that it
# is mode-seeking. Notebook 3 turns the identity above into an optimisation algorithm.
