from .time_budget import (
    BudgetReached,
    BudgetTrainer,
    TimeBudgetHook,
    fit_schedule_to_budget,
    measure_seconds_per_iteration,
)
from .predictor import build_predictor
from .trainer import Trainer, build_evaluators

__all__ = [
    "BudgetReached",
    "BudgetTrainer",
    "TimeBudgetHook",
    "Trainer",
    "build_evaluators",
    "build_predictor",
    "fit_schedule_to_budget",
    "measure_seconds_per_iteration",
]
