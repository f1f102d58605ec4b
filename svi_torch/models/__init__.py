"""Bayesian models: named constrained parameters, a log prior and a minibatch likelihood."""

from .base import ConjugateModel, LogJoint, Model, ParamSpec
from .bnn import BayesianNeuralNetwork, bnn_data
from .conjugate import BayesianLinearRegression, NormalMean
from .geometry import Banana, BimodalTarget, Funnel
from .glm import BayesianLogisticRegression
from .hierarchical import EightSchools
from .latent import LocalLatentModel, estimate_local_elbo
from .ppca import ProbabilisticPCA, ppca_data, ppca_maximum_likelihood
from .synthetic import correlated_features, logistic_data, normal_mean_data, regression_data
from .timeseries import AutoRegressive

__all__ = [
    "Model",
    "ConjugateModel",
    "ParamSpec",
    "LogJoint",
    "NormalMean",
    "BayesianLinearRegression",
    "BayesianLogisticRegression",
    "EightSchools",
    "AutoRegressive",
    "LocalLatentModel",
    "estimate_local_elbo",
    "ProbabilisticPCA",
    "ppca_data",
    "ppca_maximum_likelihood",
    "Funnel",
    "Banana",
    "BimodalTarget",
    "BayesianNeuralNetwork",
    "bnn_data",
    "normal_mean_data",
    "regression_data",
    "logistic_data",
    "correlated_features",
    "PyroModel",
]


def __getattr__(name: str) -> object:
    # The Pyro bridge imports pyro (about a second); load it on first use only.
    if name == "PyroModel":
        from .pyro import PyroModel

        return PyroModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
