"""Mask voting (MNC, Dai et al. 2016; used by FCIS and BiSeg at test time).

For each detection kept by NMS, every candidate (all RoIs scored at test time, suppressed or
not) whose box overlaps the kept box with IoU >= ``iou_threshold`` votes: its foreground
probabilities of the kept detection's class are averaged pixel by pixel, weighted by its score
of that class. The average is then binarised (FCIS: at 0.4) when pasted into the image. The
official code binarises each voter at that threshold first (``voter_threshold``), so the voted
mask is the score-weighted fraction of the voters covering a pixel.

How the average is computed here: each voting candidate's ``M x M`` mask is *resampled into an
M x M frame*, the kept box's or ``frames``' (bilinear, zero outside the candidate's box: exactly how detectron2's
``paste_masks_in_image`` places an ``M x M`` mask in a box), then averaged there. The official
FCIS code (``mask_aggregation``) pastes every voter into the image, averages there and reports
the binarised average with its own tight box ("clipped_box"), so a voted mask may reach beyond
the kept box. ``frames`` (:func:`voter_union_boxes`, the union of the voters' boxes) and
:func:`tight_mask_boxes` give that form (``MODEL.FCIS.MASK_VOTING_FRAME "union"``); averaging in
the kept box's frame cuts it at the kept box. Working in an ``M x M`` frame keeps the result
``(K, M, M)``, so detectron2's
``detector_postprocess`` pastes it at the output resolution with the binarisation threshold, and
it is one batched ``grid_sample`` over all (kept, voter) pairs instead of a loop of image-size
pastes.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from ..boxes import mask_tight_boxes

__all__ = ["mask_voting", "voting_pairs", "resample_masks_into_boxes", "voter_union_boxes", "tight_mask_boxes"]

#: ``(kept_idx, cand_idx)``, both ``(Q,)``: candidate ``cand_idx[q]`` votes for kept box ``kept_idx[q]``.
VotingPairs = Tuple[Tensor, Tensor]

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


def voting_pairs(kept_boxes: Tensor, cand_boxes: Tensor, iou_threshold: float = 0.5) -> VotingPairs:
    """The (kept box, voter) pairs: every candidate whose box IoU with a kept box is ``>=``
    ``iou_threshold`` (``(K, 4)`` and ``(P, 4)`` XYXY boxes). Computed once and shared by
    :func:`voter_union_boxes` and :func:`mask_voting`."""
    # detectron2's pairwise_iou, but for a zero-area pair (0 there, NaN here: never >= the threshold)
    iou = box_iou(kept_boxes, cand_boxes)  # (K, P)
    kept_idx, cand_idx = (iou >= iou_threshold).nonzero(as_tuple=True)
    return kept_idx, cand_idx


def mask_voting(
    kept_boxes: Tensor,
    cand_boxes: Tensor,
    cand_masks: Tensor,
    cand_scores: Tensor,
    iou_threshold: float = 0.5,
    frames: Optional[Tensor] = None,
    voter_threshold: Optional[float] = None,
    pairs: Optional[VotingPairs] = None,
) -> Tensor:
    """Score-weighted average of the masks of all candidates overlapping each kept box.

    Args:
        kept_boxes: ``(K, 4)`` XYXY boxes of the detections kept by NMS (all of one class).
        cand_boxes: ``(P, 4)`` XYXY boxes of all candidates (the kept ones among them).
        cand_masks: ``(P, M, M)`` foreground probabilities of that class, each in its own box.
        cand_scores: ``(P,)`` class scores of that class (the vote weights).
        iou_threshold: a candidate votes for a kept box when their box IoU is ``>=`` this.
        frames: ``(K, 4)`` boxes to average in instead of the kept boxes (e.g.
            :func:`voter_union_boxes`); the voters are still chosen by IoU with the kept boxes.
        voter_threshold: binarise each voter's resampled mask at this threshold before the
            weighted average (the official ``mask_aggregation``: the result is then the
            score-weighted fraction of voters that cover a pixel); ``None`` averages the
            probabilities themselves.
        pairs: :func:`voting_pairs` of these boxes at ``iou_threshold``, if already computed.

    Returns:
        ``(K, M, M)`` voted probabilities, each in its kept box's (or ``frames``') frame. A kept box with no voter
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
    if frames is not None and frames.shape != kept_boxes.shape:
        raise ValueError(f"mask_voting: frames must be (K, 4) like kept_boxes, got {tuple(frames.shape)}")
    targets = kept_boxes if frames is None else frames
    kept_idx, cand_idx = voting_pairs(kept_boxes, cand_boxes, iou_threshold) if pairs is None else pairs
    weights = cand_scores[cand_idx].to(cand_masks.dtype)
    # an exported graph takes every pair at once: a loop over a count the data decides has no graph
    chunk = _PAIRS_PER_CHUNK if not torch.compiler.is_exporting() else None
    for start in range(0, len(kept_idx), chunk) if chunk else [0]:
        stop = start + chunk if chunk else None
        k, p, w = kept_idx[start:stop], cand_idx[start:stop], weights[start:stop]
        resampled = resample_masks_into_boxes(cand_masks[p], cand_boxes[p], targets[k])
        if voter_threshold is not None:
            resampled = (resampled >= voter_threshold).to(resampled.dtype)
        # under autocast grid_sample runs in float32 while the masks may be float16 / bfloat16
        voted.index_add_(0, k, (resampled * w[:, None, None]).to(voted.dtype))
    weight_sum = cand_masks.new_zeros(K).index_add_(0, kept_idx, weights)
    return voted / weight_sum.clamp(min=torch.finfo(voted.dtype).tiny)[:, None, None]


def voter_union_boxes(
    kept_boxes: Tensor, cand_boxes: Tensor, iou_threshold: float = 0.5, pairs: Optional[VotingPairs] = None
) -> Tensor:
    """``(K, 4)``: for each kept box, the union (enclosing box) of the boxes of its voters (the
    candidates with box IoU ``>= iou_threshold``) and of itself. The official FCIS voting pastes
    the voters into the image, so the voted mask may extend beyond the kept box up to this union.
    ``pairs``: :func:`voting_pairs` of these boxes, if already computed.
    """
    union = kept_boxes.clone()
    kept_idx, cand_idx = voting_pairs(kept_boxes, cand_boxes, iou_threshold) if pairs is None else pairs
    voters = cand_boxes[cand_idx].to(union.dtype)
    union[:, :2] = union[:, :2].scatter_reduce(0, kept_idx[:, None].expand(-1, 2), voters[:, :2], "amin")
    union[:, 2:] = union[:, 2:].scatter_reduce(0, kept_idx[:, None].expand(-1, 2), voters[:, 2:], "amax")
    return union


def tight_mask_boxes(masks: Tensor, frames: Tensor, threshold: float) -> Tensor:
    """``(K, 4)`` image boxes enclosing the cells ``>= threshold`` of ``masks`` ``(K, M, M)``,
    each mask covering the box ``frames[k]``; a mask with no such cell keeps its frame.

    The official FCIS reports the box of the binarised voted mask ("clipped_box"); on the ``M x M``
    grid that box is the extent of the cells at or above the threshold.
    """
    M = masks.shape[-1]
    out = frames.clone().to(masks.dtype)
    cells = mask_tight_boxes(masks >= threshold).to(out.dtype)  # (K, 4) in cell units, [j, j + 1)
    has = cells[:, 2] > cells[:, 0]
    origin = out[:, :2].repeat(1, 2)
    cell_size = ((out[:, 2:] - out[:, :2]) / M).repeat(1, 2)
    tight = origin + cells * cell_size
    return torch.where(has[:, None], tight, out)
