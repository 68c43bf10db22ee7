"""Window masks -> segment proposals: paste, binarise, mask-box NMS (InstanceFCN inference).

The paper's inference: each assembled ``m x m`` window mask is binarised ("truncated"),
proposals are suppressed by NMS on the objectness scores and the IoU of the *tight boxes of the
binary masks* (threshold 0.8), and the top N are kept. Two resolutions for those tight boxes:

- ``"window"`` (default): the box of the binarised ``m x m`` mask the network predicts, each cell
  spanning ``1/m`` of its window. Costs O(P * m * m) for P candidates, which is what keeps the
  part after the trunk cheap with thousands of candidates; the boxes differ from the pasted
  masks' by less than one cell (8 px at stride 8) per side.
- ``"image"``: the box of each mask pasted at image resolution (exact, ~50x the cost).

Only the survivors of the NMS are pasted at image size. Pasting computes what detectron2's
``paste_masks_in_image`` computes (bilinear upsampling of the window into its box, then
``>= threshold``; parts of a window outside the image are clipped away).

Detectron2 free (torch and torchvision only): the meta-architecture runs it, and exported models
after their graph.
"""
from typing import Iterator, Tuple

import torch
from torch import Tensor
from torchvision.ops import nms

from ..boxes import mask_tight_boxes
from ..detections import Detections

__all__ = [
    "paste_window_masks",
    "paste_window_masks_with_boxes",
    "pasted_mask_boxes",
    "window_mask_boxes",
    "mask_box_nms",
    "window_masks_to_proposals",
    "NMS_BOX_RESOLUTIONS",
]

NMS_BOX_RESOLUTIONS = ("window", "image")


# Bytes of intermediate tensors per pasting chunk (bounds memory with thousands of windows).
_PASTE_BUDGET_BYTES = 1 << 26


def _interpolation_matrices(start: Tensor, length: int, lo: Tensor, hi: Tensor, m: int) -> Tensor:
    """``(B, length, m)`` weights of bilinear sampling along one axis, as ``grid_sample`` with
    ``align_corners=False`` and zero padding computes them.

    Pixel ``start[b] + i`` (centre ``+ 0.5``) of the image maps to ``u = (centre - lo) / (hi - lo)
    * m - 0.5`` in the ``m`` cells of box ``[lo, hi)``; its two taps ``floor(u)`` and ``floor(u) + 1``
    get weights ``1 - frac(u)`` and ``frac(u)``; taps outside ``[0, m)`` read zero.
    """
    centres = start[:, None].to(torch.float32) + torch.arange(length, device=start.device) + 0.5
    u = (centres - lo[:, None]) / (hi - lo)[:, None] * m - 0.5
    u0 = u.floor()
    frac = (u - u0)[..., None]
    # columns 0 and m + 1 of the padded matrix collect the taps that fall off the window
    i0 = (u0.to(torch.int64) + 1).clamp(0, m + 1)[..., None]
    i1 = (u0.to(torch.int64) + 2).clamp(0, m + 1)[..., None]
    weights = torch.zeros((len(start), length, m + 2), dtype=torch.float32, device=start.device)
    weights.scatter_add_(2, i0, 1 - frac)
    weights.scatter_add_(2, i1, frac)
    return weights[:, :, 1 : m + 1]


