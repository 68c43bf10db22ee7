#!/usr/bin/env python
"""Segment-proposal recall: the project's hand-written matcher against pycocotools' COCOeval.

``instfcn_d2/evaluation/proposal_recall.py`` computes class-agnostic mask recall (AR@N) with its
own vectorised re-implementation of COCOeval's matching. This tool measures, in one run and on
one synthetic problem, what that costs compared with the library code it re-implements:

(a) **hand-written**: ``SegmentProposalEvaluator._compute`` + ``_summarize`` (the evaluator's own
    code, called on the per-image predictions that its ``process()`` keeps: the top proposals as
    compressed RLEs sorted by descending score). Timed: turning the dataset records' annotations
    into RLEs and areas, mask IoU (``pycocotools.mask.iou``), ``match_proposals`` and the pooling
    of hits per size range and N.
(b) **pycocotools**: ``COCOeval(gt, dt, "segm")`` with ``params.useCats = 0`` and
    ``params.maxDets = --max-dets``. Timed: ``evaluate()`` + ``accumulate()``, which include
    COCOeval's own preparation and its mask IoU (``pycocotools.mask.iou``), and the matching.
(c) **detectron2 COCOeval_opt** (``detectron2.evaluation.fast_eval_api``, matching and
    accumulation in C++; only when ``from detectron2 import _C`` works), same parameters, same
    timed part as (b).

Not timed, for any of them: building the problem, ``COCO()`` index creation and ``loadRes``
(which computes the detections' areas and boxes). A reference row times ``pycocotools.mask.iou``
alone over all images, the IoU cost that all three pay.

The problem: ``--images`` images of ``--height`` x ``--width`` with about ``--gts`` ground-truth
instance masks each (4 to 10 by default: random ellipses and rectangles, sqrt(area) log-uniform
from 8 px to 0.8 * sqrt(H * W), so about a third each small / medium / large by COCO's ranges,
clipped at the image border) and ``--proposals`` proposals per image: 10% perturbed copies of the
ground truths (jittered centre, size, aspect and angle; each object has its own jitter scale,
doubled for small objects, and its own unequal share of the copies), the rest random shapes of the
same size distribution, with random scores (the copies' scores biased high). At the defaults this
gives AR@10 / 100 / 1000 of roughly 10 / 40 / 65, the range of real segment proposals, so the
matching does the work it does on real data (no early exit because every object is found).
Everything is drawn from ``--seed``.

The three methods must give the same recall per IoU threshold, size range and N (to 1e-9; COCOeval
reports -1 where a size range has no ground truth, the evaluator NaN). The tool prints progress,
a table of times, the AR numbers of each method, and exits with status 1 after printing them when
any recall differs. It writes a bar chart (``--plot``) and optionally every number (``--json``).

Usage::

    python tools/benchmark_proposal_recall.py --plot docs/benchmark_proposal_recall.png
"""
import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

HAND = "hand-written (instfcn_d2)"
COCO = "pycocotools COCOeval"
COCO_OPT = "detectron2 COCOeval_opt"
AREAS = ("all", "small", "medium", "large")  # COCOeval's order of params.areaRng

TIMED = {
    HAND: "gt RLEs + mask IoU + match_proposals + pooling",
    COCO: "evaluate() + accumulate() (incl. its mask IoU)",
    COCO_OPT: "evaluate() + accumulate() (incl. its mask IoU)",
}


def _log(msg: str) -> None:
    print(msg, flush=True)


def opt_available() -> Optional[str]:
    """None when detectron2's C++ COCOeval_opt can be used, else why not."""
    try:
        from detectron2 import _C  # noqa: F401
        from detectron2.evaluation.fast_eval_api import COCOeval_opt  # noqa: F401
    except Exception as e:  # ImportError, or an undefined symbol of a mismatched build
        return f"detectron2._C unavailable: {type(e).__name__}: {e}"
    return None


# ---- the synthetic problem -------------------------------------------------------------------
@dataclass
class Problem:
    height: int
    width: int
    records: List[dict]  # detectron2 dataset records (RLE segmentations), what the evaluator reads
    predictions: List[dict]  # per image: what SegmentProposalEvaluator.process() keeps
    coco_gt: dict  # the same ground truth as a COCO json dict
    coco_dt: List[dict]  # the same proposals as COCO results (category_id 1)
    sizes: Dict[str, int] = field(default_factory=dict)


