"""FCIS's training losses, per RoI, and online hard example mining.

Every RoI gets three losses (unweighted, before any reduction):

- ``loss_cls``: softmax cross-entropy of its ``(C+1)`` class logits (``C`` = background);
- ``loss_mask``: for a positive RoI, the mean per-pixel cross-entropy of inside vs outside of its
  ground-truth class against the ground-truth mask cropped to the RoI and resized to ``M x M``
  (``>= 0.5``, detectron2's ``BitMasks.crop_and_resize``); 0 for background RoIs;
- ``loss_box_reg``: for a positive RoI, smooth-L1 on the class-agnostic deltas (or GIoU on the
  regressed box); 0 for background RoIs.

With OHEM the RoIs of each image with the largest total loss are kept (:func:`ohem_select`).
"""
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import BitMasks, Instances
from fvcore.nn import giou_loss, smooth_l1_loss
from torch import Tensor

__all__ = ["BoxRegression", "BOX_REG_LOSS_TYPES", "per_roi_losses", "ohem_select"]

#: ``MODEL.FCIS.BBOX_REG_LOSS_TYPE`` values.
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou")


@dataclass(frozen=True)
class BoxRegression:
    """Class-agnostic box regression: the delta parametrisation and its loss."""

    transform: Box2BoxTransform
    loss_type: str = "smooth_l1"  # one of BOX_REG_LOSS_TYPES
    smooth_l1_beta: float = 1.0

    def __post_init__(self):
        if self.loss_type not in BOX_REG_LOSS_TYPES:
            raise ValueError(f"MODEL.FCIS.BBOX_REG_LOSS_TYPE = {self.loss_type!r}; expected one of {BOX_REG_LOSS_TYPES}")


def per_roi_losses(
    proposals: List[Instances],
    inside_outside: Tensor,
    class_logits: Tensor,
    deltas: Tensor,
    num_classes: int,
    box_regression: BoxRegression,
) -> Dict[str, Tensor]:
    """``(R,)`` losses of every RoI: ``loss_cls``, ``loss_mask``, ``loss_box_reg`` (unweighted).

    Args:
        proposals: per image, the sampled RoIs with ``proposal_boxes``, ``gt_classes`` and, for
            positives, ``gt_boxes`` and ``gt_masks`` (detectron2's ``label_and_sample_proposals``).
        inside_outside: ``(R, 2, C+1, M, M)`` inside/outside logits of the RoIs, in order.
        class_logits: ``(R, C+1)``.
        deltas: ``(R, 4)`` class-agnostic box deltas.
        num_classes: ``C``.
    """
    R = len(class_logits)
    gt_classes = cat([p.gt_classes for p in proposals], dim=0)
    fg = (gt_classes >= 0) & (gt_classes < num_classes)
    fg_idx = fg.nonzero().squeeze(1)
    loss_cls = F.cross_entropy(class_logits, gt_classes, reduction="none")
    loss_mask = class_logits.new_zeros(R)
    loss_box = class_logits.new_zeros(R)
    if len(fg_idx) == 0:
        return {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_box_reg": loss_box}

    # positives of each image, in the order of fg_idx
    mask_targets, gt_boxes = [], []
    for p in proposals:
        p_fg = p[(p.gt_classes >= 0) & (p.gt_classes < num_classes)]
        if len(p_fg) == 0:
            continue
        masks = p_fg.gt_masks
        if isinstance(masks, Tensor):
            masks = BitMasks(masks)
        # M from the logits themselves: BiSeg assembles at another size than FCIS
        mask_targets.append(masks.crop_and_resize(p_fg.proposal_boxes.tensor, inside_outside.shape[-1]))
        gt_boxes.append(p_fg.gt_boxes.tensor)
    mask_targets = cat(mask_targets, dim=0).to(inside_outside.device)  # (F, M, M) bool, >= 0.5
    gt_boxes = cat(gt_boxes, dim=0)

    fg_classes = gt_classes[fg_idx]
    mask_logits = inside_outside[fg_idx, :, fg_classes]  # (F, 2, M, M): inside / outside of the gt class
    # class 0 of the 2-way softmax is "inside"
    pixel_loss = F.cross_entropy(mask_logits, (~mask_targets).long(), reduction="none")
    loss_mask = loss_mask.index_put((fg_idx,), pixel_loss.mean(dim=(1, 2)))

    proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)[fg_idx]
    if box_regression.loss_type == "smooth_l1":
        target = box_regression.transform.get_deltas(proposal_boxes, gt_boxes)
        box = smooth_l1_loss(deltas[fg_idx], target, box_regression.smooth_l1_beta, reduction="none").sum(dim=1)
    else:  # giou
        pred_boxes = box_regression.transform.apply_deltas(deltas[fg_idx], proposal_boxes)
        box = giou_loss(pred_boxes, gt_boxes, reduction="none")
    loss_box = loss_box.index_put((fg_idx,), box)
    return {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_box_reg": loss_box}


def ohem_select(per_roi: Dict[str, Tensor], counts: List[int], batch_size: int) -> Tensor:
    """Indices of the ``batch_size`` RoIs of each image (``counts[i]`` RoIs, consecutive) with the
    largest total loss, as the official FCIS OHEM."""
    total = sum(v.detach() for v in per_roi.values())
    selected, start = [], 0
    for n in counts:
        k = min(batch_size, n)
        selected.append(total[start : start + n].topk(k).indices + start)
        start += n
    return cat(selected, dim=0) if selected else total.new_zeros(0, dtype=torch.int64)
