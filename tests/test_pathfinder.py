"""Pathfinder and its L-BFGS: Gaussians from the curvature history, pooling, diagnostics."""

import math

import pytest
import torch

from svi_torch.divergences import kl_mvn
from svi_torch.families import FullRankGaussian
from svi_torch.methods.lbfgs import LBFGSIterate, lbfgs, two_loop_direction
from svi_torch.methods.pathfinder import (
    PathfinderGaussian,
    PathfinderWarning,
    pathfinder,
    pathfinder_model,
)
from svi_torch.models import BayesianLinearRegression, regression_data
from svi_torch.models.targets import GaussianMixtureTarget

F64 = torch.float64


def correlated_gaussian(dim: int = 10, condition: float = 100.0, seed: int = 0):
    """N(m, Q diag(logspace(0, log10 condition)) Q') with a random rotation Q."""
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    eigenvalues = torch.logspace(0, math.log10(condition), dim, dtype=F64)
    cov = rotation @ torch.diag(eigenvalues) @ rotation.T
    mean = torch.randn(dim, generator=g, dtype=F64)
    return mean, cov, torch.distributions.MultivariateNormal(mean, cov)


def quadratic(precision: torch.Tensor, mean: torch.Tensor):
    def fun(x):
        r = x - mean
        return float(0.5 * r @ precision @ r), precision @ r

    return fun


# -- the Gaussian of an L-BFGS iterate -------------------------------------------------------
def random_iterate(dim: int, pairs: int, seed: int = 0) -> LBFGSIterate:
    g = torch.Generator().manual_seed(seed)
    precision = torch.randn(dim, dim, generator=g, dtype=F64)
    precision = precision @ precision.T + dim * torch.eye(dim, dtype=F64)
    s = torch.randn(dim, pairs, generator=g, dtype=F64)
    y = precision @ s  # a quadratic's pairs: s'y > 0
    alpha = torch.rand(dim, generator=g, dtype=F64) + 0.5
    x, grad = torch.randn(dim, generator=g, dtype=F64), torch.randn(dim, generator=g, dtype=F64)
    return LBFGSIterate(3, x, 0.0, grad, s, y, alpha)