def _draw(out: np.ndarray, shape: tuple) -> None:
    """Draw one shape into the (H, W) uint8 view ``out``: ("rect", cy, cx, h, w) axis-aligned,
    ("ellipse", cy, cx, a, b, theta) with semi-axes a, b rotated by theta."""
    height, width = out.shape
    kind, cy, cx = shape[:3]
    if kind == "rect":
        h, w = shape[3:]
        y0, y1 = int(round(cy - h / 2)), int(round(cy + h / 2))
        x0, x1 = int(round(cx - w / 2)), int(round(cx + w / 2))
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(max(y1, y0 + 1), height), min(max(x1, x0 + 1), width)
        out[y0:y1, x0:x1] = 1
        return
    a, b, theta = shape[3:]
    r = max(a, b) + 1
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, height)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, width)
    if y1 <= y0 or x1 <= x0:
        return
    yy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    xx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    c, s = np.cos(theta), np.sin(theta)
    u = (c * yy + s * xx) / a
    v = (-s * yy + c * xx) / b
    out[y0:y1, x0:x1] = (u * u + v * v) <= 1.0


def _random_shape(rng: np.random.Generator, height: int, width: int, s_min: float, s_max: float) -> tuple:
    size = float(np.exp(rng.uniform(np.log(s_min), np.log(s_max))))  # sqrt(area)
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # height / width
    cy, cx = float(rng.uniform(0, height)), float(rng.uniform(0, width))
    if rng.random() < 0.5:
        return ("rect", cy, cx, size * np.sqrt(aspect), size / np.sqrt(aspect))
    a, b = size * np.sqrt(aspect / np.pi), size / np.sqrt(aspect * np.pi)
    return ("ellipse", cy, cx, a, b, float(rng.uniform(0, np.pi)))


def _perturb(rng: np.random.Generator, shape: tuple, base_sigma: float) -> tuple:
    """A proposal near ``shape``: jitter of relative strength ``base_sigma`` times a random
    factor (0.3 to 3), from near-exact to loose."""
    sigma = base_sigma * float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    kind, cy, cx = shape[:3]
    if kind == "rect":
        h, w = shape[3:]
        ref = np.sqrt(h * w)
        return ("rect", cy + rng.normal(0, sigma) * ref, cx + rng.normal(0, sigma) * ref,
                h * np.exp(rng.normal(0, sigma)), w * np.exp(rng.normal(0, sigma)))
    a, b, theta = shape[3:]
    ref = np.sqrt(a * b)
    return ("ellipse", cy + rng.normal(0, sigma) * ref, cx + rng.normal(0, sigma) * ref,
            a * np.exp(rng.normal(0, sigma)), b * np.exp(rng.normal(0, sigma)), theta + rng.normal(0, sigma))


def _shape_size(shape: tuple) -> float:
    """sqrt(area) of an unclipped shape."""
    if shape[0] == "rect":
        return float(np.sqrt(shape[3] * shape[4]))
    return float(np.sqrt(np.pi * shape[3] * shape[4]))


def _encode(shapes: Sequence[tuple], height: int, width: int, chunk: int = 128) -> List[dict]:
    """Compressed RLEs of the shapes (an empty drawing gets one pixel at its clipped centre)."""
    rles = []
    for start in range(0, len(shapes), chunk):
        part = shapes[start:start + chunk]
        masks = np.zeros((height, width, len(part)), dtype=np.uint8, order="F")
        for k, shape in enumerate(part):
            view = masks[:, :, k]
            _draw(view, shape)
            if not view.any():
                view[min(max(int(shape[1]), 0), height - 1), min(max(int(shape[2]), 0), width - 1)] = 1
        rles.extend(mask_util.encode(masks))
    return rles


