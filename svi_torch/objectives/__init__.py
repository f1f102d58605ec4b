"""Variational objectives: small frozen values called as ``objective(family, model, batch)``."""

from .base import Objective, ObjectiveOutput
from .elbo import ELBO

__all__ = ["Objective", "ObjectiveOutput", "ELBO"]
