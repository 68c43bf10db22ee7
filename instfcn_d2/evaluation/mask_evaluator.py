"""What the mask evaluators of instfcn-d2 share: prediction encoding, ground-truth decoding, the
gathering across processes and the ``evaluate()`` that writes a JSON and a PNG.

``SegmentProposalEvaluator`` (AR@N) and ``RegionAPEvaluator`` (mAPr@t) both keep each image's
predicted masks as compressed RLEs, decode the ground truth of the dataset's records the way
pycocotools does, and compute their numbers on the main process. detectron2's ``COCOEvaluator``
does the same inside its own private code paths (it needs a COCO json and ``COCOeval``), so the
shared part is written once here, not borrowed from it.
"""

import abc
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Instances
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

__all__ = ["MaskPredictionEvaluator", "encode_masks", "gather_predictions", "gt_rle_and_area", "json_safe"]


def gather_predictions(predictions: List[dict], distributed: bool) -> Optional[List[dict]]:
    """All processes' per-image predictions on the main process (``None`` on the others), as
    detectron2's ``COCOEvaluator.evaluate`` gathers them; the local list when not distributed."""
    if not distributed:
        return predictions
    comm.synchronize()
    gathered = comm.gather(predictions, dst=0)
    if not comm.is_main_process():
        return None
    return [p for chunk in gathered for p in chunk]


