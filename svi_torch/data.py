"""Data handling: validation, loading from files, and O(batch) minibatch streaming.

Data are a mapping from names to tensors that share a leading data axis of length
:math:`N`. A minibatch is the same mapping indexed by :math:`B` row indices. The stream
shuffles once per epoch (an :math:`O(N)` permutation every :math:`N/B` steps, so
:math:`O(B)` per step amortised) and draws each batch by indexing tensors already on the
device: no per-step collation and no per-step ``randperm(N)``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "as_tensor", "validate_data", "load_data", "MinibatchStream", "batch_length"]

Batch = dict[str, Tensor]


def as_tensor(value: object, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """Convert ``value`` (tensor, NumPy array, list) to a floating tensor, checking it.

    Raises:
        TypeError: for values that are not numeric arrays.
        ValueError: for empty arrays or NaN/Inf entries.
    """
    if isinstance(value, Tensor):
        tensor = value
    elif isinstance(value, np.ndarray | list | tuple | float | int):
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be numeric; could not convert it: {err}") from None
    else:
        raise TypeError(f"{name} must be a torch.Tensor or NumPy array, got {type(value).__name__}")
    if tensor.dtype == torch.bool or not (tensor.is_floating_point() or _is_integer(tensor)):
        raise TypeError(f"{name} must hold numbers, got dtype {tensor.dtype}")
    if dtype is not None:
        tensor = tensor.to(dtype)
    elif (
        not tensor.is_floating_point()
        or tensor.dtype == torch.float64
        and not isinstance(value, Tensor)
    ):
        # Integers, and NumPy's float64 default, become torch's default float dtype;
        # a floating tensor keeps the dtype its owner chose.
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty; give at least one data point")
    if not _all_finite(tensor):
        bad = (~torch.isfinite(tensor)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); remove or impute them first")
    return tensor


def _all_finite(tensor: Tensor, chunk: int = 1 << 20) -> bool:
    """Whether every entry of ``tensor`` is finite, without a temporary the size of the data.

    A floating-point sum is finite only if every term is (NaN and infinities propagate,
    and :math:`\\infty - \\infty` is NaN), and a reduction to one number allocates nothing:
    so a finite sum settles it. Only a non-finite sum -- a NaN or Inf, or finite values
    large enough to overflow -- is checked entry by entry, in chunks, since the one-shot
    ``isfinite(tensor).all()`` allocates a boolean mask the size of the data (which set the
    peak memory of loading a large data set).
    """
    if not tensor.is_floating_point():
        return True  # integers are always finite
    if bool(torch.isfinite(tensor.sum())):
        return True
    flat = tensor.reshape(-1)
    return all(
        bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk)
    )


def _is_integer(tensor: Tensor) -> bool:
    return tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def validate_data(data: Mapping[str, Tensor]) -> int:
    """Check that all tensors share one leading data axis; return its length :math:`N`."""
    if not data:
        raise ValueError("the model has no data; pass at least one array")
    lengths = {}
    for name, tensor in data.items():
        if tensor.dim() == 0:
            raise ValueError(f"{name} is a scalar; data need a leading data axis")
        lengths[name] = tensor.shape[0]
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"data arrays have different lengths ({detail}); they must match")
    return next(iter(lengths.values()))


def batch_length(batch: Mapping[str, Tensor]) -> int:
    """Number of data points :math:`B` in a batch (its leading axis)."""
    return next(iter(batch.values())).shape[0]


def load_data(path: str | Path, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Load a CSV (header row, numeric columns) or NPZ file into named arrays.

    A CSV gives one array per column; ``columns`` selects and orders them. An NPZ gives
    its stored arrays.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist; check the path")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    elif path.suffix == ".csv":
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty; a CSV needs a header row and data rows")
            rows = list(reader)
        if not rows:
            raise ValueError(f"{path} has a header but no data rows")
        try:
            matrix = np.array([[float(v) for v in row] for row in rows])
        except ValueError as err:
            raise ValueError(f"{path} has a non-numeric value ({err}); use numbers only") from None
        arrays = {name.strip(): matrix[:, j] for j, name in enumerate(header)}
    else:
        raise ValueError(f"unsupported data file {path}: use a .csv or .npz file")
    if columns is not None:
        missing = [c for c in columns if c not in arrays]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; it has {sorted(arrays)}")
        arrays = {c: arrays[c] for c in columns}
    return arrays


@dataclass
class MinibatchStream:
    """Per-epoch shuffled minibatches of indices, :math:`O(B)` work per step.

    Every batch has exactly ``batch_size`` points: the ``N mod B`` points left at the end
    of an epoch's permutation are dropped for that epoch (they are as likely as any other
    to be drawn in the next), so each batch is a uniformly random subset of size :math:`B`
    and the :math:`N/B` scaling is unbiased with the same variance at every step.

    The permutation of epoch :math:`e` is a pure function of ``(seed, e)``, so the stream
    position is fully described by ``(epoch, position)``: that is all a checkpoint needs,
    and a resumed run draws exactly the batches the uninterrupted one would.

    With ``world_size > 1`` each global batch of ``batch_size`` indices is split into
    contiguous shards and rank ``rank`` gets its own, so that the ranks together see the
    same data a single process would.
    """

    num_data: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    position: int = 0
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise TypeError(f"batch_size must be an int, got {type(self.batch_size).__name__}")
        if not 1 <= self.batch_size <= self.num_data:
            raise ValueError(
                f"batch_size must be between 1 and the number of data points "
                f"({self.num_data}), got {self.batch_size}"
            )
        if self.batch_size < self.world_size:
            raise ValueError(
                f"batch_size {self.batch_size} is smaller than the number of processes "
                f"{self.world_size}; each process needs at least one data point"
            )
        self._perm: Tensor | None = None
        self._perm_epoch = -1

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch; the ``N mod B`` left-over points wait for the next shuffle."""
        return self.num_data // self.batch_size

    def _permutation(self) -> Tensor:
        if self._perm_epoch != self.epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                perm = torch.randperm(self.num_data, generator=g)
            else:
                perm = torch.arange(self.num_data)
            # One host-to-device copy per epoch; batches then index on the device.
            self._perm = perm.to(self.device)
            self._perm_epoch = self.epoch
        assert self._perm is not None
        return self._perm

    def next_indices(self) -> Tensor:
        """Indices (on ``device``) of this rank's part of the next global batch."""
        perm = self._permutation()
        start = self.position
        stop = start + self.batch_size
        global_idx = perm[start:stop]
        if stop + self.batch_size > self.num_data:
            self.epoch, self.position = self.epoch + 1, 0
        else:
            self.position = stop
        if self.world_size == 1:
            return global_idx
        return global_idx.tensor_split(self.world_size)[self.rank]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
