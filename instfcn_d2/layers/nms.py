"""Greedy non-maximum suppression, ``torch.ops.instfcn_d2.nms``: torchvision's ``nms`` (the same
kept indices, tested against it) in this library.

Why a second NMS: an exported whole model (``instfcn_d2.export.whole``) calls its operators by name,
so the libraries that register them must be loaded where it runs. torchvision's ops library links
libtorch_python, which a C++ program cannot load without Python; this library needs libtorch only.
Eager code keeps torchvision's (``instfcn_d2.core.boxes.batched_nms`` uses these ops only while
``torch.export`` traces). ``batched_nms`` (NMS within each group, torchvision's ``batched_nms``)
loops over the groups in the CPU kernel: a graph cannot loop over a count the data decides, and one
NMS over all groups moved apart compares every pair (540 ms for FCIS's ~48,000 (candidate, class)
pairs at C = 80, against a few ms per group).
"""
import torch
from torch import Tensor

from . import _ext  # noqa: F401  (loads instfcn_d2._C, which defines torch.ops.instfcn_d2)

__all__ = ["nms", "batched_nms"]


@torch.library.register_fake("instfcn_d2::nms")
def _nms_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"nms: boxes must be (N, 4), got {tuple(boxes.shape)}")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "nms: scores must be (N,)")
    kept = torch.library.get_ctx().new_dynamic_size()  # how many are kept depends on the values
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch.library.register_fake("instfcn_d2::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"batched_nms: boxes must be (N, 4), got {tuple(boxes.shape)}")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "batched_nms: scores must be (N,)")
    torch._check(idxs.dim() == 1 and idxs.shape[0] == boxes.shape[0], lambda: "batched_nms: idxs must be (N,)")
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's ``batched_nms``: greedy NMS within each group of ``(N,)`` integer ``idxs``;
    the kept indices ``(K,)`` int64 by decreasing score (the order of :func:`nms` of the boxes moved
    apart by group)."""
    return torch.ops.instfcn_d2.batched_nms(boxes, scores, idxs, float(iou_threshold))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices ``(K,)`` int64 of the ``(N, 4)`` XYXY ``boxes`` kept by greedy NMS, by decreasing
    ``(N,)`` score: a box is dropped when its IoU with a kept box is ``> iou_threshold``."""
    return torch.ops.instfcn_d2.nms(boxes, scores, float(iou_threshold))
