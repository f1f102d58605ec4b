"""Quick runs of the kl-asymmetry, meanfield and estimators studies: files and key numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from svi_torch.registry import STUDIES
from svi_torch.studies import estimators, kl_asymmetry, meanfield

pytestmark = pytest.mark.slow  # three quick studies, ~30 s together on an idle core


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def kl_run(tmp_path_factory):
    out = kl_asymmetry.run(tmp_path_factory.mktemp("kl"), quick=True)
    return out, {r["fit"]: r for r in _rows(out / "summary.csv")}


def test_kl_asymmetry_reverse_locks_onto_a_mode_and_forward_spans_both(kl_run):
    out, rows = kl_run
    assert (out / "densities.png").stat().st_size > 10_000
    assert any((out / "runs" / "reverse").iterdir())  # a TensorBoard run per fit
    reverse, forward, exact = (
        rows["reverse"],
        rows["forward"],
        rows[next(k for k in rows if k.startswith("moment"))],
    )
    target_variance = float(reverse["target_variance"])
    assert target_variance == pytest.approx(10.0)
    # Reverse KL: one mode (mean near +-3, the component's variance ~1), far below the target's.
    assert abs(abs(float(reverse["mean"])) - 3.0) < 0.3
    assert float(reverse["variance"]) < 0.2 * target_variance
    # Forward KL: moment matching, mean 0 and variance 10. The averaged SGD iterate with 256
    # target draws per step lands within ~1% of the optimum (measured); allow 5%.
    assert abs(float(forward["mean"])) < 0.3
    assert float(forward["variance"]) == pytest.approx(target_variance, rel=0.05)
    assert float(forward["variance"]) > 5 * float(reverse["variance"])

    # Each fit wins its own divergence, beyond 4 standard errors of the MC estimates.
    def beats(a, b, key):
        se = (float(a[f"{key}_se"]) ** 2 + float(b[f"{key}_se"]) ** 2) ** 0.5
        return float(a[key]) + 4 * se < float(b[key])

    assert beats(reverse, forward, "reverse_kl")
    assert beats(forward, reverse, "forward_kl")
    # The forward fit is near the exact forward optimum (moment matching): within 0.02 nats.
    assert float(forward["forward_kl"]) - float(exact["forward_kl"]) < 0.02
    # Reverse fit misses a mode: PSIS k-hat says so; the forward fit's weights are bounded.
    assert float(reverse["khat"]) > 0.7 and float(forward["khat"]) < 0.5


def test_meanfield_variance_is_one_minus_rho_squared_sigma_squared(tmp_path):
    out = meanfield.run(tmp_path, quick=True, overrides={"tensorboard": False})
    assert (out / "variance.png").stat().st_size > 10_000
    rows = _rows(out / "summary.csv")
    assert [float(r["rho"]) for r in rows] == [0.0, 0.9, 0.99]
    for r in rows:
        rho = float(r["rho"])
        exact = (1 - rho**2) * 1.0
        assert float(r["meanfield_variance_exact"]) == pytest.approx(exact)
        # Averaged SGD noise on the fitted variance is ~1% here (measured over seeds); 5% band.
        assert float(r["meanfield_variance"]) == pytest.approx(exact, rel=0.05)
        assert float(r["meanfield_kl"]) == pytest.approx(float(r["meanfield_kl_exact"]), abs=0.02)
        # Forward-KL mean-field matches the marginal variance sigma^2 = 1 (mass-covering).
        assert float(r["forward_meanfield_variance"]) == pytest.approx(1.0, rel=0.05)
        # Full-rank recovers the correlation (slowest at rho = 0.99, ill-conditioned).
        assert float(r["fullrank_correlation"]) == pytest.approx(rho, abs=0.05)
    assert float(rows[0]["fullrank_kl"]) < 0.01 and float(rows[1]["fullrank_kl"]) < 0.01


def test_estimators_study_shows_stl_noise_vanishing_at_the_posterior(tmp_path):
    out = estimators.run(tmp_path, quick=True, overrides={"tensorboard": False})
    assert (out / "estimators.png").stat().st_size > 10_000
    rows = {(r["estimator"], int(r["num_particles"])): r for r in _rows(out / "summary.csv")}
    assert set(rows) == {(e, k) for e in ("reparam", "stl", "iwae-dreg") for k in (1, 8)}
    for k in (1, 8):
        reparam = float(rows["reparam", k]["grad_variance_posterior"])
        assert float(rows["stl", k]["grad_variance_posterior"]) < 1e-6 * reparam
        assert float(rows["iwae-dreg", k]["grad_variance_posterior"]) < 1e-6 * reparam
        # More particles, less variance at the initial point (roughly 1/K for the ELBO).
        assert float(rows["reparam", 8]["grad_variance_init"]) < float(
            rows["reparam", 1]["grad_variance_init"]
        )
    for r in rows.values():
        assert int(r["steps"]) >= 20 and float(r["kl_after_budget"]) >= 0


def test_studies_are_registered_and_reject_unknown_settings(tmp_path):
    for name, module in (
        ("kl-asymmetry", kl_asymmetry),
        ("meanfield", meanfield),
        ("estimators", estimators),
    ):
        assert STUDIES.get(name).factory is module.run
    with pytest.raises(ValueError, match="unknown study setting"):
        meanfield.run(tmp_path, quick=True, overrides={"rho": 0.5})
