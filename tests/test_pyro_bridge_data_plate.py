"""The Pyro bridge's data plate: found from the sites when not named, the full-data idiom
(``X @ beta`` outside the plate) fitted on full data with one warning, and what a data
plate gives after the fit (per-point log likelihood, ArviZ groups, ``az.loo``, the
predictive check against the model's ``obs=`` arrays)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure

import svi_torch as st
from svi_torch.models import PyroModel
from svi_torch.models.pyro_sites import discover_sites, find_data_plate

N = 24  # data points of every model here: small, so that each fit takes a second or two
DRAWS = 40  # posterior draws of the after-fit checks


# -- models of several shapes, each with its data plate ---------------------------------
def one_plate(X: torch.Tensor, y: torch.Tensor) -> None:
    beta = pyro.sample("beta", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", len(y)) as idx:
        loc = (X[idx] * beta.unsqueeze(-2)).sum(-1)
        pyro.sample("y", dist.Normal(loc, sigma.unsqueeze(-1)), obs=y[idx])


def nested_plates(Y: torch.Tensor) -> None:
    # "outputs" holds a latent per output, so the data plate is "data", not the inner plate.
    num, outputs = Y.shape
    scale = pyro.sample("scale", dist.HalfNormal(1.0))
    outputs_plate = pyro.plate("outputs", outputs, dim=-1)  # one plate, entered twice
    with outputs_plate:
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", num, dim=-2) as idx, outputs_plate:
        pyro.sample("Y", dist.Normal(loc, scale.unsqueeze(-1).unsqueeze(-1)), obs=Y[idx])


def _likelihood(loc: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> None:
    with pyro.plate("points", len(y)) as idx:
        pyro.sample("y", dist.Normal(loc.unsqueeze(-1), scale.unsqueeze(-1)), obs=y[idx])


def plate_in_a_function(y: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    _likelihood(loc, scale, y)


def full_data_idiom(X: torch.Tensor, y: torch.Tensor) -> None:
    # X @ beta over all rows outside the plate, obs=y unindexed inside it.
    beta = pyro.sample("beta", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    logits = X @ beta
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def hierarchical_full_data_idiom(X: torch.Tensor, g: torch.Tensor, y: torch.Tensor) -> None:
    # The hierarchical logistic regression, written the same way.
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("groups", 3):
        a = pyro.sample("a", dist.Normal(mu, tau))
    beta = pyro.sample("beta", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    logits = X @ beta + a[..., g]
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def with_factors(X: torch.Tensor, y: torch.Tensor) -> None:
    beta = pyro.sample("beta", dist.Normal(torch.zeros(X.shape[1]), 3.0).to_event(1))
    pyro.factor("shrinkage", -0.5 * beta.pow(2).sum(-1))  # outside the plate: not per point
    with pyro.plate("data", len(y)) as idx:
        loc = (X[idx] * beta.unsqueeze(-2)).sum(-1)
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y[idx])
        pyro.factor("robust", -0.01 * (y[idx] - loc).pow(2))  # per point: in the plate


def _data() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, 2, generator=g)
    y = X @ torch.tensor([1.0, -0.5]) + 0.5 * torch.randn(N, generator=g)
    return {
        "one_plate": (one_plate, (X, y), "data", {"y": y}),
        "nested_plates": (nested_plates, (torch.randn(N, 3, generator=g),), "data", None),
        "plate_in_a_function": (plate_in_a_function, (y,), "points", {"y": y}),
        "full_data_idiom": (full_data_idiom, (X, (y > 0).float()), "data", {"y": (y > 0).float()}),
        "with_factors": (with_factors, (X, y), "data", {"y": y}),
    }


CASES = _data()


def _build(model_fn: Callable[..., None], args: tuple[Any, ...], **options: Any) -> PyroModel:
    with warnings.catch_warnings():
        # The full-data idiom warns that it cannot be minibatched (tested below).
        warnings.filterwarnings("ignore", message=".*does not run on a subsample")
        return PyroModel(model_fn, *args, **options)


def _fit(model: PyroModel, method: Any = None, **settings: Any) -> st.FitResult:
    """A short fit: the default (automatic) method, or stochastic gradients where it is
    the trainer's minibatches that matter."""
    family = st.families.MeanFieldGaussian(model.dim)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PSIS k-hat")  # 30 steps: q is rough
        return st.fit(model, family, method=method or "auto", steps=30, seed=0, **settings)


SGD = st.methods.SGD(lr=0.05)


