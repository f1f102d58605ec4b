# %% [markdown]
# # 3. Variational inference as optimisation
#
# Notebook 1 showed that the evidence $p(D)$ is an integral we cannot compute in general;
# notebook 2 introduced the KL divergence. Here the two meet. Pick a family of tractable
# distributions $q_\phi(z)$ and look for the member closest to the posterior in the
# **reverse** KL,
#
# $$
# \mathrm{KL}(q\|p) = \mathbb{E}_{q}\big[\log q(z) - \log p(z \mid D)\big] .
# $$
#
# This cannot be evaluated directly: $\log p(z \mid D) = \log p(z, D) - \log p(D)$ contains
# the unknown evidence. But the evidence is a constant, and moving it to the other side
# gives the central identity of VI.
#
# ## The identity $\log p(D) = \mathrm{ELBO}(q) + \mathrm{KL}(q\|p)$
#
# For any $q$, since $\log p(D)$ does not depend on $z$,
#
# $$
# \log p(D) = \mathbb{E}_q\big[\log p(z, D) - \log p(z \mid D)\big]
#  = \underbrace{\mathbb{E}_q\big[\log p(z, D) - \log q(z)\big]}_{\mathrm{ELBO}(q)}
#  + \underbrace{\mathbb{E}_q\big[\log q(z) - \log p(z \mid D)\big]}_{\mathrm{KL}(q\|p)\ \ge\ 0} .
# $$
#
# Three consequences:
#
# 1. $\mathrm{ELBO}(q) \le \log p(D)$ for every $q$: the *evidence lower bound*.
# 2. $\log p(D)$ is fixed, so **maximising the ELBO is minimising $\mathrm{KL}(q\|p)$**.
# 3. The ELBO needs only samples $z \sim q$ and the unnormalised log joint
#    $\log p(z, D)$: no evidence, no posterior samples.
#
# We check all three on a model where every term is known exactly: Bayesian linear
# regression with known noise (`st.models.BayesianLinearRegression`), whose posterior is
# Gaussian with strongly correlated coefficients.

# %%
import matplotlib.pyplot as plt
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import svi_torch as st
from svi_torch.training import MemoryLogger, estimate_elbo

torch.manual_seed(0)

X, y, beta_true = st.models.regression_data(num_data=200, dim=2, correlation=0.9, seed=0)
model = st.models.BayesianLinearRegression(X, y, noise_scale=1.0, prior_scale=1.0)
posterior = model.exact_posterior()  # MultivariateNormal
log_evidence = model.log_evidence().item()
corr = posterior.covariance_matrix[0, 1] / posterior.covariance_matrix.diagonal().prod().sqrt()
print(f"log p(D) = {log_evidence:.4f}; posterior correlation of beta = {corr.item():.3f}")

# %% [markdown]
# ### The identity, checked at an arbitrary $q$
#
# Take a Gaussian far from the posterior. `estimate_elbo` averages
# $\log p(z_s, D) - \log q(z_s)$ over $S$ draws and reports the standard error
# $\hat\sigma/\sqrt{S}$; the reverse KL between two Gaussians is analytic
# (`torch.distributions.kl_divergence(q, p)` computes $\mathrm{KL}(q\|p)$, first argument first).

# %%
q = st.families.FullRankGaussian(model.dim, init_loc=posterior.mean + 0.3, init_scale=0.1)
elbo, se = estimate_elbo(model, q, num_samples=4000)
with torch.no_grad():
    kl = kl_divergence(q(), posterior).item()
print(f"ELBO(q)         = {elbo:10.4f} +- {se:.4f}")
print(f"KL(q || p)      = {kl:10.4f}")
print(f"ELBO + KL       = {elbo + kl:10.4f}")
print(f"log p(D) exact  = {log_evidence:10.4f}")
# The ELBO estimate is a mean of 4000 iid terms: within 4 standard errors of its
# expectation log p(D) - KL with probability > 0.9999.
assert abs(elbo + kl - log_evidence) < 4 * se
assert elbo < log_evidence

# %% [markdown]
# ## Fitting with `svi_torch.fit`
#
# `st.fit` maximises a stochastic estimate of the ELBO by gradient ascent on the variational
# parameters $\phi$ (mean and Cholesky factor). A callback can add metrics to each log
# record: here the exact $\mathrm{KL}(q_\phi\|p)$, which a real problem would not know, and a
# full-data ELBO estimate with its standard error. A `MemoryLogger` keeps every record.


# %%
class TrackPosterior:
    """Adds the exact reverse KL and a full-data ELBO estimate to each log record."""

    def on_log(self, trainer, step, metrics):
        with torch.no_grad():
            metrics["kl_to_posterior"] = kl_divergence(trainer.family(), posterior).item()
        elbo, se = estimate_elbo(model, trainer.family, num_samples=200)
        metrics["elbo/full_data"], metrics["elbo/full_data_se"] = elbo, se


