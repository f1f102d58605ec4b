"""The after-fit commands of ``svi-torch``: ``predict`` and ``summary``.

::

    svi-torch summary RUN [--num-samples N] [--seed S]
    svi-torch predict RUN [--data FILE] [--num-samples N] [--seed S] [--out FILE]

``RUN`` is a run directory of ``svi-torch train`` (or a file written by
``FitResult.save`` from such a run). ``summary`` prints the posterior table.
``predict`` writes posterior predictive draws: at the fitted inputs, or at the new inputs
of ``--data`` (a ``.csv`` or ``.npz``; for a regression the design-matrix columns, chosen
as the run's ``data.x`` says, else every column but the run's ``data.y``). ``--out``
ending in ``.csv`` writes one row per draw and one column per simulated value
(``y[0]``, ``y[1]``, ...); ``.nc`` writes a NetCDF file (ArviZ's ``posterior_predictive``
group; needs ``svi_torch[arviz]``). The default is ``RUN/posterior_predictive.csv``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

__all__ = ["add_commands", "COMMANDS", "load_fit"]


def add_commands(sub: Any) -> None:
    """Add ``summary`` and ``predict`` to the ``svi-torch`` subparsers ``sub``."""
    summary = sub.add_parser("summary", help="print the posterior table of a finished run")
    _add_run_options(summary, default_samples=4000)

    predict = sub.add_parser("predict", help="write posterior predictive draws of a run")
    _add_run_options(predict, default_samples=1000)
    predict.add_argument(
        "--data", metavar="FILE", help="new inputs (.csv or .npz); default: the fitted inputs"
    )
    predict.add_argument(
        "--out",
        metavar="FILE",
        help="output .csv or .nc (default: RUN/posterior_predictive.csv)",
    )


def _add_run_options(parser: argparse.ArgumentParser, default_samples: int) -> None:
    parser.add_argument("run", help="run directory of `svi-torch train` (or a saved result file)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=default_samples,
        metavar="N",
        help=f"posterior draws (default {default_samples})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")


def load_fit(run: str | Path) -> Any:
    """The ``FitResult`` of a run directory or saved result file; ``ConfigError`` if neither."""
    from .posterior.persistence import ResultFileError, load_result, load_run
    from .training.checkpoint import CheckpointError

    path = Path(run)
    try:
        if path.is_dir():
            return load_run(path)
        if path.is_file():
            return load_result(path)
    except (ResultFileError, CheckpointError) as err:
        raise ConfigError(str(err)) from None
    raise ConfigError(f"{path} is neither a run directory nor a saved result file")


def _check_samples(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be a positive number, got {args.num_samples}")


def _summary(args: argparse.Namespace) -> int:
    _check_samples(args)
    result = load_fit(args.run)
    print(result.summary(args.num_samples, seed=args.seed))
    return 0


def _new_inputs(result: Any, path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` as the model's inputs (see the module docstring)."""
    import numpy as np

    from .data import load_data

    try:
        arrays = load_data(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--data: {err}") from None
    fitted = result.model.data
    if "X" in fitted and "X" not in arrays:
        data = (result.config or {}).get("data", {})
        columns = data.get("x") or [c for c in arrays if c != data.get("y")]
        missing = [c for c in columns if c not in arrays]
        if missing:
            raise ConfigError(f"--data {path} has no column(s) {missing}; it has {sorted(arrays)}")
        width = fitted["X"].shape[1]
        if len(columns) != width:
            raise ConfigError(
                f"--data {path} gives {len(columns)} input columns {columns}, but the model "
                f"was fitted with {width}"
            )
        return {"X": np.column_stack([np.asarray(arrays[c], dtype=float) for c in columns])}
    return arrays


def _write_csv(draws: dict[str, Tensor], out: Path) -> None:
    import numpy as np

    from .posterior.draws import element_names

    names, columns = [], []
    for name, value in draws.items():
        names += element_names(name, tuple(value.shape[1:]))
        columns.append(value.reshape(value.shape[0], -1).double().cpu().numpy())
    matrix = np.concatenate(columns, axis=1)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["draw", *names])
        for s, row in enumerate(matrix):
            writer.writerow([s, *(repr(float(v)) for v in row)])


def _write_netcdf(draws: dict[str, Tensor], out: Path) -> None:
    from .posterior.arviz import import_arviz_base

    try:
        arviz_base = import_arviz_base()
    except ImportError as err:
        raise ConfigError(f"--out {out}: {err}") from None
    group = {k: v.detach().cpu().numpy()[None] for k, v in draws.items()}
    arviz_base.from_dict({"posterior_predictive": group}).to_netcdf(out)


def _predict(args: argparse.Namespace) -> int:
    _check_samples(args)
    result = load_fit(args.run)
    run = Path(args.run)
    out = (
        Path(args.out)
        if args.out
        else (run if run.is_dir() else run.parent) / ("posterior_predictive.csv")
    )
    if out.suffix not in (".csv", ".nc"):
        raise ConfigError(f"--out {out}: give a .csv or .nc file")
    data = None if args.data is None else _new_inputs(result, Path(args.data))
    try:
        draws = result.predictive(args.num_samples, data=data, seed=args.seed)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ConfigError(" ".join(str(err).split())) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    (_write_csv if out.suffix == ".csv" else _write_netcdf)(draws, out)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in draws.items())
    print(f"posterior predictive draws ({shapes}): {out}")
    return 0


#: Command name -> handler, merged into the ``svi-torch`` dispatch table.
COMMANDS = {"summary": _summary, "predict": _predict}
