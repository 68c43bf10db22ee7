#!/usr/bin/env python
"""Train and evaluate instfcn-d2 models (and detectron2's Mask R-CNN baseline), detectron2 style.

Examples:
  python tools/train_net.py --config-file configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml
  python tools/train_net.py --config-file CFG --resume                      # continue from last_checkpoint
  python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
  python tools/train_net.py --config-file CFG --num-gpus 2                  # multi-process (GLOO on CPU)
  python tools/train_net.py --config-file CFG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT

Trailing ``KEY VALUE`` pairs override config keys (e.g. ``SOLVER.MAX_ITER 100``).
"""
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import instfcn_d2  # noqa: F401  (registers datasets and models)
from instfcn_d2.checkpoint import StrictDetectionCheckpointer
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.engine import Trainer


def setup(args):
    cfg = get_instfcn_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # Strict: evaluating weights that do not fit would silently evaluate a random model.
        StrictDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # detectron2 v0.6's train() returns the final evaluation only with TEST.EXPECTED_RESULTS set.
    return getattr(trainer, "_last_eval_results", None)


def run(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``) and launch; returns the main process's results."""
    args = default_argument_parser(epilog=__doc__).parse_args(argv)
    if args.num_gpus * args.num_machines <= 1:
        return main(args)  # detectron2's launch() drops the return value
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    run()
