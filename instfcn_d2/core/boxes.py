"""Box decoding, box checks and the tight boxes of masks.

``apply_deltas``, ``clip_boxes`` and ``nonempty`` give the same values as detectron2's
``Box2BoxTransform.apply_deltas``, ``Boxes.clip`` and ``Boxes.nonempty``, written again because
this layer (the models' inference, eager and deployed) runs without detectron2. The operations and
their order are detectron2's, so results are bit-equal to it (tested against it in
``tests/core/test_detectron2_ports.py``).
"""
from typing import Tuple

import torch
import torchvision
from torch import Tensor

from ..layers import batched_nms as native_batched_nms

__all__ = [
    "apply_deltas",
    "clip_boxes",
    "clamp_boxes",
    "nonempty",
    "mask_tight_boxes",
    "batched_nms",
    "assign_boxes_to_levels",
]


def apply_deltas(
    deltas: Tensor, boxes: Tensor, weights: Tuple[float, float, float, float], scale_clamp: float
) -> Tensor:
    """``(R, 4)`` boxes ``x0, y0, x1, y1`` moved by ``(R, 4)`` deltas ``dx, dy, dw, dh``: what
    ``Box2BoxTransform(weights, scale_clamp).apply_deltas(deltas, boxes)`` returns, float32."""
    deltas = deltas.float()  # decoding in fp32 even for fp16 heads, as detectron2
    boxes = boxes.to(deltas.dtype)

    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights

    wx, wy, ww, wh = weights
    # strided slices (R, 1) rather than columns: the same kernels and shapes as detectron2
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = deltas[:, 2::4] / ww
    dh = deltas[:, 3::4] / wh

    # huge dw / dh would overflow exp()
    dw = torch.clamp(dw, max=scale_clamp)
    dh = torch.clamp(dh, max=scale_clamp)

    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]

    x1 = pred_ctr_x - 0.5 * pred_w
    y1 = pred_ctr_y - 0.5 * pred_h
    x2 = pred_ctr_x + 0.5 * pred_w
    y2 = pred_ctr_y + 0.5 * pred_h
    return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def clip_boxes(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """``(R, 4)`` boxes with x clamped to ``[0, w]`` and y to ``[0, h]`` for ``image_size = (h, w)``,
    as ``Boxes.clip`` (a new tensor; the input is not changed).

    Raises ValueError where a coordinate is NaN or infinite (``Boxes.clip`` asserts it)."""
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("clip_boxes: the box tensor contains infinite or NaN values")
    return clamp_boxes(boxes, image_size)


def clamp_boxes(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """:func:`clip_boxes` without its check: non-finite coordinates stay non-finite (NaN) or are
    clamped (inf); for tensor code that must not branch on the values (an exported graph)."""
    h, w = image_size
    x1 = boxes[:, 0].clamp(min=0, max=w)
    y1 = boxes[:, 1].clamp(min=0, max=h)
    x2 = boxes[:, 2].clamp(min=0, max=w)
    y2 = boxes[:, 3].clamp(min=0, max=h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """``(R,)`` bool: both sides of each ``(R, 4)`` box longer than ``threshold``, as
    ``Boxes.nonempty``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return (widths > threshold) & (heights > threshold)


def mask_tight_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes ``(P, 4)`` float32 of bool masks ``(P, H, W)`` (pixel ``i`` spans ``[i, i+1)``);
    an empty mask gets an all-zero box.

    The same boxes as detectron2's ``BitMasks.get_bounding_boxes`` (the tests use it as the oracle),
    written again because that one loops over the masks in Python and builds its result on the CPU;
    this runs on every voted or pasted mask at inference, on the masks' device."""
    H, W = masks.shape[-2:]
    device = masks.device
    x_any = masks.any(dim=1)  # (P, W)
    y_any = masks.any(dim=2)  # (P, H)
    xs = torch.arange(W, device=device)
    ys = torch.arange(H, device=device)
    x0 = torch.where(x_any, xs, W).amin(dim=1)
    x1 = torch.where(x_any, xs + 1, 0).amax(dim=1)
    y0 = torch.where(y_any, ys, H).amin(dim=1)
    y1 = torch.where(y_any, ys + 1, 0).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    return torch.where(x_any.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's ``batched_nms`` (NMS within each ``idxs`` group; kept indices by decreasing
    score), as detectron2 calls it. While ``torch.export`` traces: this library's
    :func:`instfcn_d2.layers.batched_nms` (the same kept set; one operator, no branch on the number
    of boxes, which torchvision's has and a graph cannot), so that the exported graph needs no
    torchvision library to run."""
    if not torch.compiler.is_exporting():
        return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)
    return native_batched_nms(boxes, scores, idxs, iou_threshold)


def assign_boxes_to_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_box_size: float, canonical_level: int
) -> Tensor:
    """``(R,)`` int64 level index (offset from ``min_level``) of each ``(R, 4)`` box by its size
    ``sqrt(area)``: detectron2's ``assign_boxes_to_levels`` for the boxes of any images (FPN paper,
    eq. 1), which pools Mask R-CNN's RoIs and chooses FCIS's map level. A box with NaN coordinates
    (diverged weights) gets ``min_level`` rather than an index of no level."""
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level_assignments = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    level_assignments = torch.nan_to_num(level_assignments, nan=float(min_level))
    level_assignments = torch.clamp(level_assignments, min=min_level, max=max_level)
    return level_assignments.to(torch.int64) - min_level
