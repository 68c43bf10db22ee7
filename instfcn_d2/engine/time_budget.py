"""Fit a training schedule to a wall-clock budget: ``tools/train_net.py --budget-minutes N``.

For comparing methods under the same budget (e.g. 20 minutes of CPU training each): FCIS,
the BiSeg ablation rows and Mask R-CNN R50 differ 5x in the cost of an iteration, so one
``SOLVER.MAX_ITER`` cannot serve them all, and a schedule cut short by a timer would skip the
learning-rate steps. Instead the iteration cost is measured on this machine first (a few real
training steps of the same config, on a throw-away copy of the model), and the config's schedule
is scaled to fit: ``MAX_ITER = budget / (seconds per iteration)``, ``STEPS``, ``CHECKPOINT_PERIOD``
and ``TEST.EVAL_PERIOD`` by the same factor. The measurement itself is not part of the budget, and
neither is evaluation (detectron2's "Overall training speed" line reports the training time).

Nothing in detectron2 or fvcore does this (their schedules are in iterations only). It belongs to
the engine (a trainer and a hook), not to the models: :class:`BudgetTrainer` ends a shortened run
with an exception, which is an experiment's need, not a model's.
"""
import logging
import math
import time

from typing import Callable, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase, hooks
from detectron2.utils.events import EventStorage

from .trainer import Trainer

__all__ = ["measure_seconds_per_iteration", "fit_schedule_to_budget", "TimeBudgetHook", "BudgetReached", "BudgetTrainer"]

logger = logging.getLogger(__name__)

#: Share of the budget the fitted schedule aims at. A step's cost varies with the sampled image
#: sizes and with the machine (on a shared 2-core machine the median over 20-step windows of one
#: run ranged over +-15%, and a 20-step measurement came out 19% below a run's mean; see
#: docs/results.md); hence 40 measured steps and an 8% margin.
BUDGET_SAFETY = 0.92


#: Share of the budget that ``train_net --budget-minutes`` lets the measurement take at most
#: (2 minutes of 20): a few steps of a slow config estimate its cost as well as 50 would, and
#: the hook corrects the estimate during training.
MEASURE_BUDGET_SHARE = 0.1

#: At least this many timed steps, even when ``max_seconds`` has passed before them.
MIN_TIMED_STEPS = 5


