"""Class-agnostic segment-proposal recall (InstanceFCN's AR@N, the paper's Fig. 6 / Tables 1-3).

``SegmentProposalEvaluator`` is a detectron2 ``DatasetEvaluator`` for models whose outputs are
``Instances`` with ``pred_masks`` and ``scores``; classes are ignored. For every image it keeps
the top-N proposals by score, measures the mask IoU with the ground-truth instances and matches
them one-to-one exactly as pycocotools' ``COCOeval`` does with ``iouType="segm"`` and
``params.useCats = 0``:

- proposals are visited by descending score (stable sort: equal scores keep the model's order);
- each one takes, among the still unmatched ground truths with IoU >= the threshold, the one with
  the highest IoU (ties: the *last* in COCO's ground-truth order, i.e. the dataset's annotation
  order grouped by ``category_id``), so each ground truth is matched at most once;
- recall at a threshold = matched ground truths / ground truths, pooled over all images (not a
  mean of per-image recalls); AR@N = mean of the recalls over IoU 0.50:0.05:0.95.

Crowd ground truths (``iscrowd=1``) are left out of recall: COCO only lets them absorb proposals
(a proposal matched to a crowd region is neither a hit nor does it free its top-N slot), which
never changes which non-crowd instance another proposal matches, so dropping them gives COCO's
recall exactly. Object sizes use the annotation's ``area`` when the record has one, else the
rule of detectron2's ``convert_to_coco_dict`` (polygon area by the shoelace formula, RLE pixel
count), with COCO's inclusive ranges small [0, 32^2], medium [32^2, 96^2], large [96^2, 1e10].

The size-range recalls (AR_s/m/l) match each range on its own, as COCOeval does: the ground
truths outside the range are ignored, so a proposal takes a free in-range ground truth over a
better-overlapping out-of-range one (overlapping objects of 1000 and 1100 pixels, say).

Numbers are reported x100 (percent), like detectron2's COCO AP/AR. A recall with no non-crowd
ground truth to recall (the whole dataset, or one size range) is NaN, with a warning in the log
(COCOeval reports -1 there).

Why a hand-written matcher and not ``COCOeval`` itself: the same numbers, much faster. On 50
images of 480x640 with 1000 proposals each, pycocotools' ``COCOeval`` (``useCats = 0``) takes about
14x as long (its matching is a Python loop over thresholds x proposals x ground truths) and
detectron2's C++ ``COCOeval_opt`` (only with detectron2's compiled ``_C``) about 1.7x;
``tools/benchmark_proposal_recall.py`` measures it and checks that all three agree (results in
``docs/benchmarks.md``).
"""
import io
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util


from .mask_evaluator import MaskPredictionEvaluator, encode_masks, gt_rle_and_area

logger = logging.getLogger(__name__)

# The very array COCOeval uses (``Params.setDetParams``), so thresholds compare bit-identically.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)

# COCO's size ranges (inclusive on both ends, as COCOeval's ``area < lo or area > hi`` ignore test).
AREA_RANGES = OrderedDict(
    [("all", (0.0, 1e5**2)), ("small", (0.0, 32.0**2)), ("medium", (32.0**2, 96.0**2)), ("large", (96.0**2, 1e5**2))]
)
_AREA_KEY = {"small": "s", "medium": "m", "large": "l"}

PLOT_FILE = "proposal_recall_vs_iou.png"
JSON_FILE = "proposal_recall.json"



