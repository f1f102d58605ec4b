"""The ``svi-torch`` command line: builds objects from settings and calls the library.

Commands::

    svi-torch train [CONFIG.yaml | RUN_DIR --resume] [--set key=value ...] [--logdir DIR] [--quiet]
    svi-torch summary RUN [--num-samples N] [--seed S]
    svi-torch predict RUN [--data FILE] [--num-samples N] [--seed S] [--out FILE]
    svi-torch list
    svi-torch study NAME [--set key=value ...] [--logdir DIR] [--quick]
    svi-torch --version

Without a config, ``train`` runs the built-in quickstart (``svi_torch/configs/quickstart.yaml``).
Invalid configs and overrides print one line on stderr naming the config key and exit
with status 2 before any run directory is created (or, with ``--resume``, touched); the
``run directory:`` line comes only once the run starts.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from .cli_after_fit import COMMANDS as AFTER_FIT_COMMANDS
from .cli_after_fit import add_commands as add_after_fit_commands
from .config import ConfigError

__all__ = ["main", "EXIT_CONFIG_ERROR"]

EXIT_CONFIG_ERROR = 2
DEFAULT_LOGDIR = "runs"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svi-torch", description="Stochastic variational inference in PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train from a YAML config (none: the built-in quickstart)")
    train.add_argument(
        "config",
        nargs="?",
        help="YAML config file; with --resume, a run directory (default: the quickstart)",
    )
    _add_common(train)
    train.add_argument(
        "--resume", action="store_true", help="continue the run in CONFIG (a run directory)"
    )
    train.add_argument(
        "--quiet", action="store_true", help="print only the run directory, no progress bar"
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine, launched through torchrun (default 1)",
    )

    add_after_fit_commands(sub)  # summary, predict: svi_torch/cli_after_fit.py
    sub.add_parser("list", help="list registered families, models, objectives, methods and studies")

    study = sub.add_parser("study", help="run a study: a grid of runs, summary.csv and plots")
    study.add_argument("name", help="study name (see `svi-torch list`)")
    _add_common(study)
    study.add_argument("--quick", action="store_true", help="a tiny grid (under a minute)")
    study.add_argument("--quiet", action="store_true", help="print only the study directory")
    return parser


def _version() -> str:
    """The installed distribution's version (the package's own when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        return version("svi_torch")
    except PackageNotFoundError:
        return __version__


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=500 (value parsed as YAML)",
    )
    parser.add_argument(
        "--logdir",
        default=DEFAULT_LOGDIR,
        help=f"parent of the run directories ({DEFAULT_LOGDIR}/)",
    )


# -- train ------------------------------------------------------------------------------
def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from .config import load_config
    from .runs import CONFIG_FILE, new_run_dir, train_run
    from .training.distributed import init_from_environment, shared_value

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be a positive number of processes, got {args.nproc}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from .launch import launch_workers

        return launch_workers(args.nproc, _without_nproc(argv))
    if args.resume:
        if args.config is None or not Path(args.config).is_dir():
            raise ConfigError(
                "--resume needs the run directory to continue, e.g. "
                "svi-torch train runs/<run> --resume"
            )
        run_dir = Path(args.config)
        config = load_config(run_dir / CONFIG_FILE, args.overrides)
    else:
        config = load_config(args.config, args.overrides)
        run_dir = new_run_dir(args.logdir, config)
    # Under torchrun: join the job; every rank uses rank 0's run directory name.
    ctx = init_from_environment(config.train.device)
    run_dir = Path(shared_value(str(run_dir)))
    if not ctx.is_main:
        train_run(config, run_dir, resume=args.resume, progress=False)
        return 0
    say = (lambda *a: None) if args.quiet else print
    start = time.perf_counter()
    outcome = train_run(
        config,
        run_dir,
        resume=args.resume,
        progress=False if args.quiet else None,
        # Printed once everything is checked: a refused run names no directory.
        on_start=lambda d: say(f"run directory: {d}"),
    )
    for line in report_lines(outcome.metrics, run_dir, time.perf_counter() - start):
        say(line)
    if args.quiet:
        print(run_dir)
    return 0


