"""VOC / SBD region AP: mAPr at a single mask-IoU threshold (SDS, MNC, FCIS, BiSeg's Table 1).

``RegionAPEvaluator`` is a detectron2 ``DatasetEvaluator`` for models whose outputs are
``Instances`` with ``pred_masks``, ``scores`` and ``pred_classes``. For each class and each IoU
threshold ``t`` (default 0.5 and 0.7) it computes the *region* AP of the SDS paper (Hariharan et
al., ECCV 2014), with the conventions of the official evaluation code of MNC and FCIS
(``voc_eval_sds`` in ``lib/utils/voc_eval.py`` / ``lib/dataset/pascal_voc_eval.py``), which
produced the numbers the papers report (FCIS 65.7 / 52.1, BiSeg 67.3 / 54.4 mAPr@0.5 / @0.7 on
VOC 2012 val with SBD masks):

- all detections of the class over the evaluated images are visited by descending score (a
  stable sort: equal scores keep the processing order, so the result is deterministic);
- **VOC matching**: a detection is compared with every ground-truth instance of its class in its
  image, and takes the one of highest mask IoU (the first of equal maxima, in the dataset's
  annotation order). If that IoU is ``>= t`` (``>=`` as ``voc_eval_sds``; VOC's box code uses
  ``>``) and the instance is not matched yet, the detection is a true positive; if the instance
  is already matched, it is a false positive (a *duplicate*), even when another instance of IoU
  ``>= t`` is still free (that is the VOC rule, where COCO would move on to the free one);
  below ``t`` it is a false positive;
- recall = TP / (number of ground-truth instances of the class), precision = TP / (TP + FP),
  cumulated along the score order;
- **AP = VOC 2007 11-point interpolated AP** by default (``use_07_metric=True``): the mean over
  ``r in {0, 0.1, ..., 1}`` of the highest precision at a recall ``>= r``.
  Why not VOC 2010+'s all-point AP: the official MNC and FCIS code calls ``voc_ap(rec, prec,
  True)`` (``use_07_metric=True``) inside ``voc_eval_sds``, so the published mAPr are 11-point
  numbers; ChainerCV's port of FCIS notes likewise that its SBD evaluator must be used with
  ``use_07_metric=True`` to reproduce them. ``use_07_metric=False`` gives the all-point AP
  (the area under the interpolated precision-recall envelope, VOC 2010+), for comparisons with
  code that uses it. Both come from detectron2's ``pascal_voc_evaluation.voc_ap``, the same
  function as the MNC / FCIS one; its 11-point grid is ``np.arange(0, 1.1, 0.1)``, so a recall
  of exactly 0.3 does not reach the grid point 0.30000000000000004: numbers match theirs bit for
  bit.

Ignored ground truth. A ground-truth annotation with ``iscrowd`` (COCO) or ``difficult`` (VOC
convention) set counts neither as a positive nor as a match target. A detection that matches no
counted instance (best IoU ``< t``) but covers an ignored region is neither TP nor FP: it is
dropped from the precision-recall curve. Crowd regions use COCO's crowd overlap (intersection over
the detection's area, pycocotools ``iou`` with ``iscrowd=1``), since a crowd region spans many
objects; ``difficult`` instances use the plain IoU. SBD has neither, so SBD numbers are unaffected.

Classes. The AP of a class with no (counted) ground truth in the evaluated images is undefined:
it is reported as NaN and **left out of the mean**, as in detectron2's ``COCOEvaluator``; a class
with ground truth but no detection has AP 0. Only the images passed to :meth:`process` are
evaluated (their ground truth comes from the dataset's ``DatasetCatalog`` records).

Numbers are reported x100 (percent), like detectron2's evaluators.
"""
import io
import logging
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

from detectron2.data import MetadataCatalog

# detectron2's PASCAL VOC box evaluator has the very ``voc_ap`` of the MNC / FCIS code (same
# 11-point grid ``np.arange(0, 1.1, 0.1)``, same all-point envelope): reused, not rewritten.
from detectron2.evaluation.pascal_voc_evaluation import voc_ap

from .mask_evaluator import MaskPredictionEvaluator, encode_masks, gt_rle_and_area

