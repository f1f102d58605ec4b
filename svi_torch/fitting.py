"""``fit``: one entry point for every method, from Python as from a config.

``st.fit(model, family)`` runs the automatic method; ``method=`` takes a method value
(``st.methods.SGD(lr=3e-2)``, ``st.methods.NGVI()``, ...) or its registered name
(``"auto"``, ``"ngvi"``, ``"sgd"``, ``"bam"``, ``"pathfinder"``). The method owns how the family is moved (optimizer,
learning rate, schedule, initialisation); ``fit``'s own settings are the loop's: how long,
which batches, seed, device, logs, checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .families.base import VariationalFamily
from .methods.base import Method, resolve_method
from .models.base import Model
from .objectives.base import Objective
from .training.logging import Logger
from .training.result import FitResult
from .training.state import TrainConfig

__all__ = ["fit", "METHOD_SETTINGS"]

#: Settings that belong to a method value, not to ``fit`` (the message says where they go).
METHOD_SETTINGS = (
    "optimizer",
    "lr",
    "optimizer_kwargs",
    "lr_schedule",
    "average_from",
    "clip_grad_norm",
    "init",
)


def fit(
    model: Model,
    family: VariationalFamily,
    objective: Objective | None = None,
    *,
    method: str | Method | Mapping[str, Any] = "auto",
    loggers: Sequence[Logger] = (),
    callbacks: Sequence[Any] = (),
    **settings: Any,
) -> FitResult:
    """Fit ``family`` to the posterior of ``model``.

    Every method minimises the reverse :math:`\\mathrm{KL}(q\\|p) = \\mathbb{E}_q[\\log q(z) -
    \\log p(z \\mid D)]`, i.e. maximises the ELBO (or, with ``objective``, the bound it names),
    with the likelihood of each minibatch scaled by :math:`N/B`.

    Args:
        model: the :class:`~svi_torch.models.Model`.
        family: the :class:`~svi_torch.families.VariationalFamily` (trained in place, and
            moved to the model's dtype and device).
        objective: default ``ELBO()``.
        method: ``"auto"`` (default; :class:`~svi_torch.methods.Auto`: MAP, Laplace,
            natural-gradient VI with fallbacks, its decisions on ``result.decisions``),
            ``"ngvi"``, ``"sgd"``, ``"bam"`` (batch-and-match), ``"pathfinder"``, a
            registered name, or a method value such as
            ``st.methods.SGD(optimizer="adam", lr=3e-2)``.
        steps: optimisation steps (default 5000 unless ``epochs`` is given).
        epochs: passes over the data, an alternative to ``steps``.
        batch_size: :math:`B` (default all data up to 256 points, else 128; all data for
            a model that reads them all on every call, ``model.supports_minibatches``
            False).
        convergence: ``True`` (the stop rule), ``False``, a ``ConvergenceMonitor``, or
            ``None`` (default: the method decides; the automatic method uses the stop rule).
        seed: seeds particles, data order and the MAP search's restarts; same seed, same
            result on CPU.
        device: e.g. ``"cuda"``; model data and family are moved once.
        progress: tqdm bar (default: only on a terminal).
        log_every: steps between metric reads, logs and history entries.
        checkpoint_path, checkpoint_every, resume: atomic checkpoints and resuming.
        keep_checkpoints: keep the last K checkpoints beside ``checkpoint_path``.
        max_bad_steps: consecutive non-finite steps before rolling back to the last good
            state (see :mod:`svi_torch.training.health`).
        max_recoveries: roll-backs before the run stops with ``NonFiniteLossError``.
        nan_lr_factor: step-size multiplier at each roll-back.
        snapshot_every: healthy steps between in-memory snapshots of the state.
        max_history: entries kept in ``FitResult.history`` (thinned by halves beyond).
        loggers: :class:`~svi_torch.training.logging.Logger` objects.
        callbacks: objects with an ``on_log(state, step, metrics)`` method.

    Returns:
        A :class:`~svi_torch.training.FitResult`.

    Raises:
        TypeError: an unknown setting, or a method's setting given to ``fit`` (the message
            says which method value to pass instead).

    Example:
        >>> import svi_torch as st
        >>> X, y, _ = st.models.regression_data(2000, 3)
        >>> model = st.models.BayesianLinearRegression(X, y)
        >>> result = st.fit(model, st.families.FullRankGaussian(model.dim), steps=2000)
    """
    misplaced = [k for k in settings if k in METHOD_SETTINGS]
    if misplaced:
        raise TypeError(
            f"fit() does not take {misplaced}: they are settings of the method; pass "
            f"method={_method_hint(settings)}"
        )
    unknown = set(settings) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(
            f"fit() got unknown setting(s) {sorted(unknown)}; valid: "
            f"{sorted(TrainConfig.__dataclass_fields__)} and method=..."
        )
    config = TrainConfig(**settings)
    chosen = resolve_method(method)
    chosen.validate(model, family, objective, config)  # one-line errors before any work
    return chosen.fit(model, family, objective, config, loggers, callbacks)


def _method_hint(settings: Mapping[str, Any]) -> str:
    """The method value that the misplaced settings describe, as code to paste."""
    optimizer = settings.get("optimizer", "adam")
    if isinstance(optimizer, str) and optimizer.lower() == "ngvi":
        names = {"lr": "step_size", "lr_schedule": "schedule", "average_from": "average_from"}
        args = [f"{names[k]}={v!r}" for k, v in settings.items() if k in names]
        args += [f"init={settings['init']!r}"] if "init" in settings else []
        for key, value in (settings.get("optimizer_kwargs") or {}).items():
            args.append(f"{key}={value!r}")
        return f"st.methods.NGVI({', '.join(args)})"
    names = {
        "optimizer": "optimizer",
        "lr": "lr",
        "optimizer_kwargs": "optimizer_kwargs",
        "lr_schedule": "schedule",
        "average_from": "average_from",
        "clip_grad_norm": "clip_grad_norm",
        "init": "init",
    }
    if isinstance(optimizer, str) and optimizer.lower() == "auto":
        return "'auto' (it chooses its own settings), or st.methods.SGD(...) / st.methods.NGVI(...)"
    args = [f"{names[k]}={v!r}" for k, v in settings.items() if k in names]
    return f"st.methods.SGD({', '.join(args)})"