@pytest.mark.parametrize(("dim", "pairs"), [(12, 3), (4, 3), (6, 0)])
def test_iterate_gaussian_is_the_lbfgs_inverse_hessian(dim, pairs):
    """Covariance = the two-loop recursion's H (thin and square QR alike), mean = x - H grad,
    log_prob = the dense Gaussian's, and transform(u) has covariance exactly Sigma."""
    it = random_iterate(dim, pairs)
    q = PathfinderGaussian.from_iterate(it)
    cov = q.covariance()
    probes = torch.eye(dim, dtype=F64)
    H = torch.stack([two_loop_direction(e, it.s, it.y, it.alpha) for e in probes], 1)
    torch.testing.assert_close(cov, H, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(q.loc, it.x - H @ it.grad, rtol=1e-9, atol=1e-10)
    dense = torch.distributions.MultivariateNormal(q.loc, cov)
    z = q.loc + torch.randn(5, dim, dtype=F64)
    torch.testing.assert_close(q.log_prob(z), dense.log_prob(z), rtol=1e-9, atol=1e-9)
    draws, log_q = q.transform(torch.eye(dim, dtype=F64))
    root = (draws - q.loc).T  # z - mu = T u, so the columns of T are transform(e_i) - mu
    torch.testing.assert_close(root @ root.T, cov, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(log_q, dense.log_prob(draws), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(q.entropy(), dense.entropy(), rtol=1e-9, atol=1e-9)


# -- L-BFGS --------------------------------------------------------------------------------
def test_lbfgs_minimises_rosenbrock_and_reports_why_it_stopped():
    def rosenbrock(x):
        x = x.clone().requires_grad_(True)
        f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        (g,) = torch.autograd.grad(f, x)
        return float(f.detach()), g

    res = lbfgs(rosenbrock, torch.tensor([-1.2, 1.0]))
    torch.testing.assert_close(res.iterate.x, torch.ones(2, dtype=F64), atol=1e-5, rtol=0)
    assert res.stop_reason in ("tol_rel_obj", "tol_rel_grad")
    assert res.num_evals > res.num_iters > 10
    short = lbfgs(rosenbrock, torch.tensor([-1.2, 1.0]), max_iters=3)
    assert (short.stop_reason, short.num_iters) == ("max_iters", 3)
    at_minimum = lbfgs(rosenbrock, torch.ones(2))
    assert (at_minimum.stop_reason, at_minimum.num_iters, at_minimum.num_evals) == (
        "tol_rel_grad", 0, 1,
    )  # fmt: skip


def test_lbfgs_backs_off_nan_trial_points():
    """NaN at line-search trial points shrinks the step; the run still converges."""
    mean, cov, _ = correlated_gaussian(5, 10.0)
    fun = quadratic(torch.linalg.inv(cov), mean)
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] in (3, 4, 7):  # trial points of the 2nd and later line searches
            return math.nan, torch.full_like(x, math.nan)
        return fun(x)

    res = lbfgs(flaky, torch.zeros(5))
    assert res.num_backoffs == 3
    torch.testing.assert_close(res.iterate.x, mean, atol=1e-5, rtol=0)
    # A region where the objective is undefined, beyond the minimum along the first steps.
    walled = lbfgs(lambda x: fun(x) if x[0] < mean[0] + 0.3 else (math.inf, x), torch.zeros(5))
    torch.testing.assert_close(walled.iterate.x, mean, atol=1e-5, rtol=0)


def test_lbfgs_rejects_a_non_finite_start_and_bad_settings():
    with pytest.raises(ValueError, match="not finite at the start"):
        lbfgs(lambda x: (math.nan, x), torch.zeros(2))
    with pytest.raises(ValueError, match="history_size"):
        lbfgs(lambda x: (0.0, x), torch.zeros(2), history_size=0)


# -- Pathfinder ------------------------------------------------------------------------------
def test_best_iterate_recovers_a_correlated_gaussian():
    """D = 10, condition number 100: KL(q||p) = E_q[log q - log p] < 0.01 (analytic).

    BFGS recovers the inverse Hessian of a quadratic from D conjugate steps (Dixon's
    theorem); that needs a history of at least D pairs and a line search close to exact
    (``wolfe_c2=0.01``); Stan's defaults (history 5, c2 = 0.9) are 1.4 nats off here.
    """
    mean, cov, target = correlated_gaussian()
    res = pathfinder(target.log_prob, 10, dtype=F64, history_size=10, wolfe_c2=0.01, seed=1)
    q = res.gaussian
    assert float(kl_mvn(q.loc, q.covariance(), mean, cov)) < 0.01
    assert res.khat.reading == "good" and not res.warnings
    assert res.num_distinct > 0.8 * 1000  # ~880 expected from 4000 near-equal weights
    assert res.num_grad_evals == sum(p.num_grad_evals for p in res.paths)
    assert all(p.stop_reason in ("tol_rel_obj", "tol_rel_grad") for p in res.paths)
    stan = pathfinder(target.log_prob, 10, dtype=F64, seed=1, warn=False)  # measured 1.4 nats
    assert float(kl_mvn(stan.gaussian.loc, stan.gaussian.covariance(), mean, cov)) > 0.5


def test_multipath_resampling_recovers_mode_weights_even_when_paths_split_unevenly():
    """0.3 N((-3,-3), I) + 0.7 N((3,3), I): the share of draws in the 0.3 mode is 0.3 ± 0.05
    (R = 2000 draws, Monte Carlo sd ~0.01). Three of the four paths start in the minor
    mode; weighting each draw by its own path's q (the paper) would give 0.9/1.6 = 0.56,
    weighting by the mixture of the paths' q gives 0.3."""
    target = GaussianMixtureTarget(
        locs=[[-3.0, -3.0], [3.0, 3.0]], scales=[1.0, 1.0], weights=[0.3, 0.7]
    ).double()
    starts = torch.tensor([[-3.0, -3.0]] * 3 + [[3.0, 3.0]], dtype=F64)
    res = pathfinder(target.log_prob, 2, init=starts, init_radius=1.0, num_draws=2000, dtype=F64)
    minor = float((res.draws.sum(-1) < 0).double().mean())
    assert abs(minor - 0.3) < 0.05
    random_starts = pathfinder(target.log_prob, 2, num_paths=8, num_draws=2000, dtype=F64, seed=3)
    modes = {round(float(p.gaussian.loc[0])) for p in random_starts.paths}
    assert modes == {-3, 3}
    assert abs(float((random_starts.draws.sum(-1) < 0).double().mean()) - 0.3) < 0.05


def test_heavy_tailed_posterior_is_reported_not_returned_as_a_clean_fit():
    """A Student-t (nu = 2) target: the Gaussians miss its tails, the weights p/q are
    heavy-tailed, and the result says so (k-hat, weight share, distinct draws, warning)."""
    student = torch.distributions.StudentT(torch.tensor(2.0, dtype=F64))
    with pytest.warns(PathfinderWarning, match="k-hat") as record:
        res = pathfinder(lambda z: student.log_prob(z).sum(-1), 5, dtype=F64)
    assert res.khat.reading == "bad"
    assert res.max_weight > 0.05 and res.ess < 0.05 * 4000
    assert any("holds" in w for w in res.warnings)
    _, _, gaussian = correlated_gaussian(5, 10.0)
    clean = pathfinder(gaussian.log_prob, 5, dtype=F64, history_size=5, wolfe_c2=0.01)
    assert res.num_distinct < clean.num_distinct - 100
    assert "k-hat" in str(record[0].message) and "k-hat" in str(res)


def test_infeasible_starts_are_redrawn():
    """log p is NaN where z_0 < -1 (a quarter of the start box U(-2, 2)^D), far from the mode."""
    target = torch.distributions.MultivariateNormal(
        torch.full((3,), 3.0, dtype=F64), 0.25 * torch.eye(3, dtype=F64)
    )

    def log_density(z):
        return torch.where(z[:, 0] < -1, math.nan, target.log_prob(z))

    res = pathfinder(log_density, 3, num_paths=8, dtype=F64, seed=2)
    attempts = [p.init_attempts for p in res.paths]
    assert max(attempts) > 1 and all(p.start[0] >= -1 for p in res.paths)
    torch.testing.assert_close(res.gaussian.loc, target.mean, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no start with a finite log density"):
        pathfinder(lambda z: z.sum(-1) * math.nan, 3, max_init_attempts=5)


def test_nan_at_an_iterate_is_backed_off():
    """The 3rd and 4th gradient evaluations (line-search trial points) return NaN."""
    mean, cov, target = correlated_gaussian(4, 10.0)
    calls = {"n": 0}

    def log_density(z):
        if z.requires_grad:
            calls["n"] += 1
            if calls["n"] in (3, 4):
                return target.log_prob(z) * math.nan
        return target.log_prob(z)

    res = pathfinder(log_density, 4, num_paths=2, dtype=F64, history_size=4, wolfe_c2=0.01)
    assert res.paths[0].num_backoffs == 2 and res.paths[1].num_backoffs == 0
    assert float(kl_mvn(res.gaussian.loc, res.gaussian.covariance(), mean, cov)) < 0.01


def test_resampling_modes():
    _, _, target = correlated_gaussian(3, 10.0)
    common = dict(num_paths=2, draws_per_path=300, dtype=F64)
    without = pathfinder(
        target.log_prob, 3, num_draws=200, resample="without_replacement", **common
    )
    assert without.num_distinct == 200
    off = pathfinder(target.log_prob, 3, resample="off", **common)
    assert off.draws.shape == (600, 3)
    assert math.isclose(float(off.log_weights.exp().sum()), 1.0, rel_tol=1e-9)
    torch.testing.assert_close(off.log_weights, off.pooled_log_weights)
    with pytest.raises(ValueError, match="resample must be one of"):
        pathfinder(target.log_prob, 3, resample="yes")
    with pytest.raises(ValueError, match="num_draws <="):
        pathfinder(target.log_prob, 3, num_draws=700, resample="without_replacement", **common)


def test_model_entry_point_and_family_placement():
    """float32 regression (D = 3): draws in the model's dtype; the family takes the Gaussian."""
    X, y, _ = regression_data(200, 3, seed=0)
    model = BayesianLinearRegression(X, y)
    res = pathfinder_model(model, history_size=3, wolfe_c2=0.01, num_paths=2)
    assert res.draws.dtype == torch.float32
    post = model.exact_posterior()
    kl = kl_mvn(
        res.gaussian.loc,
        res.gaussian.covariance(),
        post.mean.double(),
        post.covariance_matrix.double(),
    )
    assert float(kl) < 0.01
    family = FullRankGaussian(3)
    res.set_family(family)
    torch.testing.assert_close(
        family.covariance().detach().double(), res.gaussian.covariance(), rtol=1e-5, atol=1e-7
    )