def make_problem(
    num_images: int = 50,
    gts: int = 7,
    proposals: int = 1000,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
    copy_fraction: float = 0.1,
    log: Optional[Callable[[str], None]] = None,
) -> Problem:
    """The synthetic evaluation problem (see the module docstring); deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    s_min, s_max = 8.0, 0.8 * np.sqrt(height * width)
    records, predictions, images, anns, dts = [], [], [], [], []
    t0 = time.perf_counter()
    for image_id in range(1, num_images + 1):
        num_gt = int(rng.integers(max(1, gts - 3), gts + 4))
        gt_shapes = [_random_shape(rng, height, width, s_min, s_max) for _ in range(num_gt)]
        gt_rles = _encode(gt_shapes, height, width)
        record_anns = []
        for rle in gt_rles:
            area = float(mask_util.area(rle))
            record_anns.append({"category_id": 1, "iscrowd": 0, "area": area, "segmentation": rle})
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": area,
                "bbox": [float(v) for v in mask_util.toBbox(rle)], "segmentation": rle,
            })
        records.append({"image_id": image_id, "file_name": f"synthetic_{image_id}.png",
                        "height": height, "width": width, "annotations": record_anns})
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"synthetic_{image_id}.png"})

        num_copies = int(round(copy_fraction * proposals))
        # how hard each object is to propose: a jitter scale per gt, larger for small objects
        # and how many of the copies go to it (uneven: some objects get few or none)
        base = np.exp(rng.uniform(np.log(0.05), np.log(0.6), size=num_gt))
        base *= np.array([2.0 if _shape_size(g) < 32 else 1.0 for g in gt_shapes])
        weight = np.exp(rng.normal(0.0, 1.5, size=num_gt))
        which = rng.choice(num_gt, size=num_copies, p=weight / weight.sum())
        shapes = [_perturb(rng, gt_shapes[int(i)], base[int(i)]) for i in which]
        shapes += [_random_shape(rng, height, width, s_min, s_max) for _ in range(proposals - num_copies)]
        scores = np.concatenate([rng.random(num_copies) ** 0.5, rng.random(proposals - num_copies)])
        perm = rng.permutation(proposals)  # the model's output order
        shapes, scores = [shapes[i] for i in perm], scores[perm]
        rles = _encode(shapes, height, width)
        for rle, score in zip(rles, scores):
            dts.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(score)})
        order = np.argsort(-scores, kind="mergesort")  # as SegmentProposalEvaluator.process() keeps them
        predictions.append({"image_id": image_id, "size": (height, width), "scores": scores[order],
                            "rles": [rles[i] for i in order]})
        if log and (image_id % max(1, num_images // 10) == 0 or image_id == num_images):
            log(f"  problem: {image_id}/{num_images} images drawn and RLE-encoded ({time.perf_counter() - t0:.1f}s)")
    coco_gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    sizes = {"images": num_images, "height": height, "width": width, "gts": len(anns), "proposals": len(dts),
             "proposals_per_image": proposals, "seed": seed}
    return Problem(height, width, records, predictions, coco_gt, dts, sizes)


# ---- the three methods -----------------------------------------------------------------------
def _run_hand(problem: Problem, max_dets: Sequence[int]):
    """(seconds, recall (T, A, M) with NaN where undefined, AR dict in percent)."""
    from detectron2.data import DatasetCatalog

    from instfcn_d2.evaluation import SegmentProposalEvaluator

    name = f"benchmark_proposal_recall_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: problem.records)
    try:
        ev = SegmentProposalEvaluator(name, max_dets=max_dets, distributed=False)
        t = time.perf_counter()
        stats = ev._compute(problem.predictions)
        results = ev._summarize(stats)
        seconds = time.perf_counter() - t
    finally:
        DatasetCatalog.remove(name)
    recall = np.array([[stats["recall"][a][str(n)] for n in max_dets] for a in AREAS], dtype=np.float64)  # (A, M, T)
    return seconds, recall.transpose(2, 0, 1), dict(results)


def _coco_objects(problem: Problem):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = problem.coco_gt
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in problem.coco_dt])
    return gt, dt


def _run_coco(problem: Problem, max_dets: Sequence[int], cls, coco_pair=None):
    """(seconds, recall (T, A, M) with NaN where COCOeval has -1, AR dict in percent)."""
    gt, dt = coco_pair if coco_pair is not None else _coco_objects(problem)
    ev = cls(gt, dt, iouType="segm")
    ev.params.useCats = 0
    ev.params.maxDets = list(max_dets)
    with contextlib.redirect_stdout(io.StringIO()):
        t = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        seconds = time.perf_counter() - t
    recall = np.asarray(ev.eval["recall"], dtype=np.float64)[:, 0, :, :]  # (T, K=1, A, M) -> (T, A, M)
    return seconds, np.where(recall < 0, np.nan, recall), ar_numbers(recall, max_dets)


def ar_numbers(recall: np.ndarray, max_dets: Sequence[int]) -> Dict[str, float]:
    """The evaluator's summary keys from a (T, A, M) recall array (NaN where undefined)."""
    recall = np.where(recall < 0, np.nan, recall)
    out = {f"AR@{n}": float(np.mean(recall[:, 0, i]) * 100) for i, n in enumerate(max_dets)}
    for a, key in ((1, "s"), (2, "m"), (3, "l")):
        out[f"AR_{key}@{max_dets[-1]}"] = float(np.mean(recall[:, a, -1]) * 100)
    return out


