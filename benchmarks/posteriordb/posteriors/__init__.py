"""The suite's posteriors: every module in this package defines ``POSTERIOR``.

Modules are found by name, so adding a posterior is adding one file. The hierarchical set
(``benchmarks/hierarchical/posteriors``, the same :class:`Posterior` spec) is found the same
way and loaded with this package's, so the runner and the model tests take both.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..spec import Posterior

__all__ = ["load_posteriors"]


def load_posteriors(names: list[str] | None = None) -> dict[str, Posterior]:
    """Every posterior of the suite and of the hierarchical set by name (or those in ``names``,
    in order)."""
    found: dict[str, Posterior] = {}
    hierarchical = importlib.import_module("benchmarks.hierarchical.posteriors")
    for package in (__name__, hierarchical.__name__):
        path = importlib.import_module(package).__path__
        for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
            module = importlib.import_module(f"{package}.{info.name}")
            posterior = getattr(module, "POSTERIOR", None)
            if isinstance(posterior, Posterior):
                found[posterior.name] = posterior
    if names is None:
        return found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"unknown posterior(s) {unknown}; the suite has {sorted(found)}")
    return {n: found[n] for n in names}
