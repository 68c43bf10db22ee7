#!/usr/bin/env python
"""Train and evaluate instfcn-d2 models (and detectron2's Mask R-CNN baseline), detectron2 style.

Examples:
  python tools/train_net.py --config-file configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml
  python tools/train_net.py --config-file CFG --resume                      # continue from last_checkpoint
  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
  python tools/train_net.py --config-file CFG --eval-only --resume          # the last checkpoint of OUTPUT_DIR
  python tools/train_net.py --config-file CFG --num-gpus 2                  # multi-process (GLOO on CPU)
  python tools/train_net.py --config-file CFG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT
  python tools/train_net.py --config-file CFG --budget-minutes 20          # schedule fitted to 20 minutes
  python tools/train_net.py --config-file CFG --output-exists move         # OUTPUT_DIR's previous run moved aside
  python tools/train_net.py --config-file CFG DATASETS.COCO_JSON_TRAIN train.json DATASETS.COCO_IMAGE_ROOT_TRAIN images/ \
      DATASETS.COCO_JSON_TEST val.json DATASETS.COCO_IMAGE_ROOT_TEST images/   # your COCO-format data

``DATASETS.COCO_JSON_TRAIN`` / ``_TEST`` (with their image folders) register those files with
``register_coco_instances`` and set DATASETS.TRAIN / TEST and MODEL.ROI_HEADS.NUM_CLASSES from them,
as the log says (instfcn_d2/data/coco_json.py, docs/custom_dataset.md).

``--budget-minutes`` first times 40 training steps of CFG on this machine (a throw-away model, not
counted), then scales SOLVER.MAX_ITER, STEPS, CHECKPOINT_PERIOD and TEST.EVAL_PERIOD so that the
training fills the budget (instfcn_d2/engine/time_budget.py); the fitted config is the one saved
in OUTPUT_DIR/config.yaml. During training a hook shortens the schedule (and logs it) if the
machine turns out slower than measured, so the training never runs past the budget.

``--eval-only`` refuses to evaluate without weights (an empty MODEL.WEIGHTS and no checkpoint to
resume), which would report the metrics of a random model (``--allow-random-weights`` allows it),
and loads the weights strictly: a checkpoint that does not fit the model is an error naming the
file and the parameters (instfcn_d2/checkpoint.py, the check every tool makes). It writes the
results to OUTPUT_DIR/inference/results.json (the main process; launched runs return nothing).

Several machines (README, "Training across machines"): the same command on each, with
``--num-machines N --machine-rank 0..N-1 --dist-url tcp://MACHINE0:PORT``. A process that loses a
peer stops within ``--dist-timeout-minutes`` (default 10) naming it (instfcn_d2/engine/launch.py).

A training run holds OUTPUT_DIR: a second run started into it while it lives stops at once,
naming it (pid, host, start). A folder that a previous run trained in (last_checkpoint,
model_*.pth, metrics.json) is refused without ``--resume``, unless ``--output-exists move`` (moved
to OUTPUT_DIR.<date>-<time>) or ``--output-exists overwrite`` (trained over, detectron2's way)
says otherwise (instfcn_d2/engine/output_dir.py). ``--resume`` after a change of the number of
classes stops before loading, naming the checkpoint's and the config's.

Trailing ``KEY VALUE`` pairs override config keys (e.g. ``SOLVER.MAX_ITER 100``).
"""
import argparse
import logging
import math

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import instfcn_d2  # noqa: F401  (registers datasets and models)
from instfcn_d2.checkpoint import MissingWeightsError, StrictDetectionCheckpointer, require_trained_weights
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data.coco_json import apply_coco_json_config
from instfcn_d2.engine import BudgetTrainer, Trainer, fit_schedule_to_budget, measure_seconds_per_iteration
from instfcn_d2.engine.checks import check_num_classes
from instfcn_d2.engine.output_dir import OUTPUT_EXISTS_CHOICES, keep_training_config, prepare_training_output_dir
from instfcn_d2.engine.launch import (
    DEFAULT_DIST_TIMEOUT_MINUTES,
    check_resume_consistency,
    launch,
    report_lost_peer,
    write_eval_results,
)
from instfcn_d2.engine.time_budget import MEASURE_BUDGET_SHARE


def _positive_minutes(quantity: str):
    """An argparse ``type`` for a finite number of minutes > 0 (argparse names the flag);
    ``quantity`` names what the minutes are in the message."""

    def parse(text: str) -> float:
        try:
            minutes = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
        if not (minutes > 0 and math.isfinite(minutes)):
            raise argparse.ArgumentTypeError(f"{text!r}: the {quantity} must be a finite number of minutes > 0")
        return minutes

    return parse


def argument_parser():
    """detectron2's ``default_argument_parser`` plus ``--budget-minutes`` and ``--allow-random-weights``."""
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--budget-minutes",
        type=_positive_minutes("budget"),
        default=None,
        help="fit the schedule (SOLVER.MAX_ITER, STEPS, ...) to this many minutes of training on this machine",
    )
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="with --eval-only: evaluate even when MODEL.WEIGHTS is empty (a randomly initialised model)",
    )
    parser.add_argument(
        "--output-exists",
        choices=OUTPUT_EXISTS_CHOICES,
        default="refuse",
        help="training without --resume into an OUTPUT_DIR that holds a previous run (last_checkpoint, model_*.pth, "
        "metrics.json): refuse (default), move it aside to OUTPUT_DIR.<date>-<time>, or overwrite it",
    )
    parser.add_argument(
        "--dist-timeout-minutes",
        type=_positive_minutes("timeout"),
        default=DEFAULT_DIST_TIMEOUT_MINUTES,
        help="with several processes or machines: how long a process waits for the others (to join, or in a "
        "collective) before it stops with an error naming the lost peer (default %(default)g; detectron2's is 30). "
        "It must exceed what the main process does alone while the others wait: writing a checkpoint and "
        "computing the metrics of the evaluation (COCOeval, cityscapesscripts); raise it for large test sets",
    )
    return parser


