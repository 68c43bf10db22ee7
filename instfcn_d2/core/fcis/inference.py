"""FCIS inference on one image, after its candidates are scored (as detectron2's
``fast_rcnn_inference_single_image`` for Fast R-CNN): per-class box NMS, mask voting, the top
detections.

The candidates are the RPN RoIs and / or their box-regressed versions (``MODEL.FCIS.TEST_CANDIDATES``),
each with its ``(C+1)`` class probabilities. Their masks are not passed as a tensor: inference asks
a :data:`MaskLogits` callable for the inside/outside logits of some (candidate, class) pairs, so
only the pairs that are kept or vote are ever assembled (a ``(P, 2, C+1, M, M)`` tensor of all 600
candidates would be 686 MB for BiSeg at C = 80, M = 42).

Tensor code throughout, every class at once: one batched NMS, one read of the masks of every
(voter, class) pair, one batched voting over all (kept, voter) pairs; no Python loop over classes,
candidates or detections, so an exported model can trace it (a loop over the classes present
would make the graph depend on the data).

Detectron2 free (torch and torchvision only): the heads run it, and exported models after their
graph.
"""
from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torch import Tensor

from ..boxes import batched_nms
from ..detections import Detections
from .layout import inside_outside_mask_probs
from .mask_voting import mask_voting, resample_masks_into_boxes, tight_mask_boxes, voter_union_boxes, voting_pairs

__all__ = [
    "MaskLogits",
    "FCISTestParams",
    "MASK_VOTING_FRAMES",
    "fcis_inference_single_image",
    "detection_masks",
]

#: ``mask_logits(indices, classes) -> (V, 2, M, M)``: the inside/outside logits of candidate
#: ``indices[v]`` for class ``classes[v]`` (both ``(V,)`` int64).
MaskLogits = Callable[[Tensor, Tensor], Tensor]

#: ``MODEL.FCIS.MASK_VOTING_FRAME`` values, see :func:`detection_masks`.
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

    def valid_mask_logits(indices: Tensor, classes: Tensor) -> Tensor:  # indices into the valid ones
        return mask_logits(valid_idx[indices], classes)

    fg_scores = scores[:, : params.num_classes]
    cand, classes = (fg_scores > params.score_thresh).nonzero(as_tuple=True)
    det_scores = fg_scores[cand, classes]
    # float(): float16 has not the range of torchvision's batched-NMS offsets (as detectron2's batched_nms)
    keep = batched_nms(boxes[cand].float(), det_scores, classes, params.nms_thresh)[: params.detections_per_image]
    cand, classes, det_scores = cand[keep], classes[keep], det_scores[keep]
    masks, kept_boxes = detection_masks(cand, classes, boxes, scores, valid_mask_logits, params)

    return Detections(
        image_size=(image_size[0], image_size[1]),  # no int(): symbolic sizes in an exported graph
        boxes=kept_boxes,
        scores=det_scores,
        classes=classes,
        masks=masks[:, None],
    )


def detection_masks(
    kept: Tensor, classes: Tensor, boxes: Tensor, scores: Tensor, mask_logits: MaskLogits, params: FCISTestParams
) -> Tuple[Tensor, Tensor]:
    """``(K, M, M)`` foreground probabilities of the detections, every class at once, and the
    ``(K, 4)`` boxes whose frames they are in (the output boxes).

    Without voting: each detection's own mask of its class, in its box. With voting, every
    candidate whose box has IoU ``>= mask_voting_iou`` with a kept box votes for it with its mask
    and score *of the kept detection's class* (the same voters as voting one class at a time:
    which candidates vote depends on the boxes only). ``mask_voting_frame "union"`` (the official
    FCIS ``mask_aggregation``): the voters are averaged over the union of their boxes, so a voted
    mask may reach beyond its kept box, and the output box is the box of the binarised voted mask
    (the official "clipped_box"); the mask is resampled into that box. ``"kept_box"``: averaged in
    the kept box's frame, which cuts what lies outside it; the output box is the kept box.

    Args:
        kept: ``(K,)`` indices of the detections (kept by NMS) among the candidates.
        classes: ``(K,)`` their classes.
        boxes, scores: ``(P, 4)`` and ``(P, C+1)`` of the candidates.
        mask_logits: the candidates' inside/outside logits of given classes.
    """
    kept_boxes = boxes[kept]
    if not params.mask_voting:
        return inside_outside_mask_probs(mask_logits(kept, classes)), kept_boxes
    kept_idx, cand_idx = voting_pairs(kept_boxes, boxes, params.mask_voting_iou)
    # each (voter, class) pair read once, however many kept boxes of that class it votes for
    num_classes = scores.shape[1]
    pair_keys = cand_idx * num_classes + classes[kept_idx]
    voter_keys, voter_idx = pair_keys.unique(return_inverse=True)  # (V,) sorted; pairs -> 0..V-1
    voters, voter_classes = voter_keys // num_classes, voter_keys % num_classes
    pairs = (kept_idx, voter_idx)
    probs = inside_outside_mask_probs(mask_logits(voters, voter_classes))  # (V, M, M)
    voter_boxes, voter_scores = boxes[voters], scores[voters, voter_classes]
    voter_threshold = params.mask_binarize_thresh if params.mask_voting_binarize_voters else None
    iou = params.mask_voting_iou
    if params.mask_voting_frame == "kept_box":
        voted = mask_voting(kept_boxes, voter_boxes, probs, voter_scores, iou, None, voter_threshold, pairs)
        return voted, kept_boxes
    frames = voter_union_boxes(kept_boxes, voter_boxes, iou, pairs)
    voted = mask_voting(kept_boxes, voter_boxes, probs, voter_scores, iou, frames, voter_threshold, pairs)
    tight = tight_mask_boxes(voted, frames, params.mask_binarize_thresh)
    return resample_masks_into_boxes(voted, frames, tight), tight.to(kept_boxes.dtype)
