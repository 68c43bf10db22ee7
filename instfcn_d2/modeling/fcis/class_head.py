"""An ablation of FCIS's joint formulation: class scores from Mask R-CNN's box head instead of the maps.

FCIS scores a RoI from its assembled inside/outside maps (the max of inside / outside per cell,
averaged over the RoI: :func:`instfcn_d2.core.fcis.layout.inside_outside_class_logits`), so one
set of maps learns masks and classes together. ``MODEL.FCIS.CLASS_HEAD "fc"`` instead scores each
RoI as detectron2's Mask R-CNN does: RoIAlign features pooled from the level that fits the RoI
(``ROIPooler``), detectron2's ``FastRCNNConvFCHead`` (``MODEL.ROI_BOX_HEAD``: ``NUM_FC`` fc layers of
``FC_DIM``, ``POOLER_RESOLUTION``; detectron2's defaults have no fc layer: set them as the Mask R-CNN
baseline's) and a linear classifier over ``C+1`` classes (background last, FCIS's order). The masks and boxes
still come from the maps. Comparing the two on the same data separates how fast each part learns.
"""
from typing import Dict, List, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.structures import Boxes
from torch import Tensor, nn

__all__ = ["CLASS_HEADS", "FCClassHead"]

#: ``MODEL.FCIS.CLASS_HEAD`` values: "assembled" (the paper's), "fc" (:class:`FCClassHead`).
CLASS_HEADS = ("assembled", "fc")


class FCClassHead(nn.Module):
    """``forward(features, rois (R, 5)) -> (R, C+1)`` class logits of Mask R-CNN's kind."""

    def __init__(self, in_features: Sequence[str], pooler: ROIPooler, box_head: nn.Module, num_classes: int):
        super().__init__()
        self.in_features = tuple(in_features)
        self.pooler = pooler
        self.box_head = box_head
        self.cls_score = nn.Linear(box_head.output_shape.channels, num_classes + 1)
        # detectron2's FastRCNNOutputLayers initialisation of the classifier
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.constant_(self.cls_score.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], in_features: List[str]) -> "FCClassHead":
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.FCIS.CLASS_HEAD_IN_FEATURES = {in_features}: not backbone outputs: {missing} "
                f"(it returns {sorted(input_shape)})"
            )
        shapes = [input_shape[f] for f in in_features]
        if len({s.channels for s in shapes}) != 1:
            raise ValueError(f"MODEL.FCIS.CLASS_HEAD_IN_FEATURES = {in_features}: the levels' channels differ")
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / s.stride for s in shapes),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        # detectron2's head itself, whatever ROI_BOX_HEAD.NAME says (FCIS's configs leave it empty)
        box_head = FastRCNNConvFCHead(cfg, ShapeSpec(channels=shapes[0].channels, height=resolution, width=resolution))
        return cls(in_features, pooler, box_head, cfg.MODEL.ROI_HEADS.NUM_CLASSES)

    def forward(self, features: Dict[str, Tensor], rois: Tensor) -> Tensor:
        """``rois``: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in any order of images."""
        x = [features[f] for f in self.in_features]
        # ROIPooler takes the boxes image by image: group them, then put the rows back
        order = torch.argsort(rois[:, 0], stable=True)
        counts = torch.bincount(rois[:, 0].long(), minlength=x[0].shape[0]).tolist()
        boxes = [Boxes(b) for b in rois[order, 1:].to(x[0].dtype).split(counts)]
        logits = self.cls_score(self.box_head(self.pooler(x, boxes)))
        return logits[torch.argsort(order)]  # argsort: the inverse permutation
