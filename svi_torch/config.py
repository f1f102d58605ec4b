"""Run settings: a typed schema with defaults, read from YAML and validated before any work.

A config is a nested mapping with the sections ``model``, ``data``, ``family``,
``objective``, ``method``, ``train`` and ``logging`` (see :class:`Config` and the
dataclasses below for every key and default). :func:`load_config` reads a YAML file with
``yaml.safe_load``, applies ``--set a.b=c`` overrides (each value parsed as YAML) and
checks every key and type, so that a typo fails at once with a one-line
:class:`ConfigError` naming the key and the valid choices, before a run directory exists.

Example:
    >>> cfg = config_from_dict({"train": {"steps": 100}}, overrides=["family.name=meanfield"])
    >>> cfg.family.name, cfg.train.steps
    ('meanfield', 100)
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "Config",
    "ModelSection",
    "DataSection",
    "FamilySection",
    "ObjectiveSection",
    "MethodSection",
    "TrainSection",
    "LoggingSection",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_override",
    "apply_overrides",
    "dataclass_from_dict",
    "default_config_path",
]


class ConfigError(ValueError):
    """An invalid config, override or setting; the message is one line naming the fix."""


@dataclass
class ModelSection:
    """The model: a registered name (``svi-torch list``) or ``"package.module:ClassName"``.

    ``options`` are keyword arguments of the model's constructor (e.g. ``noise_scale``).
    """

    name: str = "linear_regression"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """The data given to the model's constructor.

    ``source`` is ``"synthetic"`` (a seeded generator: ``regression``, ``logistic`` or
    ``normal_mean``, chosen from the model unless ``generator`` says), ``"none"`` (the
    model needs no data arrays, e.g. eight schools' built-in data) or a ``.csv``/``.npz``
    path. For a file, ``y`` names the response column and ``x`` the columns stacked into
    the design matrix ``X`` (default: all others); without ``y`` the file's arrays are
    passed to the model by name.
    """

    source: str = "synthetic"
    generator: str | None = None
    num_data: int = 1000
    dim: int = 5
    correlation: float = 0.0
    noise_scale: float = 1.0
    true_mean: float = 1.0
    offset: float = 0.0
    seed: int = 0
    x: list[str] | None = None
    y: str | None = None


@dataclass
class FamilySection:
    """The variational family; ``options`` go to its constructor after ``model.dim``."""

    name: str = "fullrank"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveSection:
    """The objective; ``options`` go to its constructor (e.g. ``num_particles``).

    Leave the section out for the method's own objective (the ELBO, which the automatic
    method maximises by natural-gradient VI where it applies), as ``fit(model, family)``.
    """

    name: str = "elbo"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodSection:
    """The inference method: a registered name and its options (``svi-torch list``).

    ``auto`` (the default) is the automatic method; ``ngvi``, ``sgd``, ``bam`` and
    ``pathfinder`` take the options of :class:`svi_torch.methods.NGVI`,
    :class:`~svi_torch.methods.SGD`, :class:`~svi_torch.methods.BaM` and
    :class:`~svi_torch.methods.Pathfinder`, e.g.
    ``{name: sgd, options: {optimizer: adam, lr: 0.03}}`` or
    ``{name: bam, options: {num_draws: 16}}``. The same value is built from
    Python by ``svi_torch.methods.resolve_method({"name": ..., "options": ...})``.
    """

    name: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSection:
    """Length of the run (``steps`` or ``epochs``), batch size, stop rule, seed and device.

    ``num_threads`` sets ``torch.set_num_threads`` for the run (``null``: torch's default);
    small models run fastest on one thread, especially on a shared machine. ``dtype``
    (``float32`` or ``float64``) converts the model's data, and so the family, before the
    fit; ``null`` keeps the data's own dtype (float32 for the generators, float64 for
    files).
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    convergence: bool | None = None
    seed: int = 0
    device: str = "cpu"
    max_bad_steps: int = 20
    num_threads: int | None = None
    dtype: str | None = None


@dataclass
class LoggingSection:
    """What is logged and how often (steps); see the README's "Monitoring" section.

    ``grad_stats_every`` and ``histogram_every`` must be multiples of ``log_every``
    (monitoring runs when the trainer logs); 0 turns them off.
    """

    log_every: int = 100
    grad_stats_every: int = 500
    grad_stats_draws: int = 16
    histogram_every: int = 500
    kl_samples: int = 256
    elbo_samples: int = 1000
    checkpoint_every: int | None = 1000
    figure: bool = True


