#!/usr/bin/env python
"""Inference speed of FCIS and BiSeg vs detectron2's Mask R-CNN R50-C4, with a per-stage breakdown.

All models run in one process on the same real COCO images (``coco128/val2017`` from
``$DETECTRON2_DATASETS``), resized as at test time (shorter
side ``--short-side``, longer side at most ``--max-size``), batch size 1, random weights (speed
needs no checkpoint), ``--num-classes`` classes (80), the same ResNet-50 trunk depth, ``model.eval()`` +
``torch.no_grad()``:

- FCIS R50: ``configs/Base-FCIS.yaml`` (res5 dilated, stride 16, conv_new 1024, k = 7, M = 21, RPN
  on res4 with 300 RoIs, RoIs + regressed RoIs scored, per-class NMS 0.3, mask voting).
- BiSeg R50 fused (7, 9): ``configs/Base-BiSeg.yaml`` (FCIS + the semantic branch on res5, the
  second k = 9 map set on res3, the product prior).
- Mask R-CNN R50-C4: ``configs/Base-MaskRCNN-C4.yaml`` (detectron2's, RPN on res4, res5 head per
  RoI). With ``--with-fpn`` also Mask R-CNN R50-FPN.

Models run interleaved, image by image (``instfcn_d2.benchmark.run_models``). Every model gets
``SCORE_THRESH_TEST 0`` so that random weights still give the full 100
detections per image (and their masks pasted), i.e. the full work, and ImageNet-std input scaling:
random FrozenBN ResNets with detectron2's caffe std of 1 reach activations of ~1e4 and their RPN
then keeps a handful of proposals instead of 300 / 1000.

Stages (exclusive wall time, see ``instfcn_d2.benchmark``): ``trunk`` (backbone), ``rpn``
(proposal generator), ``score maps`` (conv_new + the position-sensitive map convs), ``semantic``
(BiSeg's semantic branch + its resizing to the output), ``assemble`` (per RoI: the box deltas, the
class logits of all candidates, the masks of the voting candidates' classes; prior crop and fusion
included), ``nms`` (per-class NMS and bookkeeping),
``voting`` (mask voting), ``roi heads`` (Mask R-CNN's box + mask heads), ``paste`` (masks pasted
into the image). Targets: FCIS at most Mask R-CNN R50-C4's s/img; BiSeg at most 1.25x FCIS.

Usage::

    python tools/benchmark_fcis.py --device cpu --images 2 --out docs/benchmark_fcis.png
"""
import os
import sys
from typing import List

from instfcn_d2.benchmark import Result, StageTimer, fmt, model_benchmark_parser, run_model_benchmark

STAGES = ["trunk", "rpn", "score maps", "semantic", "assemble", "nms", "voting", "roi heads", "paste"]
TARGET_FCIS_VS_C4 = 1.0
TARGET_BISEG_VS_FCIS = 1.25
# Random FrozenBN ResNets with std 1 blow up (see the module docstring).
UNIT_STD = ["MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]"]


