"""Save a :class:`~svi_torch.training.FitResult` to one file and load it back, safely.

The file is a ``torch.save`` of plain values only (tensors, numbers, strings, lists and
dicts), so :func:`torch.load` reads it with ``weights_only=True`` and loading never runs
code from the file. Its layout::

    {"format": "svi_torch.FitResult", "version": 1,
     "sha256": <hex digest of payload>, "payload": <uint8 tensor: a torch.save of>
        {"family": {"class": "module:QualName", "args": [...], "kwargs": {...},
                    "dtype": "float64", "state": <state_dict>},
         "model": {"class": "module:QualName", "params": [[name, shape, support], ...],
                   "dim": D, "num_data": N, "parameters": {name: tensor},
                   "config": <the CLI run's resolved config, or None>},
         "result": {"history": {...}, "steps": ..., "stop_reason": ..., ...},
         "diagnostics": {"khat": ..., ...} or None}}

The SHA-256 digest of the payload bytes is checked before the payload is read: a file
modified after it was written (or truncated, or not a result file at all) is refused with
a :class:`ResultFileError` that says so. The write is atomic (temporary file, fsync,
rename: :func:`svi_torch.training.checkpoint.save_checkpoint`).

**The family** is rebuilt from its class and the arguments its constructor was called with
(recorded by ``VariationalFamily.__new__`` for every subclass), then given the saved
state. A family built with arguments that are not plain values (a module, a function) is
saved without them, and loading it asks for ``load_result(path, family=...)``.

**The model** holds the data, which the file does not copy. A model from a CLI run is
rebuilt from the run's config; any other needs ``load_result(path, model=...)``, built as
for the fit (same class, parameters and number of data points: checked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..families.base import VariationalFamily
from ..models.base import Model
from ..registry import class_path, import_object

if TYPE_CHECKING:
    from ..training.result import FitResult

__all__ = [
    "ResultFileError",
    "FORMAT",
    "FORMAT_VERSION",
    "save_result",
    "load_result",
    "load_run",
    "family_spec",
    "model_spec",
    "class_path",
]

FORMAT = "svi_torch.FitResult"
FORMAT_VERSION = 1

#: FitResult fields that are not stored as plain values (the objects and their caches).
_OBJECT_FIELDS = ("family", "model", "diagnostics")


class ResultFileError(RuntimeError):
    """A result file that cannot be loaded: missing, truncated, modified or of another kind."""


# -- specs -----------------------------------------------------------------------------
def _is_plain(value: Any) -> bool:
    """Whether ``torch.load(weights_only=True)`` can read ``value`` back as it is."""
    if value is None or isinstance(value, bool | int | float | str | Tensor | torch.dtype):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and _is_plain(v) for k, v in value.items())
    return False


def _plain_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def family_spec(family: VariationalFamily) -> dict[str, Any]:
    """What rebuilds ``family``: class path, constructor arguments (or ``None``), dtype, state.

    The arguments are those recorded when the family was built; when one is not a plain
    value they are left out (``args`` is ``None``) and loading needs ``family=``.
    """
    args, kwargs = family.__dict__.get("_init_args", (None, None))
    plain = args is not None and _is_plain(list(args)) and _is_plain(kwargs)
    floating = next((p for p in family.state_dict().values() if p.is_floating_point()), None)
    return {
        "class": class_path(family),
        "args": list(args) if plain else None,
        "kwargs": dict(kwargs) if plain else None,
        "dtype": str(floating.dtype if floating is not None else torch.get_default_dtype()),
        "state": _plain_state(family),
    }


def model_spec(model: Model, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model's class, declared parameters, sizes, own ``nn.Parameter`` values, config."""
    return {
        "class": class_path(model),
        "params": [[s.name, list(s.shape), str(s.support)] for s in model.param_specs.values()],
        "dim": model.dim,
        "num_data": model.num_data,
        "parameters": {k: v.detach().cpu() for k, v in model.named_parameters()},
        "config": None if config is None else json.loads(json.dumps(config)),
    }