logger = logging.getLogger(__name__)

__all__ = ["RegionAPEvaluator", "match_detections", "plot_region_ap"]

DEFAULT_IOU_THRESHOLDS = (0.5, 0.7)
RESULT_KEY = "segm_voc"
JSON_FILE = "region_ap.json"
PLOT_FILE = "region_ap_per_class.png"

# Outcome of one detection for one threshold.
TP, FP, IGNORED = 1, 0, -1


def match_detections(
    best_iou: np.ndarray, best_gt: np.ndarray, ignore_iou: np.ndarray, threshold: float
) -> np.ndarray:
    """VOC greedy matching of one class's detections at one threshold.

    Args:
        best_iou: ``(D,)`` float, each detection's highest mask IoU with the counted ground truth
            of its class in its image (``-inf`` when the image has none), in descending score order.
        best_gt: ``(D,)`` int64, a dataset-wide index of that ground truth (any value where
            ``best_iou`` is ``-inf``).
        ignore_iou: ``(D,)`` float, the highest overlap with an ignored region (crowd / difficult)
            of the class in the image, ``-inf`` when none.
        threshold: the IoU threshold ``t``.

    Returns:
        ``(D,)`` int8: ``TP`` (1), ``FP`` (0) or ``IGNORED`` (-1) per detection.
    """
    outcome = np.full(len(best_iou), FP, dtype=np.int8)
    taken = set()
    for d in range(len(best_iou)):
        if best_iou[d] >= threshold:
            if best_gt[d] not in taken:  # else: a duplicate of a matched instance, FP
                taken.add(int(best_gt[d]))
                outcome[d] = TP
        elif ignore_iou[d] >= threshold:
            outcome[d] = IGNORED
    return outcome


