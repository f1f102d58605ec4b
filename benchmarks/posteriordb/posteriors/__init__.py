"""The suite's posteriors: every module in this package defines ``POSTERIOR``.

Modules are found by name, so adding a posterior is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..spec import Posterior

__all__ = ["load_posteriors"]


def load_posteriors(names: list[str] | None = None) -> dict[str, Posterior]:
    """Every posterior of the suite by posteriordb name (or those in ``names``, in order)."""
    found: dict[str, Posterior] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        posterior = getattr(module, "POSTERIOR", None)
        if isinstance(posterior, Posterior):
            found[posterior.name] = posterior
    if names is None:
        return found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"unknown posterior(s) {unknown}; the suite has {sorted(found)}")
    return {n: found[n] for n in names}
