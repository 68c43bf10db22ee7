#!/usr/bin/env python
"""Train every model on one COCO-format dataset for the same wall-clock budget, then tabulate.

  python tools/custom_dataset_table.py --dataset-dir DIR --budget-minutes 12 --output output/table
  python tools/custom_dataset_table.py --dataset-dir DIR --rows fcis,mask_rcnn --jobs 1   # some rows
  python tools/custom_dataset_table.py --builtin --rows mask_rcnn,fcis_shapes_recipe_before  # shapes configs

``DIR`` holds ``train.json``, ``val.json`` (COCO instances, polygons or RLE) and ``images/`` (or
give ``--train-json`` / ``--val-json`` / ``--image-root``); ``--builtin`` instead trains each row on
its config's own datasets and scales (``configs/shapes/``: the built-in shapes). Each row is a committed config trained
from scratch with ``tools/train_net.py --budget-minutes``, its dataset given by the
``DATASETS.COCO_JSON_*`` keys (the classes follow the JSON; BiSeg derives its semantic labels from
the instances), with the same number of detections (proposals) per image for every model and the
same input scales for every detector (InstanceFCN keeps its own multi-scale input, as its paper).
``_auto`` rows take the input scales, anchor sizes and map stride that
:mod:`instfcn_d2.data.object_sizes` derives from the training set (``_auto_anchors``,
``_auto_anchors_stride``: only those parts, at the shared scales). Rows run ``--jobs`` at a time,
each on ``--threads`` threads, so with the defaults (2 jobs of 1 thread on a 2-core machine) two rows
always share the machine the same way. A row whose ``OUTPUT_DIR`` already holds a finished run is
read, not trained again (``--retrain`` to redo it).

Prints a markdown table (mask AP / AP50 / AP_s / AP_m / box AP for the detectors, AR@10 / 100 /
1000 for InstanceFCN, BiSeg's mean IU) and the commands, and writes ``table.md`` and
``mask_ap.png`` (a bar chart) under ``--output``.
"""
import argparse
import dataclasses
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from instfcn_d2.engine.run_summary import read_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    label: str
    config: str
    meta_architecture: str
    detector: bool = True  # False: class-agnostic proposals, reported as AR@N
    auto_sizes: Tuple[str, ...] = ()  # of object_sizes.SIZE_PARTS: chosen from the training set
    opts: Tuple[str, ...] = ()  # KEY VALUE overrides of the config: an ablation of one setting


BASE_ROWS = [
    Row("mask_rcnn", "detectron2 Mask R-CNN R18-FPN", "configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml", "GeneralizedRCNN"),
    Row("fcis", "FCIS R18", "configs/shapes/fcis_R18_cpu.yaml", "FCIS"),
    Row("biseg", "BiSeg fused (7, 9) R18", "configs/shapes/biseg_fused_7_9_R18_cpu.yaml", "BiSeg"),
    Row("instance_fcn", "InstanceFCN R18", "configs/shapes/instance_fcn_R18_cpu.yaml", "InstanceFCN", detector=False),
]
#: the detectors' variants with sizes chosen by :func:`instfcn_d2.data.object_sizes.suggest_sizes`
#: (InstanceFCN's multi-scale input has no anchors to size): "_auto" all of them, "_auto_anchors" the
#: anchors only, "_auto_anchors_stride" anchors and map stride at the shared input scales
AUTO_VARIANTS = {"_auto": ("scale", "anchors", "stride"), "_auto_anchors": ("anchors",),
                 "_auto_anchors_stride": ("anchors", "stride")}