def match_proposals(ious: np.ndarray, iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """COCO's greedy one-to-one matching of score-sorted proposals to ground truths.

    Args:
        ious: ``(D, G)`` mask IoU of the ``D`` proposals, sorted by descending score, with the
            ``G`` non-crowd ground truths of one image, in COCO's ground-truth order.
        iou_thresholds: ``(T,)`` thresholds.

    Returns:
        ``(T, G)`` int64: for each threshold and ground truth, the rank (row of ``ious``) of the
        proposal matched to it, -1 if none. The matching of the top-``N`` proposals is the first
        ``N`` ranks of this one (greedy in score order), so ``0 <= rank < N`` counts hits at N.
    """
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2:
        raise ValueError(f"match_proposals: ious must be (D, G), got shape {ious.shape}")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    num_dets, num_gts = ious.shape
    ranks = np.full((len(thresholds), num_gts), -1, dtype=np.int64)
    if num_dets == 0 or num_gts == 0:
        return ranks
    # COCOeval caps the threshold just below 1 so that a perfect mask still matches at t = 1.
    eff = np.minimum(thresholds, 1 - 1e-10)[:, None]  # (T, 1)
    free = np.ones((len(thresholds), num_gts), dtype=bool)
    rows = np.arange(len(thresholds))
    useful = np.nonzero(ious.max(axis=1) >= eff.min())[0]  # others can match nothing
    for d in useful:
        ok = free & (ious[d][None, :] >= eff)  # (T, G)
        hit = ok.any(axis=1)
        if not hit.any():
            continue
        vals = np.where(ok, ious[d][None, :], -np.inf)
        best = num_gts - 1 - np.argmax(vals[:, ::-1], axis=1)  # last of the maxima, as COCOeval
        ranks[rows[hit], best[hit]] = d
        free[rows[hit], best[hit]] = False
        if not free.any():
            break
    return ranks


class SegmentProposalEvaluator(MaskPredictionEvaluator):
    """Class-agnostic mask recall AR@N of segment proposals (see the module docstring).

    ``evaluate()`` returns ``{"proposals": {"AR@10": ..., "AR@100": ..., "AR@1000": ...,
    "AR_s@1000": ..., "AR_m@1000": ..., "AR_l@1000": ...}}`` in percent (the size keys at the
    largest N), and when ``output_dir`` is set writes ``proposal_recall_vs_iou.png`` (recall vs IoU
    threshold, one curve per N) and ``proposal_recall.json`` (the raw recalls, fractions in [0, 1]).
    Only the images passed to :meth:`process` are evaluated.
    """

    NAME = "SegmentProposalEvaluator"
    REQUIRED_FIELDS = ("pred_masks", "scores")
    RESULT_KEY = "proposals"
    JSON_FILE = JSON_FILE
    JSON_RESULTS_KEY = "AR"
    PLOT_FILE = PLOT_FILE

    def __init__(
        self,
        dataset_name: str,
        max_dets: Sequence[int] = (10, 100, 1000),
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a ``DatasetCatalog`` name; its records (with ``image_id``, ``height``,
                ``width``, ``annotations`` holding ``segmentation``) are the ground truth.
            max_dets: the numbers N of top-scoring proposals per image (positive, increasing).
            output_dir: where the plot and JSON go (nothing written when None).
            distributed: gather the predictions of all processes to the main one.
        """
        max_dets = tuple(int(n) for n in max_dets)
        if not max_dets or any(n <= 0 for n in max_dets) or list(max_dets) != sorted(set(max_dets)):
            raise ValueError(f"SegmentProposalEvaluator: max_dets must be positive and increasing, got {max_dets}")
        super().__init__(dataset_name, output_dir, distributed)
        self._max_dets = max_dets

    def process(self, inputs, outputs):
        """Keep the top ``max(max_dets)`` proposals of each image as RLEs.

        ``inputs[i]`` needs ``image_id``; ``outputs[i]["instances"]`` needs ``pred_masks``
        ``(R, H, W)`` (bool; other dtypes are binarised at > 0.5) at the image resolution and
        ``scores`` ``(R,)``.
        """
        keep = self._max_dets[-1]
        for inp, out in zip(inputs, outputs):
            image_id, inst = self._checked_instances(inp, out)
            scores = inst.scores.numpy().astype(np.float64)
            order = np.argsort(-scores, kind="mergesort")[:keep]  # COCOeval's stable score sort
            masks = inst.pred_masks.numpy()[order]  # (min(R, keep), H, W)
            masks = masks if masks.dtype == bool else masks > 0.5
            self._predictions.append(
                {
                    "image_id": image_id,
                    "size": tuple(int(s) for s in inst.image_size),
                    "scores": scores[order],
                    "rles": encode_masks(masks),
                }
            )

    def _plot(self, stats: dict) -> bytes:
        return plot_recall_vs_iou(stats["iou_thresholds"], stats["recall"]["all"], self._max_dets)

    def _compute(self, predictions: List[dict]) -> dict:
        """Matched counts per area range, N and threshold, pooled over the processed images."""
        num_t, num_n = len(IOU_THRESHOLDS), len(self._max_dets)
        hits = {a: np.zeros((num_n, num_t), dtype=np.int64) for a in AREA_RANGES}
        num_gt = {a: 0 for a in AREA_RANGES}
        num_crowd = 0
        pairs = self._with_records(predictions)
        for pred, record in pairs:
            rles, areas, crowd = self._ground_truth(record, pred["size"])
            num_crowd += crowd
            ious = np.zeros((len(pred["rles"]), len(rles)), dtype=np.float64)
            if rles and pred["rles"]:
                ious = np.asarray(mask_util.iou(pred["rles"], rles, [0] * len(rles)), dtype=np.float64)
                ious = ious.reshape(len(pred["rles"]), len(rles))
            for a, (lo, hi) in AREA_RANGES.items():
                in_range = (areas >= lo) & (areas <= hi)
                num_gt[a] += int(in_range.sum())
                # COCOeval matches each size range on its own: ground truths outside it are
                # ignored, and a proposal takes an ignored one only when no in-range one is free,
                # so the in-range matches are those of a matching over the in-range columns alone.
                ranks = match_proposals(ious[:, in_range])
                for i, n in enumerate(self._max_dets):
                    hits[a][i] += ((ranks >= 0) & (ranks < n)).sum(axis=1)
        recall = {}
        for a in AREA_RANGES:
            with np.errstate(invalid="ignore", divide="ignore"):
                rec = hits[a] / num_gt[a] if num_gt[a] else np.full((num_n, num_t), np.nan)
            recall[a] = {str(n): rec[i].tolist() for i, n in enumerate(self._max_dets)}
        if num_gt["all"] == 0:
            logger.warning(
                "SegmentProposalEvaluator(%s): the %d evaluated images have no non-crowd ground truth; "
                "recall is undefined (NaN)", self._dataset_name, len(pairs)
            )
        return {
            "dataset": self._dataset_name,
            "iou_thresholds": IOU_THRESHOLDS.tolist(),
            "max_dets": list(self._max_dets),
            "num_images": len(pairs),
            "num_gt": num_gt,
            "num_crowd_gt_excluded": num_crowd,
            "recall": recall,
        }

    def _ground_truth(self, record: dict, pred_size: Tuple[int, int]) -> Tuple[List[dict], np.ndarray, int]:
        """Non-crowd gt RLEs in COCOeval's order (``category_id`` groups, dataset order within),
        their areas ``(G,)``, and the number of crowd gts left out."""
        image_id = record["image_id"]
        height, width = self._record_size(record, pred_size)
        anns = record.get("annotations", [])
        order = sorted(range(len(anns)), key=lambda i: anns[i].get("category_id", 0))  # stable
        rles, areas, crowd = [], [], 0
        for i in order:
            ann = anns[i]
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            where = f"dataset '{self._dataset_name}', image_id {image_id}, annotation {i}"
            rle, area = gt_rle_and_area(ann, height, width, where)
            rles.append(rle)
            areas.append(area)
        return rles, np.asarray(areas, dtype=np.float64), crowd

    def _summarize(self, stats: dict) -> Dict[str, float]:
        results = OrderedDict()
        for n in self._max_dets:
            results[f"AR@{n}"] = _mean_percent(stats["recall"]["all"][str(n)])
        top = str(self._max_dets[-1])
        for a, key in _AREA_KEY.items():
            results[f"AR_{key}@{top}"] = _mean_percent(stats["recall"][a][top])
        logger.info(
            "Segment proposal recall on %s (%d images, %d non-crowd gt): %s",
            self._dataset_name, stats["num_images"], stats["num_gt"]["all"],
            ", ".join(f"{k}={v:.2f}" for k, v in results.items()),
        )
        return results


def _mean_percent(recalls: Sequence[float]) -> float:
    return float(np.mean(recalls) * 100.0)


def plot_recall_vs_iou(iou_thresholds: Sequence[float], recall: Dict[str, Sequence[float]], max_dets) -> bytes:
    """The paper's Fig. 6 for one model: recall (y) vs IoU threshold (x), one curve per N
    (``recall[str(N)]`` of length T, fractions). Returns the PNG bytes."""
    # An explicit Agg canvas: no global matplotlib backend switch inside a library.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for n in max_dets:
        rec = np.asarray(recall[str(n)], dtype=np.float64)
        ax.plot(iou_thresholds, rec, marker="o", markersize=3, label=f"{n} proposals (AR {np.mean(rec) * 100:.1f})")
    ax.set_xlabel("IoU")
    ax.set_ylabel("Recall")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
