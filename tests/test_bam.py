"""Batch-and-match: the closed-form update, its fixed point, minibatch scores, low rank."""

import math

import pytest
import torch

from svi_torch.divergences import kl_mvn
from svi_torch.methods.bam import (
    BatchAndMatch,
    _spd_cholesky,
    bam_update,
    decaying_learning_rate,
    lowrank_bam_update,
)
from svi_torch.methods.density import minibatch_log_density
from svi_torch.methods.pathfinder import pathfinder_model
from svi_torch.models import BayesianLinearRegression, regression_data

F64 = torch.float64


def regression(dim: int, num_data: int = 1000, seed: int = 0):
    X, y, _ = regression_data(num_data, dim, correlation=0.5, seed=seed)
    model = BayesianLinearRegression(X.double(), y.double())
    post = model.exact_posterior()
    return model, post.mean, post.covariance_matrix


def kl_to(mean, cov, target_mean, target_cov) -> float:
    """Analytic KL(q||p) = E_q[log q - log p] of two Gaussians."""
    return float(kl_mvn(mean, cov, target_mean, target_cov))


def test_update_solves_the_matrix_quadratic_and_is_symmetric_positive_definite():
    """Sigma' U Sigma' + Sigma' = V (the paper's match step) for a random batch with B < D."""
    g = torch.Generator().manual_seed(0)
    dim, batch, lr = 7, 3, 2.5
    root = torch.randn(dim, dim, generator=g, dtype=F64)
    cov = root @ root.T + torch.eye(dim, dtype=F64)
    mean = torch.randn(dim, generator=g, dtype=F64)
    z = torch.randn(batch, dim, generator=g, dtype=F64)
    scores = torch.randn(batch, dim, generator=g, dtype=F64)
    new_mean, new_cov, repaired = bam_update(mean, cov, z, scores, lr)
    zc, gc = z - z.mean(0), scores - scores.mean(0)
    delta, g_bar = mean - z.mean(0), scores.mean(0)
    U = lr * gc.T @ gc / batch + lr / (1 + lr) * torch.outer(g_bar, g_bar)
    V = cov + lr * zc.T @ zc / batch + lr / (1 + lr) * torch.outer(delta, delta)
    torch.testing.assert_close(new_cov @ U @ new_cov + new_cov, V, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(new_cov, new_cov.T, rtol=0, atol=0)
    assert not repaired and float(torch.linalg.eigvalsh(new_cov).min()) > 0
    expected = mean / (1 + lr) + lr / (1 + lr) * (new_cov @ g_bar + z.mean(0))
    torch.testing.assert_close(new_mean, expected, rtol=1e-12, atol=1e-12)


def test_lowrank_match_step_equals_the_full_rank_one():
    """With no patch (em_steps=0) the factored mean update is the dense one; the patch of a
    covariance that is already rank r plus diagonal leaves it there."""
    g = torch.Generator().manual_seed(1)
    dim, rank, batch, lr = 9, 2, 3, 4.0
    factor = torch.randn(dim, rank, generator=g, dtype=F64)
    diag = torch.rand(dim, generator=g, dtype=F64) + 0.5
    mean = torch.randn(dim, generator=g, dtype=F64)
    z = torch.randn(batch, dim, generator=g, dtype=F64)
    scores = torch.randn(batch, dim, generator=g, dtype=F64)
    dense_mean, _, _ = bam_update(mean, factor @ factor.T + torch.diag(diag), z, scores, lr)
    lr_mean, _, _ = lowrank_bam_update(mean, factor, diag, z, scores, lr, em_steps=0)
    torch.testing.assert_close(lr_mean, dense_mean, rtol=1e-10, atol=1e-12)
    # A Gaussian target of that form with exact scores: the update returns it (fixed point).
    precision = torch.linalg.inv(factor @ factor.T + torch.diag(diag))
    new_mean, new_factor, new_diag = lowrank_bam_update(
        mean, factor, diag, z, -(z - mean) @ precision, lr, em_steps=50
    )
    torch.testing.assert_close(new_mean, mean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        new_factor @ new_factor.T + torch.diag(new_diag),
        factor @ factor.T + torch.diag(diag),
        rtol=1e-6,
        atol=1e-6,
    )


def test_exact_posterior_is_a_fixed_point_at_any_batch_size():
    model, mean, cov = regression(20)
    bam = BatchAndMatch(20, batch_size=2, learning_rate=3.0, init_loc=mean, init_cov=cov, dtype=F64)
    for _ in range(5):
        bam.step(model.full_log_joint)
    assert abs(kl_to(bam.mean, bam.cov, mean, cov)) < 1e-9


@pytest.mark.parametrize(("dim", "batch_size", "start", "max_steps"), [
    (5, 4, "standard normal", 10),
    (20, 4, "pathfinder", 20),
    (100, 16, "pathfinder", 40),
])  # fmt: skip
def test_reaches_the_exact_posterior_in_tens_of_steps(dim, batch_size, start, max_steps):
    """KL(q||p) < 0.01 on conjugate regressions (N = 1000, full-data scores), default
    learning rate. The D = 20 and 100 posteriors are too concentrated for N(0, I) at
    B < D (BaM's mean stalls, module docstring): they start from Pathfinder at Stan's
    defaults, itself 0.2 and 3.2 nats off."""
    model, mean, cov = regression(dim)
    kwargs = {}
    if start == "pathfinder":
        pf = pathfinder_model(model, warn=False)
        assert kl_to(pf.gaussian.loc, pf.gaussian.covariance(), mean, cov) > 0.1
        kwargs = {"init_loc": pf.gaussian.loc, "init_cov": pf.gaussian.covariance()}
    bam = BatchAndMatch(dim, batch_size=batch_size, dtype=F64, **kwargs)
    steps = 0
    while steps < max_steps and kl_to(bam.mean, bam.cov, mean, cov) >= 0.01:
        assert bam.step(model.full_log_joint).accepted
        steps += 1
    assert kl_to(bam.mean, bam.cov, mean, cov) < 0.01, f"not there after {steps} steps"
    assert bam.num_score_evals == steps * batch_size and bam.num_repairs == 0


def test_minibatch_scores_bias_the_variance_and_the_control_variate_removes_it():
    """N = 1000, minibatches of 100 (scores scaled by N/B = 10), 8 draws a step, 200 steps,
    iterates averaged over the last 100. Measured: the averaged covariance's mean eigenvalue
    ratio to the exact one (1 = right) and KL(q_avg||p).

    Plain minibatch scores: the variance comes out about half the exact one (the score
    noise enters U). With the control variate (full-data score at the mean every 20 steps,
    10 full gradients in all): KL < 0.05 at D = 5 and D = 20."""
    model, mean, cov = regression(5)
    plain = BatchAndMatch(5, batch_size=8, average_start=100, dtype=F64)
    log_density = minibatch_log_density(model, 100, seed=1)
    for _ in range(200):
        plain.step(log_density)
    avg_mean, avg_cov = plain.averaged_moments()
    ratio = float(torch.linalg.eigvalsh(torch.linalg.solve(cov, avg_cov)).mean())
    assert ratio < 0.8 and kl_to(avg_mean, avg_cov, mean, cov) > 0.1

    for dim in (5, 20):
        model, mean, cov = regression(dim)
        pf = pathfinder_model(model, warn=False)  # a start near the posterior (see above)
        bam = BatchAndMatch(
            dim,
            batch_size=8,
            average_start=100,
            reference_log_density=model.full_log_joint,
            init_loc=pf.gaussian.loc,
            init_cov=pf.gaussian.covariance(),
            dtype=F64,
        )
        log_density = minibatch_log_density(model, 100, seed=1)
        for _ in range(200):
            bam.step(log_density)
        avg_mean, avg_cov = bam.averaged_moments()
        ratio = float(torch.linalg.eigvalsh(torch.linalg.solve(cov, avg_cov)).mean())
        assert kl_to(avg_mean, avg_cov, mean, cov) < 0.05 and abs(ratio - 1) < 0.1
        assert bam.num_full_evals == 10 and bam.num_score_evals == 200 * 9
        # The average is better than the last iterate, which still carries the noise.
        assert kl_to(avg_mean, avg_cov, mean, cov) < kl_to(bam.mean, bam.cov, mean, cov)


def test_lowrank_variant_fits_a_thousand_dimensional_low_rank_plus_diagonal_target():
    """D = 1000, Sigma = W W' + diag(psi) with rank 5 (top eigenvalues 10-12 over a diagonal
    in [0.5, 1.5]): 200 steps of 32 draws from N(0, I) reach KL(q||p) < 0.01 and a relative
    covariance error ||Sigma_q - Sigma||_F / ||Sigma||_F < 0.05 (measured 0.001 and 0.008),
    with O(D (r + B)^2) work a step and no D x D matrix."""
    dim, rank = 1000, 5
    g = torch.Generator().manual_seed(0)
    W = 0.1 * torch.randn(dim, rank, generator=g, dtype=F64)
    psi = torch.rand(dim, generator=g, dtype=F64) + 0.5
    loc = torch.randn(dim, generator=g, dtype=F64)
    target = torch.distributions.LowRankMultivariateNormal(loc, W, psi)
    bam = BatchAndMatch(dim, batch_size=32, rank=rank, learning_rate=10.0, dtype=F64)
    for _ in range(200):
        bam.step(target.log_prob)
    cov = W @ W.T + torch.diag(psi)
    fitted = bam.covariance()
    assert kl_to(bam.mean, fitted, loc, cov) < 0.01
    assert float(torch.linalg.norm(fitted - cov) / torch.linalg.norm(cov)) < 0.05
    assert bam.factor.shape == (dim, rank)


def test_state_dict_round_trip_resumes_the_same_run():
    model, _, _ = regression(5, num_data=200)
    rule = BatchAndMatch(
        5, batch_size=4, average_start=2, reference_log_density=model.full_log_joint, dtype=F64
    )
    density = minibatch_log_density(model, 50, seed=3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        rule.step(density, gen)
    state, gen_state = rule.state_dict(), gen.get_state()
    for _ in range(5):
        rule.step(density, gen)
    resumed = BatchAndMatch(
        5, batch_size=4, average_start=2, reference_log_density=model.full_log_joint, dtype=F64
    )
    resumed.load_state_dict(state)
    gen.set_state(gen_state)
    replay = minibatch_log_density(model, 50, seed=3)
    for _ in range(5):  # the minibatch stream is the caller's: replay its first 5 batches
        replay(torch.zeros(1, 5, dtype=F64))
    for _ in range(5):
        resumed.step(replay, gen)
    torch.testing.assert_close(resumed.cov, rule.cov, rtol=0, atol=0)
    torch.testing.assert_close(resumed.averaged_moments()[0], rule.averaged_moments()[0])
    state["mean"].add_(1.0)  # the loaded state is a copy
    assert not torch.equal(resumed.mean, state["mean"])


def test_non_finite_scores_reject_the_step_and_then_stop_the_run():
    target = torch.distributions.MultivariateNormal(
        torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)
    )

    def log_density(z):
        return torch.where(z[:, 0] > 1.5, math.nan, target.log_prob(z))

    bam = BatchAndMatch(3, batch_size=16, dtype=F64, max_rejections=3)
    before = bam.cov.clone()
    info = bam.step(log_density, torch.Generator().manual_seed(0))
    assert not info.accepted and bam.num_rejected == 1
    torch.testing.assert_close(bam.cov, before, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="rejected 3 steps in a row"):
        for _ in range(3):
            bam.step(lambda z: target.log_prob(z) * math.nan)


def test_spd_repair_and_bad_settings():
    v = torch.randn(4, 2, dtype=F64)
    chol, repaired = _spd_cholesky(v @ v.T)  # rank 2: not positive definite
    assert repaired and bool(torch.isfinite(chol).all())
    with pytest.raises(ValueError, match="rank must be"):
        BatchAndMatch(3, rank=4)
    with pytest.raises(ValueError, match="batch_size must be"):
        BatchAndMatch(3, batch_size=1)
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        BatchAndMatch(3, learning_rate=-1.0)
    with pytest.raises(ValueError, match="positive definite"):
        BatchAndMatch(2, init_cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="full-rank update only"):
        BatchAndMatch(3, rank=1, average_start=5)
    schedule = decaying_learning_rate(10.0, 10.0)
    assert schedule(0) == 10.0 and schedule(10) == 5.0
