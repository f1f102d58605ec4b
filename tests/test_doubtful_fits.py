"""No silent under-dispersion: the fit's one k-hat with its error, the quantities it doubts,
importance resampling where the weights can correct q, and non-centring where a funnel
defeats the Gaussian (issue 25)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import Normal, constraints

import svi_torch as st
from svi_torch.diagnostics import KHat, psis_khat
from svi_torch.families import FullRankGaussian, MeanFieldGaussian
from svi_torch.models import BayesianLinearRegression, Model, regression_data
from svi_torch.reweighting import (
    doubtful_quantities,
    effective_sample_size,
    quantity_checks,
    resample_indices,
)

# NUTS reference of eight schools (posteriordb eight_schools_noncentered: the same
# posterior on mu, tau, theta whichever way it is parameterised).
SCHOOLS_REF = {"mu": (4.39, 3.32), "tau": (3.60, 3.20)}
SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


class _Vector(Model):
    """A real vector ``x`` with a standard normal prior (only its constraint map is used)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.add_param("x", (dim,), constraints.real)

    def log_prior(self, params):
        return Normal(0.0, 1.0).log_prob(params["x"]).sum(-1)

    def log_likelihood(self, params, batch):
        return torch.zeros(params["x"].shape[:-1])


def test_constant_weights_are_worth_every_draw_and_doubt_nothing() -> None:
    z = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flat = torch.zeros(1000, dtype=torch.float64)
    assert effective_sample_size(flat) == pytest.approx(1000)
    checks = quantity_checks(_Vector(3), z, flat)
    assert [c.name for c in checks] == ["x[0]", "x[1]", "x[2]"]
    assert all(c.shift < 1e-12 and abs(c.ratio - 1) < 1e-12 for c in checks)
    assert doubtful_quantities(checks) == ()


