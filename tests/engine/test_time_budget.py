"""``--budget-minutes``: the schedule scaled to a wall-clock budget (instfcn_d2/engine/time_budget.py)."""
import json

import pytest

from conftest import REPO_ROOT, load_tool
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.engine import time_budget
BUDGET_SAFETY, fit_schedule_to_budget = time_budget.BUDGET_SAFETY, time_budget.fit_schedule_to_budget

FCIS_SHAPES = str(REPO_ROOT / "configs" / "shapes" / "fcis_R18_cpu.yaml")


def _cfg(**solver):
    cfg = get_instfcn_cfg(FCIS_SHAPES)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 1000, (800, 940)
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD = 100, 500, 250
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def test_schedule_keeps_its_shape_and_fills_the_budget():
    cfg = _cfg()
    fitted = fit_schedule_to_budget(cfg, seconds_per_iteration=0.5, budget_minutes=20)
    expected_max = int(BUDGET_SAFETY * 20 * 60 / 0.5)  # 2208
    assert fitted.SOLVER.MAX_ITER == expected_max
    ratio = expected_max / 1000
    assert fitted.SOLVER.STEPS == (round(800 * ratio), round(940 * ratio))
    assert fitted.SOLVER.CHECKPOINT_PERIOD == round(500 * ratio) and fitted.TEST.EVAL_PERIOD == round(250 * ratio)
    assert fitted.SOLVER.WARMUP_ITERS == 100
    assert cfg.SOLVER.MAX_ITER == 1000  # the input is not modified


def test_short_budget_shortens_warmup_and_keeps_steps_inside():
    fitted = fit_schedule_to_budget(_cfg(), seconds_per_iteration=2.0, budget_minutes=1)
    expected_max = int(BUDGET_SAFETY * 60 / 2.0)  # 27 iterations
    assert fitted.SOLVER.MAX_ITER == expected_max
    assert fitted.SOLVER.WARMUP_ITERS == expected_max // 10
    assert all(1 <= s <= expected_max for s in fitted.SOLVER.STEPS)
    frozen = _cfg()
    frozen.freeze()
    assert fit_schedule_to_budget(frozen, 2.0, 1).is_frozen()


def test_bad_budgets_are_named():
    with pytest.raises(ValueError, match="--budget-minutes must be > 0"):
        fit_schedule_to_budget(_cfg(), 0.5, 0)
    with pytest.raises(ValueError, match="does not fit a single one"):
        fit_schedule_to_budget(_cfg(), 120.0, 1)
    with pytest.raises(ValueError, match="seconds_per_iteration must be > 0"):
        fit_schedule_to_budget(_cfg(), 0.0, 1)


def test_steps_past_max_iter_are_dropped_and_kept_inside_the_fitted_schedule():
    """A config whose SOLVER.MAX_ITER (here 3, set on the command line) is below its STEPS: the
    steps never happen in the user's schedule; fvcore refused the scaled ones (a milestone equal to
    the fitted MAX_ITER)."""
    cfg = _cfg(MAX_ITER=3, STEPS=(800, 940))
    fitted = fit_schedule_to_budget(cfg, seconds_per_iteration=2.0, budget_minutes=1)
    assert fitted.SOLVER.STEPS == ()
    fitted = fit_schedule_to_budget(_cfg(MAX_ITER=1000, STEPS=(999, 1000)), 2.0, 1)
    assert fitted.SOLVER.STEPS == (fitted.SOLVER.MAX_ITER - 1,)
    from detectron2.solver import build_lr_scheduler
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    build_lr_scheduler(fitted, optimizer)  # fvcore accepts the fitted schedule


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "ten"])
def test_train_net_names_a_bad_budget_flag(value, capsys):
    tool = load_tool("train_net")
    with pytest.raises(SystemExit):
        tool.argument_parser().parse_args(["--config-file", FCIS_SHAPES, "--budget-minutes", value])
    assert "--budget-minutes" in capsys.readouterr().err


