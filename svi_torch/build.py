"""From a validated :class:`~svi_torch.config.Config` to library objects.

:func:`build_model` makes the data (a seeded generator or a file) and the model,
:func:`build_family` and :func:`build_objective` call the registered factories,
:func:`build_method` makes the method value (the same as ``resolve_method`` from Python),
and :func:`train_settings` maps the config onto :class:`~svi_torch.training.TrainConfig`.
Every failure of a constructor becomes a one-line :class:`~svi_torch.config.ConfigError`
naming the config section, so the command line can refuse a run before it starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, ConfigError, DataSection, build_method
from .families.base import VariationalFamily
from .methods.base import Method
from .models import synthetic
from .models.base import Model
from .objectives.base import Objective
from .training.state import TrainConfig

__all__ = [
    "Built",
    "build",
    "build_model",
    "build_family",
    "build_objective",
    "build_method",
    "make_data",
    "train_settings",
    "GENERATORS",
]


def _regression(data: DataSection) -> dict[str, Any]:
    X, y, _ = synthetic.regression_data(
        data.num_data, data.dim, data.correlation, data.noise_scale, data.seed, data.offset
    )
    return {"X": X, "y": y}


def _logistic(data: DataSection) -> dict[str, Any]:
    X, y, _ = synthetic.logistic_data(data.num_data, data.dim, data.correlation, data.seed)
    return {"X": X, "y": y}


def _normal_mean(data: DataSection) -> dict[str, Any]:
    x = synthetic.normal_mean_data(data.num_data, data.true_mean, data.noise_scale, data.seed)
    return {"x": x}


#: Synthetic data generators: name -> (data section -> constructor keyword arrays).
GENERATORS: dict[str, Callable[[DataSection], dict[str, Any]]] = {
    "regression": _regression,
    "logistic": _logistic,
    "normal_mean": _normal_mean,
}

#: The generator a built-in model uses when ``data.generator`` is not set.
_DEFAULT_GENERATOR = {
    "linear_regression": "regression",
    "logistic_regression": "logistic",
    "normal_mean": "normal_mean",
}


@dataclass
class Built:
    """The objects a config describes."""

    model: Model
    family: VariationalFamily
    objective: Objective | None
    method: Method


def build(config: Config) -> Built:
    """Model, family, objective and method of ``config``; :class:`ConfigError` on failure."""
    model = build_model(config)
    return Built(model, build_family(config, model), build_objective(config), build_method(config))


def make_data(config: Config) -> dict[str, Any]:
    """Keyword arrays for the model's constructor, from a generator or a file."""
    data = config.data
    if data.source == "none":
        return {}
    if data.source == "synthetic":
        name = data.generator or _DEFAULT_GENERATOR.get(config.model.name)
        if name is None:
            raise ConfigError(
                f"data.source is 'synthetic' but model {config.model.name!r} has no default "
                f"generator; set data.generator to one of {sorted(GENERATORS)}, give a "
                "data file, or use data.source: none"
            )
        if name not in GENERATORS:
            raise ConfigError(
                f"unknown data.generator {name!r}; choose one of {sorted(GENERATORS)}"
            )
        return GENERATORS[name](data)
    return _file_data(data)


def _file_data(data: DataSection) -> dict[str, Any]:
    from .data import load_data

    try:
        arrays = load_data(Path(data.source))
    except (OSError, ValueError) as err:
        raise ConfigError(f"data.source: {err}") from None
    if data.y is None:
        if data.x is not None:
            raise ConfigError("data.x needs data.y (the response column) as well")
        return arrays
    if data.y not in arrays:
        raise ConfigError(f"data.y {data.y!r} is not in {data.source}; it has {sorted(arrays)}")
    columns = data.x if data.x is not None else [c for c in arrays if c != data.y]
    missing = [c for c in columns if c not in arrays]
    if missing or not columns:
        raise ConfigError(
            f"data.x {missing or columns} not found in {data.source}; it has {sorted(arrays)}"
        )
    try:
        # 1-D columns (CSV) and 2-D arrays (NPZ) alike become columns of X.
        X = np.column_stack([np.asarray(arrays[c], dtype=float) for c in columns])
    except ValueError as err:
        raise ConfigError(f"data.x columns cannot form a matrix: {_one_line(err)}") from None
    return {"X": X, "y": np.asarray(arrays[data.y], dtype=float)}


def build_model(config: Config) -> Model:
    """The model of ``config`` with its data."""
    from .registry import MODELS

    entry = _lookup(MODELS, config.model.name, "model.name")
    arrays = make_data(config)
    try:
        model = entry.factory(**arrays, **config.model.options)
    except (TypeError, ValueError) as err:
        message = _one_line(err)
        if config.data.source not in ("synthetic", "none") and any(
            re.match(rf"{re.escape(name)}\b", message) for name in arrays
        ):
            # About an array of the file (NaN, lengths, dtype): the data are the problem.
            raise ConfigError(f"data.source {config.data.source}: {message}") from None
        raise ConfigError(f"model {config.model.name!r}: {message}") from None
    if not isinstance(model, Model):
        raise ConfigError(
            f"model.name {config.model.name!r} gave a {type(model).__name__}, not an "
            "svi_torch.models.Model"
        )
    if config.train.dtype is not None:
        # The family follows the model's dtype (see build_family and fit).
        model.to(getattr(torch, config.train.dtype))
    return model


def build_family(config: Config, model: Model) -> VariationalFamily:
    """The family of ``config`` over ``model.dim`` coordinates."""
    from .registry import FAMILIES

    entry = _lookup(FAMILIES, config.family.name, "family.name")
    try:
        family = entry.factory(model.dim, **config.family.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"family {config.family.name!r}: {_one_line(err)}") from None
    if not isinstance(family, VariationalFamily):
        raise ConfigError(
            f"family.name {config.family.name!r} gave a {type(family).__name__}, not a "
            "svi_torch.families.VariationalFamily"
        )
    # Families follow the model's data dtype (float64 data give a float64 family).
    dtype = next((b.dtype for b in model.buffers() if b.is_floating_point()), None)
    if dtype is not None:
        family.to(dtype)
    return family


def build_objective(config: Config) -> Objective | None:
    """The objective of ``config``, or None when the config leaves it unset.

    Unset (no ``objective`` section) is what ``fit(model, family)`` gets from Python: the
    method's own choice (the ELBO, maximised by natural-gradient VI where it applies).
    """
    from .registry import OBJECTIVES

    if config.objective is None:
        return None
    entry = _lookup(OBJECTIVES, config.objective.name, "objective.name")
    try:
        return entry.factory(**config.objective.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"objective {config.objective.name!r}: {_one_line(err)}") from None


def train_settings(config: Config, checkpoint_path: Path | None, resume: bool) -> TrainConfig:
    """The loop's settings; progress bar off (the CLI decides)."""
    train, log = config.train, config.logging
    return TrainConfig(
        steps=train.steps,
        epochs=train.epochs,
        batch_size=train.batch_size,
        convergence=train.convergence,
        seed=train.seed,
        device=train.device,  # a string: messages then say 'cuda', not device(type='cuda')
        progress=False,
        log_every=log.log_every,
        checkpoint_path=checkpoint_path,
        checkpoint_every=log.checkpoint_every,
        resume=resume,
        max_bad_steps=train.max_bad_steps,
    )


def _lookup(registry: Any, name: str, key: str) -> Any:
    try:
        return registry.get(name)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
