"""FCIS's training losses, per RoI, and online hard example mining.

Every RoI gets three losses (unweighted, before any reduction):

- ``loss_cls``: softmax cross-entropy of its ``(C+1)`` class logits (``C`` = background);
- ``loss_mask``: for a positive RoI, the mean per-pixel cross-entropy of inside vs outside of its
  ground-truth class against the ground-truth mask cropped to the RoI, resized to ``M x M`` and
  binarised at ``mask_target_thresh`` (:func:`mask_targets`); 0 for background RoIs. How it is
  reduced over the batch (the mean over the positives' pixels, or the official sum over them divided
  by the RoI count) is the heads' :data:`MASK_LOSS_NORMALIZATIONS` setting;
- ``loss_box_reg``: for a positive RoI, smooth-L1 on the class-agnostic deltas (or GIoU on the
  regressed box); 0 for background RoIs.

With OHEM the RoIs of each image with the largest total loss are kept (:func:`ohem_select`).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import BitMasks, Instances, PolygonMasks
from fvcore.nn import giou_loss, smooth_l1_loss
from torch import Tensor

__all__ = [
    "BoxRegression",
    "BOX_REG_LOSS_TYPES",
    "MASK_LOSS_NORMALIZATIONS",
    "mask_targets",
    "per_roi_losses",
    "ohem_select",
]

#: ``MODEL.FCIS.BBOX_REG_LOSS_TYPE`` values.
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou")
#: ``MODEL.FCIS.MASK_LOSS_NORMALIZATION`` values: ``"pixel_mean"``, the per-pixel loss averaged over
#: the positive RoIs' pixels; ``"roi_batch_sum"``, summed over them and divided by the number of RoIs
#: in the loss (the official ``SoftmaxOutput(normalization='null', grad_scale=LOSS_WEIGHT[1] /
#: BATCH_ROIS)``), which weighs a positive RoI's mask ``M*M * (positives / RoIs)`` times more.
MASK_LOSS_NORMALIZATIONS = ("pixel_mean", "roi_batch_sum")


def mask_targets(
    masks: Union[BitMasks, PolygonMasks], boxes: Tensor, mask_size: int, thresh: float, image_size: Tuple[int, int]
) -> Tensor:
    """``(R, M, M)`` bool: each mask of the ``image_size`` image cropped to its ``(R, 4)`` box,
    resized to ``M x M`` by RoIAlign (aligned) and kept where the resized value is ``>= thresh``.

    detectron2's ``BitMasks.crop_and_resize`` is this with the threshold fixed at 0.5 (used as is
    then, also for polygons, which it rasterises in the box); the official FCIS binarises its
    resized targets at ``TRAIN.BINARY_THRESH`` 0.4, which keeps thin parts."""
    if thresh == 0.5:
        return masks.crop_and_resize(boxes, mask_size).to(torch.bool)
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, *image_size)
    if len(masks) == 0:
        return torch.zeros((0, mask_size, mask_size), dtype=torch.bool, device=masks.tensor.device)
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    bit = masks.tensor.to(device=boxes.device, dtype=torch.float32)[:, None]
    resized = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True).forward(bit, rois.float()).squeeze(1)
    return resized >= thresh


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
    mask_target_thresh: float = 0.5,
) -> Dict[str, Tensor]:
    """``(R,)`` losses of every RoI: ``loss_cls``, ``loss_mask``, ``loss_box_reg`` (unweighted).

    Args:
        proposals: per image, the sampled RoIs with ``proposal_boxes``, ``gt_classes`` and, for
            positives, ``gt_boxes`` and ``gt_masks`` (detectron2's ``label_and_sample_proposals``).
        inside_outside: ``(R, 2, C+1, M, M)`` inside/outside logits of the RoIs, in order.
        class_logits: ``(R, C+1)``.
        deltas: ``(R, 4)`` class-agnostic box deltas.
        num_classes: ``C``.
        mask_target_thresh: binarisation of the resized ground-truth masks (:func:`mask_targets`).
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
    targets, gt_boxes = [], []
    for p in proposals:
        p_fg = p[(p.gt_classes >= 0) & (p.gt_classes < num_classes)]
        if len(p_fg) == 0:
            continue
        masks = p_fg.gt_masks
        if isinstance(masks, Tensor):
            masks = BitMasks(masks)
        # M from the logits themselves: BiSeg assembles at another size than FCIS
        size = inside_outside.shape[-1]
        targets.append(mask_targets(masks, p_fg.proposal_boxes.tensor, size, mask_target_thresh, p.image_size))
        gt_boxes.append(p_fg.gt_boxes.tensor)
    targets = cat(targets, dim=0).to(inside_outside.device)  # (F, M, M) bool
    gt_boxes = cat(gt_boxes, dim=0)

    fg_classes = gt_classes[fg_idx]
    mask_logits = inside_outside[fg_idx, :, fg_classes]  # (F, 2, M, M): inside / outside of the gt class
    # class 0 of the 2-way softmax is "inside"
    pixel_loss = F.cross_entropy(mask_logits, (~targets).long(), reduction="none")
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


def ohem_select(
    per_roi: Dict[str, Tensor], counts: List[int], batch_size: int, weights: Optional[Dict[str, float]] = None
) -> Tensor:
    """Indices of the ``batch_size`` RoIs of each image (``counts[i]`` RoIs, consecutive) with the
    largest total loss, as the official FCIS OHEM (``BoxAnnotatorOHEMOperator``): the per-RoI
    losses (the mask's as its mean over the RoI's pixels) weighted by the loss weights (``weights``,
    default 1), so that the official mask weight 10 also counts in the ranking."""
    weights = weights or {}
    total = sum(v.detach() * weights.get(k, 1.0) for k, v in per_roi.items())
    selected, start = [], 0
    for n in counts:
        k = min(batch_size, n)
        selected.append(total[start : start + n].topk(k).indices + start)
        start += n
    return cat(selected, dim=0) if selected else total.new_zeros(0, dtype=torch.int64)
