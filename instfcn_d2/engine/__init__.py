from .trainer import Trainer, build_evaluators

__all__ = ["Trainer", "build_evaluators"]