def check_eval_weights(cfg, args, checkpointer) -> None:
    """``--eval-only`` needs weights: ``MODEL.WEIGHTS``, or ``--resume`` with a checkpoint in
    OUTPUT_DIR. Otherwise the project's weights check (``require_trained_weights``): an empty
    MODEL.WEIGHTS would evaluate a randomly initialised model and report its (meaningless) metrics,
    so exit with a message instead, unless ``--allow-random-weights``."""
    if args.resume and checkpointer.has_checkpoint():
        return
    try:
        require_trained_weights(
            cfg,
            getattr(args, "allow_random_weights", False),
            tool="train_net.py --eval-only",
            example="--eval-only MODEL.WEIGHTS OUTPUT_DIR/model_final.pth",
            alternative=f", or `--resume` to evaluate the last checkpoint of OUTPUT_DIR ({cfg.OUTPUT_DIR}, which has none)",
        )
    except MissingWeightsError as e:
        logging.getLogger("detectron2.train_net").error(str(e))
        raise SystemExit(str(e)) from None


def setup(args):
    cfg = get_instfcn_cfg(args.config_file, args.opts)
    # DATASETS.COCO_JSON_*: registered before anything reads DATASETS (in every launched process)
    dataset_notes = apply_coco_json_config(cfg)
    # a training takes OUTPUT_DIR (its lock; a previous run refused or moved) before writing into it
    folder_notes = [] if args.eval_only else prepare_training_output_dir(
        cfg.OUTPUT_DIR, resume=args.resume, output_exists=getattr(args, "output_exists", "refuse"))
    budget = getattr(args, "budget_minutes", None)
    if budget is not None and not args.eval_only:
        if args.num_gpus * args.num_machines > 1:
            raise ValueError("--budget-minutes times a single training process; run it without --num-gpus / --num-machines")
        seconds = measure_seconds_per_iteration(cfg, Trainer, max_seconds=MEASURE_BUDGET_SHARE * budget * 60)
        fitted = fit_schedule_to_budget(cfg, seconds, budget)
        note = (
            f"--budget-minutes {budget:g}: measured {seconds:.3f} s / training iteration; SOLVER.MAX_ITER "
            f"{cfg.SOLVER.MAX_ITER} -> {fitted.SOLVER.MAX_ITER}, STEPS {tuple(cfg.SOLVER.STEPS)} -> {fitted.SOLVER.STEPS}"
        )
        cfg = fitted
    cfg.freeze()
    # after the measurement: seeds the RNGs, so the training starts as it would without it
    with keep_training_config(cfg.OUTPUT_DIR, enabled=args.eval_only) as config_notes:
        default_setup(cfg, args)  # writes OUTPUT_DIR/config.yaml (an evaluation's: config_eval.yaml)
    # the project's own loggers (instfcn_d2.*) to the console and OUTPUT_DIR/log.txt, as detectron2's
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="instfcn_d2", abbrev_name="instfcn")
    for line in dataset_notes:
        logging.getLogger("detectron2.train_net").info(line)
    for line in folder_notes + config_notes:
        logging.getLogger("detectron2.train_net").warning(line)
    if budget is not None and not args.eval_only:
        logging.getLogger("detectron2.train_net").info(note)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.DATASETS.TEST:
            raise ValueError(
                "--eval-only: nothing to evaluate, DATASETS.TEST is empty; name the datasets "
                "(DATASETS.TEST, or DATASETS.COCO_JSON_TEST for a COCO JSON file)"
            )
        model = Trainer.build_model(cfg)
        # Strict: evaluating weights that do not fit would silently evaluate a random model.
        checkpointer = StrictDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume:
            check_resume_consistency(checkpointer)  # every process evaluates the same checkpoint
        check_eval_weights(cfg, args, checkpointer)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        # The model's classes against the evaluation data's (after the load: a checkpoint that does
        # not fit the config is reported as such first).
        check_num_classes(cfg, cfg.DATASETS.TEST, "DATASETS.TEST", load=True)
        with _lost_peer_reported(cfg, args):
            results = Trainer.test(cfg, model)
        if comm.is_main_process():
            # launch() drops main's return value: OUTPUT_DIR/inference/results.json keeps the numbers
            write_eval_results(results, cfg.OUTPUT_DIR)
            verify_results(cfg, results)
        return results

    budget = getattr(args, "budget_minutes", None)
    trainer = Trainer(cfg) if budget is None else BudgetTrainer(cfg, budget * 60.0)
    if args.resume:
        check_resume_consistency(trainer.checkpointer)  # every process continues from the same checkpoint
    trainer.resume_or_load(resume=args.resume)
    with _lost_peer_reported(cfg, args):
        return trainer.train()


def _lost_peer_reported(cfg, args):
    """Several processes: a peer lost during training or evaluation stops this one with a message
    (instfcn_d2.engine.launch.report_lost_peer) instead of gloo's / NCCL's bare error."""
    return report_lost_peer(
        timeout_minutes=getattr(args, "dist_timeout_minutes", None),
        output_dir=cfg.OUTPUT_DIR,
        log=logging.getLogger("detectron2.train_net"),
    )


def run(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``) and launch; returns the main process's results."""
    args = argument_parser().parse_args(argv)
    if args.num_gpus * args.num_machines <= 1:
        return main(args)  # detectron2's launch() drops the return value
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout_minutes=args.dist_timeout_minutes,
    )


if __name__ == "__main__":
    run()