@dataclass
class Config:
    """A whole run. Every section has defaults; a YAML file overrides what it names."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    family: FamilySection = field(default_factory=FamilySection)
    objective: ObjectiveSection | None = None
    method: MethodSection = field(default_factory=MethodSection)
    train: TrainSection = field(default_factory=TrainSection)
    logging: LoggingSection = field(default_factory=LoggingSection)


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-2`` and ``3E5`` as floats (as YAML 1.2 does).

    PyYAML follows YAML 1.1, where an exponent without a dot (``1e-2``) is a string. With
    this loader a string in a numeric key is always one the user quoted, and is refused.
    """


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with :class:`ConfigLoader`'s numbers."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def default_config_path(name: str = "quickstart") -> Path:
    """Path of a config shipped inside the package (``svi_torch/configs/NAME.yaml``)."""
    return Path(__file__).parent / "configs" / f"{name}.yaml"


# -- reading --------------------------------------------------------------------------
def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (``None``: the built-in quickstart), apply overrides, validate.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or invalid value.
    """
    path = Path(path) if path is not None else default_config_path()
    if path.is_dir():
        raise ConfigError(
            f"{path} is a directory; give a YAML config file (or a run directory with --resume)"
        )
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"{path} is not valid YAML: {first}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(_data_relative_to(raw, path.parent), overrides)


def _data_relative_to(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """``raw`` with a relative ``data.source`` file path made absolute against ``base``."""
    data = raw.get("data")
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or source in ("synthetic", "none"):
        return raw
    if Path(source).expanduser().is_absolute():
        return raw
    return {**raw, "data": {**data, "source": str((base / source).resolve())}}


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build and validate a :class:`Config` from a nested dict plus ``a.b=c`` overrides."""
    raw = apply_overrides(raw, overrides or [])
    if isinstance(raw, dict) and "optimizer" in raw:
        raise ConfigError(_optimizer_section_moved(raw["optimizer"]))
    raw = _data_relative_to(raw, Path.cwd())  # what is left relative came from --set
    config = dataclass_from_dict(Config, raw, "")
    validate(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data (what a run directory's ``config.yaml`` holds)."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.steps=200"`` -> ``(["train", "steps"], 200)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.steps=200")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override key {key!r} has an empty part; write e.g. train.steps")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # not YAML: keep the text, the type check names the key if wrong
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A deep copy of ``raw`` with each ``a.b=c`` override set (sections created as needed)."""
    result = _deep_copy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {text!r}: {where!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# -- type checking --------------------------------------------------------------------
def dataclass_from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and types recursively.

    ``prefix`` is the dotted path of ``raw`` used in error messages (``""`` at the top).
    """
    where = prefix or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            kind = "section" if not prefix else "key"
            hint = ""
            if "options" in names and prefix:
                hint = (
                    f" (constructor arguments go under '{prefix}.options', e.g. "
                    f"{prefix}: {{name: ..., options: {{{key}: ...}}}})"
                )
            raise ConfigError(
                f"unknown config {kind} {dotted!r}; valid {kind}s"
                f"{f' in {prefix!r}' if prefix else ''}: {', '.join(names)}{hint}"
            )
    values = {}
    for name in names:
        if name not in raw:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        values[name] = _check_type(raw[name], hints[name], dotted)
    return cls(**values)


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    if dataclasses.is_dataclass(annotation):
        return dataclass_from_dict(annotation, value, key)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check_type(value, inner[0], key)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {_describe(value)}")
    if annotation is int:
        number = _as_number(value, key, "an integer")
        if float(number).is_integer() and math.isfinite(number):
            return int(number)
        raise ConfigError(f"config key {key!r} must be an integer, got {_describe(value)}")
    if annotation is float:
        return float(_as_number(value, key, "a number"))
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r} must be a string, got {_describe(value)}")
    if origin is dict:
        if value is None:
            return {}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ConfigError(f"config key {key!r} must be a mapping, got {_describe(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {_describe(value)}")
        return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a schema bug


def _as_number(value: Any, key: str, kind: str) -> float | int:
    """``value`` if it is a number (bools and strings refused, with the key named).

    A quoted number (``steps: "1000"``) is a string: refused rather than converted, so that
    what a file says and what runs cannot differ. (``1e-2`` is read as a number, see
    :class:`ConfigLoader`.)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (a quoted number: write it without quotes)"
        except ValueError:
            pass
    raise ConfigError(f"config key {key!r} must be {kind}, got {_describe(value)}{hint}")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


# -- values ---------------------------------------------------------------------------
def validate(config: Config) -> None:
    """Check values the types cannot: ranges, names in the registries, multiples."""
    from .registry import FAMILIES, MODELS, OBJECTIVES

    sections = [(MODELS, config.model, "model.name"), (FAMILIES, config.family, "family.name")]
    if config.objective is not None:
        sections.append((OBJECTIVES, config.objective, "objective.name"))
    for registry, section, key in sections:
        try:
            registry.get(section.name)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
    build_method(config)
    train, log, data = config.train, config.logging, config.data
    _positive(train.steps, "train.steps")
    _positive(train.epochs, "train.epochs")
    if train.steps is not None and train.epochs is not None:
        raise ConfigError("give train.steps or train.epochs, not both (set one to null)")
    _positive(train.batch_size, "train.batch_size")
    _positive(train.max_bad_steps, "train.max_bad_steps")
    _positive(train.num_threads, "train.num_threads")
    if train.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device must be cpu, cuda[:N] or mps; got {train.device!r}")
    _check_device(train.device)
    if train.dtype not in DTYPES:
        raise ConfigError(
            f"train.dtype must be one of {', '.join(map(str, DTYPES))}; got {train.dtype!r}"
        )
    _positive(log.log_every, "logging.log_every")
    for key in ("grad_stats_every", "histogram_every"):
        every = getattr(log, key)
        if every < 0 or every % log.log_every:
            raise ConfigError(
                f"logging.{key} must be 0 (off) or a multiple of logging.log_every "
                f"({log.log_every}), got {every}"
            )
    _positive(log.grad_stats_draws, "logging.grad_stats_draws")
    if log.grad_stats_draws < 2 and log.grad_stats_every:
        raise ConfigError("logging.grad_stats_draws must be >= 2 to estimate a variance")
    _positive(log.kl_samples, "logging.kl_samples")
    _positive(log.elbo_samples, "logging.elbo_samples")
    _positive(log.checkpoint_every, "logging.checkpoint_every")
    _positive(data.num_data, "data.num_data")
    _positive(data.dim, "data.dim")
    if not 0.0 <= data.correlation < 1.0:
        raise ConfigError(f"data.correlation must be in [0, 1), got {data.correlation}")
    if data.source not in ("synthetic", "none"):
        path = Path(data.source)
        if path.suffix not in (".csv", ".npz"):
            raise ConfigError(
                f"data.source must be 'synthetic', 'none' or a .csv/.npz file, got {data.source!r}"
            )
        if not path.is_file():
            raise ConfigError(f"data.source {data.source!r} does not exist; check the path")


#: ``train.dtype`` choices (``None``: the data's own dtype).
DTYPES = (None, "float32", "float64")


def _check_device(device: str) -> None:
    """One line naming ``train.device`` when this machine lacks the device."""
    from .training.preflight import parse_device

    try:
        parse_device(device)
    except ValueError as err:
        message = " ".join(str(err).split()).replace(f"device={device!r}", repr(device))
        raise ConfigError(f"train.device: {message}") from None


def build_method(config: Config) -> Any:
    """The method value of ``config.method``; a one-line error naming the key otherwise.

    The error names ``method.options.<key>`` when it is about one option (``unknown
    optimizer 'adamw2'`` names ``method.options.optimizer``), else ``method.name`` or
    ``method``.
    """
    from .methods.base import method_from_config

    options = dict(config.method.options)
    try:
        return method_from_config(config.method.name, options)
    except (TypeError, ValueError) as err:
        message = " ".join(str(err).split())
        problem = message.split("; ")[0]  # not the list of choices after it
        named = [k for k in options if re.search(rf"\b{re.escape(k)}\b", problem)]
        if message.startswith("unknown method"):
            key = "method.name"
        elif len(named) == 1:
            key = f"method.options.{named[0]}"
        else:
            key = "method"
        raise ConfigError(f"{key}: {message}") from None


def _optimizer_section_moved(section: Any) -> str:
    """The one-line message for a config that still has an ``optimizer:`` section."""
    if not isinstance(section, dict):
        section = {}
    name = str(section.get("name", "adam"))
    options: dict[str, Any] = {}
    if name.lower() == "ngvi":
        target = "ngvi"
        if "lr" in section:
            options["step_size"] = section["lr"]
        options.update(section.get("options") or {})
    elif name.lower() == "auto":
        target = "auto"
    else:
        target = "sgd"
        options["optimizer"] = name
        for key, new_key in (
            ("lr", "lr"),
            ("lr_schedule", "schedule"),
            ("average_from", "average_from"),
            ("clip_grad_norm", "clip_grad_norm"),
        ):
            if key in section:
                options[new_key] = section[key]
        if section.get("options"):
            options["optimizer_kwargs"] = section["options"]
    written = yaml.safe_dump(
        {"method": {"name": target, "options": options} if options else {"name": target}},
        default_flow_style=True,
    ).strip()
    return (
        "config section 'optimizer' was replaced by 'method' (the inference method and its "
        f"settings); write {written} instead, or drop it for the automatic method"
    )


def _positive(value: int | None, key: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value}")
