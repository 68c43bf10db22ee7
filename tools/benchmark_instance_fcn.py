#!/usr/bin/env python
"""Inference speed of InstanceFCN (VGG-16 and dilated ResNet-50 trunks) vs detectron2's Mask R-CNN.

All models run in one process on the same real COCO images (``coco128/val2017`` from
``$DETECTRON2_DATASETS``), resized as at test time
(shorter side ``--short-side``, longer side at most ``--max-size``), batch size 1, random
weights (no checkpoints are needed to measure speed), ``model.eval()`` + ``torch.no_grad()``:

- InstanceFCN VGG-16: ``configs/coco/instance_fcn_VGG16_k5.yaml`` (dilated conv5, stride 8,
  k = 5, m = 21) at the single test scale ``--short-side`` (``TEST.AUG.ENABLED False``).
- InstanceFCN R50-dilated: ``configs/coco/instance_fcn_R50_dilated_k5.yaml``, the same heads and
  settings on ``build_resnet_dilated_backbone`` (ResNet-50, res4 / res5 dilated 2 / 4, so res5 is at
  stride 8), res5 reduced to 512-d by a 1x1 conv (``REDUCE_DIM``, timed with the branches).
- Mask R-CNN R50-FPN: ``configs/Base-MaskRCNN-FPN.yaml`` with 80 classes and
  ``ROI_HEADS.SCORE_THRESH_TEST 0`` so that random weights still give it its full work
  (100 detections per image, all with masks pasted).

For InstanceFCN the stages are timed inside the real ``model(inputs)`` call, by forward hooks on
``backbone`` / ``mask_head`` / ``objectness_head`` and by wrapping the meta-architecture's
``preprocess_image``, its proposer's ``window_candidates`` (top windows + assembling) and the
``window_masks_to_proposals`` the proposer's test-time loop calls
(``instfcn_d2/core/instance_fcn/inference.py``: pasting + binarising + mask-box NMS). "After trunk" is everything but preprocessing and the trunk: branches
+ assembling + pasting + NMS; its share of the total is checked against the target (< 15 %). For Mask R-CNN the backbone (R50 + FPN) is
hooked the same way.

One warm-up image (not timed) per model, then ``--images`` timed images; the table gives the mean
seconds per image. Prints progress lines, a markdown table and the ratios, and writes a bar plot.

Usage::

    python tools/benchmark_instance_fcn.py --device cpu --images 2 --out docs/benchmark_instance_fcn.png
"""
import os
import sys
from typing import List

from instfcn_d2.benchmark import Result, StageTimer, fmt, model_benchmark_parser, run_model_benchmark

TARGET_AFTER_TRUNK_SHARE = 0.15
# InstanceFCN stage columns, in data-path order; "after trunk" = the last three
STAGES = ["preprocess", "trunk", "branches", "assemble", "paste+nms"]


def after_trunk(r: Result) -> float:
    """Branches + assembling + pasting + NMS (InstanceFCN only; NaN otherwise)."""
    if "branches" not in r.stages:
        return float("nan")
    return r.mean([t - p - b for t, p, b in zip(r.totals, r.stages["preprocess"], r.stages["trunk"])])


# Random-weight ResNets with detectron2's FrozenBN (identity) and its caffe PIXEL_STD of 1 reach
# activations of ~1e4; Mask R-CNN's RPN then predicts degenerate boxes and keeps ~8 proposals instead
# of 1000, i.e. it would skip most of its work. Unit-scale inputs (ImageNet std, BGR) keep it doing
# its full work (1000 proposals, 100 detections); the compute per image does not depend on it.
UNIT_STD = ["MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]"]


