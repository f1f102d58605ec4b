"""Save and load a FitResult: safe, checksummed, bit-identical draws; load_run of a CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import svi_torch as st
from svi_torch.config import load_config
from svi_torch.posterior import ResultFileError
from svi_torch.runs import new_run_dir, train_run
from svi_torch.training.result import FitResult

QUICK = Path(__file__).parents[1] / "experiments" / "configs" / "quick.yaml"


def _fit(family: st.families.VariationalFamily, model: st.models.Model) -> FitResult:
    return st.fit(model, family, steps=60, method=st.methods.SGD(lr=0.05), seed=0, progress=False)


def _schools_result(family_cls: type = st.families.FullRankGaussian, **options) -> FitResult:
    model = st.models.EightSchools()
    return _fit(family_cls(model.dim, **options), model)


def _same_draws(a: FitResult, b: FitResult, seed: int = 7) -> bool:
    x, y = a.sample(300, seed=seed), b.sample(300, seed=seed)
    return list(x) == list(y) and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize(
    ("family_cls", "options"),
    [
        (st.families.FullRankGaussian, {}),
        (st.families.MeanFieldGaussian, {"init_scale": 0.5}),
        (st.families.LowRankGaussian, {"rank": 3}),
        (st.families.GaussianMixture, {"components": 2}),
        (st.families.NormalizingFlow, {"transform": "iaf", "layers": 2, "hidden_dims": [12]}),
    ],
)
def test_save_then_load_gives_bit_identical_draws(tmp_path: Path, family_cls, options) -> None:
    result = _schools_result(family_cls, **options)
    path = result.save(tmp_path / "fit.pt")
    state = torch.get_rng_state()
    loaded = st.load_result(path, model=st.models.EightSchools())
    assert torch.equal(state, torch.get_rng_state())  # rebuilding drew no global randomness
    assert type(loaded.family) is family_cls
    assert _same_draws(result, loaded)
    assert loaded.history == result.history and loaded.steps == result.steps == 60
    assert loaded.stop_reason == result.stop_reason
    assert loaded.diagnostics == result.diagnose()  # stored at save, equal to a recomputation
    assert loaded.summary(500).values.equal(result.summary(500).values)


def test_file_loads_with_weights_only_and_float64_families_stay_float64(tmp_path: Path) -> None:
    X, y, _ = st.models.regression_data(40, 2, seed=0)
    model = st.models.BayesianLinearRegression(X.double(), y.double())
    result = _fit(st.families.FullRankGaussian(model.dim).double(), model)
    path = result.save(tmp_path / "fit.pt", diagnostics=False)
    raw = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert raw["format"] == "svi_torch.FitResult" and raw["version"] == 1
    loaded = st.load_result(path, model=st.models.BayesianLinearRegression(X.double(), y.double()))
    assert loaded.family.loc.dtype == torch.float64 and loaded.diagnostics is None
    assert _same_draws(result, loaded)


def test_a_modified_or_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _schools_result().save(tmp_path / "fit.pt", diagnostics=False)
    data = bytearray(path.read_bytes())
    model = st.models.EightSchools()
    # Change one byte inside the stored payload (a float of the family's state).
    raw = torch.load(path, weights_only=True)
    payload = raw["payload"].numpy().tobytes()
    where = data.find(payload)
    assert where > 0
    data[where + len(payload) // 2] ^= 0x01
    tampered = tmp_path / "tampered.pt"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ResultFileError, match="checksum does not match"):
        st.load_result(tampered, model=model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(ResultFileError, match="truncated"):
        st.load_result(truncated, model=model)
    other = tmp_path / "other.pt"
    torch.save({"step": 3}, other)
    with pytest.raises(ResultFileError, match="not a saved svi_torch result"):
        st.load_result(other, model=model)
    with pytest.raises(ResultFileError, match="no result file"):
        st.load_result(tmp_path / "missing.pt", model=model)


def test_loading_asks_for_the_model_and_checks_the_one_given(tmp_path: Path) -> None:
    path = _schools_result().save(tmp_path / "fit.pt", diagnostics=False)
    with pytest.raises(ResultFileError, match=r"model=EightSchools\(\.\.\.\)"):
        st.load_result(path)
    other = st.models.EightSchools(y=[1.0, 2.0, 3.0], sigma=[1.0, 1.0, 1.0])
    with pytest.raises(ResultFileError, match="does not match the saved fit"):
        st.load_result(path, model=other)
    with pytest.raises(ResultFileError, match="class"):
        st.load_result(path, model=st.models.Funnel(10))


class _Shifted(st.families.VariationalFamily):
    """A user's family built from a module: its arguments cannot be stored."""

    def __init__(self, dim: int, base: nn.Module) -> None:
        super().__init__(dim)
        self.base = base
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, context=None):
        dist = self.base()
        return torch.distributions.Independent(
            torch.distributions.Normal(dist.mean + self.shift, dist.stddev), 1
        )


def test_custom_family_without_storable_arguments_needs_family_argument(tmp_path: Path) -> None:
    model = st.models.EightSchools()
    family = _Shifted(model.dim, st.families.MeanFieldGaussian(model.dim))
    result = _fit(family, model)
    path = result.save(tmp_path / "fit.pt", diagnostics=False)
    with pytest.raises(ResultFileError, match=r"family=_Shifted\(\.\.\.\)"):
        st.load_result(path, model=st.models.EightSchools())
    fresh = _Shifted(model.dim, st.families.MeanFieldGaussian(model.dim))
    loaded = st.load_result(path, model=st.models.EightSchools(), family=fresh)
    assert loaded.family is fresh and _same_draws(result, loaded)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    config = load_config(
        QUICK,
        [
            "train.steps=120",
            "logging.grad_stats_every=0",
            "logging.histogram_every=0",
            "logging.checkpoint_every=60",
            "train.num_threads=1",
        ],
    )
    run_dir = new_run_dir(tmp_path_factory.mktemp("runs"), config)
    outcome = train_run(config, run_dir)
    return run_dir, outcome.metrics


def test_load_run_equals_the_posterior_the_run_reported(cli_run) -> None:
    run_dir, metrics = cli_run
    result = st.load_run(run_dir)
    written = json.loads((run_dir / "metrics.json").read_text())
    samples = min(500, 4000)  # quick.yaml: logging.elbo_samples = 500
    assert result.posterior_summary(samples) == written["posterior"] == metrics["posterior"]
    assert result.steps == 120 and result.stop_reason == written["stop_reason"]
    assert result.diagnostics.khat == pytest.approx(written["diagnostics/khat"])
    assert result.config["model"]["name"] == "linear_regression"


def test_saved_cli_result_rebuilds_its_model_from_the_config(cli_run, tmp_path: Path) -> None:
    run_dir, _ = cli_run
    result = st.load_run(run_dir)
    path = result.save(tmp_path / "run.pt", diagnostics=False)
    loaded = st.load_result(path)  # no model needed: the config rebuilds it
    assert isinstance(loaded.model, st.models.BayesianLinearRegression)
    assert _same_draws(result, loaded)
    with pytest.raises(ResultFileError, match="not a finished svi-torch run"):
        st.load_run(tmp_path)
    # A config whose data file has gone: the error says to pass the model.
    result.config["data"].update(source=str(tmp_path / "moved.csv"), y="y")
    path = result.save(tmp_path / "moved.pt", diagnostics=False)
    with pytest.raises(ResultFileError, match=r"cannot rebuild the model.*model=Bayesian"):
        st.load_result(path)
