"""Variational objectives: small frozen values called as ``objective(family, model, batch)``."""

from .base import Objective, ObjectiveOutput
from .elbo import ELBO
from .forward_kl import ForwardKL
from .iwae import IWAE
from .renyi import RenyiELBO

__all__ = ["Objective", "ObjectiveOutput", "ELBO", "IWAE", "RenyiELBO", "ForwardKL"]