def _time_iou_only(problem: Problem) -> float:
    t = time.perf_counter()
    for rec, pred in zip(problem.records, problem.predictions):
        gts = [a["segmentation"] for a in rec["annotations"]]
        mask_util.iou(pred["rles"], gts, [0] * len(gts))
    return time.perf_counter() - t


def compare(reference: np.ndarray, other: np.ndarray, max_dets: Sequence[int], atol: float = 1e-9) -> List[str]:
    """Where two (T, A, M) recall arrays differ (NaN must match NaN), as readable lines."""
    from instfcn_d2.evaluation import IOU_THRESHOLDS

    bad = []
    for t, a, m in zip(*np.nonzero(~((np.isnan(reference) & np.isnan(other)) | (np.abs(reference - other) <= atol)))):
        bad.append(f"IoU {IOU_THRESHOLDS[t]:.2f}, area {AREAS[a]}, N={max_dets[m]}: "
                   f"{reference[t, a, m]!r} vs {other[t, a, m]!r}")
    return bad


def run_benchmark(
    problem: Problem,
    max_dets: Sequence[int] = (10, 100, 1000),
    repeat: int = 1,
    with_opt: bool = True,
    with_iou_reference: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Run every method ``repeat`` times, interleaved, on ``problem``; returns the times (best of
    the repeats), the recall arrays, the AR numbers and the mismatches vs pycocotools."""
    from pycocotools.cocoeval import COCOeval

    log = log or (lambda _msg: None)
    max_dets = [int(n) for n in max_dets]
    skip_opt = opt_available() if with_opt else "not requested"
    methods = [HAND, COCO] + ([] if skip_opt else [COCO_OPT])
    coco_pair = _coco_objects(problem)  # COCO() + loadRes: not timed
    times = {m: [] for m in methods}
    recall, ar = {}, {}
    iou_times = []
    for r in range(repeat):
        for m in methods:
            tag = f"[{m}] run {r + 1}/{repeat}"
            if m == COCO:
                log(f"{tag}: evaluate() + accumulate() (pure Python matching; the slow one)...")
            if m == HAND:
                seconds, rec, numbers = _run_hand(problem, max_dets)
            else:
                cls = COCOeval
                if m == COCO_OPT:
                    from detectron2.evaluation.fast_eval_api import COCOeval_opt as cls
                seconds, rec, numbers = _run_coco(problem, max_dets, cls, coco_pair)
            times[m].append(seconds)
            recall[m], ar[m] = rec, numbers
            log(f"{tag}: {seconds:.3f}s, AR@{max_dets[-1]} = {numbers[f'AR@{max_dets[-1]}']:.3f}")
        if with_iou_reference:
            iou_times.append(_time_iou_only(problem))
            log(f"[mask IoU only] run {r + 1}/{repeat}: {iou_times[-1]:.3f}s")
    mismatches = {m: compare(recall[COCO], recall[m], max_dets) for m in methods if m != COCO}
    best = {m: min(v) for m, v in times.items()}
    return {
        "sizes": problem.sizes,
        "max_dets": max_dets,
        "repeat": repeat,
        "methods": methods,
        "skipped": {COCO_OPT: skip_opt} if skip_opt else {},
        "timed": {m: TIMED[m] for m in methods},
        "seconds": best,
        "seconds_all": times,
        "iou_only_seconds": min(iou_times) if iou_times else None,
        "x_hand_written": {m: best[m] / best[HAND] for m in methods},
        "ar": ar,
        "recall": recall,
        "mismatches_vs_pycocotools": mismatches,
    }


# ---- output ----------------------------------------------------------------------------------
def table(res: dict) -> str:
    lines = [
        "| method | timed | seconds | x hand-written time |",
        "|---|---|---:|---:|",
    ]
    for m in res["methods"]:
        lines.append(f"| {m} | {res['timed'][m]} | {res['seconds'][m]:.3f} | {res['x_hand_written'][m]:.1f}x |")
    if res["iou_only_seconds"] is not None:
        s = res["iou_only_seconds"]
        lines.append(f"| (reference) mask IoU only | `pycocotools.mask.iou`, all images | {s:.3f} | "
                     f"{s / res['seconds'][HAND]:.2f}x |")
    return "\n".join(lines)


def ar_table(res: dict) -> str:
    keys = list(res["ar"][HAND])
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for m in res["methods"]:
        lines.append(f"| {m} | " + " | ".join(f"{res['ar'][m][k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from instfcn_d2.evaluation import IOU_THRESHOLDS

    methods = res["methods"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    secs = [res["seconds"][m] for m in methods]
    colors = ["tab:green", "tab:red", "tab:blue"][: len(methods)]
    bars = ax.bar(range(len(methods)), secs, color=colors)
    ax.set_yscale("log")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([m.replace(" ", "\n", 1) for m in methods], fontsize=8)
    ax.set_ylabel("seconds (log scale)")
    for b, m in zip(bars, methods):
        ax.annotate(f"{res['seconds'][m]:.2f}s\n({res['x_hand_written'][m]:.1f}x)",
                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    if res["iou_only_seconds"] is not None:
        ax.axhline(res["iou_only_seconds"], color="gray", linestyle="--", linewidth=1,
                   label=f"mask IoU alone, in all three ({res['iou_only_seconds']:.2f}s)")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_ylim(min(secs + [res["iou_only_seconds"] or min(secs)]) / 3, max(secs) * 4)
    s = res["sizes"]
    ax.set_title(f"AR@{'/'.join(map(str, res['max_dets']))}, {s['images']} images {s['height']}x{s['width']},\n"
                 f"{s['gts']} gts, {s['proposals_per_image']} proposals/image", fontsize=9)
    for i, n in enumerate(res["max_dets"]):
        line = ax2.plot(IOU_THRESHOLDS, res["recall"][HAND][:, 0, i], marker="o", markersize=3,
                        label=f"N={n} hand-written")
        ax2.plot(IOU_THRESHOLDS, res["recall"][COCO][:, 0, i], linestyle="none", marker="x", markersize=7,
                 color=line[0].get_color(), label=f"N={n} COCOeval")
    ax2.set_xlabel("IoU threshold")
    ax2.set_ylabel("recall (all sizes)")
    ax2.set_ylim(0, 1)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    ax2.set_title("same recall from both (markers on lines)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_json(res: dict) -> dict:
    def conv(x):
        if isinstance(x, np.ndarray):
            return conv(x.tolist())
        if isinstance(x, float):
            return None if np.isnan(x) else x
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x

    return conv(res)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50, help="number of images (default 50)")
    parser.add_argument("--gts", type=int, default=7,
                        help="mean ground truths per image, uniform in [gts-3, gts+3] (default 7)")
    parser.add_argument("--proposals", type=int, default=1000, help="proposals per image (default 1000)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--max-dets", type=int, nargs="+", default=[10, 100, 1000], help="the N of AR@N (increasing)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per method, interleaved; best reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-opt", action="store_true", help="skip detectron2's COCOeval_opt")
    parser.add_argument("--plot", default=os.path.join("docs", "benchmark_proposal_recall.png"), help="bar chart (PNG)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write every number to this JSON file")
    args = parser.parse_args(argv)

    _log(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
         f"numpy {np.__version__}")
    t0 = time.perf_counter()
    _log(f"building the problem: {args.images} images {args.height}x{args.width}, ~{args.gts} gts and "
         f"{args.proposals} proposals per image, seed {args.seed}")
    problem = make_problem(args.images, args.gts, args.proposals, args.height, args.width, args.seed, log=_log)
    _log(f"problem built in {time.perf_counter() - t0:.1f}s: {problem.sizes['gts']} ground truths, "
         f"{problem.sizes['proposals']} proposals")
    res = run_benchmark(problem, args.max_dets, args.repeat, not args.no_opt, log=_log)
    for m, why in res["skipped"].items():
        _log(f"skipped {m}: {why}")

    _log("\n" + table(res) + "\n")
    _log(ar_table(res) + "\n")
    if args.plot:
        plot(res, args.plot)
        _log(f"wrote {args.plot}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(to_json(res), f, indent=1)
        _log(f"wrote {args.json}")
    failed = False
    for m, bad in res["mismatches_vs_pycocotools"].items():
        if bad:
            failed = True
            _log(f"MISMATCH: {m} differs from pycocotools COCOeval at {len(bad)} of "
                 f"{res['recall'][COCO].size} recall values:")
            for line in bad[:20]:
                _log("  " + line)
        else:
            _log(f"{m}: every recall (IoU threshold x size range x N) equals pycocotools COCOeval's to 1e-9")
    _log(f"total {time.perf_counter() - t0:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
