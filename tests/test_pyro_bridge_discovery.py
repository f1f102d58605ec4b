"""PyroModel discovery: sites from shapes and supports (flat priors), dtype and device,
``init_loc_fn``; each checked against Pyro's own densities or a formula."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import (
    init_to_feasible,
    init_to_median,
    init_to_value,
)
from torch.distributions import biject_to

import svi_torch as st
from svi_torch.families import FullRankGaussian
from svi_torch.models import PyroModel
from svi_torch.models.pyro import PyroModelError
from svi_torch.objectives import ELBO
from svi_torch.training.result import estimate_elbo


def pyro_log_joint(model_fn, model, z, *args):
    """Pyro's own ``Trace.log_prob_sum()`` of the model conditioned on T(z), plus log|det J|."""
    params, log_det = model.constrain(z)
    out = []
    for i in range(z.shape[0]):
        values = {k: v[i] for k, v in params.items()}
        with pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(model_fn, data=values)).get_trace(*args)
            out.append(trace.log_prob_sum() + log_det[i])
    return torch.stack(out)


def every_support(y):
    a = pyro.sample("a", dist.ImproperUniform(constraints.real, (), ()))
    v = pyro.sample("v", dist.ImproperUniform(constraints.real, (), (3,)))
    s = pyro.sample("s", dist.ImproperUniform(constraints.positive, (), ()))
    c = pyro.sample("c", dist.ImproperUniform(constraints.ordered_vector, (), (4,)))
    w = pyro.sample("w", dist.ImproperUniform(constraints.simplex, (), (4,)))
    p = pyro.sample("p", dist.ImproperUniform(constraints.interval(-1.0, 2.0), (), ()))
    with pyro.plate("groups", 5):
        g = pyro.sample("g", dist.ImproperUniform(constraints.positive, (), ()))
    loc = a + v.sum(-1) + c[..., -1] + (w * p.unsqueeze(-1)).sum(-1) + g.log().mean(-1)
    pyro.sample("y", dist.Normal(loc.unsqueeze(-1), s.unsqueeze(-1)).to_event(1), obs=y)


def test_improper_sites_are_declared_from_shape_and_support_without_sampling():
    y = torch.tensor([0.3, -1.2, 0.8])
    with pytest.raises(NotImplementedError):  # what discovery by prior draw used to hit
        dist.ImproperUniform(constraints.real, (), ()).sample()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = PyroModel(every_support, y)
    specs = model.param_specs
    assert {k: s.shape for k, s in specs.items()} == {
        "a": (),
        "v": (3,),
        "s": (),
        "c": (4,),
        "w": (4,),
        "p": (),
        "g": (5,),
    }
    expected = {
        "a": constraints.real,
        "v": constraints.real,
        "s": constraints.positive,
        "c": constraints.ordered_vector,
        "w": constraints.simplex,
        "g": constraints.positive,
    }
    for name, support in expected.items():
        assert type(specs[name].support) is type(support), name
    assert (specs["p"].support.lower_bound, specs["p"].support.upper_bound) == (-1.0, 2.0)
    # Unconstrained sizes: the simplex loses one coordinate.
    assert model.dim == 1 + 3 + 1 + 4 + 3 + 1 + 5
    z = torch.randn(4, model.dim, generator=torch.Generator().manual_seed(0))
    params, _ = model.constrain(z)
    assert bool((params["c"].diff(dim=-1) > 0).all())
    torch.testing.assert_close(params["w"].sum(-1), torch.ones(4))
    torch.testing.assert_close(model.full_log_joint(z), pyro_log_joint(every_support, model, z, y))
    # The zero of z is the feasible point T(0) of every site.
    zero, _ = model.constrain(torch.zeros(model.dim))
    torch.testing.assert_close(zero["w"], torch.full((4,), 0.25))
    torch.testing.assert_close(zero["p"], torch.tensor(0.5))


def flat_regression(X, y):
    """posteriordb style: flat priors on the coefficients, a positive flat scale."""
    alpha = pyro.sample("alpha", dist.ImproperUniform(constraints.real, (), ()))
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (X.shape[1],)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", len(y)) as idx:
        pyro.sample("y", dist.Normal(alpha + X[idx] @ beta, sigma), obs=y[idx])


