"""Mean IU of BiSeg's ``sem_seg`` output on a dataset without semantic label files.

detectron2's ``SemSegEvaluator`` reads each image's ground truth from ``sem_seg_file_name``. A
COCO-format instance dataset has none; BiSeg then trains on labels derived from the instances
(``MODEL.BISEG.SEM_SEG_SOURCE``, :mod:`instfcn_d2.data.semantic_from_instances`), and
:class:`InstanceSemSegEvaluator` scores against the same labels, derived by the same function
from the record's annotations at the record's resolution. Metrics, classes (``background`` +
``thing_classes``) and output files are ``SemSegEvaluator``'s (it is a subclass; only where the
ground truth comes from differs).
"""
import logging

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.evaluation.evaluator import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..data.semantic_from_instances import semantic_from_annotations

__all__ = ["InstanceSemSegEvaluator", "LabelCheckedSemSegEvaluator", "check_label_range"]


def check_label_range(gt: np.ndarray, num_classes: int, ignore_label: int, source: str) -> None:
    """Raise ValueError naming ``source`` when ``gt`` holds labels outside ``[0, num_classes)`` that
    are not ``ignore_label``. ``SemSegEvaluator``'s confusion matrix would count such a pixel in
    another class's row (or fail to reshape), changing mean IU without a word."""
    bad = (gt != ignore_label) & ((gt < 0) | (gt >= num_classes))
    if bad.any():
        values = np.unique(gt[bad])
        raise ValueError(
            f"semantic labels out of range in {source}: values {values[:10].tolist()}"
            + (f" (and {len(values) - 10} more)" if len(values) > 10 else "")
            + f" in {int(bad.sum())} pixel(s); labels must be in [0, {num_classes - 1}] (0 = background, "
            f"c + 1 = thing class c) or the ignore value {ignore_label}"
        )


class LabelCheckedSemSegEvaluator(SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` that refuses a label file with values outside the
    dataset's classes (:func:`check_label_range`) instead of miscounting them."""

    def process(self, inputs, outputs):
        for inp in inputs:
            gt_file = self.input_file_to_gt_file[inp["file_name"]]
            with PathManager.open(gt_file, "rb") as f:
                gt = np.asarray(Image.open(f), dtype=int)
            check_label_range(gt, self._num_classes, self._ignore_label, f"{gt_file} (image {inp['file_name']})")
        super().process(inputs, outputs)


class InstanceSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` whose ground truth is derived from each record's instance annotations
    (0 background, ``c + 1`` thing class ``c``, ``ignore_label`` on crowd regions), or read from
    the record's ``sem_seg_file_name`` when ``use_files`` and it has one (``SEM_SEG_SOURCE
    "auto"``, as the training mapper does)."""

    def __init__(self, dataset_name: str, *, ignore_label: int = 255, use_files: bool = False, distributed: bool = True, output_dir=None):
        DatasetEvaluator.__init__(self)  # not SemSegEvaluator's: it needs a label file per record
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self._records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}  # sets thing_classes
        things = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        if things is None:
            raise ValueError(f"InstanceSemSegEvaluator: dataset '{dataset_name}' has no thing_classes in its metadata")
        self._class_names = ["background"] + list(things)
        self._num_classes = len(self._class_names)
        self._ignore_label = ignore_label
        self._use_files = use_files
        self._contiguous_id_to_dataset_id = None  # labels are written as they are (0 = background)
        # detectron2 main also scores boundary IoU (with OpenCV, below 255 classes); v0.6 does not
        self._compute_boundary_iou = hasattr(SemSegEvaluator, "_mask_to_boundary") and self._num_classes < 255
        if self._compute_boundary_iou:
            try:
                import cv2  # noqa: F401
            except ImportError:
                self._compute_boundary_iou = False

    def ground_truth(self, file_name: str) -> np.ndarray:
        """The ``(H, W)`` int label map of the record of ``file_name``."""
        record = self._records.get(file_name)
        if record is None:
            raise KeyError(f"InstanceSemSegEvaluator: {file_name} is not an image of dataset '{self._dataset_name}'")
        if self._use_files and record.get("sem_seg_file_name"):
            with PathManager.open(record["sem_seg_file_name"], "rb") as f:  # as SemSegEvaluator reads them
                gt = np.asarray(Image.open(f), dtype=int)
            source = f"{record['sem_seg_file_name']} (image {file_name})"
            check_label_range(gt, self._num_classes, self._ignore_label, source)
            return gt
        if "annotations" not in record:
            raise ValueError(f"InstanceSemSegEvaluator: the record of {file_name} has no 'annotations' to derive labels from")
        try:
            return semantic_from_annotations(record["annotations"], (record["height"], record["width"]), self._ignore_label)
        except ValueError as e:
            raise ValueError(f"InstanceSemSegEvaluator: {file_name}: {e}") from None

    def process(self, inputs, outputs):
        for inp, output in zip(inputs, outputs):
            pred = np.array(output["sem_seg"].argmax(dim=0).to(self._cpu_device), dtype=int)
            gt = np.array(self.ground_truth(inp["file_name"]), dtype=int)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"InstanceSemSegEvaluator: {inp['file_name']}: prediction {pred.shape} but ground truth {gt.shape}; "
                    "sem_seg must be at the record's height x width"
                )
            gt[gt == self._ignore_label] = self._num_classes
            n = self._num_classes + 1
            self._conf_matrix += np.bincount(n * pred.reshape(-1) + gt.reshape(-1), minlength=n * n).reshape(n, n)
            if self._compute_boundary_iou:
                b_gt = self._mask_to_boundary(gt.astype(np.uint8))
                b_pred = self._mask_to_boundary(pred.astype(np.uint8))
                self._b_conf_matrix += np.bincount(n * b_pred.reshape(-1) + b_gt.reshape(-1), minlength=n * n).reshape(n, n)
            self._predictions.extend(self.encode_json_sem_seg(pred, inp["file_name"]))