def measure_seconds_per_iteration(
    cfg: CfgNode,
    trainer_cls,
    iterations: int = 40,
    warmup: int = 10,
    max_seconds: Optional[float] = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Mean wall time of one training step (data, forward, backward, SGD step) of ``cfg``.

    Builds the model, optimizer and training loader with ``trainer_cls``'s builders (as its
    training would), runs ``warmup`` untimed steps (allocator, oneDNN kernel selection) and then
    ``iterations`` timed ones. The model is discarded afterwards.

    ``max_seconds`` caps the measurement for configs whose steps take seconds (Mask R-CNN R50 on
    a CPU: 50 steps would take longer than a tenth of the budget): the warm-up ends after a
    quarter of it (at least one step), the timed steps after all of it (at least
    ``MIN_TIMED_STEPS``). :class:`TimeBudgetHook` corrects the estimate during training anyway.
    """
    if iterations < 1 or warmup < 0:
        raise ValueError(f"measure_seconds_per_iteration: iterations must be >= 1 and warmup >= 0, got {iterations}, {warmup}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"measure_seconds_per_iteration: max_seconds must be > 0, got {max_seconds}")
    cap = math.inf if max_seconds is None else float(max_seconds)
    model = trainer_cls.build_model(cfg)
    model.train()
    optimizer = trainer_cls.build_optimizer(cfg, model)
    loader = iter(trainer_cls.build_train_loader(cfg))

    def train_step(step: int) -> float:
        """One SGD step; returns the clock after it."""
        losses = model(next(loader))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"measure_seconds_per_iteration: loss became {loss.item()} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return clock()

    with EventStorage(0):  # detectron2's heads log their statistics into one
        start = clock()
        warm_start, warmed = start, 0
        while warmed < warmup:
            start = train_step(warmed)
            warmed += 1
            if start - warm_start >= cap / 4:
                break
        timed, now = 0, start
        while timed < iterations:
            now = train_step(warmed + timed)
            timed += 1
            if timed >= min(MIN_TIMED_STEPS, iterations) and now - start >= cap:
                break
    seconds = (now - start) / timed
    logger.info("Measured %.3f s per training iteration over %d steps (after %d warm-up steps)", seconds, timed, warmed)
    del loader  # stops the loader's worker processes, if any
    return seconds


def fit_schedule_to_budget(cfg: CfgNode, seconds_per_iteration: float, budget_minutes: float) -> CfgNode:
    """A copy of ``cfg`` whose schedule fills ``budget_minutes`` at ``seconds_per_iteration``.

    ``SOLVER.MAX_ITER`` becomes ``floor(BUDGET_SAFETY * budget / seconds_per_iteration)``; the LR
    ``STEPS``, ``CHECKPOINT_PERIOD`` and ``TEST.EVAL_PERIOD`` (if > 0) keep their fraction of the
    schedule; ``WARMUP_ITERS`` is kept unless it would exceed a tenth of the new schedule.
    """
    if not seconds_per_iteration > 0:
        raise ValueError(f"fit_schedule_to_budget: seconds_per_iteration must be > 0, got {seconds_per_iteration}")
    if not budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be > 0, got {budget_minutes}")
    old_max = cfg.SOLVER.MAX_ITER
    new_max = int(math.floor(BUDGET_SAFETY * budget_minutes * 60.0 / seconds_per_iteration))
    if new_max < 1:
        raise ValueError(
            f"--budget-minutes {budget_minutes}: one iteration takes {seconds_per_iteration:.2f} s, "
            "the budget does not fit a single one"
        )

    def scaled(value: int) -> int:
        return _scaled_iteration(value, old_max, new_max)

    out = cfg.clone()
    was_frozen = out.is_frozen()
    out.defrost()
    out.SOLVER.MAX_ITER = new_max
    out.SOLVER.STEPS = _fitted_steps(cfg.SOLVER.STEPS, old_max, new_max)
    out.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, new_max // 10)
    out.SOLVER.CHECKPOINT_PERIOD = scaled(cfg.SOLVER.CHECKPOINT_PERIOD)
    if cfg.TEST.EVAL_PERIOD > 0:
        out.TEST.EVAL_PERIOD = scaled(cfg.TEST.EVAL_PERIOD)
    if was_frozen:
        out.freeze()
    logger.info(
        "Schedule fitted to %.1f minutes at %.3f s / iteration: MAX_ITER %d -> %d, STEPS %s -> %s",
        budget_minutes, seconds_per_iteration, old_max, new_max, tuple(cfg.SOLVER.STEPS), out.SOLVER.STEPS,
    )
    return out


class BudgetReached(BaseException):
    """Raised by :class:`TimeBudgetHook` to end detectron2's training loop at the shortened
    schedule's last iteration. A ``BaseException`` so that ``TrainerBase.train``'s
    ``except Exception`` does not log it as a failure; its ``finally`` still runs the hooks'
    ``after_train`` (the final evaluation). :meth:`BudgetTrainer.train` catches it."""


class TimeBudgetHook(HookBase):
    """Keeps a run inside its wall-clock budget when the machine's speed drifts.

    :func:`fit_schedule_to_budget` plans the schedule from a short measurement, but on a shared
    machine a step's cost drifts by up to 20% within a run. Every
    ``period`` iterations this hook divides the time left by the mean step time so far; when
    fewer iterations fit than the schedule has, it shortens the schedule the way
    :func:`fit_schedule_to_budget` scales it: ``trainer.max_iter``, the LR steps not yet passed
    (the scheduler is rebuilt at the current iteration), the checkpointer's final save, and ends
    the loop there. When the machine runs faster again later (a burst of load during the first
    iterations made the estimate pessimistic: a run was cut from 900 to 455 iterations and used
    half its budget), it lengthens a shortened schedule the same way, by at least ``period``
    iterations at a time, but never past the schedule planned at the start: detectron2's loop runs
    over ``range(start, max_iter)`` fixed when training starts. Registered last, so every other
    hook has seen an iteration before the hook acts on it. Nothing in detectron2 or fvcore adapts a
    schedule to time.
    """

    def __init__(
        self,
        cfg: CfgNode,
        budget_seconds: float,
        period: int = 20,
        clock: Callable[[], float] = time.perf_counter,
        checkpointer: Optional[hooks.PeriodicCheckpointer] = None,
    ):
        """``checkpointer``: the trainer's periodic checkpointer, whose final save moves to the
        shortened end (:class:`BudgetTrainer` passes its own)."""
        if not budget_seconds > 0 or period < 1:
            raise ValueError(f"TimeBudgetHook: budget_seconds must be > 0 and period >= 1, got {budget_seconds}, {period}")
        self._checkpointer = checkpointer
        self._cfg = cfg.clone()
        self._budget = float(budget_seconds)
        self._period = period
        self._clock = clock
        self.shortened_to = None  # the MAX_ITER the hook set, while it is short of the planned one

    def before_train(self):
        self._start_time = self._clock()
        self._start_iter = self.trainer.iter
        self._loop_end = self.trainer.max_iter

    def after_step(self):
        done = self.trainer.iter + 1  # iterations finished, counted from 0
        if self.trainer.max_iter < self._loop_end and done >= self.trainer.max_iter:
            # what detectron2's loop does after its last iteration: after_train then sees a
            # finished run (iter == max_iter), and the final evaluation is stored at a new
            # iteration, which the JSON writer writes (it skips iterations already written)
            self.trainer.iter = done
            raise BudgetReached(f"time budget: stopped after iteration {done} of the shortened schedule")
        steps = done - self._start_iter
        if steps % self._period:
            return
        elapsed = self._clock() - self._start_time
        fits = done + int(max(0.0, self._budget - elapsed) / (elapsed / steps))
        # at least one more iteration: the other hooks must see the new end before the last one
        new_max = max(fits, done + 1)
        if new_max < self.trainer.max_iter:
            self._reschedule(new_max, done)
        elif self.trainer.max_iter < self._loop_end and new_max >= self.trainer.max_iter + self._period:
            self._reschedule(min(new_max, self._loop_end), done)

    def _reschedule(self, new_max: int, done: int) -> None:
        old_max = self.trainer.max_iter
        cfg = self._cfg
        cfg.defrost()
        cfg.SOLVER.STEPS = _scaled_future_steps(tuple(cfg.SOLVER.STEPS), done, old_max, new_max)
        cfg.SOLVER.MAX_ITER = new_max
        cfg.freeze()
        scheduler = self.trainer.build_lr_scheduler(cfg, self.trainer.optimizer)  # (a classmethod)
        # continue at the current iteration: the LRScheduler hook has stepped the old one `done` times
        scheduler.last_epoch = done - 1
        scheduler.step()
        self.trainer.scheduler = scheduler
        self.trainer.max_iter = new_max
        if self._checkpointer is not None:
            self._checkpointer.max_iter = new_max
        self.shortened_to = new_max if new_max < self._loop_end else None
        logger.info(
            "Time budget: %.1f of %.1f minutes used after %d iterations; MAX_ITER %d -> %d, STEPS -> %s",
            (self._clock() - self._start_time) / 60, self._budget / 60, done, old_max, new_max, cfg.SOLVER.STEPS,
        )


def _scaled_iteration(value: int, old_max: int, new_max: int, lowest: int = 1) -> int:
    """An iteration number of a schedule of ``old_max`` iterations moved to one of ``new_max``:
    same fraction of the schedule, kept within ``[lowest, new_max]``."""
    return max(lowest, min(new_max, int(round(value * (new_max / old_max)))))


def _fitted_steps(steps: Tuple[int, ...], old_max: int, new_max: int) -> Tuple[int, ...]:
    """LR steps of a schedule of ``old_max`` iterations moved to one of ``new_max``, each keeping
    its fraction of the schedule. Steps at or past ``old_max`` never happen in the user's schedule
    (detectron2 ignores them with a warning) and are dropped; the others stay strictly inside the
    new schedule, as fvcore's multi-step schedule requires (a step at ``new_max`` is refused),
    and a step that would coincide with an earlier one is merged into it."""
    kept = [s for s in steps if s < old_max]
    if len(kept) < len(steps):
        logger.warning(
            "SOLVER.STEPS %s: %s at or past SOLVER.MAX_ITER %d never happen and are dropped",
            tuple(steps), [s for s in steps if s >= old_max], old_max,
        )
    if new_max < 2:
        return ()
    return tuple(sorted({min(new_max - 1, _scaled_iteration(s, old_max, new_max)) for s in kept}))


def _scaled_future_steps(steps: Tuple[int, ...], done: int, old_max: int, new_max: int) -> Tuple[int, ...]:
    """LR steps after shortening a schedule from ``old_max`` to ``new_max`` iterations at
    iteration ``done``: steps already passed stay, the others keep their fraction of the schedule
    (but stay in the future and inside it)."""
    return tuple(s if s <= done else _scaled_iteration(s, old_max, new_max, lowest=done + 1) for s in steps)


class BudgetTrainer(Trainer):
    """The project's trainer with a :class:`TimeBudgetHook` registered last, whose shortened run
    ends normally: :meth:`train` returns the final evaluation as :meth:`Trainer.train` does."""

    def __init__(self, cfg: CfgNode, budget_seconds: float, **hook_kwargs):
        self._budget_seconds = budget_seconds
        self._hook_kwargs = hook_kwargs
        super().__init__(cfg)

    def build_hooks(self):
        built = super().build_hooks()
        checkpointer = next((h for h in built if isinstance(h, hooks.PeriodicCheckpointer)), None)
        self.budget_hook = TimeBudgetHook(self.cfg, self._budget_seconds, checkpointer=checkpointer, **self._hook_kwargs)
        return built + [self.budget_hook]

    def train(self):
        try:
            return super().train()
        except BudgetReached:
            return self.eval_results
