"""Checks made before any training work: settings and output directories.

A run that fails at its first checkpoint, hours in, because the directory is read-only
or the disk is full, wastes the hours. These checks run at construction instead and
create nothing: the directory is probed at its nearest existing ancestor, so a failed
check leaves no half-made directory behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .convergence import ConvergenceMonitor

__all__ = ["check_writable_dir", "check_run_settings", "parse_device", "MIN_FREE_BYTES"]

# Below this much free space a run cannot count on writing its checkpoints and events.
MIN_FREE_BYTES = 16 * 2**20


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_writable_dir(
    path: str | os.PathLike[str], what: str = "directory", min_free_bytes: int = MIN_FREE_BYTES
) -> None:
    """Raise ``ValueError`` unless ``path`` is (or can be created as) a writable directory
    with at least ``min_free_bytes`` free. Creates nothing that outlives the call.

    Args:
        path: the directory the run will write into; it need not exist yet.
        what: how the error names it (``"log directory"``, ``"checkpoint directory"``).
        min_free_bytes: free space the file system must have.
    """
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(
            f"{what} {path} cannot be created: {probe} is a file, not a directory; "
            "choose another path"
        )
    try:
        # os.access is not enough (root, read-only mounts): actually create and remove a file.
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise ValueError(
            f"{what} {path} is not writable ({err.strerror or err}); choose a writable path "
            "or fix its permissions"
        ) from None
    free = shutil.disk_usage(probe).free
    if free < min_free_bytes:
        raise ValueError(
            f"{what} {path} is on a full disk ({free / 2**20:.1f} MiB free, need at least "
            f"{min_free_bytes / 2**20:.0f} MiB); free some space or choose another disk"
        )


def check_run_settings(config: Any) -> None:
    """Validate the settings of a ``TrainConfig`` that nothing else checks before training.

    Covers types and ranges of the seed, logging, checkpoint and history settings, and
    that the checkpoint directory is writable with free space. (Steps and batch size are
    checked where they are used, also before the first step; a method checks its own
    settings when it is built.)
    """
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {config.seed!r}")
    if config.convergence is not None and not isinstance(
        config.convergence, bool | ConvergenceMonitor
    ):
        raise TypeError(
            f"convergence must be True, False, None or a ConvergenceMonitor, got "
            f"{config.convergence!r}"
        )
    if config.progress is not None and not isinstance(config.progress, bool):
        raise TypeError(f"progress must be True, False or None, got {config.progress!r}")
    if not isinstance(config.resume, bool):
        raise TypeError(f"resume must be True or False, got {config.resume!r}")
    _positive_int("log_every", config.log_every)
    _positive_int("checkpoint_every", config.checkpoint_every, allow_none=True)
    _positive_int("keep_checkpoints", config.keep_checkpoints)
    _positive_int("max_history", config.max_history)
    if config.max_history < 2:
        raise ValueError(f"max_history must be at least 2, got {config.max_history}")
    if config.checkpoint_path is None:
        if config.checkpoint_every is not None or config.resume:
            raise ValueError(
                "checkpoint_every and resume need checkpoint_path; give a file path such as "
                "'run/checkpoint.pt'"
            )
        return
    if not isinstance(config.checkpoint_path, str | os.PathLike):
        raise TypeError(
            f"checkpoint_path must be a path, got {type(config.checkpoint_path).__name__}"
        )
    target = Path(config.checkpoint_path)
    if target.is_dir():
        raise ValueError(
            f"checkpoint_path {target} is a directory; give a file path such as "
            f"'{target / 'checkpoint.pt'}'"
        )
    check_writable_dir(target.parent, "checkpoint directory")


def parse_device(value: str | torch.device | None) -> torch.device | None:
    """``torch.device`` from a setting, refusing devices this machine does not have.

    Raises:
        ValueError: for an unknown device name, or ``cuda``/``mps`` where unavailable.
    """
    if value is None:
        return None
    if not isinstance(value, str | torch.device):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {value!r}")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"unknown device {value!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={value!r} was requested but no CUDA device is available; use 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={value!r} was requested but there are only "
                f"{torch.cuda.device_count()} CUDA device(s); use 'cuda:0'"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={value!r} was requested but MPS is not available; use 'cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {value!r}; use 'cpu', 'cuda' or 'mps'")
    return device