def flat_regression_no_plate(X, y):
    alpha = pyro.sample("alpha", dist.ImproperUniform(constraints.real, (), ()))
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (X.shape[1],)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    pyro.sample("y", dist.Normal(alpha + X @ beta, sigma).to_event(1), obs=y)


@pytest.mark.parametrize("with_plate", [True, False])
def test_flat_prior_models_construct_silently_with_the_right_full_data_log_joint(with_plate):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 2, generator=g)
    y = 1.0 + X @ torch.tensor([0.5, -2.0]) + 0.7 * torch.randn(300, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if with_plate:
            model = PyroModel(flat_regression, X, y, data_plate="data")
        else:
            model = PyroModel(flat_regression_no_plate, X, y)
    assert model.dim == 4 and model.vectorize_particles
    z = torch.randn(5, 4, generator=g)
    params, log_det = model.constrain(z)
    # Flat priors add nothing: the log joint is the likelihood plus the Jacobian of exp.
    by_hand = (
        torch.distributions.Normal(
            params["alpha"][:, None] + params["beta"] @ X.T, params["sigma"][:, None]
        )
        .log_prob(y)
        .sum(-1)
        + log_det
    )
    torch.testing.assert_close(log_det, z[:, 3])
    torch.testing.assert_close(model.full_log_joint(z), by_hand, rtol=1e-5, atol=1e-3)
    fn = flat_regression if with_plate else flat_regression_no_plate
    torch.testing.assert_close(
        model.full_log_joint(z), pyro_log_joint(fn, model, z, X, y), rtol=1e-5, atol=1e-3
    )


def one_draw_regression(X, y):
    """A float64 model as written from NumPy/JSON data: float literals, X @ beta."""
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    pyro.sample("y", dist.Normal(X @ beta, sigma).to_event(1), obs=y)


def test_float64_model_is_discovered_and_evaluated_in_float64():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(50, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    model = PyroModel(one_draw_regression, X, y)
    assert model.dtype == torch.float64
    assert model.particle_path == "vmap"
    z = torch.randn(6, model.dim, generator=g, dtype=torch.float64, requires_grad=True)
    joint = model.log_joint(z)
    assert joint.total.dtype == torch.float64
    params, log_det = model.constrain(z)
    by_hand = (
        torch.distributions.Normal(0.0, 1.0).log_prob(params["beta"]).sum(-1)
        + torch.distributions.HalfNormal(1.0).log_prob(params["sigma"])
        + torch.distributions.Normal(params["beta"] @ X.T, params["sigma"][:, None])
        .log_prob(y)
        .sum(-1)
        + log_det
    )
    # float64 to float64 rounding: a float32 step anywhere would show at ~1e-4.
    torch.testing.assert_close(joint.total, by_hand, rtol=1e-12, atol=1e-10)
    (grad,) = torch.autograd.grad(joint.total.sum(), z)
    (expected,) = torch.autograd.grad(by_hand.sum(), z)
    assert grad.dtype == torch.float64
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)


def test_dtype_argument_and_module_conversions_follow_the_arguments():
    X = torch.randn(20, 3)
    y = torch.randn(20)
    model = PyroModel(one_draw_regression, X, y, dtype=torch.float64)
    assert model.dtype == torch.float64 and model.model_args[0].dtype == torch.float64
    assert model.log_joint(torch.zeros(2, model.dim, dtype=torch.float64)).total.dtype == (
        torch.float64
    )

    # Nested containers: the dtype comes from the tensors inside a dict argument.
    def from_dict(data):
        one_draw_regression(data["X"], data["y"])

    nested = PyroModel(from_dict, {"X": X.double(), "y": y.double()})
    assert nested.dtype == torch.float64
    # .float() / .double() convert the kept arguments with the model.
    nested.float()
    assert nested.dtype == torch.float32 and nested.model_args[0]["X"].dtype == torch.float32
    assert nested.log_joint(torch.zeros(2, nested.dim)).total.dtype == torch.float32
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        PyroModel(one_draw_regression, X, y, dtype=torch.int64)


def test_float64_model_fits_in_float64():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 2, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([0.5, -0.5], dtype=torch.float64) + 0.3 * torch.randn(
        40, generator=g, dtype=torch.float64
    )
    model = PyroModel(one_draw_regression, X, y)
    family = FullRankGaussian(model.dim).to(torch.float64)
    torch.manual_seed(0)
    before, before_se = estimate_elbo(model, family, 2000)
    result = st.fit(model, family, ELBO(num_particles=4), steps=200, seed=0)
    assert result.skipped_steps == 0
    assert family.loc.dtype == torch.float64
    draws = result.sample(50)
    assert draws["beta"].dtype == torch.float64 and draws["beta"].shape == (50, 2)
    after, after_se = result.elbo(2000)
    # From N(0, 0.1^2 I) the ELBO must rise by far more than its Monte Carlo error.
    assert after > before + 10 * math.hypot(before_se, after_se), (before, after)


def mixed_priors(y):
    mu = pyro.sample("mu", dist.Normal(3.0, 0.01))
    flat = pyro.sample("flat", dist.ImproperUniform(constraints.positive, (), (2,)))
    pyro.sample("y", dist.Normal(mu + flat.sum(-1), 1.0), obs=y)


def test_init_loc_fn_gives_the_initial_point_and_falls_back_on_improper_sites():
    y = torch.tensor(0.5)
    assert PyroModel(mixed_priors, y).initial_point() is None
    assert PyroModel(mixed_priors, y, init_loc_fn=init_to_feasible).initial_point() is None
    # init_to_median samples the prior: the improper site falls back to T(0) = 1, z = 0.
    median = PyroModel(mixed_priors, y, init_loc_fn=init_to_median).initial_point()
    assert median.shape == (3,)
    assert abs(float(median[0]) - 3.0) < 0.05  # 15 draws of N(3, 0.01): median within 5 sd
    torch.testing.assert_close(median[1:], torch.zeros(2))
    values = {"mu": torch.tensor(2.5), "flat": torch.tensor([0.5, 4.0])}
    point = PyroModel(mixed_priors, y, init_loc_fn=init_to_value(values=values)).initial_point()
    expected = torch.cat(
        [values["mu"].reshape(1), biject_to(constraints.positive).inv(values["flat"])]
    )
    torch.testing.assert_close(point, expected)
    # A value outside the support is named.
    bad = init_to_value(values={"flat": torch.tensor([-1.0, 1.0])})
    with pytest.raises(PyroModelError, match=r"site\(s\) \['flat'\].*outside the support"):
        PyroModel(mixed_priors, y, init_loc_fn=bad)
    wrong = init_to_value(values={"flat": torch.ones(3)})
    with pytest.raises(PyroModelError, match="'flat' a value of shape \\(3,\\)"):
        PyroModel(mixed_priors, y, init_loc_fn=wrong)


def test_a_model_making_float64_tensors_itself_gets_a_dtype_hint():
    design = torch.ones(3, 2, dtype=torch.float64)  # e.g. torch.from_numpy inside the model

    def closure(y):
        beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("y", dist.Normal(design @ beta, 1.0).to_event(1), obs=y)

    with pytest.raises(PyroModelError, match="ran in torch.float32.*pass dtype="):
        PyroModel(closure, torch.zeros(3))
    model = PyroModel(closure, torch.zeros(3), dtype=torch.float64)
    assert model.log_joint(torch.zeros(1, 2, dtype=torch.float64)).total.dtype == torch.float64


def test_a_data_plate_with_subsample_size_is_rejected_with_the_fix():
    def subsampled(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    y = torch.randn(100)
    with pytest.raises(PyroModelError, match="subsample_size=10.*full size and no subsample_size"):
        PyroModel(subsampled, y, data_plate="data")
    # Without data_plate Pyro subsamples the plate itself, as before, and the bridge says
    # that full-data passes are then estimates.
    with pytest.warns(UserWarning, match="subsamples 10 of 100 by itself.*data_plate='data'"):
        assert PyroModel(subsampled, y).num_data == 0