def model_specs(short_side: int, max_size: int, num_classes: int, with_fpn: bool):
    common = ["INPUT.MIN_SIZE_TEST", str(short_side), "INPUT.MAX_SIZE_TEST", str(max_size),
              "MODEL.RESNETS.DEPTH", "50", "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)] + UNIT_STD  # fmt: skip
    fcn = common + ["MODEL.FCIS.SCORE_THRESH_TEST", "0.0"]
    mrcnn = common + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    specs = [
        ("FCIS R50", "configs/Base-FCIS.yaml", fcn),
        ("BiSeg R50 fused (7, 9)", "configs/Base-BiSeg.yaml", fcn),
        ("Mask R-CNN R50-C4", "configs/Base-MaskRCNN-C4.yaml", mrcnn),
    ]
    if with_fpn:
        specs.append(("Mask R-CNN R50-FPN", "configs/Base-MaskRCNN-FPN.yaml", mrcnn))
    return specs


def instrument(model, name: str, timer: StageTimer) -> None:
    timer.hook_module(model.backbone, "trunk")
    timer.hook_module(model.proposal_generator, "rpn")
    heads = model.roi_heads
    if name.startswith(("FCIS", "BiSeg")):
        from instfcn_d2.core.fcis import inference as fcis_inference
        from instfcn_d2.core.fcis import reading as fcis_reading
        from instfcn_d2.modeling.fcis import meta_arch as fcis_arch

        for attr in ("conv_new", "inside_outside_maps", "box_maps", "fine_conv_new", "fine_maps"):
            if getattr(heads, attr, None) is not None:
                timer.hook_module(getattr(heads, attr), "score maps")
        if hasattr(model, "sem_seg_head"):
            timer.hook_module(model.sem_seg_head, "semantic")
            timer.wrap_attr(model, "extra_outputs", "semantic")  # sem_seg resized to the output
        # roi_class_logits is FCIS's and BiSeg's native read-out (a reader with its own likelihoods
        # calls roi_inside_outside per chunk: the same stage nested in itself, which StageTimer
        # counts once); roi_inside_outside_of_classes assembles the detections' masks, all classes
        # at once. The per-RoI reading belongs to the heads' reader (instfcn_d2.core).
        for attr in ("roi_class_logits", "roi_inside_outside", "roi_inside_outside_of_class",
                     "roi_inside_outside_of_classes", "roi_box_deltas"):
            timer.wrap_attr(heads.reader, attr, "assemble")
        timer.wrap_attr(fcis_reading, "fcis_inference_single_image", "nms")
        timer.wrap_attr(fcis_inference, "mask_voting", "voting")
        timer.wrap_attr(fcis_arch, "fcis_postprocess", "paste")
    else:
        from detectron2.modeling.meta_arch import rcnn

        timer.hook_module(heads, "roi heads")
        timer.wrap_attr(rcnn, "detector_postprocess", "paste")


def markdown_table(results: List[Result]) -> str:
    head = ["model", "s / image"] + STAGES + ["detections / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name, fmt(r.total)] + [fmt(r.stage(s)) for s in STAGES] + [f"{r.mean(r.detections):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: List[Result]) -> List[str]:
    by_name = {r.name.split(" ")[0] + (" C4" if "C4" in r.name else ""): r for r in results}
    fcis, biseg, c4 = by_name.get("FCIS"), by_name.get("BiSeg"), by_name.get("Mask C4")
    lines = []
    if fcis and c4:
        ratio = fcis.total / c4.total
        verdict = "MET" if ratio <= TARGET_FCIS_VS_C4 else "NOT MET"
        lines.append(f"- FCIS / Mask R-CNN R50-C4: {ratio:.2f}x the time per image; target <= {TARGET_FCIS_VS_C4:.2f}x: {verdict}")
    if biseg and fcis:
        ratio = biseg.total / fcis.total
        verdict = "MET" if ratio <= TARGET_BISEG_VS_FCIS else "NOT MET"
        lines.append(f"- BiSeg / FCIS: {ratio:.2f}x the time per image; target <= {TARGET_BISEG_VS_FCIS:.2f}x: {verdict}")
    for r in results:
        parts = ", ".join(f"{s} {100 * r.stage(s) / r.total:.0f}%" for s in STAGES if r.stage(s) == r.stage(s))
        lines.append(f"- {r.name}: {parts}")
    return lines


def plot(results: List[Result], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    colors = {s: cmap(i) for i, s in enumerate(STAGES + ["other"])}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.8 * len(results)))
    for y, r in enumerate(results):
        left = 0.0
        parts = [(s, r.stage(s)) for s in STAGES if r.stage(s) == r.stage(s)]
        parts.append(("other", r.total - sum(v for _, v in parts)))
        for stage, v in parts:
            if v > 0:
                ax.barh(y, v, left=left, color=colors[stage], label=stage, edgecolor="white")
                left += v
        ax.text(left, y, f" {r.total:.2f}s", va="center")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="upper center", fontsize=8, bbox_to_anchor=(0.5, -0.25), ncol=5,
              frameon=False)  # fmt: skip
    ax.set_yticks(range(len(results)), [r.name for r in results])
    ax.invert_yaxis()
    ax.set_xlabel("seconds per image (mean)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, max(r.total for r in results) * 1.2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = model_benchmark_parser(__doc__, "benchmark_fcis.png")
    p.add_argument("--num-classes", type=int, default=80,
                   help="C: 80 (COCO, default) or 20 (PASCAL VOC, BiSeg's paper); FCIS / BiSeg maps scale with C+1")
    p.add_argument("--with-fpn", action="store_true", help="also time Mask R-CNN R50-FPN")
    args = p.parse_args(argv)
    if args.num_classes < 1:
        p.error("--num-classes must be >= 1")
    specs = model_specs(args.short_side, args.max_size, args.num_classes, args.with_fpn)
    title = (f"Inference, batch 1, shorter side {args.short_side} (max {args.max_size}), "
             f"mean of {args.images} COCO images, random weights, {args.num_classes} classes")  # fmt: skip
    return run_model_benchmark(p, args, specs, instrument, lambda r: (markdown_table(r), ratios(r)), plot, title)


if __name__ == "__main__":
    sys.exit(main())
