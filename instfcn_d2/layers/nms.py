"""Greedy non-maximum suppression, ``torch.ops.instfcn_d2.nms``: torchvision's ``nms`` (the same
kept indices, tested against it) in this library.

Why a second NMS: an exported whole model (``instfcn_d2.export.whole``) calls its operators by name,
so the libraries that register them must be loaded where it runs. torchvision's ops library links
libtorch_python, which a C++ program cannot load without Python; this library needs libtorch only.
Eager code keeps torchvision's (``instfcn_d2.core.boxes.batched_nms`` uses this op only while
``torch.export`` traces).
"""
import torch
from torch import Tensor

from . import _ext  # noqa: F401  (loads instfcn_d2._C, which defines torch.ops.instfcn_d2)

__all__ = ["nms"]


@torch.library.register_fake("instfcn_d2::nms")
def _nms_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: f"nms: boxes must be (N, 4), got {tuple(boxes.shape)}")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "nms: scores must be (N,)")
    kept = torch.library.get_ctx().new_dynamic_size()  # how many are kept depends on the values
    return boxes.new_empty((kept,), dtype=torch.int64)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices ``(K,)`` int64 of the ``(N, 4)`` XYXY ``boxes`` kept by greedy NMS, by decreasing
    ``(N,)`` score: a box is dropped when its IoU with a kept box is ``> iou_threshold``."""
    return torch.ops.instfcn_d2.nms(boxes, scores, float(iou_threshold))
