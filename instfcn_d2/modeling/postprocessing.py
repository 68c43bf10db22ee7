"""Window masks -> segment proposals: paste, binarise, mask-box NMS (InstanceFCN inference).

The paper's inference: each assembled ``m x m`` window mask is binarised ("truncated") at image
resolution, proposals are suppressed by NMS on the objectness scores and the IoU of the *tight
boxes of the binary masks* (threshold 0.8), and the top N are kept. Pasting computes what
detectron2's ``paste_masks_in_image`` computes (bilinear upsampling of the window into its box,
then ``>= threshold``; parts of a window outside the image are clipped away), batched over the
equal-size windows of a test scale; NMS is torchvision's.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torch import Tensor
from torchvision.ops import nms

__all__ = [
    "paste_window_masks",
    "pasted_mask_boxes",
    "mask_tight_boxes",
    "mask_box_nms",
    "window_masks_to_proposals",
]

# Bytes of intermediate tensors per pasting chunk (bounds memory with thousands of windows).
_PASTE_BUDGET_BYTES = 1 << 28


def _local_pastes(mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float):
    """Paste each window only over the pixels its box can reach, in batches of equal-size boxes.

    Per pixel this computes exactly what detectron2's ``paste_masks_in_image`` computes (pixel
    centres mapped into the box, ``grid_sample`` bilinear with zero padding, ``>= threshold``),
    but vectorised over windows: at one test scale every window box has the same size, so one
    ``grid_sample`` call pastes a whole batch. detectron2's CPU path pastes masks one by one.

    Yields ``(index (B,), local (B, h, w) bool, x_start (B,), y_start (B,))``: ``local[b]``
    covers image pixels ``[y_start, y_start + h) x [x_start, x_start + w)``; pixels outside the
    image are False.
    """
    H, W = int(image_size[0]), int(image_size[1])
    device = mask_probs.device
    boxes = boxes.to(torch.float32)
    x_start = boxes[:, 0].floor().to(torch.int64) - 1  # one pixel of margin as detectron2
    y_start = boxes[:, 1].floor().to(torch.int64) - 1
    widths = boxes[:, 2].ceil().to(torch.int64) + 1 - x_start
    heights = boxes[:, 3].ceil().to(torch.int64) + 1 - y_start
    sizes = torch.stack([heights, widths], dim=1)
    groups = torch.unique(sizes, dim=0) if len(sizes) else sizes
    for h, w in groups.tolist():
        members = ((heights == h) & (widths == w)).nonzero().squeeze(1)
        chunk = max(1, _PASTE_BUDGET_BYTES // (h * w * 16))
        for part in members.split(chunk):
            b = boxes[part]
            xs = x_start[part, None] + torch.arange(w, device=device)  # (B, w) image columns
            ys = y_start[part, None] + torch.arange(h, device=device)  # (B, h) image rows
            gx = (xs.to(torch.float32) + 0.5 - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]) * 2 - 1
            gy = (ys.to(torch.float32) + 0.5 - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]) * 2 - 1
            grid = torch.stack([gx[:, None, :].expand(-1, h, -1), gy[:, :, None].expand(-1, -1, w)], dim=3)
            probs = mask_probs[part, None].to(torch.float32)
            local = F.grid_sample(probs, grid, align_corners=False)[:, 0] >= threshold
            inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
            yield part, local & inside, x_start[part], y_start[part]


def paste_window_masks(
    mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Paste ``(P, M, M)`` probabilities into their XYXY ``boxes`` ``(P, 4)`` of an image of
    ``image_size = (H, W)``: bilinear upsampling, then ``>= threshold`` -> bool ``(P, H, W)``.
    Same result as detectron2's ``paste_masks_in_image`` (tested), faster for many windows."""
    H, W = int(image_size[0]), int(image_size[1])
    out = torch.zeros((mask_probs.shape[0], H, W), dtype=torch.bool, device=mask_probs.device)
    for part, local, x_start, y_start in _local_pastes(mask_probs, boxes, (H, W), threshold):
        n, yy, xx = local.nonzero(as_tuple=True)
        out[part[n], y_start[n] + yy, x_start[n] + xx] = True
    return out


def pasted_mask_boxes(
    mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Tight boxes ``(P, 4)`` of the masks :func:`paste_window_masks` would return, without
    materialising ``(P, H, W)`` (an empty mask gets an all-zero box)."""
    out = torch.zeros((mask_probs.shape[0], 4), dtype=torch.float32, device=mask_probs.device)
    for part, local, x_start, y_start in _local_pastes(mask_probs, boxes, image_size, threshold):
        tight = mask_tight_boxes(local)
        offset = torch.stack([x_start, y_start, x_start, y_start], dim=1).to(torch.float32)
        nonempty = local.flatten(1).any(dim=1, keepdim=True)
        out[part] = torch.where(nonempty, tight + offset, torch.zeros_like(tight))
    return out


def mask_tight_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes ``(P, 4)`` float32 of bool masks ``(P, H, W)`` (pixel ``i`` spans ``[i, i+1)``);
    an empty mask gets an all-zero box."""
    P, H, W = masks.shape
    device = masks.device
    if P == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=device)
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


def mask_box_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """NMS on the tight boxes of binary masks: indices kept, by decreasing score. Empty masks (an
    all-zero box) are dropped: they cannot be proposals."""
    nonempty = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero().squeeze(1)
    keep = nms(boxes[nonempty], scores[nonempty], iou_threshold)
    return nonempty[keep]


def window_masks_to_proposals(
    mask_probs: Tensor,
    window_boxes: Tensor,
    scores: Tensor,
    image_size: Tuple[int, int],
    *,
    mask_threshold: float = 0.5,
    nms_threshold: float = 0.8,
    max_detections: int = 1000,
) -> Instances:
    """Segment proposals of one image from its candidate windows (of one or several test scales).

    Args:
        mask_probs: ``(P, M, M)`` mask probabilities of the windows.
        window_boxes: ``(P, 4)`` XYXY window boxes at the output resolution.
        scores: ``(P,)`` objectness probabilities.
        image_size: ``(H, W)`` of the output.

    Returns:
        ``Instances`` of at most ``max_detections`` proposals by decreasing score, with
        ``pred_masks`` bool ``(N, H, W)``, ``pred_boxes`` (tight boxes of the masks), ``scores``
        and ``pred_classes`` (all 0: proposals are class-agnostic).

    The tight boxes for the NMS come from pasting each window over its own box only; the full
    ``(N, H, W)`` masks are made for the survivors only, so memory stays ``O(max_detections * H * W)``
    with thousands of candidate windows.
    """
    H, W = int(image_size[0]), int(image_size[1])
    tight = pasted_mask_boxes(mask_probs, window_boxes, (H, W), mask_threshold)
    keep = mask_box_nms(tight, scores, nms_threshold)[:max_detections]

    result = Instances((H, W))
    result.pred_masks = paste_window_masks(mask_probs[keep], window_boxes[keep], (H, W), mask_threshold)
    result.pred_boxes = Boxes(tight[keep])
    result.scores = scores[keep]
    result.pred_classes = torch.zeros(len(keep), dtype=torch.int64, device=scores.device)
    return result