# -- save ------------------------------------------------------------------------------
def save_result(result: FitResult, path: str | os.PathLike[str], diagnostics: bool = True) -> Path:
    """Write ``result`` to ``path`` atomically; see the module docstring for the layout.

    Args:
        result: the fit.
        path: the file to write (parents are created).
        diagnostics: store the PSIS diagnostics (computed now with the default seed when
            ``result.diagnostics`` is not set yet; a full-data pass over 2000 draws).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from ..training.checkpoint import save_checkpoint

    diag = result.diagnostics
    if diag is None and diagnostics:
        try:
            diag = result.diagnose()
        except (ValueError, TypeError, NotImplementedError):
            diag = None  # e.g. an amortized family: there is no single q(z) to weight
    fields = {}
    for f in dataclasses.fields(result):
        if f.name in _OBJECT_FIELDS:
            continue
        value = getattr(result, f.name)
        if _is_plain(value):
            fields[f.name] = value
    payload = {
        "family": family_spec(result.family),
        "model": model_spec(result.model, result.config),
        "result": fields,
        "diagnostics": None if diag is None else dataclasses.asdict(diag),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    blob = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return save_checkpoint(
        path,
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "sha256": hashlib.sha256(data).hexdigest(),
            "payload": blob,
        },
    )


# -- load ------------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any]:
    """The verified payload of the file at ``path``."""
    if not path.is_file():
        raise ResultFileError(f"no result file at {path}; check the path")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as err:
        raise ResultFileError(
            f"refusing {path}: it is truncated, corrupted or holds objects other than tensors "
            f"and plain values ({_first_line(err)}); save the result again"
        ) from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise ResultFileError(
            f"{path} is not a saved svi_torch result (written by FitResult.save); for a CLI "
            "run directory use svi_torch.load_run(run_dir)"
        )
    if outer.get("version") != FORMAT_VERSION:
        raise ResultFileError(
            f"{path} has result format version {outer.get('version')!r}; this svi_torch reads "
            f"version {FORMAT_VERSION}"
        )
    blob = outer.get("payload")
    if not isinstance(blob, Tensor) or blob.dtype != torch.uint8:
        raise ResultFileError(f"refusing {path}: its payload is missing or malformed")
    data = blob.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise ResultFileError(
            f"refusing {path}: its SHA-256 checksum does not match its contents, so the file "
            "was modified or damaged after it was written; save the result again"
        )
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as err:
        raise ResultFileError(f"refusing {path}: unreadable payload ({_first_line(err)})") from None
    return payload


def _rebuild_family(spec: Mapping[str, Any], path: Path) -> VariationalFamily:
    name = spec["class"]
    advice = f"pass load_result({str(path)!r}, family={name.rsplit(':', 1)[-1]}(...)) built as for the fit"
    if spec["args"] is None:
        raise ResultFileError(
            f"the family {name} was built with arguments that cannot be stored; {advice}"
        )
    try:
        cls = import_object(name)
        # Construction may draw random initial values: keep the caller's RNG stream as it is.
        with torch.random.fork_rng(devices=[]):
            family = cls(*spec["args"], **spec["kwargs"])
    except Exception as err:  # any failure of a user's constructor: say what to pass
        raise ResultFileError(
            f"cannot rebuild the family {name} ({_first_line(err)}); {advice}"
        ) from None
    if not isinstance(family, VariationalFamily):
        raise ResultFileError(f"{name} is not a VariationalFamily; {advice}")
    return family


def _load_state(family: VariationalFamily, spec: Mapping[str, Any]) -> None:
    dtype = getattr(torch, spec["dtype"].removeprefix("torch."))
    family.to(dtype)
    try:
        family.load_state_dict(spec["state"])
    except RuntimeError as err:
        raise ResultFileError(
            f"the saved state does not fit the family {class_path(family)} "
            f"({_first_line(err)}); pass family= built with the fit's arguments"
        ) from None


def _check_model(model: Model, spec: Mapping[str, Any]) -> None:
    declared = [[s.name, list(s.shape), str(s.support)] for s in model.param_specs.values()]
    saved = [[n, list(shape), support] for n, shape, support in spec["params"]]
    problems = []
    if class_path(model) != spec["class"]:
        problems.append(f"class {class_path(model)} (the fit's: {spec['class']})")
    if declared != saved:
        problems.append(f"parameters {declared} (the fit's: {saved})")
    if model.num_data != spec["num_data"]:
        problems.append(f"{model.num_data} data points (the fit's: {spec['num_data']})")
    if problems:
        raise ResultFileError(
            "the model passed does not match the saved fit: it has "
            + "; ".join(problems)
            + "; build it as for the fit"
        )
    own = dict(model.named_parameters())
    if sorted(own) != sorted(spec["parameters"]):
        raise ResultFileError(
            f"the model has trainable parameters {sorted(own)}, the fit had "
            f"{sorted(spec['parameters'])}; build it as for the fit"
        )
    with torch.no_grad():
        for name, value in spec["parameters"].items():
            own[name].copy_(value)


def _rebuild_model(spec: Mapping[str, Any], path: Path) -> Model:
    if spec.get("config") is None:
        name = spec["class"].rsplit(":", 1)[-1]
        raise ResultFileError(
            f"{path} holds the fit but not the model's data: the model {spec['class']} was "
            f"built in Python, so pass load_result({str(path)!r}, model={name}(...)) built "
            "with the fit's data"
        )
    from ..build import build_model
    from ..config import ConfigError, config_from_dict

    try:
        return build_model(config_from_dict(dict(spec["config"])))
    except ConfigError as err:
        name = spec["class"].rsplit(":", 1)[-1]
        raise ResultFileError(
            f"cannot rebuild the model of {path} from its run's config ({err}); pass "
            f"load_result({str(path)!r}, model={name}(...)) built with the fit's data"
        ) from None


def _diagnostics(values: Mapping[str, Any] | None) -> Any:
    if values is None:
        return None
    from ..diagnostics import Diagnostics

    values = dict(values)
    values["doubtful"] = tuple(values.get("doubtful", ()))
    return Diagnostics(**values)


def load_result(
    path: str | os.PathLike[str],
    model: Model | None = None,
    family: VariationalFamily | None = None,
) -> FitResult:
    """Load a result written by :func:`save_result` (``FitResult.save``).

    Args:
        path: the file.
        model: the model, built as for the fit (same class, parameters and data size);
            required unless the result came from a CLI run, whose config rebuilds it. Its
            own trainable parameters (empirical Bayes, decoders) are set to the fit's.
        family: a family to load the state into, for families that cannot be rebuilt from
            their recorded arguments (the error says when).

    Returns:
        The :class:`~svi_torch.training.FitResult`: the family in its saved state (draws
        with the same seed are bit-identical to the original's), the history, the stop
        reason and the stored diagnostics.

    Raises:
        ResultFileError: missing, truncated, modified or foreign file; a model or family
            that does not match; no model given where one is needed.

    Example:
        >>> result.save("fit.pt")  # doctest: +SKIP
        >>> again = st.load_result("fit.pt", model=model)  # doctest: +SKIP
    """
    from ..training.result import FitResult

    path = Path(path)
    payload = _read(path)
    fam_spec, mod_spec = payload["family"], payload["model"]
    if model is None:
        model = _rebuild_model(mod_spec, path)
    _check_model(model, mod_spec)
    if family is None:
        family = _rebuild_family(fam_spec, path)
    _load_state(family, fam_spec)
    device = next((t.device for t in model.buffers()), torch.device("cpu"))
    family.to(device)
    known = {f.name for f in dataclasses.fields(FitResult)}
    fields = {k: v for k, v in payload["result"].items() if k in known}
    return FitResult(
        family=family, model=model, diagnostics=_diagnostics(payload["diagnostics"]), **fields
    )


def load_run(run_dir: str | os.PathLike[str]) -> FitResult:
    """The :class:`~svi_torch.training.FitResult` of a finished ``svi-torch train`` run.

    Rebuilds model and family from the run's ``config.yaml`` and loads the final state of
    its ``checkpoint.pt`` (the averaged iterate the run reported), with the history, steps
    and wall time from the checkpoint and the stop reason and diagnostics from
    ``metrics.json``. ``load_run(d).posterior_summary(n)`` equals the ``posterior`` entry of
    ``metrics.json`` for the same number of draws ``n`` and the default seed.
    """
    from ..build import build
    from ..config import config_to_dict, load_config
    from ..runs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE
    from ..training.checkpoint import load_checkpoint
    from ..training.result import FitResult

    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, CHECKPOINT_FILE):
        if not (run_dir / name).is_file():
            raise ResultFileError(f"{run_dir} is not a finished svi-torch run: it has no {name}")
    config = load_config(run_dir / CONFIG_FILE)
    built = build(config)
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    built.family.load_state_dict(state["family"])
    with torch.no_grad():
        for name, p in built.model.named_parameters():
            p.copy_(state["model_params"][name])
    metrics: dict[str, Any] = {}
    if (run_dir / METRICS_FILE).is_file():
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    diag = None
    if "diagnostics/khat" in metrics:
        khat = metrics["diagnostics/khat"]
        diag = {
            "khat": float("-inf") if khat is None else khat,
            "reading": metrics.get("diagnostics/khat_reading", ""),
            "log_evidence_iw": metrics["diagnostics/log_evidence_iw"],
            "log_evidence_iw_se": metrics["diagnostics/log_evidence_iw_se"],
            "elbo": metrics["diagnostics/elbo"],
            "elbo_se": metrics["diagnostics/elbo_se"],
            "num_samples": int(config.logging.elbo_samples),
        }
    return FitResult(
        family=built.family,
        model=built.model,
        history={k: list(v) for k, v in state["history"].items()},
        steps=int(state["step"]),
        stop_reason=metrics.get("stop_reason", "unknown (the run has no metrics.json)"),
        wall_time=float(state["wall_time"]),
        skipped_steps=int(state["skipped_steps"]),
        diagnostics=_diagnostics(diag),
        config=config_to_dict(config),
        draws=state.get("draws"),  # a method's fixed draws (Pathfinder), if it left any
        draws_log_q=state.get("draws_log_q"),
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
