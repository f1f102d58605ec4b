"""Named building blocks for configs and the command line.

Each registry maps a short name to a factory and a one-line description, so that
``svi-torch list`` can print them and a config can say ``family: fullrank``. A config may
also name a user's class directly as ``"package.module:ClassName"``.

Registration lives next to what it registers: a class is registered by a decorator where
it is defined,

    @FAMILIES.register("fullrank", "full-covariance Gaussian, Cholesky factor")
    class FullRankGaussian(GaussianFamily): ...

and this module imports nothing from ``svi_torch``, so it sits at the bottom of the layers
(``docs/architecture.md``) and any module may import it without a cycle. The built-ins are
therefore only registered once their modules are imported. Each registry is given the
modules that hold its built-ins (``Registry("family", modules=("svi_torch.families",))``)
and imports them, by name and once, the first time it is read (``get``, ``names``,
``entries``, ``in``): a lookup sees every built-in however little of the package the caller
imported, and importing the registry stays free. Registering never loads, so a decorator
running while those modules are imported cannot recurse.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Entry",
    "Registry",
    "FAMILIES",
    "MODELS",
    "OBJECTIVES",
    "STUDIES",
    "class_path",
    "import_object",
]


@dataclass(frozen=True)
class Entry:
    """A registered factory with its one-line description."""

    name: str
    factory: Callable[..., Any]
    description: str


class Registry:
    """A named collection of factories of one kind (families, models, ...)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.modules = modules
        self._entries: dict[str, Entry] = {}
        self._loaded = not modules

    def _load(self) -> None:
        """Import the modules that register the built-ins, once (see the module docstring)."""
        if self._loaded:
            return
        # Set first: a module that reads this registry while it is being imported must not
        # start the imports again; reset on failure so that the error is raised again.
        self._loaded = True
        try:
            for module in self.modules:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise

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
        self._load()
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
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries


def class_path(obj: object) -> str:
    """``"package.module:QualName"`` of ``obj``'s class (what :func:`import_object` reads)."""
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


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


FAMILIES = Registry("family", modules=("svi_torch.families",))
MODELS = Registry("model", modules=("svi_torch.models",))
OBJECTIVES = Registry("objective", modules=("svi_torch.objectives",))
STUDIES = Registry(
    "study",
    modules=(
        "svi_torch.studies.kl_asymmetry",
        "svi_torch.studies.meanfield",
        "svi_torch.studies.estimators",
        "svi_torch.studies.scalability",
    ),
)