class RegionAPEvaluator(MaskPredictionEvaluator):
    """mAPr@t of instance masks, VOC / SBD style (see the module docstring for the rules).

    ``evaluate()`` returns ``{"segm_voc": {"mAPr@0.5": ..., "mAPr@0.7": ..., "AP50-<class>": ...,
    "AP70-<class>": ...}}`` in percent (NaN for a class with no ground truth), and when
    ``output_dir`` is set writes ``region_ap.json`` (per-class AP, positives, detections) and
    ``region_ap_per_class.png`` (a bar chart of the per-class AP, one bar per threshold).
    """

    NAME = "RegionAPEvaluator"
    REQUIRED_FIELDS = ("pred_masks", "scores", "pred_classes")
    RESULT_KEY = RESULT_KEY
    JSON_FILE = JSON_FILE
    JSON_RESULTS_KEY = "results"
    PLOT_FILE = PLOT_FILE

    def __init__(
        self,
        dataset_name: str,
        iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
        use_07_metric: bool = True,
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a ``DatasetCatalog`` name; its records (``image_id``, ``height``,
                ``width``, ``annotations`` with contiguous ``category_id`` and ``segmentation``)
                are the ground truth, its metadata's ``thing_classes`` name the classes.
            iou_thresholds: mask-IoU thresholds, each in (0, 1].
            use_07_metric: 11-point AP (default, as the MNC / FCIS code) or all-point AP.
            output_dir: where the JSON and the plot go (nothing written when None).
            distributed: gather the predictions of all processes to the main one.
        """
        thresholds = tuple(float(t) for t in iou_thresholds)
        if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
            raise ValueError(f"RegionAPEvaluator: iou_thresholds must be in (0, 1], got {iou_thresholds}")
        classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        if not classes:
            raise KeyError(f"RegionAPEvaluator: dataset '{dataset_name}' has no 'thing_classes' in its metadata")
        super().__init__(dataset_name, output_dir, distributed)
        self._thresholds = thresholds
        self._use_07_metric = bool(use_07_metric)
        self._class_names = list(classes)

    def process(self, inputs, outputs):
        """Keep each image's detections as RLEs (all of them: the model decides how many).

        ``inputs[i]`` needs ``image_id``; ``outputs[i]["instances"]`` needs ``pred_masks``
        ``(R, H, W)`` (bool; other dtypes are binarised at > 0.5) at the image resolution,
        ``scores`` ``(R,)`` and ``pred_classes`` ``(R,)`` (contiguous class indices).
        """
        for inp, out in zip(inputs, outputs):
            image_id, inst = self._checked_instances(inp, out)
            classes = inst.pred_classes.numpy().astype(np.int64)
            bad = classes[(classes < 0) | (classes >= len(self._class_names))]
            if len(bad):
                raise ValueError(
                    f"RegionAPEvaluator: image_id {image_id} has pred_classes {sorted(set(bad.tolist()))} outside "
                    f"0..{len(self._class_names) - 1} ({len(self._class_names)} thing_classes of '{self._dataset_name}')"
                )
            masks = inst.pred_masks.numpy()
            masks = masks if masks.dtype == bool else masks > 0.5
            self._predictions.append(
                {
                    "image_id": image_id,
                    "size": tuple(int(s) for s in inst.image_size),
                    "scores": inst.scores.numpy().astype(np.float64),
                    "classes": classes,
                    "rles": encode_masks(masks),
                }
            )

    def _plot(self, stats: dict) -> bytes:
        return plot_region_ap(self._class_names, stats["ap"], self._thresholds)

    # ------------------------------------------------------------------------------------------

    def _compute(self, predictions: List[dict]) -> dict:
        """Per-class AP (fractions) for every threshold, over the processed images."""
        num_classes = len(self._class_names)
        # Per class, one entry per detection: score, best counted IoU, its gt index, ignore IoU.
        per_class = defaultdict(lambda: {"score": [], "best_iou": [], "best_gt": [], "ignore_iou": []})
        num_pos = np.zeros(num_classes, dtype=np.int64)
        num_ignored_gt, gt_offset = 0, 0
        pairs = self._with_records(predictions)
        for pred, record in pairs:
            counted, ignored = self._ground_truth(record, pred["size"])
            for c, rles in counted.items():
                num_pos[c] += len(rles)
            num_ignored_gt += sum(len(v[0]) for v in ignored.values())
            for c in np.unique(pred["classes"]).tolist():
                det = np.nonzero(pred["classes"] == c)[0]
                det_rles = [pred["rles"][i] for i in det]
                entry = per_class[c]
                entry["score"].append(pred["scores"][det])
                gt_rles = counted.get(c, [])
                if gt_rles:
                    ious = np.asarray(mask_util.iou(det_rles, gt_rles, [0] * len(gt_rles)), dtype=np.float64)
                    ious = ious.reshape(len(det), len(gt_rles))
                    entry["best_iou"].append(ious.max(axis=1))
                    entry["best_gt"].append(gt_offset + ious.argmax(axis=1))  # first of equal maxima
                else:
                    entry["best_iou"].append(np.full(len(det), -np.inf))
                    entry["best_gt"].append(np.full(len(det), -1, dtype=np.int64))
                ign_rles, ign_crowd = ignored.get(c, ([], []))
                if ign_rles:
                    ovl = np.asarray(mask_util.iou(det_rles, ign_rles, ign_crowd), dtype=np.float64)
                    entry["ignore_iou"].append(ovl.reshape(len(det), len(ign_rles)).max(axis=1))
                else:
                    entry["ignore_iou"].append(np.full(len(det), -np.inf))
            # A dataset-wide gt index: instances of different images never share one.
            gt_offset += sum(len(v) for v in counted.values())

        ap = {f"{t:g}": [float("nan")] * num_classes for t in self._thresholds}
        num_det = [0] * num_classes
        for c in range(num_classes):
            entry = per_class.get(c)
            scores = np.concatenate(entry["score"]) if entry else np.zeros(0)
            num_det[c] = len(scores)
            if num_pos[c] == 0:
                continue  # undefined AP: NaN, left out of the mean
            if len(scores) == 0:
                for t in self._thresholds:
                    ap[f"{t:g}"][c] = 0.0
                continue
            order = np.argsort(-scores, kind="mergesort")
            best_iou = np.concatenate(entry["best_iou"])[order]
            best_gt = np.concatenate(entry["best_gt"])[order]
            ignore_iou = np.concatenate(entry["ignore_iou"])[order]
            for t in self._thresholds:
                outcome = match_detections(best_iou, best_gt, ignore_iou, t)
                outcome = outcome[outcome != IGNORED]
                tp = np.cumsum(outcome == TP)
                fp = np.cumsum(outcome == FP)
                recall = tp / float(num_pos[c])
                precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
                # 0 when every detection was ignored (empty curve)
                ap[f"{t:g}"][c] = float(voc_ap(recall, precision, self._use_07_metric))
        return {
            "dataset": self._dataset_name,
            "iou_thresholds": list(self._thresholds),
            "use_07_metric": self._use_07_metric,
            "classes": self._class_names,
            "num_images": len(pairs),
            "num_positives": num_pos.tolist(),
            "num_detections": num_det,
            "num_ignored_gt": num_ignored_gt,
            "ap": ap,
        }

    def _ground_truth(self, record: dict, pred_size):
        """``(counted, ignored)`` of one image: ``{class: [RLE]}`` of the instances that count, in
        the record's annotation order, and ``{class: ([RLE], [iscrowd flag])}`` of ignored ones."""
        image_id = record["image_id"]
        height, width = self._record_size(record, pred_size)
        counted, ignored = defaultdict(list), defaultdict(lambda: ([], []))
        for i, ann in enumerate(record.get("annotations", [])):
            where = f"dataset '{self._dataset_name}', image_id {image_id}, annotation {i}"
            c = ann.get("category_id", None)
            if not isinstance(c, (int, np.integer)) or not 0 <= c < len(self._class_names):
                raise ValueError(
                    f"{where}: category_id {c!r} is not a contiguous index in 0..{len(self._class_names) - 1}"
                )
            rle, _ = gt_rle_and_area(ann, height, width, where)
            crowd = bool(ann.get("iscrowd", 0))
            if crowd or ann.get("difficult", 0):
                ignored[int(c)][0].append(rle)
                ignored[int(c)][1].append(int(crowd))
            else:
                counted[int(c)].append(rle)
        return counted, ignored

    def _summarize(self, stats: dict) -> Dict[str, float]:
        results = OrderedDict()
        for t in self._thresholds:
            per_class = np.asarray(stats["ap"][f"{t:g}"], dtype=np.float64)
            valid = ~np.isnan(per_class)
            if not valid.any():
                logger.warning(
                    "RegionAPEvaluator(%s): no class has ground truth in the %d evaluated images; mAPr@%g is NaN",
                    self._dataset_name, stats["num_images"], t,
                )
            results[f"mAPr@{t:g}"] = float(per_class[valid].mean() * 100.0) if valid.any() else float("nan")
        for t in self._thresholds:
            for name, value in zip(self._class_names, stats["ap"][f"{t:g}"]):
                results[f"AP{round(t * 100)}-{name}"] = float(value * 100.0)
        logger.info(
            "Region AP (%s AP) on %s (%d images): %s",
            "11-point" if self._use_07_metric else "all-point",
            self._dataset_name,
            stats["num_images"],
            ", ".join(f"{k}={results[k]:.2f}" for k in results if k.startswith("mAPr")),
        )
        return results


def plot_region_ap(class_names: Sequence[str], ap: Dict[str, Sequence[float]], thresholds: Sequence[float]) -> bytes:
    """Per-class AP bar chart: one group of bars per class, one bar per threshold
    (``ap[f"{t:g}"]`` of length C, fractions; NaN classes drawn empty). Returns the PNG bytes."""
    # An explicit Agg canvas: no global matplotlib backend switch inside a library.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = len(class_names)
    fig = Figure(figsize=(max(6.0, 0.45 * num_classes + 2), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(num_classes)
    width = 0.8 / len(thresholds)
    for i, t in enumerate(thresholds):
        values = np.asarray(ap[f"{t:g}"], dtype=np.float64) * 100.0
        mean = np.nanmean(values) if (~np.isnan(values)).any() else float("nan")
        ax.bar(x + (i - (len(thresholds) - 1) / 2) * width, np.nan_to_num(values), width, label=f"IoU {t:g} (mAPr {mean:.1f})")
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0.0, 100.0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
