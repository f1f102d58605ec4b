"""Training: the loop over a training state, checkpoints, stop rule, schedules and loggers."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .convergence import ConvergenceMonitor
from .divergence import DivergenceCheck
from .health import HealthGuard, NonFiniteLossError
from .logging import Chart, Dashboard, Logger, MemoryLogger, TensorBoardLogger
from .loop import Callback, TrainingLoop, prepare_state
from .result import Decision, FitResult, estimate_elbo
from .schedule import IterateAverage, LRSchedule
from .state import TrainConfig, TrainState, UpdateRule

__all__ = [
    "TrainingLoop",
    "prepare_state",
    "TrainConfig",
    "TrainState",
    "UpdateRule",
    "Callback",
    "FitResult",
    "Decision",
    "estimate_elbo",
    "NonFiniteLossError",
    "HealthGuard",
    "ConvergenceMonitor",
    "DivergenceCheck",
    "LRSchedule",
    "IterateAverage",
    "Logger",
    "MemoryLogger",
    "TensorBoardLogger",
    "Dashboard",
    "Chart",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
