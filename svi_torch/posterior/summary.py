"""The posterior summary table: mean, sd, quantiles and Monte Carlo error of every scalar.

For each constrained scalar :math:`\\theta_j` (parameters and derived quantities) and
:math:`S` i.i.d. draws from :math:`q`, the table gives the mean, the standard deviation,
the 5/50/95% quantiles and the Monte Carlo standard error of the mean,
:math:`\\mathrm{mcse} = \\hat\\sigma_j / \\sqrt S` (the draws are independent, so no
autocorrelation correction is needed, unlike MCMC). Beside the rows it carries the fit's
PSIS :math:`\\hat k` (:func:`svi_torch.diagnostics.psis_khat`): the table describes
:math:`q`, and :math:`\\hat k` says how far :math:`q` can be trusted as the posterior
(below 0.5 good, up to 0.7 usable, above bad).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .draws import flat_draws

__all__ = ["SummaryTable", "COLUMNS", "summary_table"]

#: The table's columns, in order.
COLUMNS = ("mean", "sd", "q05", "q50", "q95", "mcse_mean")


@dataclass(frozen=True)
class SummaryTable:
    """Rows of :data:`COLUMNS` per constrained scalar, with the fit's :math:`\\hat k`.

    Prints as an aligned text table; ``to_pandas()`` gives a ``pandas.DataFrame`` (pandas
    is optional); ``table["tau"]`` is one row as a dict; ``as_dict()`` is the nested dict
    of ``FitResult.posterior_summary()``.

    Attributes:
        names: row names, e.g. ``["mu", "tau", "theta[0]", ...]``.
        values: float64 tensor ``(rows, len(COLUMNS))``.
        num_samples: draws :math:`S` behind the figures.
        khat: PSIS :math:`\\hat k` of the fit (``None`` when it could not be computed).
        khat_reading: ``"good"``, ``"ok"``, ``"bad"`` or why there is no :math:`\\hat k`.
        seed: seed of the draws (``None``: the global RNG).
        note: more to say in the footer (the k-hat's error, doubtful quantities, how
            fixed draws were made), ``""`` for nothing.
    """

    names: list[str]
    values: Tensor
    num_samples: int
    khat: float | None = None
    khat_reading: str = ""
    seed: int | None = None
    columns: tuple[str, ...] = field(default=COLUMNS)
    note: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __getitem__(self, name: str) -> dict[str, float]:
        try:
            row = self.names.index(name)
        except ValueError:
            raise KeyError(f"no row {name!r}; rows are {self.names[:8]}...") from None
        return dict(zip(self.columns, self.values[row].tolist(), strict=True))

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{name: {column: value}}``; ``mcse_mean`` left out (the older nested format)."""
        keep = [c for c in self.columns if c != "mcse_mean"]
        return {name: {c: self[name][c] for c in keep} for name in self.names}

    def to_pandas(self) -> Any:
        """The table as a ``pandas.DataFrame`` indexed by name; ``khat`` in ``.attrs``."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "SummaryTable.to_pandas needs pandas: pip install pandas "
                "(or pip install svi_torch[arviz])"
            ) from None
        frame = pd.DataFrame(self.values.numpy(), index=self.names, columns=list(self.columns))
        frame.attrs.update(
            khat=self.khat, khat_reading=self.khat_reading, num_samples=self.num_samples
        )
        return frame

    def __str__(self) -> str:
        return format_table(self.names, self.values, self.columns, self._footer())

    def __repr__(self) -> str:
        return str(self)

    def _footer(self) -> str:
        khat = "n/a" if self.khat is None else f"{self.khat:.3f}"
        reading = f" ({self.khat_reading})" if self.khat_reading else ""
        seed = "global RNG" if self.seed is None else f"seed {self.seed}"
        footer = f"{self.num_samples} draws from q ({seed}); PSIS k-hat = {khat}{reading}"
        return f"{footer}; {self.note}" if self.note else footer


def format_table(
    names: Sequence[str], values: Tensor, columns: Sequence[str], footer: str = ""
) -> str:
    """An aligned text table: 4 significant digits, names left-aligned."""
    cells = [[_number(v) for v in row] for row in values.tolist()]
    name_width = max([len(n) for n in names] + [4])
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(columns)]
    lines = [
        " " * name_width
        + "  "
        + "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))
    ]
    for name, row in zip(names, cells, strict=True):
        lines.append(
            name.ljust(name_width)
            + "  "
            + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True))
        )
    if footer:
        lines.append(footer)
    return "\n".join(lines)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def summary_table(
    draws: Mapping[str, Tensor],
    num_samples: int,
    khat: float | None = None,
    khat_reading: str = "",
    seed: int | None = None,
    note: str = "",
) -> SummaryTable:
    """The :class:`SummaryTable` of named draws, each of shape ``(S, *shape)``."""
    names, flat = flat_draws(draws, num_samples)
    flat = flat.cpu()  # a small table: printed, compared and converted on the CPU
    probs = torch.tensor([0.05, 0.5, 0.95], dtype=flat.dtype)
    # torch.quantile refuses inputs beyond 2^24 elements: go column block by block.
    step = max(1, (1 << 24) // max(num_samples, 1))
    quantiles = torch.cat(
        [
            torch.quantile(flat[:, j : j + step], probs, dim=0)
            for j in range(0, flat.shape[1], step)
        ],
        -1,
    )
    mean = flat.mean(0)
    sd = flat.std(0) if num_samples > 1 else torch.full_like(mean, math.nan)
    values = torch.stack(
        [mean, sd, quantiles[0], quantiles[1], quantiles[2], sd / math.sqrt(num_samples)], -1
    )
    return SummaryTable(names, values, num_samples, khat, khat_reading, seed, note=note)
