"""One logged training run from a config: run directory, TensorBoard, metrics and checkpoint.

:func:`train_run` builds the objects a :class:`~svi_torch.config.Config` describes, checks
that the method and the loop accept them, and only then creates the run directory, which
ends up holding

* ``config.yaml``: the resolved config (every default filled in);
* ``events.out.tfevents.*``: TensorBoard scalars, histograms, the marginals figure, the
  ELBO/KL/variance dashboard (:func:`~svi_torch.training.monitoring.dashboard`), the
  hyperparameters with the final metrics and diagnostics (HParams tab) and a text summary
  of the run (:func:`run_summary`, Text tab);
* ``checkpoint.pt``: the loop's checkpoint (``resume=True`` continues from it);
* ``metrics.json``: final ELBO with its Monte Carlo standard error, steps, wall time,
  steps per second, stop reason, posterior summary, KL to the prior and, when the model
  has an exact posterior, the KL to it and the log evidence;
* ``posterior_marginals.png``: the marginals figure;
* ``posterior.nc``: the fit as ArviZ data (:func:`svi_torch.posterior.to_arviz`), when
  ArviZ is installed (``pip install svi_torch[arviz]``); ``svi_torch.load_run(run_dir)``
  gives the run's :class:`~svi_torch.training.FitResult`.

Example:
    >>> from svi_torch.config import load_config
    >>> config = load_config(None)  # the built-in quickstart
    >>> # outcome = train_run(config, new_run_dir("runs", config))
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .build import Built, build, train_settings
from .config import Config, ConfigError, config_to_dict
from .posterior.arviz import write_run_posterior
from .training.checkpoint import CheckpointError
from .training.distributed import current_context
from .training.logging import TensorBoardLogger
from .training.monitoring import TrainingMonitor, kl_to_posterior, kl_to_prior
from .training.result import FitResult, estimate_elbo

__all__ = [
    "RunOutcome",
    "run_name",
    "new_run_dir",
    "train_run",
    "run_summary",
    "CONFIG_FILE",
    "CHECKPOINT_FILE",
]

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
FIGURE_FILE = "posterior_marginals.png"
POSTERIOR_FILE = "posterior.nc"

#: What a PSIS k-hat reading means for the fit (Yao et al. 2018).
KHAT_MEANING = {
    "good": "q covers the posterior well enough for importance sampling",
    "ok": "usable with care",
    "bad": "q misses posterior mass; do not trust its tails or sds",
}

#: Final numbers shown beside the settings in TensorBoard's HParams tab, by their
#: ``metrics.json`` key (the ``diagnostics/`` prefix dropped from the tab's names).
HPARAMS_METRICS = (
    "elbo",
    "elbo_se",
    "kl_posterior",
    "kl_prior",
    "posterior_variance_mean",
    "steps_per_s",
    "diagnostics/khat",
    "diagnostics/khat_se",
    "diagnostics/ess",
    "diagnostics/log_evidence_iw",
    "diagnostics/log_evidence_iw_se",
)


@dataclass
class RunOutcome:
    """What a finished run left: its directory, the fit result and the final metrics."""

    run_dir: Path
    result: FitResult
    metrics: dict[str, Any]
    built: Built


class RunInterrupted(Exception):
    """SIGINT/SIGTERM paused a run after writing its checkpoint."""

    def __init__(self, signum: int, run_dir: Path, step: int | None = None) -> None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        at = f" at step {step}" if step is not None else ""
        super().__init__(
            f"interrupted by {name}{at}; resume with `svi-torch train {run_dir} --resume`"
        )
        self.signum, self.run_dir, self.step = signum, run_dir, step


def run_name(config: Config, when: float | None = None) -> str:
    """``YYYYmmdd-HHMMSS_<model>_<family>_<objective or method>_N<n>_B<batch>_K<particles>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    last = config.objective.name if config.objective else config.method.name
    parts = [stamp, config.model.name, config.family.name, last]
    if config.data.source == "synthetic":
        parts.append(f"N{config.data.num_data}")
    if config.train.batch_size is not None:
        parts.append(f"B{config.train.batch_size}")
    particles = config.objective.options.get("num_particles") if config.objective else None
    if particles is not None:
        parts.append(f"K{particles}")
    # ``module.path:ClassName`` -> ``ClassName``; keep names filesystem-safe.
    parts = [re.sub(r"[^A-Za-z0-9.=-]+", "-", p.rsplit(":", 1)[-1]) for p in map(str, parts)]
    return "_".join(parts)


