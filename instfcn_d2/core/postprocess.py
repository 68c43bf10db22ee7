"""Inputs padded as detectron2's ``ImageList`` pads them, and detections and semantic maps at the
output resolution: the same values as detectron2's ``paste_masks_in_image``
(``layers/mask_ops.py``), ``detector_postprocess`` and ``sem_seg_postprocess``
(``modeling/postprocessing.py``), written again because this layer runs without detectron2.

Operations, their order, dtypes and the chunking of the mask pasting are detectron2's, so the
results are bit-equal to it.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from .boxes import clamp_boxes, nonempty

__all__ = ["pad_to_divisibility", "paste_masks_in_image", "detector_postprocess", "sem_seg_postprocess"]

BYTES_PER_FLOAT = 4
GPU_MEM_LIMIT = 1024**3  # detectron2's budget per chunk of pasted masks on a GPU


def pad_to_divisibility(image: Tensor, divisibility: int, pixel_mean: Tensor) -> Tensor:
    """``(3, h, w)`` padded at the bottom / right to multiples of ``divisibility`` with
    ``pixel_mean`` ``(3, 1, 1)``: 0 once normalised, as detectron2's ``ImageList`` pads the
    normalised batch (the exported graphs normalise inside)."""
    h, w = image.shape[-2:]
    if divisibility <= 1 or (h % divisibility == 0 and w % divisibility == 0):
        return image
    H, W = -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility
    out = pixel_mean.to(image).expand(image.shape[0], H, W).clone()
    out[:, :h, :w] = image
    return out


def _do_paste_mask(masks: Tensor, boxes: Tensor, img_h: int, img_w: int, skip_empty: bool = True):
    """``(N, 1, M, M)`` masks sampled at the pixel centres of their ``(N, 4)`` boxes in an
    ``img_h x img_w`` image: ``(N, h', w')`` values and the image slices they cover, only the region
    bounding all boxes where ``skip_empty`` (the whole image otherwise, slices ``()``)."""
    device = masks.device
    if skip_empty:
        x0_int, y0_int = torch.clamp(boxes.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32)
        x1_int = torch.clamp(boxes[:, 2].max().ceil() + 1, max=img_w).to(dtype=torch.int32)
        y1_int = torch.clamp(boxes[:, 3].max().ceil() + 1, max=img_h).to(dtype=torch.int32)
    else:
        x0_int, y0_int = 0, 0
        x1_int, y1_int = img_w, img_h
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)  # each (N, 1)

    N = masks.shape[0]
    img_y = torch.arange(y0_int, y1_int, device=device, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, device=device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1  # (N, h') in grid_sample's [-1, 1]
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1  # (N, w')

    gx = img_x[:, None, :].expand(N, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(N, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)

    if not masks.dtype.is_floating_point:
        masks = masks.float()
    img_masks = F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)

    if skip_empty:
        return img_masks[:, 0], (slice(y0_int, y1_int), slice(x0_int, x1_int))
    return img_masks[:, 0], ()


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """``(N, M, M)`` masks (probabilities) pasted into their ``(N, 4)`` boxes of an image of
    ``image_shape = (H, W)``: ``(N, H, W)``, bool ``>= threshold`` where ``threshold >= 0``, else
    uint8 ``mask * 255``; ``(0, H, W)`` uint8 for no masks. As detectron2's
    ``paste_masks_in_image``, pasting one mask at a time on the CPU, in chunks of at most
    ``GPU_MEM_LIMIT`` bytes of float over the whole image on a GPU."""
    if masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"paste_masks_in_image: square masks only, got {tuple(masks.shape)}")
    if torch.compiler.is_exporting():
        return _paste_masks_at_once(masks, boxes, image_shape, threshold)
    N = len(masks)
    if N == 0:
        return masks.new_empty((0,) + tuple(image_shape), dtype=torch.uint8)
    if len(boxes) != N:
        raise ValueError(f"paste_masks_in_image: {N} masks but boxes of shape {tuple(boxes.shape)}")
    device = boxes.device
    img_h, img_w = image_shape

    if device.type == "cpu":
        num_chunks = N  # the CPU is fastest pasting each mask in its own box's region only
    else:
        num_chunks = int(math.ceil(N * int(img_h) * int(img_w) * BYTES_PER_FLOAT / GPU_MEM_LIMIT))
        if num_chunks > N:
            raise ValueError("paste_masks_in_image: GPU_MEM_LIMIT is too small for one mask of this image")
    chunks = torch.chunk(torch.arange(N, device=device), num_chunks)

    img_masks = torch.zeros(
        N, img_h, img_w, device=device, dtype=torch.bool if threshold >= 0 else torch.uint8
    )
    for inds in chunks:
        masks_chunk, spatial_inds = _do_paste_mask(
            masks[inds, None, :, :], boxes[inds], img_h, img_w, skip_empty=device.type == "cpu"
        )
        if threshold >= 0:
            masks_chunk = (masks_chunk >= threshold).to(dtype=torch.bool)
        else:  # for visualisation, as detectron2
            masks_chunk = (masks_chunk * 255).to(dtype=torch.uint8)
        img_masks[(inds,) + spatial_inds] = masks_chunk
    return img_masks


def _paste_masks_at_once(masks: Tensor, boxes: Tensor, image_shape: Tuple[int, int], threshold: float) -> Tensor:
    """:func:`paste_masks_in_image` in one pass, for an exported graph (which has no loop over a
    count the data decides): every mask sampled over the whole image, then cut to the region the
    CPU path computes (its box, one pixel more on each side, in whole pixels), outside of which
    that path leaves 0; the same values."""
    img_h, img_w = image_shape
    pasted, _ = _do_paste_mask(masks[:, None], boxes, img_h, img_w, skip_empty=False)  # (N, H, W)
    x0 = (boxes[:, 0].floor() - 1).clamp(min=0)
    y0 = (boxes[:, 1].floor() - 1).clamp(min=0)
    x1 = (boxes[:, 2].ceil() + 1).clamp(max=img_w)
    y1 = (boxes[:, 3].ceil() + 1).clamp(max=img_h)
    xs = torch.arange(img_w, device=boxes.device, dtype=boxes.dtype)
    ys = torch.arange(img_h, device=boxes.device, dtype=boxes.dtype)
    in_x = (xs >= x0[:, None]) & (xs < x1[:, None])  # (N, W)
    in_y = (ys >= y0[:, None]) & (ys < y1[:, None])  # (N, H)
    pasted = pasted * (in_y[:, :, None] & in_x[:, None, :]).to(pasted.dtype)
    if threshold >= 0:
        return pasted >= threshold
    return (pasted * 255).to(torch.uint8)


def detector_postprocess(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    mask_probs: Optional[Tensor],
    input_size: Tuple[int, int],
    output_size: Tuple[int, int],
    mask_threshold: float = 0.5,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Detections of an ``input_size = (h, w)`` input at ``output_size = (H, W)``: ``(K, 4)`` boxes
    scaled by ``W / w, H / h`` and clipped, boxes empty after that dropped (with their ``(K,)``
    scores and classes), ``(K, 1, M, M)`` mask probabilities (or None) pasted into the boxes as
    ``(K', H, W)`` bool masks. detectron2's ``detector_postprocess`` of Instances with
    ``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_masks``; the inputs are not changed."""
    out_h, out_w = output_size
    scale_x, scale_y = out_w / input_size[1], out_h / input_size[0]

    # Boxes hold float32; Boxes.scale multiplies in place, here on a copy
    boxes = boxes.to(torch.float32).clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = clamp_boxes(boxes, (out_h, out_w))  # Boxes.clip; detections' boxes are finite

    keep = nonempty(boxes)
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    masks = None
    if mask_probs is not None:
        mask_probs = mask_probs[keep]
        # ROIMasks.to_bitmasks: BitMasks turn the pasted masks (also uint8 ones) into bool
        masks = paste_masks_in_image(mask_probs[:, 0, :, :], boxes, (out_h, out_w), mask_threshold)
        masks = masks.to(torch.bool)
    return boxes, scores, classes, masks


def sem_seg_postprocess(result: Tensor, img_size: Tuple[int, int], output_height: int, output_width: int) -> Tensor:
    """``(C, H, W)`` logits of a padded input cropped to its ``img_size = (h, w)`` and resized
    bilinearly to ``(C, output_height, output_width)``: detectron2's ``sem_seg_postprocess``."""
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
