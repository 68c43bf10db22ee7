"""FCIS inference on one image, after its candidates are scored (as detectron2's
``fast_rcnn_inference_single_image`` for Fast R-CNN): per-class box NMS, mask voting, the top
detections.

The candidates are the RPN RoIs and / or their box-regressed versions (``MODEL.FCIS.TEST_CANDIDATES``),
each with its ``(C+1)`` class probabilities. Their masks are not passed as a tensor: inference asks
a :data:`MaskLogits` callable for the inside/outside logits of one class of some candidates, so
only the (candidate, class) pairs that are kept or vote are ever assembled (a ``(P, 2, C+1, M, M)``
tensor of all 600 candidates would be 686 MB for BiSeg at C = 80, M = 42).

Detectron2 free (torch and torchvision only): the heads run it, and exported models after their
graph.
"""
from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from ..detections import Detections
from .layout import inside_outside_mask_probs
from .mask_voting import mask_voting, resample_masks_into_boxes, tight_mask_boxes, voter_union_boxes, voting_pairs

__all__ = [
    "MaskLogits",
    "FCISTestParams",
    "MASK_VOTING_FRAMES",
    "fcis_inference_single_image",
    "class_masks",
]

#: ``mask_logits(indices, class_index) -> (V, 2, M, M)``: the inside/outside logits of class
#: ``class_index`` of the candidates ``indices`` (``(V,)`` int64).
MaskLogits = Callable[[Tensor, int], Tensor]

#: ``MODEL.FCIS.MASK_VOTING_FRAME`` values, see :func:`class_masks`.
MASK_VOTING_FRAMES = ("union", "kept_box")


@dataclass(frozen=True)
class FCISTestParams:
    """The ``MODEL.FCIS`` test settings (``instfcn_d2.modeling.fcis.config``)."""

    num_classes: int
    score_thresh: float = 0.001
    nms_thresh: float = 0.3
    detections_per_image: int = 100
    mask_voting: bool = True
    mask_voting_iou: float = 0.5
    mask_voting_frame: str = "union"
    mask_voting_binarize_voters: bool = True
    mask_binarize_thresh: float = 0.4
    # candidates narrower or lower than this (network-input pixels) are dropped before NMS
    # (the official TEST.MIN_DROP_SIZE); 0 keeps all
    min_size: float = 0.0

    def __post_init__(self):
        if self.mask_voting_frame not in MASK_VOTING_FRAMES:
            raise ValueError(
                f"MODEL.FCIS.MASK_VOTING_FRAME = {self.mask_voting_frame!r}; expected one of {MASK_VOTING_FRAMES}"
            )


