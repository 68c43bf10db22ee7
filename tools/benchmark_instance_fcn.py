#!/usr/bin/env python
"""Inference speed of InstanceFCN (VGG-16 and dilated ResNet-50 trunks) vs detectron2's Mask R-CNN.

All models run in one process on the same real COCO images (``coco128/val2017`` from
``$DETECTRON2_DATASETS`` or ``../shared/data`` next to the repo), resized as at test time
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
``preprocess_image`` / ``window_candidates`` (top windows + assembling) and the
``window_masks_to_proposals`` it calls (pasting + binarising + mask-box NMS). "After trunk" is
everything but preprocessing and the trunk: branches + assembling + pasting + NMS; its share of
the total is checked against the target (< 15 %). For Mask R-CNN the backbone (R50 + FPN) is
hooked the same way.

One warm-up image (not timed) per model, then ``--images`` timed images; the table gives the mean
seconds per image. Prints progress lines, a markdown table and the ratios, and writes a bar plot.

Usage::

    python tools/benchmark_instance_fcn.py --device cpu --images 2 --out docs/benchmark_instance_fcn.png
"""
import argparse
import contextlib
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run as a script from anywhere without installing the package

TARGET_AFTER_TRUNK_SHARE = 0.15
# InstanceFCN stage columns, in data-path order; "after trunk" = the last three
STAGES = ["preprocess", "trunk", "branches", "assemble", "paste+nms"]


@dataclass
class Result:
    name: str
    totals: List[float] = field(default_factory=list)  # seconds per timed image
    stages: Dict[str, List[float]] = field(default_factory=lambda: defaultdict(list))
    detections: List[int] = field(default_factory=list)

    def mean(self, values: List[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    @property
    def total(self) -> float:
        return self.mean(self.totals)

    def stage(self, name: str) -> float:
        return self.mean(self.stages.get(name, []))

    @property
    def after_trunk(self) -> float:
        """Branches + assembling + pasting + NMS (InstanceFCN only; NaN otherwise)."""
        if "branches" not in self.stages:
            return float("nan")
        return self.mean(
            [t - p - b for t, p, b in zip(self.totals, self.stages["preprocess"], self.stages["trunk"])]
        )


# ---- images ----------------------------------------------------------------------------------
def find_image_dir() -> str:
    candidates = []
    if os.environ.get("DETECTRON2_DATASETS"):
        candidates.append(os.path.join(os.environ["DETECTRON2_DATASETS"], "coco128", "val2017"))
    candidates.append(os.path.join(REPO, "..", "shared", "data", "coco128", "val2017"))
    for c in candidates:
        if os.path.isdir(c):
            return os.path.normpath(c)
    raise FileNotFoundError(
        "no coco128/val2017 image folder found; looked in: " + ", ".join(candidates) + " (set $DETECTRON2_DATASETS)"
    )


def load_inputs(paths: List[str], fmt: str, short_side: int, max_size: int) -> List[Dict]:
    """detectron2 test-time inputs: ``image`` ``(3, H, W)`` float32 in ``fmt`` resized as at test
    time, ``height`` / ``width`` of the original image (results are pasted at that size, as in
    detectron2's evaluation)."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image

    resize = T.ResizeShortestEdge(short_side, max_size)
    inputs = []
    for p in paths:
        img = read_image(p, format=fmt)
        h, w = img.shape[:2]
        img = resize.get_transform(img).apply_image(img)
        inputs.append(
            {"image": torch.as_tensor(img.transpose(2, 0, 1).astype("float32")), "height": h, "width": w, "path": p}
        )
    return inputs


# ---- models ----------------------------------------------------------------------------------
def build(config: str, opts: List[str], device: str):
    from detectron2.modeling import build_model

    from instfcn_d2.config import get_instfcn_cfg

    cfg = get_instfcn_cfg(os.path.join(REPO, config), ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return cfg, model


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


# ---- timing ----------------------------------------------------------------------------------
class StageTimer:
    """Accumulates wall time per stage of one forward; synchronises CUDA around each stage."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.times: Dict[str, float] = defaultdict(float)
        self._start: Dict[str, float] = {}
        self._undo: List[Callable[[], None]] = []

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def hook_module(self, module: torch.nn.Module, stage: str) -> None:
        def pre(_m, _inp):
            self._start[stage] = self.now()

        def post(_m, _inp, _out):
            self.times[stage] += self.now() - self._start.pop(stage)

        handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        self._undo.append(lambda: [h.remove() for h in handles])

    def wrap_attr(self, owner, attr: str, stage: str) -> None:
        """Time ``owner.attr(...)`` calls (a bound method on an instance, or a module's function)."""
        original = getattr(owner, attr)
        had_own = attr in vars(owner)

        def timed(*args, **kwargs):
            t0 = self.now()
            try:
                return original(*args, **kwargs)
            finally:
                self.times[stage] += self.now() - t0

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original) if had_own else delattr(owner, attr))

    def reset(self) -> None:
        self.times.clear()

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def instrument(model, name: str, timer: StageTimer) -> None:
    timer.hook_module(model.backbone, "trunk")
    if "InstanceFCN" in name:
        from instfcn_d2.modeling.meta_arch import instance_fcn as meta

        timer.wrap_attr(model, "preprocess_image", "preprocess")
        timer.hook_module(model.mask_head, "branches")
        timer.hook_module(model.objectness_head, "branches")
        if model.feature_reduce is not None:
            timer.hook_module(model.feature_reduce, "branches")
        timer.wrap_attr(model, "window_candidates", "assemble")  # top-k windows + assembling
        timer.wrap_attr(meta, "window_masks_to_proposals", "paste+nms")


