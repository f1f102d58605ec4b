"""Bayesian models: named constrained parameters, a log prior and a minibatch likelihood."""

from .base import ConjugateModel, LogJoint, Model, ParamSpec
from .conjugate import BayesianLinearRegression, NormalMean
from .glm import BayesianLogisticRegression
from .hierarchical import EightSchools
from .synthetic import correlated_features, logistic_data, normal_mean_data, regression_data
from .targets import CorrelatedGaussianTarget, DensityTarget, GaussianMixtureTarget

__all__ = [
    "Model",
    "ConjugateModel",
    "ParamSpec",
    "LogJoint",
    "NormalMean",
    "BayesianLinearRegression",
    "BayesianLogisticRegression",
    "EightSchools",
    "normal_mean_data",
    "regression_data",
    "logistic_data",
    "correlated_features",
    "DensityTarget",
    "GaussianMixtureTarget",
    "CorrelatedGaussianTarget",
]
