#!/usr/bin/env python
"""Seconds per training iteration of FCIS and BiSeg against detectron2's Mask R-CNN, on a user's data.

Every model trains in one process on the same COCO-format dataset (``--dataset-dir`` with
``train.json`` and ``images/``; default ``$DETECTRON2_DATASETS/facade_dev``), from the
``configs/custom/`` configs (one trunk for all: half-width R18-GN + FPN), with the input scales and
anchor sizes that ``tools/suggest_sizes.py`` derives from the data, the dataset's number of
classes, random initial weights (as training from scratch starts), the configs' batch size and
optimizer. The iterations run *interleaved*: one iteration of every model, then the next, in
alternating order, so that the machine's speed drifting during the run moves every model alike.
Loading a batch is not timed (every model's loader is the trainer's, without worker processes);
an iteration is the forward with its losses, the backward and the optimizer step.

Rows (``--models``, default all):

- ``mask_rcnn``: ``configs/custom/mask_rcnn_R18_FPN_cpu.yaml``, the baseline (ratio 1.00);
- ``fcis``: ``configs/custom/fcis_R18_FPN_cpu.yaml`` (maps on p2);
- ``fcis_levels``: maps on p2 ... p5, each RoI read from its level;
- ``fcis_width`` / ``fcis_levels_width``: the same with ``MODEL.FCIS.CONV_NEW_DIM`` from the number
  of classes (``suggest_sizes``' width rule);
- ``fcis_from_features``, ``fcis_levels_from_features``, ``fcis_levels_width_from_features``: the
  same, trained with ``MODEL.FCIS.ASSEMBLE_FROM_FEATURES`` (the sampled RoIs read from conv_new's
  features and the map convs' weights, the maps never made);
- ``biseg``: ``configs/custom/biseg_R18_FPN_cpu.yaml`` (both sets on p2); ``biseg_width``: with the
  width rule.

Stages (exclusive wall time of the forward): ``trunk`` (backbone), ``rpn``, ``heads`` (FCIS's /
BiSeg's maps and per-RoI losses, or Mask R-CNN's RoI heads), ``semantic`` (BiSeg's semantic branch);
then ``backward`` and ``step``. Targets: FCIS at most 1.2x and BiSeg at most 1.5x Mask R-CNN's
seconds per iteration.

Usage::

    python tools/benchmark_training.py --dataset-dir DIR --iterations 20 --out docs/benchmark_training.png
"""
import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List

import torch

from instfcn_d2.benchmark import REPO, StageTimer, device_description

STAGES = ["trunk", "rpn", "heads", "semantic", "backward", "step"]
TARGETS = {"fcis": 1.2, "biseg": 1.5}  # at most this many times Mask R-CNN's seconds per iteration
FCIS_CONFIG = "configs/custom/fcis_R18_FPN_cpu.yaml"
BISEG_CONFIG = "configs/custom/biseg_R18_FPN_cpu.yaml"
LEVELS = ["MODEL.ROI_HEADS.IN_FEATURES", '["p2","p3","p4","p5"]']
FROM_FEATURES = ["MODEL.FCIS.ASSEMBLE_FROM_FEATURES", "True"]


def model_specs(conv_new_dim: int) -> Dict[str, tuple]:
    """``key -> (label, config, overrides)``."""
    width = ["MODEL.FCIS.CONV_NEW_DIM", str(conv_new_dim)]
    return {
        "mask_rcnn": ("Mask R-CNN R18-FPN, half width", "configs/custom/mask_rcnn_R18_FPN_cpu.yaml", []),
        "fcis": ("FCIS, maps on p2", FCIS_CONFIG, []),
        "fcis_levels": ("FCIS, maps on p2 ... p5", FCIS_CONFIG, LEVELS),
        "fcis_width": (f"FCIS, maps on p2, CONV_NEW_DIM {conv_new_dim}", FCIS_CONFIG, width),
        "fcis_levels_width": (f"FCIS, maps on p2 ... p5, CONV_NEW_DIM {conv_new_dim}", FCIS_CONFIG, LEVELS + width),
        "fcis_from_features": ("FCIS, maps on p2, from features", FCIS_CONFIG, FROM_FEATURES),
        "fcis_levels_from_features": ("FCIS, maps on p2 ... p5, from features", FCIS_CONFIG, LEVELS + FROM_FEATURES),
        "fcis_levels_width_from_features": (
            f"FCIS, maps on p2 ... p5, CONV_NEW_DIM {conv_new_dim}, from features", FCIS_CONFIG,
            LEVELS + width + FROM_FEATURES,
        ),
        "biseg": ("BiSeg, both sets on p2", BISEG_CONFIG, []),
        "biseg_width": (f"BiSeg, both sets on p2, CONV_NEW_DIM {conv_new_dim}", BISEG_CONFIG, width),
    }


@dataclass
class Run:
    key: str
    label: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: object  # iterator of training batches
    timer: StageTimer
    totals: List[float] = field(default_factory=list)
    stages: Dict[str, List[float]] = field(default_factory=dict)

    def median(self, stage: str = "") -> float:
        values = self.stages.get(stage, []) if stage else self.totals
        return statistics.median(values) if values else 0.0


