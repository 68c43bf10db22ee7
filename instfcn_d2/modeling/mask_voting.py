"""Mask voting (MNC, Dai et al. 2016; used by FCIS and BiSeg at test time).

For each detection kept by NMS, every candidate (all RoIs scored at test time, suppressed or
not) whose box overlaps the kept box with IoU >= ``iou_threshold`` votes: its foreground
probabilities of the kept detection's class are averaged pixel by pixel, weighted by its score
of that class. The average is then binarised (FCIS: at 0.4) when pasted into the image.

How the average is computed here: each voting candidate's ``M x M`` mask is *resampled into the
kept box's own M x M frame* (bilinear, zero outside the candidate's box: exactly how detectron2's
``paste_masks_in_image`` places an ``M x M`` mask in a box), then averaged there. The official
FCIS code pastes every voter into the image over the union of their boxes, averages there and
crops the kept box out; the two agree up to resampling, because a voter is zero outside its box
in both. Working in the kept box's frame keeps the result ``(K, M, M)``, so detectron2's
``detector_postprocess`` pastes it at the output resolution with the binarisation threshold, and
it is one batched ``grid_sample`` over all (kept, voter) pairs instead of a loop of image-size
pastes.
"""
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

__all__ = ["mask_voting", "resample_masks_into_boxes"]

# (kept, voter) pairs resampled per grid_sample call: bounds memory (pairs * M * M * 12 bytes)
# when many detections overlap many candidates.
_PAIRS_PER_CHUNK = 4096


def resample_masks_into_boxes(masks: Tensor, mask_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """Resample each ``masks[i]`` (``(Q, M, M)``, covering ``mask_boxes[i]``) into the ``M x M``
    frame of ``target_boxes[i]`` (boxes ``(Q, 4)`` XYXY in image coordinates) -> ``(Q, M, M)``.

    Output pixel ``(r, s)`` samples the mask at the image point of its pixel centre,
    ``(x1 + (s + 0.5) * w / M, y1 + (r + 0.5) * h / M)`` of the target box, bilinearly, with 0
    outside the mask's box (``grid_sample`` zero padding, as ``paste_masks_in_image``). A box
    resampled into itself gives the mask back unchanged.
    """
    Q, M = masks.shape[0], masks.shape[-1]
    centres = (torch.arange(M, device=masks.device, dtype=masks.dtype) + 0.5) / M  # (M,) in [0, 1]
    tb = target_boxes.to(masks.dtype)
    mb = mask_boxes.to(masks.dtype)
    xs = tb[:, 0:1] + centres[None] * (tb[:, 2:3] - tb[:, 0:1])  # (Q, M) image x of target columns
    ys = tb[:, 1:2] + centres[None] * (tb[:, 3:4] - tb[:, 1:2])  # (Q, M) image y of target rows
    # a zero-size mask box (never an IoU voter, but keep it finite) maps everything outside
    mw = (mb[:, 2:3] - mb[:, 0:1]).clamp(min=1e-6)
    mh = (mb[:, 3:4] - mb[:, 1:2]).clamp(min=1e-6)
    gx = (xs - mb[:, 0:1]) / mw * 2 - 1  # grid_sample's [-1, 1] over the mask box (align_corners=False)
    gy = (ys - mb[:, 1:2]) / mh * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(Q, M, M), gy[:, :, None].expand(Q, M, M)], dim=3)
    out = F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0]


def mask_voting(
    kept_boxes: Tensor,
    cand_boxes: Tensor,
    cand_masks: Tensor,
    cand_scores: Tensor,
    iou_threshold: float = 0.5,
) -> Tensor:
    """Score-weighted average of the masks of all candidates overlapping each kept box.

    Args:
        kept_boxes: ``(K, 4)`` XYXY boxes of the detections kept by NMS (all of one class).
        cand_boxes: ``(P, 4)`` XYXY boxes of all candidates (the kept ones among them).
        cand_masks: ``(P, M, M)`` foreground probabilities of that class, each in its own box.
        cand_scores: ``(P,)`` class scores of that class (the vote weights).
        iou_threshold: a candidate votes for a kept box when their box IoU is ``>=`` this.

    Returns:
        ``(K, M, M)`` voted probabilities, each in its kept box's frame. A kept box with no voter
        (possible only when it is not itself a candidate) gets zeros.
    """
    if kept_boxes.dim() != 2 or kept_boxes.shape[-1] != 4:
        raise ValueError(f"mask_voting: kept_boxes must be (K, 4), got {tuple(kept_boxes.shape)}")
    P = cand_boxes.shape[0]
    if cand_boxes.shape != (P, 4) or cand_scores.shape != (P,) or cand_masks.dim() != 3 or cand_masks.shape[0] != P:
        raise ValueError(
            "mask_voting: expected cand_boxes (P, 4), cand_masks (P, M, M), cand_scores (P,), got "
            f"{tuple(cand_boxes.shape)}, {tuple(cand_masks.shape)}, {tuple(cand_scores.shape)}"
        )
    K, M = kept_boxes.shape[0], cand_masks.shape[-1]
    voted = cand_masks.new_zeros((K, M, M))
    if K == 0 or P == 0:
        return voted
    iou = pairwise_iou(Boxes(kept_boxes), Boxes(cand_boxes))  # (K, P)
    kept_idx, cand_idx = (iou >= iou_threshold).nonzero(as_tuple=True)
    weights = cand_scores[cand_idx].to(cand_masks.dtype)
    for start in range(0, len(kept_idx), _PAIRS_PER_CHUNK):
        k = kept_idx[start : start + _PAIRS_PER_CHUNK]
        p = cand_idx[start : start + _PAIRS_PER_CHUNK]
        w = weights[start : start + _PAIRS_PER_CHUNK]
        resampled = resample_masks_into_boxes(cand_masks[p], cand_boxes[p], kept_boxes[k])
        voted.index_add_(0, k, resampled * w[:, None, None])
    weight_sum = cand_masks.new_zeros(K).index_add_(0, kept_idx, weights)
    return voted / weight_sum.clamp(min=torch.finfo(voted.dtype).tiny)[:, None, None]