def fcis_inference_single_image(
    boxes: Tensor, scores: Tensor, mask_logits: MaskLogits, image_size: Tuple[int, int], params: FCISTestParams
) -> Detections:
    """Per-class NMS and mask voting over one image's candidates.

    Args:
        boxes: ``(P, 4)`` candidate boxes (the RoIs the maps were assembled in).
        scores: ``(P, C+1)`` class probabilities.
        mask_logits: the candidates' inside/outside logits, one class at a time.
        image_size: ``(H, W)`` of the network input.

    Returns:
        :class:`Detections` at ``image_size``: the boxes, scores, classes and ``(K, 1, M, M)``
        foreground probabilities in the box frame, highest score first.
    """
    # empty boxes (regressed boxes clipped away) give no mask and would be dropped by
    # detector_postprocess anyway; non-finite values come from diverged weights
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # detectron2's Boxes.nonempty()
    valid = nonempty & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if params.min_size > 0:
        # the official filter_boxes keeps x2 - x1 + 1 >= size on inclusive integer corners: the
        # continuous width x2 - x1 here
        wide = (boxes[:, 2] - boxes[:, 0] >= params.min_size) & (boxes[:, 3] - boxes[:, 1] >= params.min_size)
        valid = valid & wide
    valid_idx = valid.nonzero().squeeze(1)
    boxes, scores = boxes[valid_idx], scores[valid_idx]

    def valid_mask_logits(indices: Tensor, class_index: int) -> Tensor:  # indices into the valid ones
        return mask_logits(valid_idx[indices], class_index)

    fg_scores = scores[:, : params.num_classes]
    cand, classes = (fg_scores > params.score_thresh).nonzero(as_tuple=True)
    det_scores = fg_scores[cand, classes]
    # float(): float16 has not the range of torchvision's batched-NMS offsets (as detectron2's batched_nms)
    keep = batched_nms(boxes[cand].float(), det_scores, classes, params.nms_thresh)[: params.detections_per_image]
    cand, classes, det_scores = cand[keep], classes[keep], det_scores[keep]
    kept_boxes = boxes[cand]

    masks = None  # (K, M, M), allocated once M is known from the first logits read
    for c in classes.unique().tolist():
        members = (classes == c).nonzero().squeeze(1)
        masks_c, boxes_c = class_masks(c, cand[members], boxes, scores, valid_mask_logits, params)
        if masks is None:
            masks = boxes.new_zeros((len(cand),) + tuple(masks_c.shape[-2:]))
        masks[members] = masks_c
        kept_boxes[members] = boxes_c.to(kept_boxes.dtype)
    if masks is None:  # no detection: M from an empty read
        masks = boxes.new_zeros((0,) + tuple(valid_mask_logits(cand, 0).shape[-2:]))

    return Detections(
        image_size=(int(image_size[0]), int(image_size[1])),
        boxes=kept_boxes,
        scores=det_scores,
        classes=classes,
        masks=masks[:, None],
    )


def class_masks(
    class_index: int, kept: Tensor, boxes: Tensor, scores: Tensor, mask_logits: MaskLogits, params: FCISTestParams
) -> Tuple[Tensor, Tensor]:
    """``(K_c, M, M)`` foreground probabilities of the detections of one class, and the
    ``(K_c, 4)`` boxes whose frames they are in (the output boxes).

    Without voting: each detection's own mask, in its box. ``mask_voting_frame "union"`` (the
    official FCIS ``mask_aggregation``): the voters are averaged over the union of their boxes, so
    a voted mask may reach beyond its kept box, and the output box is the box of the binarised
    voted mask (the official "clipped_box"); the mask is resampled into that box. ``"kept_box"``:
    averaged in the kept box's frame, which cuts what lies outside it; the output box is the kept box.

    Args:
        class_index: ``c``.
        kept: ``(K_c,)`` indices of the detections (kept by NMS) among the candidates.
        boxes, scores: ``(P, 4)`` and ``(P, C+1)`` of the candidates.
        mask_logits: the candidates' inside/outside logits.
    """
    c = class_index
    if not params.mask_voting:
        return inside_outside_mask_probs(mask_logits(kept, c)), boxes[kept]
    # only candidates that vote for some kept box of class c need their mask: the same result
    # as passing all P of them, without assembling and softmaxing (P, M, M) masks per class
    kept_boxes = boxes[kept]
    kept_idx, cand_idx = voting_pairs(kept_boxes, boxes, params.mask_voting_iou)
    voters, voter_idx = cand_idx.unique(return_inverse=True)  # (V,) sorted; pairs -> 0..V-1
    pairs = (kept_idx, voter_idx)
    probs = inside_outside_mask_probs(mask_logits(voters, c))  # (V, M, M)
    voter_boxes, voter_scores = boxes[voters], scores[voters, c]
    voter_threshold = params.mask_binarize_thresh if params.mask_voting_binarize_voters else None
    iou = params.mask_voting_iou
    if params.mask_voting_frame == "kept_box":
        voted = mask_voting(kept_boxes, voter_boxes, probs, voter_scores, iou, None, voter_threshold, pairs)
        return voted, kept_boxes
    frames = voter_union_boxes(kept_boxes, voter_boxes, iou, pairs)
    voted = mask_voting(kept_boxes, voter_boxes, probs, voter_scores, iou, frames, voter_threshold, pairs)
    tight = tight_mask_boxes(voted, frames, params.mask_binarize_thresh)
    return resample_masks_into_boxes(voted, frames, tight), tight
