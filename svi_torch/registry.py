"""Named building blocks for configs and the command line.

Each registry maps a short name to a factory and a one-line description, so that
``svi-torch list`` can print them and a config can say ``family: fullrank``. A config may
also name a user's class directly as ``"package.module:ClassName"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Entry", "Registry", "FAMILIES", "MODELS", "OBJECTIVES", "STUDIES", "import_object"]


@dataclass(frozen=True)
class Entry:
    """A registered factory with its one-line description."""

    name: str
    factory: Callable[..., Any]
    description: str


class Registry:
    """A named collection of factories of one kind (families, models, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, description: str
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@FAMILIES.register("fullrank", "full-covariance Gaussian")``."""

        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, factory, description)
            return factory

        return add

    def add(self, name: str, factory: Callable[..., Any], description: str) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, factory, description)

    def get(self, name: str) -> Entry:
        """The entry ``name``, or a ``module:Class`` import; unknown names list the choices."""
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            obj = import_object(name)
            return Entry(
                name, obj, (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
            )
        raise ValueError(
            f"unknown {self.kind} {name!r}; choose one of {sorted(self._entries)} "
            "or give 'package.module:ClassName'"
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def import_object(path: str) -> Any:
    """Import ``"package.module:Name"``; errors say what is missing."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not of the form 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} for {path!r}: {err}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None


FAMILIES = Registry("family")
MODELS = Registry("model")
OBJECTIVES = Registry("objective")
STUDIES = Registry("study")


def _register_builtins() -> None:
    from . import families, models, objectives

    FAMILIES.add(
        "meanfield", families.MeanFieldGaussian, "fully factorised Gaussian, diag(sigma^2)"
    )
    FAMILIES.add("fullrank", families.FullRankGaussian, "full-covariance Gaussian, Cholesky factor")
    FAMILIES.add("lowrank", families.LowRankGaussian, "low-rank plus diagonal Gaussian")
    FAMILIES.add(
        "mixture", families.GaussianMixture, "mixture of Gaussians (stratified ELBO), components=C"
    )
    FAMILIES.add(
        "flow", families.NormalizingFlow, "normalizing flow (Pyro transforms), transform, layers"
    )
    FAMILIES.add("delta", families.Delta, "point mass: MAP in the unconstrained space")
    FAMILIES.add(
        "amortized",
        families.AmortizedGaussian,
        "encoder x_i -> q(z_i | x_i) for local latents, context_dim",
    )
    MODELS.add("funnel", models.Funnel, "Neal's funnel, density only (log Z = 0)")
    MODELS.add("banana", models.Banana, "banana-shaped density, density only (log Z = 0)")
    MODELS.add(
        "normal_mean", models.NormalMean, "conjugate Normal mean, known noise (exact posterior)"
    )
    MODELS.add(
        "linear_regression",
        models.BayesianLinearRegression,
        "Bayesian linear regression, conjugate with known noise (exact posterior)",
    )
    MODELS.add(
        "logistic_regression", models.BayesianLogisticRegression, "Bayesian logistic regression"
    )
    MODELS.add("eight_schools", models.EightSchools, "eight schools, non-centered hierarchical")
    MODELS.add("autoregressive", models.AutoRegressive, "AR(K) time series (posteriordb arK)")
    MODELS.add("bnn", models.BayesianNeuralNetwork, "one-hidden-layer Bayesian neural network")
    OBJECTIVES.add(
        "elbo", objectives.ELBO, "reparameterized ELBO (reparam or sticking-the-landing)"
    )
    _register_bounds_targets_studies()


def _register_bounds_targets_studies() -> None:
    """Objectives beyond the ELBO, density-only targets and the KL/estimator studies."""
    from . import models, objectives
    from .studies import estimators, kl_asymmetry, meanfield, scalability

    OBJECTIVES.add("iwae", objectives.IWAE, "importance-weighted bound (reparam or DReG gradient)")
    OBJECTIVES.add("renyi", objectives.RenyiELBO, "variational Renyi bound of order alpha")
    OBJECTIVES.add(
        "forward_kl", objectives.ForwardKL, "forward KL(p||q) fit for targets that can be sampled"
    )
    MODELS.add("mixture_target", models.GaussianMixtureTarget, "Gaussian mixture density (no data)")
    MODELS.add(
        "correlated_gaussian",
        models.CorrelatedGaussianTarget,
        "2-D Gaussian density with correlation rho (no data)",
    )
    STUDIES.add("kl-asymmetry", kl_asymmetry.run, "reverse vs forward KL fit to a bimodal target")
    STUDIES.add("meanfield", meanfield.run, "mean-field variance (1 - rho^2) sigma^2 against rho")
    STUDIES.add("estimators", estimators.run, "gradient variance and KL at equal wall time")
    STUDIES.add(
        "scalability",
        scalability.run,
        "SVI as N, batch size, D and particles grow (variance, KL, time per step)",
    )


_register_builtins()
