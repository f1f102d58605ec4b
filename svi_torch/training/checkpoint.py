"""Atomic, safe checkpoints.

A checkpoint is a dict of tensors and plain Python values written with ``torch.save`` to
a temporary file in the target directory, flushed and ``fsync``-ed, then renamed over the
target (``os.replace`` is atomic on POSIX), so a crash leaves either the old or the new
file, never half of one. Loading uses ``torch.load(weights_only=True)``, which refuses
pickled objects, so a tampered file cannot execute code.

:func:`save_rotating` keeps the last :math:`K` checkpoints as step-numbered files
(``run-step000000400.pt``) beside a stable name (``run.pt``, always the newest, a hard
link to it), so one damaged file never costs the whole run.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "save_rotating",
    "step_checkpoints",
    "remove_stale_temporaries",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, tampered or of another format."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def step_checkpoints(path: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The step-numbered siblings of ``path`` (``stem-stepNNNNNNNNN.suffix``), oldest first."""
    path = Path(path)
    pattern = re.compile(re.escape(path.stem) + r"-step(\d+)" + re.escape(path.suffix) + "$")
    found = []
    if path.parent.is_dir():
        for child in path.parent.iterdir():
            match = pattern.match(child.name)
            if match:
                found.append((int(match.group(1)), child))
    return sorted(found)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed writer of ``path`` left behind; return them.

    Only for a single writer per checkpoint (a resuming run): another process writing
    the same checkpoint at the same time would lose its temporary file.
    """
    path = Path(path)
    # The checkpoint itself and its step-numbered copies (keep_checkpoints > 1) are written
    # through temporaries named .<file>.<random>.tmp (and a .link for the re-pointing).
    prefixes = (f".{path.name}.", f".{path.stem}-step")
    removed = []
    if path.parent.is_dir():
        for child in path.parent.iterdir():
            name = child.name
            if name.startswith(prefixes) and name.endswith((".tmp", ".link")):
                child.unlink(missing_ok=True)
                removed.append(child)
    return removed


def save_rotating(
    path: str | os.PathLike[str], state: dict[str, Any], step: int, keep: int = 1
) -> Path:
    """Save ``state`` as the newest of the last ``keep`` checkpoints; return ``path``.

    With ``keep == 1`` only ``path`` is written. Otherwise the state goes to the
    step-numbered file, ``path`` is atomically re-pointed at it (hard link + rename;
    a second copy where links are not supported), and step files beyond the newest
    ``keep`` are deleted -- only after the new one is durable.
    """
    path = Path(path)
    if keep <= 1:
        return save_checkpoint(path, state)
    numbered = save_checkpoint(path.with_name(f"{path.stem}-step{step:09d}{path.suffix}"), state)
    link_name = path.with_name(f".{path.name}.{os.getpid()}.link")
    try:
        link_name.unlink(missing_ok=True)
        os.link(numbered, link_name)
        os.replace(link_name, path)
        _fsync_dir(path.parent)
    except OSError:
        link_name.unlink(missing_ok=True)
        save_checkpoint(path, state)
    for _, old in step_checkpoints(path)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path or start without resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refusing checkpoint {path}: it is truncated, corrupted or holds objects other "
            f"than tensors and plain values ({first}); delete it or resume from another"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not an svi_torch checkpoint (format version "
            f"{state.get('format_version') if isinstance(state, dict) else None!r}, "
            f"expected {FORMAT_VERSION})"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), NumPy and Python as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