#: the configs for small objects on custom data (configs/custom/: a half-width R18-FPN trunk for
#: every model, FCIS's / BiSeg's maps on FPN levels) and their ablations
FULL_WIDTH = ("MODEL.RESNETS.STEM_OUT_CHANNELS", "64", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")
SEM_3X3 = ("MODEL.BISEG.SEM_SEG_CONV_DIM", "128")
FCIS_CUSTOM = "configs/custom/fcis_R18_FPN_cpu.yaml"
BISEG_CUSTOM = "configs/custom/biseg_R18_FPN_cpu.yaml"
CUSTOM_ROWS = [
    Row("mask_rcnn_custom", "Mask R-CNN R18-FPN, half width", "configs/custom/mask_rcnn_R18_FPN_cpu.yaml",
        "GeneralizedRCNN"),
    Row("fcis_custom", "FCIS R18-FPN, half width, maps on p2", FCIS_CUSTOM, "FCIS"),
    Row("fcis_custom_p3", "FCIS R18-FPN, half width, maps on p3", FCIS_CUSTOM, "FCIS",
        opts=("MODEL.ROI_HEADS.IN_FEATURES", '["p3"]')),
    # maps on every level, each RoI read from the level that fits its size (as ROIPooler pools
    # Mask R-CNN's RoIs)
    Row("fcis_custom_levels", "FCIS R18-FPN, half width, maps on p2 ... p5 (RoI's level)", FCIS_CUSTOM, "FCIS",
        opts=("MODEL.ROI_HEADS.IN_FEATURES", '["p2", "p3", "p4", "p5"]')),
    # the levels and the width tools/suggest_sizes.py proposes for ten classes of very different sizes
    Row("fcis_custom_levels_width", "FCIS R18-FPN, half width, maps on p2 ... p5, CONV_NEW_DIM 64", FCIS_CUSTOM,
        "FCIS", opts=("MODEL.ROI_HEADS.IN_FEATURES", '["p2", "p3", "p4", "p5"]', "MODEL.FCIS.CONV_NEW_DIM", "64")),
    # the class scores of Mask R-CNN's box head on p2 ... p5 instead of the assembled maps (masks and
    # boxes still from the maps): how fast FCIS's joint classification learns, against Mask R-CNN's
    Row("fcis_custom_fc_class", "FCIS R18-FPN, maps on p2, class scores from an fc box head", FCIS_CUSTOM, "FCIS",
        opts=("MODEL.FCIS.CLASS_HEAD", "fc", "MODEL.FCIS.CLASS_HEAD_IN_FEATURES", '["p2", "p3", "p4", "p5"]',
              # the box head of the Mask R-CNN baseline (configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml)
              "MODEL.ROI_BOX_HEAD.NUM_FC", "2", "MODEL.ROI_BOX_HEAD.FC_DIM", "256",
              "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "7")),
    Row("fcis_custom_full_width", "FCIS R18-FPN, full width, maps on p2", FCIS_CUSTOM,
        "FCIS", opts=FULL_WIDTH),
    Row("biseg_custom", "BiSeg R18-FPN, half width, both sets on p2", BISEG_CUSTOM, "BiSeg"),
    Row("biseg_custom_log_prior", "BiSeg R18-FPN, half width, both sets on p2, log-space prior",
        BISEG_CUSTOM, "BiSeg", opts=("MODEL.BISEG.PRIOR_MODE", "log")),
    # the semantic branch with a 3x3 conv of 128 before its 1x1 predictor (the shapes configs'),
    # and three ablations made with it
    Row("biseg_custom_sem_3x3", "BiSeg R18-FPN, half width, both sets on p2, semantic 3x3 conv",
        BISEG_CUSTOM, "BiSeg", opts=SEM_3X3),
    Row("biseg_custom_sem_3x3_p3", "BiSeg R18-FPN, semantic 3x3 conv, k1 set and semantic branch on p3",
        BISEG_CUSTOM, "BiSeg", opts=SEM_3X3 + ("MODEL.ROI_HEADS.IN_FEATURES", '["p3"]')),
    Row("biseg_custom_sem_3x3_single", "BiSeg R18-FPN, semantic 3x3 conv, single set on p2 (no fusion)",
        BISEG_CUSTOM, "BiSeg", opts=SEM_3X3 + ("MODEL.BISEG.FUSE", "False")),
    Row("biseg_custom_sem_3x3_no_prior", "BiSeg R18-FPN, semantic 3x3 conv, no prior (multi-task only)",
        BISEG_CUSTOM, "BiSeg", opts=SEM_3X3 + ("MODEL.BISEG.PRIOR_MODE", "none")),
    Row("instance_fcn_custom", "InstanceFCN R18", "configs/custom/instance_fcn_R18_cpu.yaml", "InstanceFCN",
        detector=False),
]
#: the training recipe, one setting at a time, on the custom configs: every row states the whole
#: recipe, so it reproduces whatever the configs' defaults become. "before": the recipe this
#: project had (the mean mask loss at weight 1, box weights (10, 10, 5, 5), targets at 0.5, one
#: learning rate); each other row changes one part to the official FCIS code's value
FCIS_RECIPE_BEFORE = (
    "MODEL.FCIS.MASK_LOSS_WEIGHT", "1.0", "MODEL.FCIS.MASK_LOSS_NORMALIZATION", "pixel_mean",
    "MODEL.FCIS.MASK_TARGET_THRESH", "0.5", "MODEL.FCIS.CONV_NEW_LR_MULTIPLIER", "1.0",
    "MODEL.FCIS.BBOX_REG_WEIGHTS", "(10.0, 10.0, 5.0, 5.0)", "MODEL.FCIS.OHEM", "False", "MODEL.FCIS.MIN_SIZE_TEST", "0.0",
)
RECIPE_CHANGES = {
    "mask_loss": ("official mask loss (summed / RoIs, weight 10)",
                  ("MODEL.FCIS.MASK_LOSS_WEIGHT", "10.0", "MODEL.FCIS.MASK_LOSS_NORMALIZATION", "roi_batch_sum")),
    "box_stats": ("official box statistics (weights 5, 5, 2, 2)",
                  ("MODEL.FCIS.BBOX_REG_WEIGHTS", "(5.0, 5.0, 2.0, 2.0)")),
    "mask_thresh": ("mask targets at 0.4", ("MODEL.FCIS.MASK_TARGET_THRESH", "0.4")),
    "conv_new_lr": ("conv_new at 3x the learning rate", ("MODEL.FCIS.CONV_NEW_LR_MULTIPLIER", "3.0")),
    "ohem": ("OHEM (the 64 hardest of all labelled RoIs)", ("MODEL.FCIS.OHEM", "True", "MODEL.FCIS.OHEM_BATCH_SIZE", "64")),
}
OFFICIAL_TRAINING = sum((RECIPE_CHANGES[k][1] for k in ("mask_loss", "box_stats", "mask_thresh", "conv_new_lr")), ())
BOX_CONV = RECIPE_CHANGES["box_stats"][1] + RECIPE_CHANGES["conv_new_lr"][1]


def recipe_rows(tag: str, fcis: Tuple[str, str], biseg: Tuple[str, str], instance_fcn: Tuple[str, str]) -> List[Row]:
    """The recipe rows of one set of configs: each ``(label, config)``; keys ``<model>_<tag>_*``."""
    (fcis_label, fcis_cfg), (biseg_label, biseg_cfg), (ifcn_label, ifcn_cfg) = fcis, biseg, instance_fcn
    return [
        Row(f"fcis_{tag}_before", f"{fcis_label}, recipe before", fcis_cfg, "FCIS", opts=FCIS_RECIPE_BEFORE),
        *[Row(f"fcis_{tag}_{k}", f"{fcis_label}, {label}", fcis_cfg, "FCIS", opts=FCIS_RECIPE_BEFORE + change)
          for k, (label, change) in RECIPE_CHANGES.items()],
        Row(f"fcis_{tag}_official", f"{fcis_label}, the official training recipe (no OHEM, as its VOC config)",
            fcis_cfg, "FCIS", opts=FCIS_RECIPE_BEFORE + OFFICIAL_TRAINING),
        # the two official settings that did not lose AP at the CPU configs' rate, together
        Row(f"fcis_{tag}_box_conv", f"{fcis_label}, official box statistics + conv_new at 3x", fcis_cfg, "FCIS",
            opts=FCIS_RECIPE_BEFORE + BOX_CONV),
        Row(f"biseg_{tag}_before", f"{biseg_label}, recipe before", biseg_cfg, "BiSeg", opts=FCIS_RECIPE_BEFORE),
        Row(f"biseg_{tag}_box_conv", f"{biseg_label}, official box statistics + conv_new at 3x", biseg_cfg, "BiSeg",
            opts=FCIS_RECIPE_BEFORE + BOX_CONV),
        *[Row(f"instance_fcn_{tag}_{reduction}", f"{ifcn_label}, mask loss: {label}", ifcn_cfg, "InstanceFCN",
              detector=False, opts=("MODEL.INSTANCE_FCN.MASK_LOSS_REDUCTION", reduction))
          for reduction, label in (("pixel_mean", "mean over pixels"), ("window_sum", "summed over a window (Eq. 1)"))],
    ]


RECIPE_ROWS = recipe_rows("recipe", ("FCIS R18-FPN (custom)", FCIS_CUSTOM), ("BiSeg R18-FPN (custom)", BISEG_CUSTOM),
                          ("InstanceFCN R18 (custom)", "configs/custom/instance_fcn_R18_cpu.yaml")) + [
    # the official mask loss weighs a pixel ~100x more: at the CPU configs' BASE_LR 0.02 (40x the
    # official rate per image) it diverges in the first steps; at a tenth of it, with a control row
    *[Row(f"{key}_lr_tenth", f"{label}, BASE_LR 0.002", FCIS_CUSTOM, "FCIS", opts=opts + ("SOLVER.BASE_LR", "0.002"))
      for key, label, opts in [
          ("fcis_recipe_before", "FCIS R18-FPN (custom), recipe before", FCIS_RECIPE_BEFORE),
          ("fcis_recipe_mask_loss", "FCIS R18-FPN (custom), official mask loss", FCIS_RECIPE_BEFORE + RECIPE_CHANGES["mask_loss"][1]),
          ("fcis_recipe_official", "FCIS R18-FPN (custom), the official training recipe", FCIS_RECIPE_BEFORE + OFFICIAL_TRAINING),
      ]],
    Row("biseg_recipe_official", "BiSeg R18-FPN (custom), the official FCIS training recipe", BISEG_CUSTOM, "BiSeg",
        opts=FCIS_RECIPE_BEFORE + OFFICIAL_TRAINING),
]
#: the same recipe rows on the shipped CPU configs (``configs/shapes/``: dilated R18-GN, maps at
#: stride 8), meant for their built-in synthetic shapes dataset (``--builtin``)
SHAPES_RECIPE_ROWS = recipe_rows(
    "shapes_recipe", ("FCIS R18 (shapes)", "configs/shapes/fcis_R18_cpu.yaml"),
    ("BiSeg fused (7, 9) R18 (shapes)", "configs/shapes/biseg_fused_7_9_R18_cpu.yaml"),
    ("InstanceFCN R18 (shapes)", "configs/shapes/instance_fcn_R18_cpu.yaml"),
)
#: every row: the shipped configs, their "_auto" variants, the custom-data configs and ablations
ROWS = BASE_ROWS + [
    dataclasses.replace(r, key=r.key + suffix, label=f"{r.label}, auto {' + '.join(parts)}", auto_sizes=parts)
    for suffix, parts in AUTO_VARIANTS.items() for r in BASE_ROWS if r.detector
] + CUSTOM_ROWS + RECIPE_ROWS + SHAPES_RECIPE_ROWS
DEFAULT_ROWS = [r.key for r in BASE_ROWS]


#: each model's keys for the number of detections (proposals) per image; InstanceFCN also scores
#: more windows before its NMS, so that it can keep that many
def detection_opts(meta_architecture: str, n: int) -> List[str]:
    if meta_architecture == "GeneralizedRCNN":
        return ["TEST.DETECTIONS_PER_IMAGE", str(n)]
    if meta_architecture in ("FCIS", "BiSeg"):
        return ["MODEL.FCIS.DETECTIONS_PER_IMAGE", str(n)]
    return ["MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", str(n), "MODEL.INSTANCE_FCN.PRE_NMS_TOPK_TEST", str(max(1000, 2 * n))]


DETECTOR_COLUMNS = [("segm/AP", "mask AP"), ("segm/AP50", "AP50"), ("segm/APs", "AP_s"), ("segm/APm", "AP_m"),
                    ("bbox/AP", "box AP"), ("sem_seg/mIoU", "mean IU")]
PROPOSAL_COLUMNS = [("proposals/AR@10", "AR@10"), ("proposals/AR@100", "AR@100"), ("proposals/AR@1000", "AR@1000"),
                    ("proposals/AR_s@1000", "AR_s@1000"), ("proposals/AR_m@1000", "AR_m@1000")]


def row_opts(row: Row, args) -> List[str]:
    """The command-line overrides of one row: its ablation, the dataset, then the shared test settings."""
    opts = list(row.opts) + ["OUTPUT_DIR", os.path.join(args.output, row.key), "TEST.EVAL_PERIOD", "0"]
    if args.builtin:  # each config's own datasets and input scales
        return opts + detection_opts(row.meta_architecture, args.detections_per_image) + list(args.opts)
    opts += [
        "DATASETS.COCO_JSON_TRAIN", args.train_json, "DATASETS.COCO_IMAGE_ROOT_TRAIN", args.image_root,
        "DATASETS.COCO_JSON_TEST", args.val_json, "DATASETS.COCO_IMAGE_ROOT_TEST", args.image_root,
    ]
    if row.auto_sizes:
        from instfcn_d2.data.object_sizes import config_overrides, suggest_sizes

        opts += config_overrides(suggest_sizes(args.train_json), row.meta_architecture, row.auto_sizes)
    if row.detector and "scale" not in row.auto_sizes:
        opts += ["INPUT.MIN_SIZE_TRAIN", f"({','.join(str(s) for s in args.min_size_train)},)",
                 "INPUT.MIN_SIZE_TEST", str(args.min_size_test)]
    return opts + detection_opts(row.meta_architecture, args.detections_per_image) + list(args.opts)


def command(row: Row, args) -> List[str]:
    return [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", row.config,
            "--budget-minutes", f"{args.budget_minutes:g}",
            # a row re-run (--retrain, or an unfinished run) keeps the old run aside, named by its date
            "--output-exists", "move"] + row_opts(row, args)


def finished(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, "model_final.pth")) and os.path.isfile(
        os.path.join(output_dir, "metrics.json"))


def run_rows(rows: List[Row], args) -> Dict[str, Optional[int]]:
    """Train the rows ``args.jobs`` at a time; returns each row's exit code (None: read, not run)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    todo = [r for r in rows if args.retrain or not finished(os.path.join(args.output, r.key))]
    codes: Dict[str, Optional[int]] = {r.key: None for r in rows if r not in todo}
    running: Dict[str, subprocess.Popen] = {}
    logs = {}
    start = time.time()
    while todo or running:
        while todo and len(running) < args.jobs:
            r = todo.pop(0)
            os.makedirs(os.path.join(args.output, r.key), exist_ok=True)
            logs[r.key] = open(os.path.join(args.output, f"{r.key}.stdout.txt"), "w")
            print(f"[table] {time.time() - start:6.0f} s: start {r.key}: {' '.join(command(r, args))}", flush=True)
            running[r.key] = subprocess.Popen(command(r, args), cwd=REPO, env=env, stdout=logs[r.key],
                                              stderr=subprocess.STDOUT)
        time.sleep(5)
        for key, p in list(running.items()):
            if p.poll() is not None:
                codes[key] = p.returncode
                del running[key]
                logs.pop(key).close()
                state = "done" if p.returncode == 0 else f"FAILED (exit {p.returncode}, see {key}.stdout.txt)"
                print(f"[table] {time.time() - start:6.0f} s: {key} {state}", flush=True)
    return codes


def cell(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.1f}" if key in metrics else "-"


def table(rows: List[Row], args) -> str:
    runs = {r.key: read_run(os.path.join(args.output, r.key)) for r in rows}
    detectors = [r for r in rows if r.detector]
    lines = []
    if detectors:
        lines += ["| model (config) | iterations | training time | " + " | ".join(c for _, c in DETECTOR_COLUMNS) + " |",
                  "|---|---:|---:|" + "---:|" * len(DETECTOR_COLUMNS)]
        for r in detectors:
            run = runs[r.key]
            lines.append(f"| {r.label} (`{r.config}`) | {run['iterations']} | {run['training_time'] or '-'} | "
                         + " | ".join(cell(run["metrics"], k) for k, _ in DETECTOR_COLUMNS) + " |")
        lines.append("")
    for r in rows:
        if not r.detector:
            run = runs[r.key]
            lines.append(f"{r.label} (`{r.config}`), {run['iterations']} iterations in {run['training_time'] or '-'}: "
                         + ", ".join(f"{c} {cell(run['metrics'], k)}" for k, c in PROPOSAL_COLUMNS))
    for baseline in ("mask_rcnn", "mask_rcnn_custom"):  # the shipped trunk, the custom configs' trunk
        if baseline not in runs or "segm/AP" not in runs[baseline]["metrics"]:
            continue
        base = runs[baseline]["metrics"]["segm/AP"]
        ratios = [f"{r.key} {runs[r.key]['metrics']['segm/AP'] / base:.2f}x" for r in detectors
                  if r.meta_architecture != "GeneralizedRCNN" and "segm/AP" in runs[r.key]["metrics"] and base > 0]
        if ratios:
            lines += ["", f"Mask AP relative to {baseline}: " + ", ".join(ratios)]
    # COCOEvaluator's per-category AP (several classes): which classes a model loses
    classes = sorted({k[len("segm/AP-"):] for r in detectors for k in runs[r.key]["metrics"] if k.startswith("segm/AP-")})
    if len(classes) > 1:
        lines += ["", "Mask AP per class:", "", "| model | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for r in detectors:
            lines.append(f"| {r.key} | " + " | ".join(cell(runs[r.key]["metrics"], f"segm/AP-{c}") for c in classes) + " |")
    return "\n".join(lines)


def plot(rows: List[Row], args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    detectors = [r for r in rows if r.detector]
    values = [read_run(os.path.join(args.output, r.key))["metrics"].get("segm/AP", 0.0) for r in detectors]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(detectors), 3.2))
    ax.bar([r.key for r in detectors], values, color="#4477aa")
    ax.tick_params(axis="x", labelrotation=25)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    ax.set_ylabel("mask AP (val)")
    ax.set_title(f"{'built-in datasets' if args.builtin else os.path.basename(os.path.normpath(args.dataset_dir or args.output))}: {args.budget_minutes:g} min each")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", help="folder with train.json, val.json and images/")
    p.add_argument("--builtin", action="store_true",
                   help="train and evaluate each row on its config's own DATASETS and input scales (the built-in "
                   "shapes for configs/shapes/) instead of a COCO-format dataset")
    p.add_argument("--train-json"), p.add_argument("--val-json"), p.add_argument("--image-root")
    p.add_argument("--output", default="output/custom_dataset_table", help="one OUTPUT_DIR per row under it")
    p.add_argument("--budget-minutes", type=float, default=12.0, help="wall-clock training budget of each row")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                   help=f"comma-separated, of {[r.key for r in ROWS]} (default: {','.join(DEFAULT_ROWS)}); "
                   "'_auto': input scales, anchors and map stride chosen from the training set's object sizes "
                   "(instfcn_d2/data/object_sizes.py) instead of --min-size-*; '_auto_anchors', "
                   "'_auto_anchors_stride': only those parts")
    p.add_argument("--jobs", type=int, default=2, help="rows trained at the same time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads of each row (OMP_NUM_THREADS, default 1)")
    p.add_argument("--min-size-train", type=int, nargs="+", default=[320, 352, 384],
                   help="detectors' training scales (rows without '_auto')")
    p.add_argument("--min-size-test", type=int, default=384, help="detectors' test scale (rows without '_auto')")
    p.add_argument("--detections-per-image", type=int, default=300)
    p.add_argument("--retrain", action="store_true", help="train rows whose OUTPUT_DIR already has a finished run")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every row")
    args = p.parse_args(argv)
    given = [f"--{name}" for name in ("dataset-dir", "train-json", "val-json", "image-root")
             if getattr(args, name.replace("-", "_"))]
    if args.builtin and given:
        p.error(f"--builtin trains on the configs' own datasets; drop {', '.join(given)}")
    for name, default in (("train_json", "train.json"), ("val_json", "val.json"), ("image_root", "images")):
        if args.builtin:
            break
        if getattr(args, name) is None:
            if not args.dataset_dir:
                p.error(f"give --dataset-dir or --{name.replace('_', '-')}")
            setattr(args, name, os.path.join(args.dataset_dir, default))
        path = os.path.abspath(getattr(args, name))
        if not os.path.exists(path):
            p.error(f"--{name.replace('_', '-')}: {path} does not exist")
        setattr(args, name, path)
    known = {r.key: r for r in ROWS}
    unknown = [k for k in args.rows.split(",") if k not in known]
    if unknown:
        p.error(f"--rows: unknown {unknown}; choose from {list(known)}")
    args.row_list = [known[k] for k in args.rows.split(",")]
    if args.builtin and any(r.auto_sizes for r in args.row_list):
        p.error("'_auto' rows are sized from a COCO-format training set; they cannot run with --builtin")
    args.output = os.path.abspath(args.output)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if any(r.auto_sizes for r in args.row_list):
        from instfcn_d2.data.object_sizes import suggest_sizes

        print(f"[table] '_auto' rows: {suggest_sizes(args.train_json).describe()}", flush=True)
    codes = run_rows(args.row_list, args)
    failed = [k for k, c in codes.items() if c not in (None, 0)]
    done = [r for r in args.row_list if r.key not in failed]
    text = table(done, args) if done else ""
    commands = "\n".join(" ".join(command(r, args)) for r in args.row_list)
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(text + "\n\nCommands (run from the repository root):\n\n" + commands + "\n")
    if any(r.detector for r in done):
        plot(done, args, os.path.join(args.output, "mask_ap.png"))
    print(text)
    print(f"\n[table] wrote {os.path.join(args.output, 'table.md')}" + (", mask_ap.png" if any(r.detector for r in done) else ""))
    if failed:
        print(f"[table] FAILED rows: {failed} (logs: {args.output}/<row>.stdout.txt)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