def model_specs(short_side: int, max_size: int):
    single_scale = ["TEST.AUG.ENABLED", "False", "INPUT.MIN_SIZE_TEST", str(short_side),
                    "INPUT.MAX_SIZE_TEST", str(max_size)]  # fmt: skip
    # Random FrozenBN ResNets with detectron2's caffe std of 1 blow up (see UNIT_STD); FREEZE_AT 0
    # keeps every stage trainable-shaped, which costs nothing at inference.
    r50 = ["MODEL.BACKBONE.FREEZE_AT", "0"] + UNIT_STD
    mrcnn = ["MODEL.RESNETS.DEPTH", "50", "MODEL.ROI_HEADS.NUM_CLASSES", "80",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"] + UNIT_STD  # fmt: skip
    return [
        ("InstanceFCN VGG-16 (stride 8)", "configs/coco/instance_fcn_VGG16_k5.yaml", single_scale),
        ("InstanceFCN R50-dilated (stride 8)", "configs/coco/instance_fcn_R50_dilated_k5.yaml", single_scale + r50),
        ("Mask R-CNN R50-FPN", "configs/Base-MaskRCNN-FPN.yaml", mrcnn + single_scale[2:]),
    ]


def instrument(model, name: str, timer: StageTimer) -> None:
    timer.hook_module(model.backbone, "trunk")
    if "InstanceFCN" in name:
        from instfcn_d2.core.instance_fcn import inference

        timer.wrap_attr(model, "preprocess_image", "preprocess")
        timer.hook_module(model.mask_head, "branches")
        timer.hook_module(model.objectness_head, "branches")
        if model.feature_reduce is not None:
            timer.hook_module(model.feature_reduce, "branches")
        timer.wrap_attr(model.proposer, "window_candidates", "assemble")  # top-k windows + assembling
        timer.wrap_attr(inference, "window_masks_to_proposals", "paste+nms")


# ---- report ----------------------------------------------------------------------------------
def markdown_table(results: List[Result]) -> str:
    head = ["model", "s / image", "preprocess", "trunk", "branches", "assemble", "paste + NMS",
            "after trunk", "after-trunk share", "outputs / image"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        fcn = "branches" in r.stages
        share = f"{100 * after_trunk(r) / r.total:.1f}%" if fcn else "—"
        cells = [r.name, fmt(r.total)]
        cells += [fmt(r.stage(s)) if (fcn or s == "trunk") else "—" for s in STAGES]
        cells += [fmt(after_trunk(r)), share, f"{r.mean(r.detections):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: List[Result]) -> List[str]:
    vgg = results[0]
    lines = [f"- {r.name} / {vgg.name}: {r.total / vgg.total:.2f}x the time per image" for r in results[1:]]
    for r in results:
        if "branches" in r.stages:
            share = after_trunk(r) / r.total
            verdict = "MET" if share < TARGET_AFTER_TRUNK_SHARE else "NOT MET"
            parts = ", ".join(f"{s} {100 * r.stage(s) / r.total:.1f}%" for s in STAGES[2:])
            lines.append(
                f"- {r.name}: after trunk {100 * share:.1f}% of the total ({parts}); "
                f"target < {100 * TARGET_AFTER_TRUNK_SHARE:.0f}%: {verdict}"
            )
    return lines


def plot(results: List[Result], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"preprocess": "#bbbbbb", "trunk": "#4c72b0", "branches": "#dd8452", "assemble": "#55a868",
              "paste+nms": "#c44e52", "rest": "#8172b3"}  # fmt: skip
    fig, ax = plt.subplots(figsize=(9, 4.4))
    names = [r.name for r in results]
    for y, r in enumerate(results):
        left = 0.0
        parts = [(s, r.stage(s)) for s in STAGES] if "branches" in r.stages else [("trunk", r.stage("trunk"))]
        parts.append(("rest", r.total - sum(v for _, v in parts)))
        for stage, v in parts:
            if v != v or v <= 0:
                continue
            ax.barh(y, v, left=left, color=colors[stage], label=stage, edgecolor="white")
            left += v
        ax.text(left, y, f" {r.total:.2f}s", va="center")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    legend_names = {"rest": "rest (Mask R-CNN: RPN + RoI heads + pasting; other)", "trunk": "trunk / backbone"}
    ax.legend(uniq.values(), [legend_names.get(k, k) for k in uniq], loc="upper center", fontsize=8,
              bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)  # fmt: skip
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per image (mean)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, max(r.total for r in results) * 1.2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = model_benchmark_parser(__doc__, "benchmark_instance_fcn.png")
    args = p.parse_args(argv)
    title = (f"Inference, batch 1, shorter side {args.short_side} (max {args.max_size}), "
             f"mean of {args.images} COCO images")  # fmt: skip
    specs = model_specs(args.short_side, args.max_size)
    return run_model_benchmark(p, args, specs, instrument, lambda r: (markdown_table(r), ratios(r)), plot, title)


if __name__ == "__main__":
    sys.exit(main())
