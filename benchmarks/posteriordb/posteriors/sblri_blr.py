"""sblri-blr: the ``blr`` program of ``sblrc-blr`` on other simulated data (N = 100, D = 5).

The Stan program, and so the Pyro model, the NumPy density, the quantities and the native
model, are those of :mod:`.sblrc_blr`; only the data differ.
"""

from __future__ import annotations

from ..spec import Posterior
from .sblrc_blr import BLR

__all__ = ["POSTERIOR"]

POSTERIOR = Posterior(
    name="sblri-blr",
    notes="posterior sds near 1e-3 against prior sds of 10, nearly uncorrelated (|corr| up to 0.21)",
    **BLR,
)