def test_weights_towards_a_wider_target_name_that_quantity_with_its_sd_ratio() -> None:
    """q = N(0, 1) on each coordinate; the target is N(0, 1.3^2) on x[1] only. Its
    self-normalised weighted sd estimates 1.3, and the ESS is S / E_q[w^2] = 0.724 S
    (E_q[w^2] = sqrt(pi / a) / (sqrt(2 pi) 1.3^2), a = 1/1.3^2 - 1/2). With S = 20000
    the sd's relative error is about 1% (5% is a 5-sigma band) and the ESS's a few %."""
    S = 20_000
    z = torch.randn(S, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_w = Normal(0.0, 1.3).log_prob(z[:, 1]) - Normal(0.0, 1.0).log_prob(z[:, 1])
    checks = {c.name: c for c in quantity_checks(_Vector(3), z, log_w)}
    assert checks["x[1]"].ratio == pytest.approx(1.3, rel=0.05)
    assert checks["x[0]"].ratio == pytest.approx(1.0, abs=0.05)
    assert doubtful_quantities(list(checks.values()))[0] == "x[1]"
    a = 1 / 1.3**2 - 0.5
    expected = S * math.sqrt(2 * math.pi) * 1.3**2 / math.sqrt(math.pi / a)
    assert effective_sample_size(log_w) == pytest.approx(expected, rel=0.1)


def test_systematic_resampling_takes_each_draw_within_one_of_its_expected_count() -> None:
    g = torch.Generator().manual_seed(2)
    log_w = torch.randn(500, generator=g, dtype=torch.float64) * 2
    n = 3000
    index = resample_indices(log_w, n, torch.Generator().manual_seed(3))
    counts = torch.bincount(index, minlength=500).double()
    expected = n * torch.softmax(log_w, 0)
    assert torch.all((counts - expected).abs() < 1 + 1e-9)
    # Shuffled: the first half holds about half of each heavy draw, not one block of them.
    top = int(torch.argmax(expected))
    first = int((index[: n // 2] == top).sum())
    assert abs(first - counts[top] / 2) < 4 * math.sqrt(counts[top] / 4) + 1


def test_the_khat_standard_error_matches_its_spread_over_draw_sets() -> None:
    """Weights with a Pareto tail of shape 0.6: the sd of k-hat over 300 sets of S = 2000
    weights agrees with the stated (1 + k)/sqrt(M) within 25% (the sd of an sd estimated
    from 300 values is about 4%; the formula is asymptotic)."""
    g = torch.Generator().manual_seed(4)
    k_true, S = 0.6, 2000
    values, stated = [], []
    for _ in range(300):
        u = torch.rand(S, generator=g, dtype=torch.float64)
        log_w = -k_true * torch.log(u)  # w = u^-k: a Pareto tail of shape k
        khat = psis_khat(log_w)
        values.append(khat.value)
        stated.append(khat.se)
    spread = torch.tensor(values).std().item()
    assert abs(torch.tensor(values).mean().item() - k_true) < 0.05
    assert spread == pytest.approx(sum(stated) / len(stated), rel=0.25)
    assert KHat(-math.inf, "good", 10).se == 0.0 and KHat(math.inf, "bad", 10).se == math.inf


def _noncentred_schools(y, sigma):
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def _schools_model(centred: bool):
    from svi_torch.models import PyroModel

    if centred:
        from pyro_flat_models import schools_model

        return schools_model()  # the centred eight schools as a Pyro user writes it
    y, sigma = torch.tensor(SCHOOLS_Y), torch.tensor(SCHOOLS_SIGMA)
    return PyroModel(_noncentred_schools, y, sigma)


def _assert_schools_right(result) -> None:
    """mu and tau within 0.2 reference sd in mean and [0.8, 1.25] in sd (the target of
    issue 25; with an importance-resampled ESS of several hundred the sd's own error is
    about 3%, far inside the band)."""
    draws = result.sample(4000, seed=1)
    for name, (mean, sd) in SCHOOLS_REF.items():
        values = draws[name].double()
        assert abs(values.mean().item() - mean) < 0.2 * sd, name
        assert 0.8 < values.std().item() / sd < 1.25, name


def test_a_doubtful_gaussian_is_importance_resampled_and_says_so_everywhere() -> None:
    """Non-centred eight schools: the Gaussian's tau is too narrow (sd ratio 0.77) with
    k-hat 0.63; the result's draws are its PSIS importance resample, and the one k-hat is
    the same in the diagnostics, the summary, the printout and the ArviZ attributes."""
    model = _schools_model(centred=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # k-hat <= 0.7: no warning
        result = st.fit(model, FullRankGaussian(model.dim), seed=0)
    diag = result.diagnostics
    assert 0.5 < diag.khat <= 0.7 and diag.reading == "ok"
    assert diag.khat_se == pytest.approx((1 + diag.khat) / math.sqrt(190), rel=1e-6)
    assert "tau" in diag.doubtful
    assert result.draws is not None and result.draws.shape == (4000, model.dim)
    assert "PSIS importance resampling" in result.draws_source
    stages = [d.stage for d in result.decisions]
    assert stages[-2:] == ["k-hat", "importance resampling"]
    _assert_schools_right(result)
    table = result.summary()
    assert table.khat == diag.khat and diag.khat_text in str(table) and "tau" in str(table)
    assert diag.khat_text in repr(result) and "importance resampling" in repr(result)
    assert result.diagnose() is diag  # the fit's own, not a new one


def test_arviz_export_states_the_fits_khat() -> None:
    pytest.importorskip("arviz_base")
    model = _schools_model(centred=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = st.fit(model, FullRankGaussian(model.dim), seed=0)
    attrs = result.to_arviz(num_samples=500)["sample_stats"].attrs
    assert attrs["khat"] == result.diagnostics.khat
    assert attrs["khat_se"] == result.diagnostics.khat_se
    assert "tau" in attrs["doubtful"] and "importance resampling" in attrs["draws"]


@pytest.mark.slow
def test_a_centred_funnel_is_fitted_non_centred_and_reported_in_its_own_names() -> None:
    """Centred eight schools: the Gaussian on (mu, log tau, theta) gives tau's sd at 0.4 of
    NUTS's with k-hat about 0.67, read "ok". The automatic method fits the non-centred
    form too, keeps it on its higher ELBO, and reports mu, tau and theta."""
    model = _schools_model(centred=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = st.fit(model, FullRankGaussian(model.dim), seed=0)
    kept = next(d for d in result.decisions if d.stage == "non-centred")
    assert kept.outcome == "kept" and "theta" in kept.reason
    assert result.method.startswith("auto -> non-centred")
    assert set(result.sample(10)) >= {"mu", "tau", "theta"}
    _assert_schools_right(result)


def test_a_bad_khat_warns_naming_the_doubtful_quantities_with_advice_for_the_family() -> None:
    # Mean-field on a correlated posterior: the reverse KL(q || p) optimum is too narrow.
    X, y, _ = regression_data(500, 4, correlation=0.9, seed=0)
    model = BayesianLinearRegression(X, y)
    with pytest.warns(RuntimeWarning, match="doubtful quantities") as caught:
        result = st.fit(model, MeanFieldGaussian(model.dim), steps=500, seed=0)
    message = str(next(w.message for w in caught if "k-hat" in str(w.message)))
    assert result.diagnostics.khat > 0.7 and result.diagnostics.doubtful
    assert result.diagnostics.doubtful[0] in message and "NormalizingFlow" in message
    assert result.draws is None  # weights with k-hat > 0.7 correct nothing reliably


@pytest.mark.parametrize(("ess", "warned"), [(300.0, True), (800.0, False)])
def test_resampled_draws_resting_on_a_small_ess_warn(ess: float, warned: bool) -> None:
    """Doubtful quantities corrected by importance resampling with an ESS under 500 (of 4000)
    raise a warning naming them; with a larger ESS the corrected draws stand without one."""
    from svi_torch.diagnostics import Diagnostics
    from svi_torch.methods.auto import MIN_RESAMPLED_ESS, Auto, _AutoRun

    assert 300 < MIN_RESAMPLED_ESS <= 800
    diag = Diagnostics(0.62, "ok", -1.0, 0.1, -1.2, 0.01, 4000, 0.12, ess, ("sigma_b",))
    model = _Vector(2)
    run = _AutoRun(Auto(), model, FullRankGaussian(2), None, None, (), ())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run._warn(diag, run.family, resampled=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert bool(messages) is warned
    if warned:
        assert "sigma_b" in messages[0] and "effective sample size of only 300" in messages[0]