def run_model(name: str, config: str, opts: List[str], paths: List[str], args) -> Result:
    t0 = time.perf_counter()
    cfg, model = build(config, opts, args.device)
    print(f"[{name}] built in {time.perf_counter() - t0:.1f}s ({config}, input {cfg.INPUT.FORMAT})", flush=True)
    inputs = load_inputs(paths, cfg.INPUT.FORMAT, args.short_side, args.max_size)
    timer = StageTimer(args.device)
    instrument(model, name, timer)
    result = Result(name)
    try:
        with torch.no_grad():
            for i, inp in enumerate(inputs):
                timer.reset()
                t = timer.now()
                out = model([inp])
                dt = timer.now() - t
                n = len(out[0]["instances"])
                shape = "x".join(map(str, inp["image"].shape[-2:]))
                tag = "warm-up" if i == 0 else f"image {i}/{len(inputs) - 1}"
                stages = ", ".join(f"{k} {v:.2f}s" for k, v in timer.times.items())
                print(f"[{name}] {tag} {os.path.basename(inp['path'])} {shape}: {dt:.2f}s, {n} outputs ({stages})",
                      flush=True)  # fmt: skip
                if i == 0:
                    continue
                result.totals.append(dt)
                result.detections.append(n)
                for k, v in timer.times.items():
                    result.stages[k].append(v)
    finally:
        timer.remove()
    del model
    return result


# ---- report ----------------------------------------------------------------------------------
def fmt(x: float) -> str:
    return "—" if x != x else f"{x:.2f}"


def markdown_table(results: List[Result]) -> str:
    head = ["model", "s / image", "preprocess", "trunk", "branches", "assemble", "paste + NMS",
            "after trunk", "after-trunk share", "outputs / image"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        fcn = "branches" in r.stages
        share = f"{100 * r.after_trunk / r.total:.1f}%" if fcn else "—"
        cells = [r.name, fmt(r.total)]
        cells += [fmt(r.stage(s)) if (fcn or s == "trunk") else "—" for s in STAGES]
        cells += [fmt(r.after_trunk), share, f"{r.mean(r.detections):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results: List[Result]) -> List[str]:
    vgg = results[0]
    lines = [f"- {r.name} / {vgg.name}: {r.total / vgg.total:.2f}x the time per image" for r in results[1:]]
    for r in results:
        if "branches" in r.stages:
            share = r.after_trunk / r.total
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--images", type=int, default=3, help="timed images per model, after 1 warm-up image (default 3)")
    p.add_argument("--short-side", type=int, default=600, help="test scale: shorter image side (default 600)")
    p.add_argument("--max-size", type=int, default=1000, help="longest image side (default 1000)")
    p.add_argument("--image-dir", default=None, help="folder of JPEG images (default: coco128/val2017, see above)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "benchmark_instance_fcn.png"), help="bar plot PNG")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)

    import instfcn_d2  # noqa: F401  (registers the meta-architecture and backbones)

    image_dir = args.image_dir or find_image_dir()
    paths = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir) if f.lower().endswith((".jpg", ".png")))
    if len(paths) < args.images + 1:
        sys.exit(f"{image_dir}: {len(paths)} images, need {args.images + 1} (1 warm-up + --images)")
    paths = paths[: args.images + 1]
    device_desc = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (
        f"CPU {platform.machine()}, {torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"device: {device_desc}; torch {torch.__version__}; images: {image_dir} "
          f"(warm-up {os.path.basename(paths[0])}, timed {', '.join(os.path.basename(x) for x in paths[1:])}); "
          f"shorter side {args.short_side}, max {args.max_size}", flush=True)  # fmt: skip

    results = [run_model(name, cfg, opts, paths, args) for name, cfg, opts in model_specs(args.short_side, args.max_size)]

    print()
    print(markdown_table(results))
    print()
    print("\n".join(ratios(results)))
    title = (f"Inference, batch 1, shorter side {args.short_side} (max {args.max_size}), "
             f"mean of {args.images} COCO images\n{device_desc}")  # fmt: skip
    plot(results, args.out, title)
    print(f"\nplot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