#: Parameters printed after a run; the rest are in metrics.json and `svi-torch summary`.
MAX_PRINTED_PARAMETERS = 20


def gap_note(gap: float, stderr: float) -> str:
    """Why a gap log p(D) - ELBO < 0 is printed, when it is; "" for a non-negative gap.

    The ELBO is a lower bound, so the true gap (KL(q||p)) is >= 0; its estimate from S
    draws carries Monte Carlo error and can fall below zero when q is close to p.
    """
    if gap >= 0:
        return ""
    if gap >= -3 * stderr:
        return (
            "  (a negative gap is the Monte Carlo error of the ELBO estimate, within 3 s.e.; "
            "the true gap KL(q||p) is >= 0)"
        )
    return (
        f"  (the gap is {-gap / stderr:.1f} s.e. below 0, more than the ELBO estimate's Monte "
        "Carlo error explains: the ELBO is a lower bound, so log p(D) or the model's log "
        "density is off)"
    )


def report_lines(metrics: dict, run_dir: Path, seconds: float) -> list[str]:
    """The printout of a finished run: result, diagnostics, parameters and files."""
    from .runs import KHAT_MEANING

    m = metrics
    lines = [
        f"steps: {m['steps']} ({m['steps_per_s']:.0f} steps/s, {seconds:.1f} s in all); "
        f"stop: {m['stop_reason']}",
        f"method: {m['method']}",
    ]
    line = f"ELBO: {m['elbo']:.3f} ± {m['elbo_se']:.3f}"
    if "log_evidence" in m:
        gap = m["log_evidence"] - m["elbo"]
        line += (
            f"   log p(D): {m['log_evidence']:.3f} (exact)"
            f"   gap log p(D) - ELBO: {gap:.3f} ± {m['elbo_se']:.3f}"
        )
    lines.append(line)
    if "log_evidence" in m:
        note = gap_note(m["log_evidence"] - m["elbo"], m["elbo_se"])
        if note:
            lines.append(note)
    if "kl_posterior" in m:
        lines.append(
            f"KL(q || exact posterior): {m['kl_posterior']:.4g} nats ({m['kl_posterior_method']})"
        )
    lines.append(f"KL(q || prior): {m['kl_prior']:.4g} nats ({m['kl_prior_method']})")
    if m.get("diagnostics/khat") is not None:
        reading = m.get("diagnostics/khat_reading", "")
        se = m.get("diagnostics/khat_se")
        error = f" ± {se:.2f}" if isinstance(se, float) and math.isfinite(se) else ""
        lines.append(
            f"PSIS k-hat: {m['diagnostics/khat']:.3f}{error} ({reading}: "
            f"{KHAT_MEANING.get(reading, '')})"
        )
        for key, label in (
            ("diagnostics/doubtful", "doubtful quantities"),
            ("diagnostics/draws", "draws"),
        ):
            if m.get(key):
                lines.append(f"{label}: {m[key]}")
    elif "diagnostics/unavailable" in m:
        lines.append(f"PSIS k-hat: not computed ({m['diagnostics/unavailable']})")
    posterior = list(m["posterior"].items())
    shown = posterior[:MAX_PRINTED_PARAMETERS]
    width = max((len(name) for name, _ in shown), default=0)
    lines.append("posterior (mean, sd):")
    for name, stats in shown:
        lines.append(f"  {name:<{width}}  mean {stats['mean']:+.4f}  sd {stats['sd']:.4f}")
    if len(posterior) > len(shown):
        lines.append(
            f"  ... and {len(posterior) - len(shown)} more (all in metrics.json; "
            f"svi-torch summary {run_dir})"
        )
    lines.append("files:")
    lines += [f"  {path}" for path in sorted(p for p in run_dir.iterdir() if p.is_file())]
    lines.append(f"view in TensorBoard:  tensorboard --logdir {run_dir.parent}")
    return lines