def build_run(key: str, label: str, config: str, opts: List[str], device: str) -> Run:
    from detectron2.modeling import build_model

    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.data.coco_json import apply_coco_json_config
    from instfcn_d2.engine.trainer import Trainer

    cfg = get_instfcn_cfg(os.path.join(REPO, config), ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + opts)
    apply_coco_json_config(cfg)
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    timer = StageTimer(device)
    timer.hook_module(model.backbone, "trunk")
    timer.hook_module(model.proposal_generator, "rpn")
    timer.hook_module(model.roi_heads, "heads")
    if hasattr(model, "sem_seg_head"):
        timer.hook_module(model.sem_seg_head, "semantic")
    if hasattr(model, "score_maps"):  # FCIS / BiSeg compute their maps before the RoI heads' forward
        timer.wrap_attr(model, "score_maps", "heads")
    return Run(key, label, model, Trainer.build_optimizer(cfg, model), iter(Trainer.build_train_loader(cfg)), timer)


def step(run: Run, record: bool) -> None:
    """One training iteration of ``run``; its times are kept when ``record``."""
    batch = next(run.data)  # not timed
    timer = run.timer
    timer.reset()
    start = timer.now()
    losses = run.model(batch)
    loss = sum(losses.values())
    forward_end = timer.now()
    run.optimizer.zero_grad()
    loss.backward()
    backward_end = timer.now()
    run.optimizer.step()
    end = timer.now()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{run.key}: the loss is {float(loss)}")
    if record:
        run.totals.append(end - start)
        for stage, value in dict(timer.times, backward=backward_end - forward_end, step=end - backward_end).items():
            run.stages.setdefault(stage, []).append(value)


def report(runs: List[Run]) -> List[str]:
    base = runs[0].median()
    lines = ["| model | s / it (median) | x " + runs[0].label + " | " + " | ".join(STAGES) + " |",
             "|---|---:|---:|" + "---:|" * len(STAGES)]  # fmt: skip
    for r in runs:
        lines.append(f"| {r.label} | {r.median():.3f} | {r.median() / base:.2f} | "
                     + " | ".join(f"{r.median(s):.3f}" for s in STAGES) + " |")
    lines.append("")
    for r in runs[1:]:
        target = TARGETS.get(r.key.split("_")[0])
        if target is not None:
            ratio = r.median() / base
            lines.append(f"{r.label}: {ratio:.2f}x {runs[0].label} (target <= {target}x): "
                         f"{'met' if ratio <= target else 'missed'}")
    return lines


def plot(runs: List[Run], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.6 * len(runs) + 1.6))
    labels = [r.label for r in runs][::-1]
    left = [0.0] * len(runs)
    for stage in STAGES:
        values = [r.median(stage) for r in runs][::-1]
        ax.barh(labels, values, left=left, label=stage)
        left = [a + b for a, b in zip(left, values)]
    ax.set_xlabel("seconds per training iteration (median; stages: medians)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    doc = __doc__
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dataset-dir", default=None, help="folder with train.json and images/ (default: facade_dev)")
    p.add_argument("--models", default=",".join(model_specs(64)), help="comma-separated rows (default: all)")
    p.add_argument("--iterations", type=int, default=20, help="timed iterations per model (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per model first (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "benchmark_training.png"), help="bar plot PNG")
    args = p.parse_args(argv)
    directory = args.dataset_dir or os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "facade_dev")
    train_json = os.path.join(directory, "train.json")
    if not os.path.isfile(train_json):
        p.error(f"--dataset-dir {directory}: no train.json there (a folder with train.json and images/)")
    if args.iterations < 1 or args.warmup < 0:
        p.error("--iterations must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    import instfcn_d2  # noqa: F401  (registers the models)
    from detectron2.utils.events import EventStorage

    from instfcn_d2.data.object_sizes import config_overrides, suggest_sizes

    sizes = suggest_sizes(train_json)
    specs = model_specs(sizes.conv_new_dim)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(specs))
    if unknown or not keys:
        p.error(f"--models: unknown {unknown}; expected some of {list(specs)}")
    if keys[0] != "mask_rcnn":
        keys = ["mask_rcnn"] + [k for k in keys if k != "mask_rcnn"]  # the baseline of the ratios
    common = [
        "DATASETS.COCO_JSON_TRAIN", train_json, "DATASETS.COCO_IMAGE_ROOT_TRAIN", os.path.join(directory, "images"),
        "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
    ] + config_overrides(sizes, "GeneralizedRCNN", ("scale", "anchors"))
    device_desc = device_description(args.device)
    print(f"device: {device_desc}; torch {torch.__version__}; data: {directory}; {sizes.describe()}", flush=True)
    runs = []
    with EventStorage():
        for key in keys:
            label, config, opts = specs[key]
            t0 = time.perf_counter()
            runs.append(build_run(key, label, config, common + opts, args.device))
            print(f"[{key}] built in {time.perf_counter() - t0:.1f} s ({config} {' '.join(opts)})", flush=True)
        for i in range(args.warmup + args.iterations):
            record = i >= args.warmup
            for run in runs if i % 2 == 0 else runs[::-1]:
                step(run, record)
            if record:
                done = i - args.warmup + 1
                print(f"iteration {done}/{args.iterations}: "
                      + ", ".join(f"{r.key} {r.totals[-1]:.2f} s" for r in runs), flush=True)  # fmt: skip
            else:
                print(f"warm-up {i + 1}/{args.warmup}", flush=True)
    for run in runs:
        run.timer.remove()
    print()
    print("\n".join(report(runs)))
    plot(runs, args.out, f"training iteration, {sizes.num_classes} classes ({os.path.basename(directory)})\n{device_desc}")
    print(f"\nplot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
