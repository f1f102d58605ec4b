"""Inference methods as values: the :class:`Method` protocol, loop methods and the registry.

A method is a small frozen value — ``SGD(optimizer="adam", lr=1e-2)``, ``NGVI()``,
``Auto()`` — built the same way from Python and from a config's ``method:`` section
(``{name: sgd, options: {lr: 0.01}}``). :func:`resolve_method` turns either form into a
value; every name in ``svi-torch list`` is registered here by the class's own
:func:`register_method` decorator.

Most methods are *loop methods* (:class:`LoopMethod`): an initialisation (the family as
built, the MAP, the Laplace approximation: a step before the loop) and an
:class:`~svi_torch.training.state.UpdateRule` run by the one
:class:`~svi_torch.training.loop.TrainingLoop`. The automatic method
(:class:`~svi_torch.methods.auto.Auto`) chains loop methods with fallbacks.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..families.base import VariationalFamily
from ..models.base import Model
from ..objectives.base import Objective
from ..training.divergence import DivergenceCheck
from ..training.logging import Logger
from ..training.loop import TrainingLoop, prepare_state
from ..training.result import FitResult
from ..training.state import TrainConfig, TrainState, UpdateRule
from .starts import INITS, Initialization

__all__ = [
    "Method",
    "LoopMethod",
    "METHODS",
    "register_method",
    "resolve_method",
    "method_from_config",
]

#: Registered methods: name -> class (``svi-torch list`` prints them).
METHODS: dict[str, type[Method]] = {}

M = TypeVar("M", bound="type[Method]")


def register_method(cls: M) -> M:
    """Class decorator: register a method under its ``name`` class attribute."""
    name = cls.name
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = cls
    return cls


class Method(ABC):
    """An inference method: how ``fit`` moves a family to the posterior.

    Subclasses are frozen dataclasses with a ``name`` class attribute and implement
    :meth:`fit`.
    """

    name: ClassVar[str]

    @abstractmethod
    def fit(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
    ) -> FitResult:
        """Fit ``family`` to ``model``'s posterior; ``settings`` are the loop's."""

    def validate(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
    ) -> None:
        """Refuse, in one line, what :meth:`fit` would refuse — before any work is done.

        The command line calls this before it creates a run directory.
        """
        prepare_state(model, family, objective, settings)

    def describe(self) -> dict[str, Any]:
        """Name and settings as plain values (stored in checkpoints and run configs)."""
        fields = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {"name": self.name, **{k: _plain(v) for k, v in fields.items()}}

    @property
    def summary(self) -> str:
        """``name(setting=value, ...)`` with the settings that differ from the defaults."""
        if not dataclasses.is_dataclass(self):
            return self.name
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.init and getattr(self, f.name) != _default(f)
        ]
        return f"{self.name}({', '.join(changed)})"


class LoopMethod(Method):
    """A method that is an initialisation followed by an update rule in the training loop.

    Subclasses implement :meth:`check` (refuse what they cannot fit, in one line),
    :meth:`initialize` and :meth:`make_rule`.
    """

    init: str = "prior"

    def check(self, model: Model, family: VariationalFamily, objective: Objective | None) -> None:
        """Raise a one-line ``TypeError``/``ValueError`` for inputs this method cannot fit."""

    def initialize(self, state: TrainState, start: Initialization | None = None) -> Initialization:
        """The step before the loop: place the family (see :mod:`svi_torch.methods.starts`).

        ``start`` is a ready-made initialisation (the automatic method's shared MAP search).
        """
        from .starts import initialize

        if start is not None:
            return start
        return initialize(state.model, state.family, self.init, seed=state.settings.seed)

    @abstractmethod
    def make_rule(self, state: TrainState, start: Initialization | None) -> UpdateRule:
        """The update rule for ``state``; ``start`` is None when resuming."""

    def prepare(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
        *,
        divergence: DivergenceCheck | None = None,
        start: Initialization | None = None,
        method: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> TrainingLoop:
        """Check, initialise (unless resuming) and build the loop, ready to ``run``."""
        self.check(model, family, objective)
        state = prepare_state(model, family, objective, settings)
        resuming = bool(
            settings.resume and settings.checkpoint_path and Path(settings.checkpoint_path).exists()
        )
        begun = None if resuming else self.initialize(state, start)
        rule = self.make_rule(state, begun)
        loop = TrainingLoop(
            state,
            rule,
            loggers,
            callbacks,
            divergence,
            method=method or self.describe(),
            extra_state=extra_state,
        )
        loop.start = begun  # type: ignore[attr-defined]
        if begun is not None:
            state.grad_evals += begun.evaluations
        return loop

    def fit(
        self,
        model: Model,
        family: VariationalFamily,
        objective: Objective | None,
        settings: TrainConfig,
        loggers: Sequence[Logger] = (),
        callbacks: Sequence[Any] = (),
    ) -> FitResult:
        loop = self.prepare(model, family, objective, settings, loggers, callbacks)
        result = loop.run()
        result.method = self.summary
        return result


def resolve_method(method: str | Method | Mapping[str, Any]) -> Method:
    """A method value from a value, a registered name, or a config-style mapping.

    ``"ngvi"`` gives ``NGVI()``; ``{"name": "sgd", "options": {"lr": 0.03}}`` gives
    ``SGD(lr=0.03)``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones).
        TypeError: anything else, or options the method does not take.
    """
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        return method_from_config(method, {})
    if isinstance(method, Mapping):
        unknown = set(method) - {"name", "options"}
        if unknown or "name" not in method:
            raise TypeError(
                f"a method mapping has the keys 'name' and 'options', got {sorted(method)}"
            )
        return method_from_config(method["name"], dict(method.get("options") or {}))
    raise TypeError(
        f"method must be a method value (e.g. st.methods.SGD(lr=0.01)), a name "
        f"({', '.join(sorted(METHODS))}) or a mapping, got {type(method).__name__}"
    )


def method_from_config(name: str, options: dict[str, Any]) -> Method:
    """``METHODS[name](**options)`` with one-line errors naming the key and the choices."""
    _load_builtins()
    key = name.lower() if isinstance(name, str) else name
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[key]
    valid = (
        [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else []
    )
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"method {key!r} has no option(s) {unknown}; its options are {valid or 'none'}"
        )
    return cls(**options)


def _load_builtins() -> None:
    from . import auto, bam_method, ngvi, pathfinder_method, sgd  # noqa: F401 (registration)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    """Settings as values ``torch.load(weights_only=True)`` and YAML can hold."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Callable):  # type: ignore[arg-type]
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def check_choice(value: Any, choices: Sequence[str], where: str) -> None:
    """One-line error unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{where} must be one of {list(choices)}, got {value!r}")


def check_positive_number(value: Any, where: str, allow_none: bool = False) -> None:
    """One-line error unless ``value`` is a finite number > 0 (bools refused)."""
    if allow_none and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{where} must be a positive number, got {value!r}")


def check_positive_int(value: Any, where: str) -> None:
    """One-line error unless ``value`` is an int >= 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive int, got {value!r}")


def check_init(value: Any, where: str) -> None:
    """One-line error unless ``value`` is an initialisation (:data:`~.starts.INITS`)."""
    if value not in INITS:
        raise ValueError(f"unknown init {value!r} for {where}; choose one of {list(INITS)}")


def refuse_objective(objective: Objective | None, method: str, why: str) -> None:
    """One-line error unless ``objective`` is unset or the plain ELBO.

    ``why`` completes "method='<method>' ...", e.g. "maximises the ELBO itself".
    """
    from ..objectives.elbo import ELBO

    if objective is not None and type(objective) is not ELBO:
        raise ValueError(
            f"method={method!r} {why} and cannot use the objective {type(objective).__name__}; "
            "leave objective unset or use method='sgd'"
        )


def refuse_trainable(model: Model, method: str, fits: str) -> None:
    """One-line error when ``model`` has trainable parameters of its own (``fits``: what the
    method fits instead, e.g. "only the variational Gaussian")."""
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"method={method!r} updates {fits}, but the model has trainable parameters "
            f"{trainable}; use method='sgd' to fit them jointly"
        )