def new_run_dir(logdir: str | Path, config: Config) -> Path:
    """A path under ``logdir`` that does not exist yet (the directory is not created)."""
    base = Path(logdir) / run_name(config)
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def train_run(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = False,
    on_start: Callable[[Path], None] | None = None,
) -> RunOutcome:
    """Train ``config`` with everything logged into ``run_dir``; see the module docstring.

    Everything is checked before ``run_dir`` is created or touched: the config builds, the
    method and the loop accept it, and a ``resume`` is one the run can honour
    (:func:`check_resume`). ``on_start(run_dir)`` is called then, just before any work.

    Raises:
        ConfigError: the config cannot be built or trained, or the resume cannot be done
            (nothing is written then).
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT_FILE
    if resume:
        check_resume(run_dir, config)
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    built = build(config)
    settings = train_settings(config, checkpoint, resume)
    settings.progress = progress
    try:
        built.method.validate(built.model, built.family, built.objective, settings)
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(name_setting(" ".join(str(err).split()))) from None
    if on_start is not None:
        on_start(run_dir)
    if not current_context().is_main:
        # Under torchrun, rank 0 alone writes the run directory; the others only train.
        result = built.method.fit(built.model, built.family, built.objective, settings)
        if result.interrupted_by is not None:
            raise RunInterrupted(result.interrupted_by, run_dir, result.steps)
        return RunOutcome(run_dir, result, {}, built)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    log = config.logging
    # On resume the loop tells the logger the checkpoint's step, and events after it
    # (written by the interrupted run) are dropped.
    logger = TensorBoardLogger(run_dir)
    monitor = TrainingMonitor(
        grad_stats_every=log.grad_stats_every,
        grad_stats_draws=log.grad_stats_draws,
        histogram_every=log.histogram_every,
        kl_samples=log.kl_samples,
        seed=config.train.seed,
    )
    try:
        result = built.method.fit(
            built.model, built.family, built.objective, settings, [logger], [monitor]
        )
        if result.interrupted_by is not None:
            # The checkpoint is written; a final metrics.json would claim a finished run.
            raise RunInterrupted(result.interrupted_by, run_dir, result.steps)
        metrics = final_metrics(result, monitor, log.elbo_samples, log.kl_samples)
        # End-of-run numbers (k-hat, evidence) are single numbers: the HParams tab and a
        # text summary hold them, not line charts of one point at the last step.
        monitor.finish(
            [logger],
            result.steps,
            built.model,
            built.family,
            hparams=hparams_of(config),
            final_metrics={
                k.removeprefix("diagnostics/"): float(metrics[k])
                for k in HPARAMS_METRICS
                if isinstance(metrics.get(k), int | float)
            },
            figure=log.figure,
            figure_path=run_dir / FIGURE_FILE if log.figure else None,
            summary=run_summary(metrics, run_dir.name),
        )
    finally:
        logger.close()
    result.config = config_to_dict(config)  # what rebuilds the model when the result is loaded
    write_run_posterior(result, run_dir / POSTERIOR_FILE)
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return RunOutcome(run_dir, result, metrics, built)


#: Settings of the loop as the config names them (for messages from the library).
_SETTING_KEYS = {
    "steps": "train.steps",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "max_bad_steps": "train.max_bad_steps",
    "log_every": "logging.log_every",
    "checkpoint_every": "logging.checkpoint_every",
    "checkpoint_path": "--logdir",
    "checkpoint directory": "--logdir",
}


def name_setting(message: str) -> str:
    """``message`` from the library, prefixed with the config key it is about (if known)."""
    for word, key in _SETTING_KEYS.items():
        if re.match(rf"{re.escape(word)}\b", message):
            return f"{key}: {message}"
    return message


#: Keys a resume may change: how long, and how the run is logged. Anything else would
#: make the resumed run a different fit than the one its checkpoint holds.
RESUME_MAY_CHANGE = ("train.steps", "train.epochs", "train.num_threads", "logging.")


def check_resume(run_dir: Path, config: Config) -> None:
    """Refuse, in one line and before anything is written, a resume the run cannot honour.

    A resume continues the fit in the checkpoint. It may change the budget
    (``train.steps``/``train.epochs``: the schedule is re-planned, see
    :meth:`~svi_torch.training.schedule.LRSchedule.extend`) and the logging; a different
    model, data, family, objective, method, batch size, seed, device or dtype is refused,
    naming the key. A finished run resumed without a larger budget, a budget not above the
    steps already taken, and a longer budget for the automatic method (whose stages and
    stop rule decided where it ended) are refused too.

    Raises:
        ConfigError: the one-line reason.
    """
    from .config import config_from_dict, load_yaml
    from .training.checkpoint import load_checkpoint

    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise ConfigError(f"cannot resume: {checkpoint} does not exist")
    try:
        old = config_to_dict(config_from_dict(load_yaml((run_dir / CONFIG_FILE).read_text())))
    except (OSError, ConfigError) as err:
        raise ConfigError(f"cannot resume: {run_dir / CONFIG_FILE}: {err}") from None
    new = config_to_dict(config)
    for key, (was, now) in _differences(old, new).items():
        if not key.startswith(RESUME_MAY_CHANGE):
            raise ConfigError(
                f"cannot resume {run_dir} with {key}={now!r}: the run was fitted with "
                f"{key}={was!r}, and a resume continues that fit; start a new run for the "
                f"change (svi-torch train CONFIG.yaml --set {key}=...)"
            )
    try:
        saved = load_checkpoint(checkpoint)
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    step = int(saved["step"])
    budget_changed = (old["train"]["steps"], old["train"]["epochs"]) != (
        new["train"]["steps"],
        new["train"]["epochs"],
    )
    finished = (run_dir / METRICS_FILE).is_file()
    if finished and not budget_changed:
        raise ConfigError(
            f"{run_dir} already finished ({step} steps); to train it further, resume with a "
            f"larger budget, e.g. --set train.steps={2 * step}"
        )
    if budget_changed:
        if config.method.name == "auto":
            raise ConfigError(
                "train.steps: method 'auto' cannot continue to a new budget (its stages and "
                "stop rule decided where the run ended); start a new run with the larger "
                "train.steps, or use method sgd or ngvi"
            )
        steps = new["train"]["steps"]
        if steps is not None and steps <= step:
            raise ConfigError(
                f"train.steps={steps} is not more than the {step} steps {run_dir} has taken; "
                f"give more, e.g. --set train.steps={2 * step}"
            )


def _differences(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested dicts, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(old) | set(new), key=str):
            out.update(
                _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
            )
        return out
    return {} if old == new else {prefix: (old, new)}


def final_metrics(
    result: FitResult, monitor: TrainingMonitor, elbo_samples: int, kl_samples: int
) -> dict[str, Any]:
    """The contents of ``metrics.json`` for a finished run."""
    model, family = result.model, result.family
    # Bound the memory of one full-data pass: (chunk x N) log-likelihood terms.
    chunk = max(1, min(250, 20_000_000 // max(model.num_data, 1)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12345)
        elbo, elbo_se = full_data_elbo(model, family, elbo_samples, chunk)
        posterior, prior = monitor.references(model)
        kl_prior, kl_prior_method = kl_to_prior(model, family, kl_samples, prior)
        with torch.no_grad():
            variance = family.variance().double()
        metrics: dict[str, Any] = {
            "elbo": elbo,
            "elbo_se": elbo_se,
            "steps": result.steps,
            "wall_time_s": result.wall_time,
            "steps_per_s": result.steps_per_second,
            "stop_reason": result.stop_reason,
            "method": result.method,
            "decisions": [dataclasses.asdict(d) for d in result.decisions],
            "grad_evals": result.grad_evals,
            "skipped_steps": result.skipped_steps,
            "num_data": model.num_data,
            "dim": model.dim,
            "kl_prior": kl_prior,
            "kl_prior_method": kl_prior_method,
            "posterior_variance_mean": variance.mean().item(),
            "posterior_variance_min": variance.min().item(),
            "posterior_variance_max": variance.max().item(),
        }
        if posterior is not None:
            kl, method = kl_to_posterior(family, posterior, kl_samples)
            exact_var = posterior.variance.double()
            metrics.update(
                kl_posterior=kl,
                kl_posterior_method=method,
                log_evidence=model.log_evidence().item(),  # type: ignore[attr-defined]
                exact_variance_mean=exact_var.mean().item(),
                exact_variance_min=exact_var.min().item(),
                exact_variance_max=exact_var.max().item(),
            )
        metrics.update(_diagnostics(result))
        metrics["posterior"] = result.posterior_summary(min(elbo_samples, 4000))
    return {k: _plain(v) for k, v in metrics.items()}


def _diagnostics(result: FitResult) -> dict[str, Any]:
    """PSIS k-hat and the importance-weighted log p(D) (``diagnostics/...`` keys).

    Families conditioned on a context (amortized) have no single q(z) to weight against
    p(z, D); their runs report none rather than a number about the wrong density.
    """
    # The fit's one diagnosis (the automatic method's, Pathfinder's for its resampled draws),
    # or one made now and kept on the result, so that the printout, the logs, the summary
    # and the ArviZ export state the same k-hat.
    try:
        if result.diagnostics is None:
            result.diagnose()  # the fit's diagnosis at its defaults, kept on the result
        diag = result.diagnostics
    except (ValueError, TypeError, NotImplementedError) as err:
        return {"diagnostics/unavailable": " ".join(str(err).split())}
    metrics = {**diag.as_dict(), "diagnostics/khat_reading": diag.reading}
    if diag.doubtful:
        metrics["diagnostics/doubtful"] = ", ".join(diag.doubtful)
    if result.draws_source:
        metrics["diagnostics/draws"] = result.draws_source
    return metrics


def full_data_elbo(model: Any, family: Any, num_samples: int, chunk: int) -> tuple[float, float]:
    """Full-data ELBO and its Monte Carlo s.e., with the analytic entropy when there is one.

    :math:`\\frac1S\\sum_s \\log p(z_s, D) + H[q]` needs no :math:`\\log q(z_s)`, which for a
    full-rank factor :math:`L` with large off-diagonal entries is a triangular solve that
    amplifies float32 rounding by :math:`\\mathrm{cond}(L)`; it also has lower variance.
    """
    if not family.has_analytic_entropy:
        return estimate_elbo(model, family, num_samples, chunk=chunk)
    values = []
    with torch.no_grad():
        entropy = family.entropy().double()
        for start in range(0, num_samples, chunk):
            z = family.sample(min(chunk, num_samples - start))
            values.append(model.full_log_joint(z).double())
    terms = torch.cat(values)
    return (terms.mean() + entropy).item(), (terms.std() / math.sqrt(terms.numel())).item()


def run_summary(metrics: dict[str, Any], name: str) -> str:
    """The end of a run in Markdown (TensorBoard's Text tab): result, KL, diagnostics, cost.

    Every number is the one ``metrics.json`` holds (``metrics``), printed the way the
    command line prints it.

    Example:
        >>> print(run_summary({"elbo": -12.5, "elbo_se": 0.01, "steps": 10}, "demo"))
        ... # doctest: +ELLIPSIS
        **demo**: 10 steps...
    """
    m = metrics
    khat = m.get("diagnostics/khat")
    reading = m.get("diagnostics/khat_reading", "")
    exact_variance = m.get("exact_variance_mean")
    rows = [
        ("ELBO (full data)", _with_se(m, "elbo", "elbo_se", " (Monte Carlo s.e.)")),
        ("log p(D), exact", _number(m.get("log_evidence"), ".4f")),
        (
            "KL(q‖exact posterior)",
            _number(m.get("kl_posterior"), ".4g", f" nats ({m.get('kl_posterior_method')})"),
        ),
        ("KL(q‖prior)", _number(m.get("kl_prior"), ".4g", f" nats ({m.get('kl_prior_method')})")),
        (
            "mean marginal variance of q",
            _number(
                m.get("posterior_variance_mean"),
                ".4g",
                "" if exact_variance is None else f" (exact posterior: {exact_variance:.4g})",
            ),
        ),
        (
            "PSIS k-hat",
            _number(
                khat,
                ".3f",
                f"{_plus_minus(m.get('diagnostics/khat_se'))} ({reading}: "
                f"{KHAT_MEANING.get(reading, '')})",
            )
            if khat is not None or not m.get("diagnostics/unavailable")
            else f"not computed ({m['diagnostics/unavailable']})",
        ),
        (
            "importance-weighted log p(D)",
            _with_se(m, "diagnostics/log_evidence_iw", "diagnostics/log_evidence_iw_se"),
        ),
        ("doubtful quantities", m.get("diagnostics/doubtful") or "none"),
        ("draws", m.get("diagnostics/draws") or "new draws from q"),
        ("ELBO from the same draws", _with_se(m, "diagnostics/elbo", "diagnostics/elbo_se")),
        ("gradient evaluations (full-data units)", _number(m.get("grad_evals"), ".4g")),
        (
            "speed",
            _number(m.get("steps_per_s"), ".0f", f" steps/s, {m.get('wall_time_s') or 0.0:.1f} s"),
        ),
    ]
    lines = [
        f"**{name}**: {m['steps']} steps"
        + (f" of method `{m['method']}`" if m.get("method") else "")
        + (f", stopped by {m['stop_reason']}" if m.get("stop_reason") else ""),
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {label} | {value} |" for label, value in rows if value is not None]
    return "\n".join(lines)


def _number(value: Any, spec: str, suffix: str = "") -> str | None:
    """``value`` formatted with ``spec`` and ``suffix``, or ``None`` when there is none."""
    return None if value is None else f"{value:{spec}}{suffix}"


def _with_se(metrics: dict[str, Any], key: str, se_key: str, suffix: str = "") -> str | None:
    """``metrics[key] ± metrics[se_key]`` to four decimals (``None`` when there is none)."""
    se = metrics.get(se_key) or 0.0
    return _number(metrics.get(key), ".4f", f" ± {se:.4f}{suffix}")


def _plus_minus(value: Any) -> str:
    """`` ± 0.12`` for a finite number, ``""`` otherwise (absent, NaN stored as null)."""
    return f" ± {value:.2f}" if isinstance(value, int | float) and math.isfinite(value) else ""


def hparams_of(config: Config) -> dict[str, Any]:
    """The settings shown in TensorBoard's HParams tab."""
    return {
        "model": config.model.name,
        "family": config.family.name,
        "objective": config.objective.name if config.objective else "default",
        "num_particles": config.objective.options.get("num_particles", 1)
        if config.objective
        else -1,
        "num_data": config.data.num_data if config.data.source == "synthetic" else -1,
        "dim": config.data.dim if config.data.source == "synthetic" else -1,
        "batch_size": config.train.batch_size if config.train.batch_size is not None else -1,
        "method": config.method.name,
        **{f"method.{k}": v for k, v in config.method.options.items()},
        "steps": config.train.steps if config.train.steps is not None else -1,
        "seed": config.train.seed,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