family = st.families.FullRankGaussian(model.dim)
logger = MemoryLogger()
result = st.fit(
    model,
    family,
    st.objectives.ELBO(num_particles=4),
    steps=800,
    method=st.methods.SGD(lr=0.05),
    seed=0,
    log_every=20,
    loggers=[logger],
    callbacks=[TrackPosterior()],
)
history = result.history
steps = torch.tensor(history["step"])
kl_curve = torch.tensor(history["kl_to_posterior"])
elbo_curve = torch.tensor(history["elbo/full_data"])
elbo_se = torch.tensor(history["elbo/full_data_se"])
print(f"KL(q||p): {kl_curve[0]:.3f} at step {steps[0]:.0f} -> {kl_curve[-1]:.5f} at the end")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.plot(steps, history["elbo"], color="0.7", lw=1, label="minibatch ELBO estimate")
ax1.errorbar(steps, elbo_curve, 2 * elbo_se, fmt=".", ms=3, label="full-data ELBO $\\pm$ 2 se")
ax1.axhline(log_evidence, color="k", ls="--", label="$\\log p(D)$ (exact)")
ax1.set_ylim(log_evidence - 15, log_evidence + 3)
ax1.set_xlabel("step")
ax1.set_title("the ELBO rises to the log evidence")
ax1.legend(fontsize=8)
ax2.semilogy(steps, kl_curve)
ax2.set_xlabel("step")
ax2.set_title("$\\mathrm{KL}(q\\|p)$ to the exact posterior falls")
plt.show()

# %% [markdown]
# The two curves are mirror images: at every step the ELBO is $\log p(D)$ minus the KL.
# The bound holds at every logged step (up to the Monte Carlo error of the 200-draw
# estimate), and the full-rank family, which contains this Gaussian posterior, closes the
# gap almost completely.

# %%
# Every full-data estimate lies below log p(D) up to 4 standard errors.
assert bool((elbo_curve <= log_evidence + 4 * elbo_se).all())
# The KL fell by more than two orders of magnitude and ends near zero.
assert kl_curve[-1] < 0.01 * kl_curve[0]
# The logger saw exactly what the history holds.
assert [v for _, v in logger.scalars["kl_to_posterior"]] == history["kl_to_posterior"]

# The returned family holds the averaged iterates (the last logged KL is from before the
# average was applied), so evaluate it afresh.
with torch.no_grad():
    final_kl = kl_divergence(family(), posterior).item()
final_elbo, final_se = result.elbo(num_samples=4000)
print(f"final: KL(q||p) = {final_kl:.5f}")
print(
    f"final ELBO = {final_elbo:.4f} +- {final_se:.4f}; log p(D) - KL = {log_evidence - final_kl:.4f}"
)
assert final_kl < 0.02
assert abs(final_elbo - (log_evidence - final_kl)) < 4 * final_se

# %% [markdown]
# ## When the family cannot reach the posterior
#
# A mean-field family $q(z) = \prod_d \mathcal{N}(z_d; m_d, s_d^2)$ cannot represent the
# correlation between the two coefficients. Its best member in reverse KL keeps the
# posterior mean and sets $s_d^2 = 1/\Lambda_{dd}$, one over the diagonal of the posterior
# precision $\Lambda$ (notebook 4 derives this). `MeanFieldGaussian.set_moments` builds that
# member in closed form, so we know the smallest KL, and the largest ELBO, the family can
# reach; SGD should find it, and the gap $\log p(D) - \mathrm{ELBO}$ should stay at that KL.


# %%
def as_mvn(family):
    """The family's Gaussian as a MultivariateNormal (torch has no KL from a diagonal Normal)."""
    return MultivariateNormal(family.loc, covariance_matrix=family.covariance())


best_mean_field = st.families.MeanFieldGaussian(model.dim)
best_mean_field.set_moments(posterior.mean, posterior.covariance_matrix)
with torch.no_grad():
    kl_floor = kl_divergence(as_mvn(best_mean_field), posterior).item()

mean_field = st.families.MeanFieldGaussian(model.dim)
mf_result = st.fit(
    model,
    mean_field,
    st.objectives.ELBO(num_particles=4),
    steps=800,
    method=st.methods.SGD(lr=0.05),
    seed=0,
)
with torch.no_grad():
    mf_kl = kl_divergence(as_mvn(mean_field), posterior).item()
mf_elbo, mf_se = mf_result.elbo(num_samples=4000)
print(f"mean-field: KL(q||p) = {mf_kl:.4f} (closed-form optimum {kl_floor:.4f})")
print(f"mean-field: log p(D) - ELBO = {log_evidence - mf_elbo:.4f} +- {mf_se:.4f}")
print(f"full-rank:  KL(q||p) = {final_kl:.4f}")
# SGD reaches the family's optimum up to optimisation noise (a few hundredths of a nat here).
assert abs(mf_kl - kl_floor) < 0.05
assert abs((log_evidence - mf_elbo) - mf_kl) < 4 * mf_se
assert kl_floor > 10 * final_kl

# %% [markdown]
# **Summary.** The ELBO is computable from samples of $q$ and the log joint alone. It is a
# lower bound on $\log p(D)$, and the gap is exactly the reverse KL to the posterior, so
# climbing the ELBO is descending $\mathrm{KL}(q\|p)$. When the family contains the
# posterior the gap closes; when it does not, the gap that remains is the price of the
# family, here the price of ignoring a correlation of 0.9.
