"""Training: the loop, checkpoints, stop rule, schedules and loggers."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .convergence import ConvergenceMonitor
from .health import HealthGuard
from .logging import Logger, MemoryLogger, TensorBoardLogger
from .result import FitResult, estimate_elbo
from .schedule import IterateAverage, LRSchedule
from .trainer import Callback, NonFiniteLossError, TrainConfig, Trainer, fit, make_trainer

__all__ = [
    "fit",
    "make_trainer",
    "Trainer",
    "TrainConfig",
    "Callback",
    "FitResult",
    "estimate_elbo",
    "NonFiniteLossError",
    "HealthGuard",
    "ConvergenceMonitor",
    "LRSchedule",
    "IterateAverage",
    "Logger",
    "MemoryLogger",
    "TensorBoardLogger",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