def _local_pastes(
    mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float
) -> Iterator[Tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Paste each window only over the pixels its box can reach, in batches of equal-size boxes.

    Per pixel this computes what detectron2's ``paste_masks_in_image`` computes (pixel centres
    mapped into the box, bilinear with zero padding, ``>= threshold``), but bilinear upsampling is
    separable, so a batch of windows is pasted by two batched matrix products
    ``W_y (h, m) @ mask (m, m) @ W_x (m, w)^T``: BLAS work instead of ``grid_sample``'s per-pixel
    gathers (3x faster on CPU). detectron2's CPU path pastes masks one by one.

    Yields ``(index (B,), local (B, h, w) bool, x_start (B,), y_start (B,))``: ``local[b]``
    covers image pixels ``[y_start, y_start + h) x [x_start, x_start + w)``; pixels outside the
    image are False.
    """
    H, W = int(image_size[0]), int(image_size[1])
    device = mask_probs.device
    m = mask_probs.shape[-1]
    boxes = boxes.to(torch.float32)
    x_start = boxes[:, 0].floor().to(torch.int64) - 1  # one pixel of margin as detectron2
    y_start = boxes[:, 1].floor().to(torch.int64) - 1
    widths = boxes[:, 2].ceil().to(torch.int64) + 1 - x_start
    heights = boxes[:, 3].ceil().to(torch.int64) + 1 - y_start
    sizes = torch.stack([heights, widths], dim=1)
    groups = torch.unique(sizes, dim=0) if len(sizes) else sizes
    for h, w in groups.tolist():
        members = ((heights == h) & (widths == w)).nonzero().squeeze(1)
        chunk = max(1, _PASTE_BUDGET_BYTES // (h * w * 8))
        for part in members.split(chunk):
            b = boxes[part]
            wy = _interpolation_matrices(y_start[part], h, b[:, 1], b[:, 3], m)
            wx = _interpolation_matrices(x_start[part], w, b[:, 0], b[:, 2], m)
            probs = mask_probs[part].to(torch.float32)
            local = torch.bmm(torch.bmm(wy, probs), wx.transpose(1, 2)) >= threshold
            xs = x_start[part, None] + torch.arange(w, device=device)  # (B, w) image columns
            ys = y_start[part, None] + torch.arange(h, device=device)  # (B, h) image rows
            inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
            yield part, local & inside, x_start[part], y_start[part]


def paste_window_masks(
    mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Paste ``(P, M, M)`` probabilities into their XYXY ``boxes`` ``(P, 4)`` of an image of
    ``image_size = (H, W)``: bilinear upsampling, then ``>= threshold`` -> bool ``(P, H, W)``.
    Same result as detectron2's ``paste_masks_in_image`` (tested), faster for many windows."""
    return paste_window_masks_with_boxes(mask_probs, boxes, image_size, threshold)[0]