@pytest.mark.parametrize("name", list(CASES))
def test_a_model_without_data_plate_finds_its_plate_and_gives_every_after_fit_tool(
    name: str,
) -> None:
    import arviz as az

    model_fn, args, plate, observed = CASES[name]
    model = _build(model_fn, args)
    assert (model.data_plate, model.data_plate_found, model.num_data) == (plate, True, N)
    result = _fit(model)
    assert f"num_data={N} in plate {plate!r} (found" in repr(result)

    assert result.log_likelihood(DRAWS).shape == (DRAWS, N)
    tree = result.to_arviz(DRAWS)
    assert {"posterior", "observed_data", "log_likelihood", "posterior_predictive"} <= set(
        tree.children
    )
    for site, values in (observed or {}).items():
        assert torch.equal(torch.as_tensor(tree["observed_data"][site].values), values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 40 draws: ArviZ warns about its k-hat; it still runs
        loo = az.loo(tree)
    assert torch.isfinite(torch.as_tensor(float(loo.elpd)))
    assert isinstance(result.ppc_figure(num_samples=10), Figure)


def test_the_found_plate_fits_as_the_named_one_with_minibatches() -> None:
    model_fn, args, _, _ = CASES["one_plate"]
    found, named = PyroModel(model_fn, *args), PyroModel(model_fn, *args, data_plate="data")
    assert found.supports_minibatches and found.data_plate_found and not named.data_plate_found
    batches = []
    log_joint = found.log_joint

    def recording(z: torch.Tensor, batch: Any = None, scale: float | None = None) -> Any:
        if batch is not None:
            batches.append(batch["subsample"].shape[0])
        return log_joint(z, batch, scale)

    found.log_joint = recording  # type: ignore[method-assign]
    a, b = _fit(found, SGD, batch_size=6), _fit(named, SGD, batch_size=6)
    assert set(batches) == {6}  # the trainer's minibatches reach the model
    assert a.history["elbo"] == b.history["elbo"]


def test_data_plate_none_turns_discovery_off_and_the_error_says_how_to_name_it() -> None:
    model_fn, args, _, _ = CASES["one_plate"]
    model = PyroModel(model_fn, *args, data_plate=None)
    assert model.data_plate is None and model.num_data == 0
    result = st.FitResult(st.families.MeanFieldGaussian(model.dim), model)
    assert "num_data=0: no data plate (data_plate=None)" in repr(result)
    with pytest.raises(ValueError, match="has no data .*pass data_plate='<name of the plate"):
        result.log_likelihood(5)


@pytest.mark.parametrize("data_plate", ["data", pytest.param(None, id="found")])
def test_the_full_data_idiom_runs_on_full_data_with_one_warning_line(
    data_plate: str | None,
) -> None:
    _, (X, y), _, _ = CASES["full_data_idiom"]
    options = {} if data_plate is None else {"data_plate": data_plate}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PyroModel(hierarchical_full_data_idiom, X, torch.arange(N) % 3, y, **options)
    assert len(caught) == 1, [str(w.message) for w in caught]
    text = str(caught[0].message)
    assert "\n" not in text and "Traceback" not in text
    assert "does not run on a subsample of its data plate 'data'" in text
    assert "Shape mismatch" in text and "pyro.plate('data', 24) as idx" in text
    assert not model.supports_minibatches and "full data each step)" in model.data_summary
    # A batch stands for its share of the full data, so the trainer's N/B makes it exact.
    z = torch.randn(3, model.dim)
    batch = model.index_data(torch.arange(6))
    torch.testing.assert_close(
        model.log_joint(z, batch, N / 6).total, model.full_log_joint(z), rtol=1e-5, atol=1e-4
    )
    full = model.pointwise_log_likelihood(model.constrain(z)[0], None)
    torch.testing.assert_close(
        model.pointwise_log_likelihood(model.constrain(z)[0], batch), full[:, :6]
    )
    assert _fit(model, SGD).history["elbo"]  # the default batch is all N: no error on the way


def test_find_data_plate_rules() -> None:
    def sites(model_fn: Callable[..., None], *args: Any) -> Any:
        found, _ = discover_sites(model_fn, args, {}, torch.float32, torch.device("cpu"))
        return found

    y = torch.randn(6)

    def two_data_sets(y: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("a", 6):
            pyro.sample("ya", dist.Normal(mu, 1.0), obs=y)
        with pyro.plate("b", 6):
            pyro.sample("yb", dist.Normal(mu, 1.0), obs=y)

    def schools(y: torch.Tensor) -> None:
        with pyro.plate("schools", 6):
            theta = pyro.sample("theta", dist.Normal(0.0, 10.0))
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    def obs_only_nest(Y: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 6, dim=-2), pyro.plate("cols", 2, dim=-1):
            pyro.sample("Y", dist.Normal(mu, 1.0), obs=Y)

    def subsampled(y: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 6, subsample_size=3) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    assert find_data_plate(sites(two_data_sets, y)) == (
        None,
        "the observed sites lie in 2 plates, ['a', 'b']",
    )
    assert find_data_plate(sites(schools, y)) == (None, "plate 'schools' holds latent sites too")
    assert find_data_plate(sites(obs_only_nest, torch.randn(6, 2)))[0] == "rows"  # outermost
    assert find_data_plate(sites(subsampled, y)) == (None, "plate 'data' subsamples itself")
    with pytest.raises(TypeError, match="data_plate must be the name of the plate"):
        PyroModel(schools, y, data_plate=3)  # type: ignore[arg-type]
