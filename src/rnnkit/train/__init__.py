"""Training: the Task protocol and the shared trainer."""
from .task import Task
from .trainer import DivergenceError, TrainConfig, Trainer

__all__ = ["Task", "Trainer", "TrainConfig", "DivergenceError"]