def encode_masks(masks: np.ndarray) -> List[dict]:
    """``(R, H, W)`` binary masks -> R compressed RLEs (COCOEvaluator's encoding)."""
    if len(masks) == 0:
        return []
    return mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def gt_rle_and_area(ann: dict, height: int, width: int, where: str) -> Tuple[dict, float]:
    """One annotation's mask as a compressed RLE (COCO's ``annToRLE``) and its area; ``where``
    names the record in the errors."""
    from detectron2.structures.masks import polygon_area

    seg = ann.get("segmentation", None)
    if seg is None:
        raise ValueError(f"{where}: annotation has no 'segmentation'; mask evaluation needs instance masks")
    if isinstance(seg, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        polys = [np.asarray(p, dtype=np.float64) for p in seg]
        if not polys or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError(f"{where}: polygon segmentation needs >= 3 (x, y) points per polygon")
        rle = mask_util.merge(mask_util.frPyObjects([p.tolist() for p in polys], height, width))
        area = float(np.sum([polygon_area(p[0::2], p[1::2]) for p in polys]))
    elif isinstance(seg, dict):  # RLE, compressed (str/bytes counts) or not (list counts)
        if list(seg.get("size", [])) != [height, width]:
            raise ValueError(f"{where}: RLE size {seg.get('size')} != image (height, width) ({height}, {width})")
        rle = mask_util.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
        area = float(mask_util.area(rle))
    elif isinstance(seg, np.ndarray):  # binary mask (H, W), as detectron2 accepts
        if seg.shape != (height, width):
            raise ValueError(f"{where}: mask shape {seg.shape} != image (height, width) ({height}, {width})")
        rle = encode_masks(seg[None].astype(bool))[0]
        area = float(mask_util.area(rle))
    else:
        raise TypeError(f"{where}: unknown segmentation type {type(seg).__name__}")
    if "area" in ann:  # the dataset's own area (as in its COCO json) wins, as in COCOEvaluator
        area = float(ann["area"])
    return rle, area


def json_safe(obj):
    """NaN -> None (recursively) so the JSON file stays standard."""
    if isinstance(obj, float):
        return None if np.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class MaskPredictionEvaluator(DatasetEvaluator, abc.ABC):
    """Base of the evaluators that keep per-image masks and compute their numbers at the end.

    A subclass sets the class attributes and implements :meth:`process` (with
    :meth:`_checked_instances` and :func:`encode_masks`), ``_compute(predictions) -> stats``,
    ``_summarize(stats) -> results`` and ``_plot(stats) -> PNG bytes``. ``evaluate()`` returns
    ``{RESULT_KEY: results}`` and, with an ``output_dir``, writes ``JSON_FILE`` (the stats plus the
    results under ``JSON_RESULTS_KEY``) and ``PLOT_FILE``.
    """

    NAME = "MaskPredictionEvaluator"
    REQUIRED_FIELDS: Sequence[str] = ("pred_masks", "scores")
    RESULT_KEY = ""
    JSON_FILE = ""
    JSON_RESULTS_KEY = "results"
    PLOT_FILE = ""

    def __init__(self, dataset_name: str, output_dir: Optional[str], distributed: bool):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._predictions: List[dict] = []

    def reset(self):
        self._predictions = []

    def _checked_instances(self, inp: dict, out: dict) -> Tuple[object, Instances]:
        """``(image_id, instances on the CPU)`` of one image; a clear error when the input has no
        ``image_id`` or the output lacks ``instances`` or one of ``REQUIRED_FIELDS``."""
        if "image_id" not in inp:
            raise KeyError(f"{self.NAME}({self._dataset_name}): an input has no 'image_id'")
        image_id = inp["image_id"]
        if "instances" not in out:
            raise KeyError(f"{self.NAME}: output of image_id {image_id} has no 'instances'")
        inst = out["instances"].to("cpu")
        for field in self.REQUIRED_FIELDS:
            if not inst.has(field):
                raise KeyError(f"{self.NAME}: instances of image_id {image_id} have no '{field}'")
        return image_id, inst

    def _with_records(self, predictions: List[dict]) -> List[Tuple[dict, dict]]:
        """``(prediction, dataset record)`` per processed image, in order; an image processed
        twice keeps its first prediction (with a warning), an unknown ``image_id`` is an error."""
        records = {r["image_id"]: r for r in DatasetCatalog.get(self._dataset_name)}
        pairs, seen = [], set()
        for pred in predictions:
            image_id = pred["image_id"]
            if image_id in seen:
                logger.warning("%s: image_id %s processed twice; keeping the first", self.NAME, image_id)
                continue
            seen.add(image_id)
            if image_id not in records:
                raise KeyError(f"{self.NAME}: image_id {image_id} is not in dataset '{self._dataset_name}'")
            pairs.append((pred, records[image_id]))
        return pairs

    def _record_size(self, record: dict, pred_size: Tuple[int, int]) -> Tuple[int, int]:
        """The record's ``(height, width)`` (the predictions' size when the record has none); an
        error when the predicted masks are not at that resolution."""
        height, width = int(record.get("height", pred_size[0])), int(record.get("width", pred_size[1]))
        if (height, width) != tuple(pred_size):
            raise ValueError(
                f"{self.NAME}: image_id {record['image_id']} of '{self._dataset_name}' is {height}x{width} "
                f"but its predicted masks are {pred_size[0]}x{pred_size[1]}; masks must be at image resolution"
            )
        return height, width

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:  # not the main process
            return {}
        if not predictions:
            logger.warning("%s(%s): no images were processed", self.NAME, self._dataset_name)
            return {}
        stats = self._compute(predictions)
        results = self._summarize(stats)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, self.JSON_FILE), "w") as f:
                json.dump(json_safe({**stats, self.JSON_RESULTS_KEY: results}), f, indent=1)
            with PathManager.open(os.path.join(self._output_dir, self.PLOT_FILE), "wb") as f:
                f.write(self._plot(stats))
        return {self.RESULT_KEY: results}

    @abc.abstractmethod
    def _compute(self, predictions: List[dict]) -> dict:
        """Implemented by each evaluator (see the class docstring)."""

    @abc.abstractmethod
    def _summarize(self, stats: dict) -> Dict[str, float]:
        """Implemented by each evaluator (see the class docstring)."""

    @abc.abstractmethod
    def _plot(self, stats: dict) -> bytes:
        """Implemented by each evaluator (see the class docstring)."""
