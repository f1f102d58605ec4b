"""Small helpers shared by the KL/estimator studies: settings, csv, TensorBoard, figures."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..training.logging import TensorBoardLogger

__all__ = ["settings", "write_csv", "tensorboard", "new_figure", "save_figure"]


def settings(
    defaults: Mapping[str, Any],
    quick: Mapping[str, Any],
    is_quick: bool,
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Defaults, then the quick-mode values, then the user's overrides (unknown keys raise)."""
    merged = dict(defaults)
    if is_quick:
        merged.update(quick)
    if overrides:
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ValueError(
                f"unknown study setting(s) {sorted(unknown)}; valid: {sorted(defaults)}"
            )
        merged.update(overrides)
    return merged


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys) as a csv with a header; floats to 6 digits."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def tensorboard(outdir: Path, name: str, enabled: bool) -> list[TensorBoardLogger]:
    """One TensorBoard run per grid point under ``outdir/runs/name`` (or none)."""
    return [TensorBoardLogger(outdir / "runs" / name)] if enabled else []


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