def paste_window_masks_with_boxes(
    mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float = 0.5
) -> Tuple[Tensor, Tensor]:
    """:func:`paste_window_masks` and the tight boxes ``(P, 4)`` of the pasted masks (all-zero for
    an empty mask), taken from each window's own region instead of scanning ``(P, H, W)`` again."""
    H, W = int(image_size[0]), int(image_size[1])
    P = mask_probs.shape[0]
    out = torch.zeros((P, H, W), dtype=torch.bool, device=mask_probs.device)
    tight = torch.zeros((P, 4), dtype=torch.float32, device=mask_probs.device)
    for part, local, x_start, y_start in _local_pastes(mask_probs, boxes, (H, W), threshold):
        h, w = local.shape[1:]
        tight[part] = _offset_tight_boxes(local, x_start, y_start)
        # one slice copy per window (clipped to the image): cheaper than scattering pixel indices
        for p, loc, x0, y0 in zip(part.tolist(), local, x_start.tolist(), y_start.tolist()):
            ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
            if ya < yb and xa < xb:
                out[p, ya:yb, xa:xb] = loc[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out, tight


def _offset_tight_boxes(local: Tensor, x_start: Tensor, y_start: Tensor) -> Tensor:
    """Image-coordinate tight boxes ``(B, 4)`` of local pastes ``(B, h, w)`` at offsets ``(B,)``."""
    boxes = mask_tight_boxes(local)
    offset = torch.stack([x_start, y_start, x_start, y_start], dim=1).to(torch.float32)
    nonempty = (boxes[:, 2] > boxes[:, 0])[:, None]
    return torch.where(nonempty, boxes + offset, torch.zeros_like(boxes))


def pasted_mask_boxes(
    mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Tight boxes ``(P, 4)`` of the masks :func:`paste_window_masks` would return, without
    materialising ``(P, H, W)`` (an empty mask gets an all-zero box)."""
    out = torch.zeros((mask_probs.shape[0], 4), dtype=torch.float32, device=mask_probs.device)
    for part, local, x_start, y_start in _local_pastes(mask_probs, boxes, image_size, threshold):
        out[part] = _offset_tight_boxes(local, x_start, y_start)
    return out


def window_mask_boxes(
    mask_probs: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Tight boxes ``(P, 4)`` of the ``(P, M, M)`` window masks binarised at window resolution.

    Cell ``(i, j)`` of window ``p`` spans ``1/M`` of its XYXY box ``boxes[p]`` per side; the box of
    the cells ``>= threshold`` is clipped to the image ``(H, W)`` as pasting clips the masks. A mask
    with no cell on (or none inside the image) gets an all-zero box.
    """
    H, W = int(image_size[0]), int(image_size[1])
    P, M = mask_probs.shape[0], mask_probs.shape[-1]
    if P == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=mask_probs.device)
    cells = mask_tight_boxes(mask_probs >= threshold)  # in cell units, [j, j + 1)
    boxes = boxes.to(torch.float32)
    origin = boxes[:, :2].repeat(1, 2)
    cell_size = ((boxes[:, 2:] - boxes[:, :2]) / M).repeat(1, 2)
    tight = origin + cells * cell_size
    tight = torch.minimum(tight.clamp(min=0), tight.new_tensor([W, H, W, H]))
    empty = (cells[:, 2] <= cells[:, 0]) | (tight[:, 2] <= tight[:, 0]) | (tight[:, 3] <= tight[:, 1])
    return torch.where(empty[:, None], torch.zeros_like(tight), tight)


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
    nms_box_resolution: str = "window",
) -> Detections:
    """Segment proposals of one image from its candidate windows (of one or several test scales).

    Args:
        mask_probs: ``(P, M, M)`` mask probabilities of the windows.
        window_boxes: ``(P, 4)`` XYXY window boxes at the output resolution.
        scores: ``(P,)`` objectness probabilities.
        image_size: ``(H, W)`` of the output.
        nms_box_resolution: ``"window"`` or ``"image"``: where the tight boxes the NMS compares
            are taken (see the module docstring).

    Returns:
        :class:`Detections` at ``image_size``: at most ``max_detections`` proposals by decreasing
        score, with ``masks`` bool ``(N, H, W)``, ``boxes`` ``(N, 4)`` (tight boxes of the pasted
        masks), ``scores`` ``(N,)`` and ``classes`` all 0 (proposals are class-agnostic).

    The full ``(N, H, W)`` masks are made for the survivors of the NMS only, so memory stays
    ``O(max_detections * H * W)`` with thousands of candidate windows. A survivor whose pasted
    mask is empty (possible with window-resolution boxes: a cell just over the threshold whose
    upsampled pixels all fall under it) is dropped.
    """
    if nms_box_resolution not in NMS_BOX_RESOLUTIONS:
        raise ValueError(f"nms_box_resolution must be one of {NMS_BOX_RESOLUTIONS}, got {nms_box_resolution!r}")
    H, W = int(image_size[0]), int(image_size[1])
    box_fn = window_mask_boxes if nms_box_resolution == "window" else pasted_mask_boxes
    nms_boxes = box_fn(mask_probs, window_boxes, (H, W), mask_threshold)
    keep = mask_box_nms(nms_boxes, scores, nms_threshold)[:max_detections]

    masks, tight = paste_window_masks_with_boxes(mask_probs[keep], window_boxes[keep], (H, W), mask_threshold)
    nonempty = tight[:, 2] > tight[:, 0]
    if not bool(nonempty.all()):
        keep, masks, tight = keep[nonempty], masks[nonempty], tight[nonempty]
    classes = torch.zeros(len(keep), dtype=torch.int64, device=scores.device)
    return Detections((H, W), tight, scores[keep], classes, masks)