@pytest.mark.slow
def test_train_net_budget_measures_then_trains_the_fitted_schedule(tmp_path):
    import instfcn_d2  # noqa: F401
    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("budget_shapes", num_train=4, num_val=2, image_size=96)
    train_net = load_tool("train_net")
    opts = [
        "DATASETS.TRAIN", "('budget_shapes_train',)", "DATASETS.TEST", "('budget_shapes_val',)",
        "SOLVER.IMS_PER_BATCH", "1", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.FCIS.CONV_NEW_DIM", "32", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    args = train_net.argument_parser().parse_args(["--config-file", FCIS_SHAPES, "--budget-minutes", "0.1", *opts])
    cfg = train_net.setup(args)
    # how many steps 6 s hold depends on the machine's load; the schedule is shortened and keeps its shape
    assert 1 <= cfg.SOLVER.MAX_ITER < 2350
    assert all(1 <= step <= cfg.SOLVER.MAX_ITER for step in cfg.SOLVER.STEPS)
    saved = get_instfcn_cfg(str(tmp_path / "config.yaml"))
    assert saved.SOLVER.MAX_ITER == cfg.SOLVER.MAX_ITER  # the fitted schedule is the one recorded


def test_future_steps_are_scaled_and_passed_ones_kept():
    _scaled_future_steps = time_budget._scaled_future_steps

    # shortened from 1000 to 500 iterations at iteration 450: the step at 200 has passed and
    # stays; 800 -> 400 would lie in the past, so it comes next (451); 940 -> 470
    assert _scaled_future_steps((200, 800, 940), done=450, old_max=1000, new_max=500) == (200, 451, 470)
    assert _scaled_future_steps((800, 940), done=100, old_max=1000, new_max=500) == (400, 470)


@pytest.mark.slow
def _hook_cfg(tmp_path, test_datasets: str):
    """A tiny FCIS on 4 synthetic images, planned for 40 iterations with LR steps (30, 35)."""
    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("budget_hook_shapes", num_train=4, num_val=2, image_size=96)
    return get_instfcn_cfg(FCIS_SHAPES, [
        "DATASETS.TRAIN", "('budget_hook_shapes_train',)", "DATASETS.TEST", test_datasets,
        "SOLVER.IMS_PER_BATCH", "1", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.FCIS.CONV_NEW_DIM", "32", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path),
        "SOLVER.MAX_ITER", "40", "SOLVER.STEPS", "(30, 35)", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
    ])  # fmt: skip


def test_hook_shortens_a_run_the_machine_is_too_slow_for(tmp_path):
    """A fake clock of 1 s per iteration and a 20 s budget: planned 40 iterations, the hook cuts
    the run to 20 at its first check, scales the LR steps (30, 35) -> (15, 18), saves the final
    model at the new end and evaluates; the LR ends at base * gamma^2."""
    import os

    from detectron2.engine import HookBase

    cfg = _hook_cfg(tmp_path, "('budget_hook_shapes_val',)")
    now = [0.0]

    class Tick(HookBase):  # one second per iteration, counted before the budget hook looks
        def before_step(self):
            now[0] += 1.0

    trainer = time_budget.BudgetTrainer(cfg, budget_seconds=20.0, period=5, clock=lambda: now[0])
    trainer.register_hooks([Tick()])
    budget = trainer.budget_hook
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert budget.shortened_to == 20 and trainer.max_iter == 20 and trainer.iter == 20  # as a finished loop
    assert trainer.scheduler.last_epoch == 20
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA**2)
    assert os.path.exists(tmp_path / "model_final.pth")
    assert "segm" in results  # the final evaluation ran
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines() if line.strip()]
    assert rows[-1]["segm/AP"] == pytest.approx(results["segm"]["AP"])  # and reached metrics.json


def test_hook_lengthens_a_shortened_run_again_when_the_machine_speeds_up(tmp_path):
    """A load burst during the first 5 iterations (3 s each, then 0.2 s): the first check cuts the
    planned 40 iterations to 13; later checks see the faster machine and lengthen the run step by
    step back to the planned 40, never past it, and the loop ends there as a normal one."""
    from detectron2.engine import HookBase

    cfg = _hook_cfg(tmp_path, "()")
    now = [0.0]
    maxima = []

    class Tick(HookBase):
        def before_step(self):
            now[0] += 3.0 if self.trainer.iter < 5 else 0.2

    class Watch(HookBase):
        def after_step(self):
            maxima.append(self.trainer.max_iter)

    trainer = time_budget.BudgetTrainer(cfg, budget_seconds=40.0, period=5, clock=lambda: now[0])
    trainer.register_hooks([Tick()])
    trainer._hooks.insert(0, Watch())  # sees max_iter before the budget hook changes it
    trainer._hooks[0].trainer = trainer
    trainer.resume_or_load(resume=False)
    trainer.train()
    changes = [m for i, m in enumerate(maxima) if i == 0 or m != maxima[i - 1]]
    assert changes[:2] == [40, 13] and changes[-1] == 40 and max(maxima) == 40, changes
    assert all(a < b for a, b in zip(changes[1:], changes[2:])), changes  # lengthened step by step
    assert trainer.iter == 40 and trainer.budget_hook.shortened_to is None
    assert trainer.scheduler.last_epoch == 40
    assert now[0] <= 40.0  # within the budget


def test_measurement_of_a_slow_config_stops_at_its_time_cap():
    """A fake clock of 10 s per step and a 60 s cap: the warm-up stops after 15 s (2 steps), the
    timing after 60 s (6 steps) instead of 10 + 40 steps, and the mean is the clock's 10 s."""
    import instfcn_d2  # noqa: F401
    from instfcn_d2.data import register_synthetic_shapes
    from instfcn_d2.engine import Trainer

    measure_seconds_per_iteration = time_budget.measure_seconds_per_iteration

    register_synthetic_shapes("budget_measure_shapes", num_train=4, num_val=2, image_size=96)
    cfg = get_instfcn_cfg(FCIS_SHAPES, [
        "DATASETS.TRAIN", "('budget_measure_shapes_train',)", "DATASETS.TEST", "('budget_measure_shapes_val',)",
        "SOLVER.IMS_PER_BATCH", "1", "INPUT.MIN_SIZE_TRAIN", "(96,)", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
        "MODEL.FCIS.CONV_NEW_DIM", "32",
    ])  # fmt: skip
    calls = []

    def clock():  # called once before the first step and once after each step
        calls.append(None)
        return 10.0 * (len(calls) - 1)

    seconds = measure_seconds_per_iteration(cfg, Trainer, iterations=40, warmup=10, max_seconds=60.0, clock=clock)
    assert seconds == pytest.approx(10.0)
    assert len(calls) == 1 + 2 + 6
    with pytest.raises(ValueError, match="max_seconds must be > 0"):
        measure_seconds_per_iteration(cfg, Trainer, max_seconds=0.0)