# -- list -------------------------------------------------------------------------------
def _list(args: argparse.Namespace) -> int:
    from .methods.base import METHODS, method_from_config
    from .registry import FAMILIES, MODELS, OBJECTIVES, STUDIES

    method_from_config("auto", {})  # loads the built-in methods
    methods = [(name, _method_description(cls)) for name, cls in sorted(METHODS.items())]
    for title, entries in (
        ("families", [(e.name, e.description) for e in FAMILIES.entries()]),
        ("models", [(e.name, e.description) for e in MODELS.entries()]),
        ("objectives", [(e.name, e.description) for e in OBJECTIVES.entries()]),
        ("methods", methods),
        ("studies", [(e.name, e.description) for e in STUDIES.entries()]),
    ):
        print(f"{title}:")
        width = max((len(name) for name, _ in entries), default=0)
        for name, description in entries:
            first, *more = description.split("\n")
            print(f"  {name:<{width}}  {first}")
            indent = " " * (width + 4)
            for line in more:  # a method's options, under its description
                print(
                    textwrap.fill(line, 96, initial_indent=indent, subsequent_indent=indent + "  ")
                )
        if not entries:
            print("  (none)")
    return 0


def _method_description(cls: type) -> str:
    """A method's first docstring line, then ``options: name=default, ...`` (its config
    options, the README's ``method: {name: ..., options: {...}}``)."""
    import inspect
    import re

    first = ((cls.__doc__ or "").strip().splitlines() or [""])[0]
    # A pointer into the source ("(module docstring)") means nothing on a terminal.
    first = re.sub(r"\s*\((see )?(the )?module docstring\)", "", first)
    options = []
    for name, parameter in inspect.signature(cls).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = parameter.default
        if default is parameter.empty:
            options.append(name)
            continue
        factory = _default_factory(cls, name)
        options.append(f"{name}={factory() if factory else default!r}")
    return first + (f"\noptions: {', '.join(options)}" if options else "")


def _default_factory(cls: type, name: str) -> Any:
    """The ``default_factory`` of a dataclass field (``inspect`` shows ``<factory>``)."""
    import dataclasses

    if not dataclasses.is_dataclass(cls):
        return None
    for field in dataclasses.fields(cls):
        if field.name == name and field.default_factory is not dataclasses.MISSING:
            return field.default_factory
    return None


# -- study ------------------------------------------------------------------------------
def _study(args: argparse.Namespace) -> int:
    from .config import apply_overrides
    from .registry import STUDIES

    try:
        entry = STUDIES.get(args.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    overrides = apply_overrides({}, args.overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = Path(args.logdir) / f"{stamp}_study-{args.name}{'-quick' if args.quick else ''}"
    existed = outdir.exists()
    try:
        result = entry.factory(outdir, quick=args.quick, overrides=overrides)
    except ConfigError:
        # A study validates its settings first; leave no empty directory behind.
        if not existed and outdir.is_dir() and not any(outdir.iterdir()):
            shutil.rmtree(outdir)
        raise
    outdir = Path(result) if result is not None else outdir
    if args.quiet:
        print(outdir)
    else:
        # Printed once the study ran: a refused study names no directory.
        print(f"study directory: {outdir}")
        print(f"summary: {outdir / 'summary.csv'}")
        for figure in sorted(outdir.rglob("*.png")):
            print(f"figure: {figure}")
        print(f"view in TensorBoard:  tensorboard --logdir {outdir}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less ``--nproc N`` / ``--nproc=N``: what each worker runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for invalid settings)."""
    from .runs import RunInterrupted

    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    commands = {
        "train": lambda a: _train(a, argv),
        "list": _list,
        "study": _study,
        **AFTER_FIT_COMMANDS,
    }
    try:
        return commands[args.command](args)
    except RunInterrupted as err:
        print(f"svi-torch: {err}", file=sys.stderr)
        return 128 + err.signum
    except ConfigError as err:
        print(f"svi-torch: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        print(
            "svi-torch: interrupted; continue from the last checkpoint with "
            "`svi-torch train RUN_DIR --resume`",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # a training failure (e.g. NaN loss): one line, not a trace
        if os.environ.get("SVI_TORCH_TRACEBACK"):
            raise
        print(f"svi-torch: {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
