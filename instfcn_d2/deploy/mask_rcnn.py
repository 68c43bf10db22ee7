"""detectron2's Mask R-CNN (``GeneralizedRCNN`` with ``StandardROIHeads`` on FPN, or ``Res5ROIHeads``
on C4) after its graphs, written again because deployment runs without detectron2. Only deployment
uses it (the eager Mask R-CNN is detectron2's own).

An exported Mask R-CNN is three graphs (:mod:`instfcn_d2.export.graphs`):

* ``dense``: image -> the features the RoI heads pool from and the RPN head's outputs per level;
* ``box_head``: pooled features ``(R, C, S, S)`` -> class logits ``(R, K+1)`` and box deltas
  ``(R, 4K)`` (or ``(R, 4)`` class-agnostic), ``R`` dynamic;
* ``mask_head``: pooled features ``(D, C, S', S')`` -> mask logits ``(D, K, M, M)`` (or ``(D, 1, M, M)``),
  ``D`` dynamic.

Between and after them, here: the RPN proposals (:mod:`instfcn_d2.core.rpn`), the RoI pooling (detectron2's
``ROIPooler``: level assignment by box size, torchvision's ``roi_align`` per level), the box
predictor's inference (``FastRCNNOutputLayers.inference``: softmax, class-specific box decoding,
score threshold, per-class NMS, top-k), the class channel of the mask logits
(``mask_rcnn_inference``) and ``detector_postprocess``. Operations and their order are
detectron2's, so each step is bit-equal to it on the CPU (``tests/deploy/test_mask_rcnn_deploy.py``).
"""
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torchvision
from torch import Tensor
from torch.nn import functional as F

from ..core.boxes import apply_deltas, assign_boxes_to_levels, clip_boxes
from ..core.detections import Detections
from ..core.postprocess import detector_postprocess
from ..core.rpn import RPNParams, rpn_proposals

__all__ = [
    "PoolerParams",
    "BoxPredictorParams",
    "MaskRCNNPipeline",
    "MaskRCNNRun",
    "roi_pool",
    "predict_boxes_and_probs",
    "fast_rcnn_inference_single_image",
    "mask_rcnn_inference",
]


@dataclass(frozen=True)
class PoolerParams:
    """What a detectron2 ``ROIPooler`` (``ROIAlign`` / ``ROIAlignV2``) holds: the output side, each
    level's ``spatial_scale`` (finest first), ``sampling_ratio``, ``aligned`` (``ROIAlignV2``), the
    level range and the canonical box size / level of the FPN level assignment."""

    output_size: int
    scales: Tuple[float, ...]
    sampling_ratio: int
    aligned: bool
    min_level: int
    max_level: int
    canonical_box_size: int
    canonical_level: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PoolerParams":
        return cls(
            output_size=int(d["output_size"]),
            scales=tuple(float(s) for s in d["scales"]),
            sampling_ratio=int(d["sampling_ratio"]),
            aligned=bool(d["aligned"]),
            min_level=int(d["min_level"]),
            max_level=int(d["max_level"]),
            canonical_box_size=int(d["canonical_box_size"]),
            canonical_level=int(d["canonical_level"]),
        )


def roi_pool(features: Sequence[Tensor], boxes: Tensor, params: PoolerParams) -> Tensor:
    """``(R, C, S, S)`` features of ``(R, 4)`` boxes of one image (input pixels) pooled from the
    per-level maps ``(1, C, H_i, W_i)``: detectron2's ``ROIPooler.forward`` with one image."""
    if len(features) != len(params.scales):
        raise ValueError(f"roi_pool: {len(params.scales)} feature levels expected, got {len(features)}")
    x0 = features[0]
    size = (params.output_size, params.output_size)
    # batch index column (image 0), in the boxes' dtype as convert_boxes_to_pooler_format makes it
    rois = torch.cat([torch.zeros((len(boxes), 1), dtype=boxes.dtype, device=boxes.device), boxes], dim=1)

    def pool(level: int, level_rois: Tensor) -> Tensor:
        x = features[level]
        return torchvision.ops.roi_align(
            x, level_rois.to(dtype=x.dtype), size, params.scales[level], params.sampling_ratio, params.aligned
        )

    if len(features) == 1:
        return pool(0, rois)
    levels = assign_boxes_to_levels(
        boxes, params.min_level, params.max_level, params.canonical_box_size, params.canonical_level
    )
    output = torch.zeros((len(rois), x0.shape[1]) + size, dtype=x0.dtype, device=x0.device)
    for level in range(len(features)):
        inds = torch.nonzero(levels == level, as_tuple=True)[0]
        # index_put_ rather than advanced-index assignment, as detectron2
        output.index_put_((inds,), pool(level, rois[inds]))
    return output


@dataclass(frozen=True)
class BoxPredictorParams:
    """What ``FastRCNNOutputLayers.inference`` needs besides its layers: the ``Box2BoxTransform``
    (weights, scale clamp), sigmoid or softmax class scores, and the test-time selection."""

    box_weights: Tuple[float, float, float, float]
    scale_clamp: float
    use_sigmoid_ce: bool
    score_thresh: float
    nms_thresh: float
    topk_per_image: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box_weights"] = list(self.box_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BoxPredictorParams":
        return cls(
            box_weights=tuple(float(w) for w in d["box_weights"]),
            scale_clamp=float(d["scale_clamp"]),
            use_sigmoid_ce=bool(d["use_sigmoid_ce"]),
            score_thresh=float(d["score_thresh"]),
            nms_thresh=float(d["nms_thresh"]),
            topk_per_image=int(d["topk_per_image"]),
        )


def predict_boxes_and_probs(
    class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, params: BoxPredictorParams
) -> Tuple[Tensor, Tensor]:
    """``(R, K+1)`` logits and ``(R, 4K)`` (or ``(R, 4)``) deltas of ``(R, 4)`` proposals ->
    ``(R, 4K)`` decoded boxes and ``(R, K+1)`` probabilities: ``predict_boxes`` / ``predict_probs``."""
    # apply_deltas decodes every 4-column group against the same proposal: class-specific too
    boxes = apply_deltas(box_deltas, proposals, params.box_weights, params.scale_clamp)
    probs = class_logits.sigmoid() if params.use_sigmoid_ce else F.softmax(class_logits, dim=-1)
    return boxes, probs


def fast_rcnn_inference_single_image(
    boxes: Tensor, scores: Tensor, image_shape: Tuple[int, int], score_thresh: float, nms_thresh: float, topk_per_image: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(R, 4K)`` boxes and ``(R, K+1)`` scores of one image -> boxes ``(D, 4)``, scores ``(D,)``,
    classes ``(D,)`` and the ``(D,)`` proposal each came from, by decreasing score: detectron2's
    ``fast_rcnn_inference_single_image``."""
    valid_mask = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid_mask.all():
        boxes = boxes[valid_mask]
        scores = scores[valid_mask]

    scores = scores[:, :-1]  # background last
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), image_shape).view(-1, num_bbox_reg_classes, 4)  # R x C x 4

    filter_mask = scores > score_thresh  # R x K
    filter_inds = filter_mask.nonzero()
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]

    keep = torchvision.ops.batched_nms(boxes.float(), scores, filter_inds[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]
    return boxes, scores, filter_inds[:, 1], filter_inds[:, 0]


def mask_rcnn_inference(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """``(D, K, M, M)`` (or class-agnostic ``(D, 1, M, M)``) mask logits -> ``(D, 1, M, M)``
    probabilities of each detection's class: detectron2's ``mask_rcnn_inference`` for one image."""
    if mask_logits.size(1) == 1:
        return mask_logits.sigmoid()
    indices = torch.arange(mask_logits.shape[0], device=classes.device)
    return mask_logits[indices, classes][:, None].sigmoid()


Graph = Callable[[Tensor], List[Tensor]]


@dataclass
class MaskRCNNPipeline:
    """The part of Mask R-CNN between and after its graphs, for one image."""

    rpn: RPNParams
    box_pooler: PoolerParams
    mask_pooler: PoolerParams
    box_predictor: BoxPredictorParams
    mask_threshold: float
    box_features: Tuple[str, ...]  # the dense graph's features each pooler reads, finest first
    mask_features: Tuple[str, ...]

    @torch.no_grad()
    def __call__(
        self,
        features: Dict[str, Tensor],
        rpn_logits: Sequence[Tensor],
        rpn_deltas: Sequence[Tensor],
        box_head: Graph,
        mask_head: Graph,
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
    ) -> Detections:
        """
        Args:
            features: the maps the RoI heads pool from, ``(1, C, H_i, W_i)`` by name (``p2``, ``res4``).
            rpn_logits, rpn_deltas: the RPN head's outputs per level.
            box_head: ``(R, C, S, S) -> [(R, K+1) logits, (R, 4K) deltas]`` (not called for R = 0).
            mask_head: ``(D, C, S', S') -> [(D, K, M, M) logits]`` (not called for D = 0).
            image_size: ``(h, w)`` of the unpadded network input.
            output_size: ``(height, width)`` of the result.
        """
        proposals, _ = rpn_proposals(list(rpn_logits), list(rpn_deltas), image_size, self.rpn)
        p = self.box_predictor
        if len(proposals) == 0:
            # the graphs are exported for R >= 1; detectron2 detects nothing without proposals
            boxes = proposals.new_zeros((0, 4))
            scores = proposals.new_zeros((0,))
            classes = torch.zeros((0,), dtype=torch.int64, device=proposals.device)
        else:
            pooled = roi_pool([features[f] for f in self.box_features], proposals, self.box_pooler)
            class_logits, box_deltas = box_head(pooled)[:2]
            pred_boxes, probs = predict_boxes_and_probs(class_logits, box_deltas, proposals, p)
            boxes, scores, classes, _ = fast_rcnn_inference_single_image(
                pred_boxes, probs, image_size, p.score_thresh, p.nms_thresh, p.topk_per_image
            )
        if len(boxes) == 0:
            mask_probs = boxes.new_zeros((0, 1, 1, 1))  # pasting nothing reads no mask size
        else:
            pooled = roi_pool([features[f] for f in self.mask_features], boxes, self.mask_pooler)
            mask_logits = mask_head(pooled)[0]
            mask_probs = mask_rcnn_inference(mask_logits, classes)
        boxes, scores, classes, masks = detector_postprocess(
            boxes, scores, classes, mask_probs, image_size, output_size, self.mask_threshold
        )
        return Detections(output_size, boxes, scores, classes, masks.to(torch.bool))

    def to_dict(self) -> dict:
        return {
            "kind": "MaskRCNN",
            "rpn": self.rpn.to_dict(),
            "box_pooler": self.box_pooler.to_dict(),
            "mask_pooler": self.mask_pooler.to_dict(),
            "box_predictor": self.box_predictor.to_dict(),
            "mask_threshold": self.mask_threshold,
            "box_features": list(self.box_features),
            "mask_features": list(self.mask_features),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MaskRCNNPipeline":
        if d.get("kind", "MaskRCNN") != "MaskRCNN":
            raise ValueError(f"MaskRCNNPipeline: settings of a {d['kind']!r} model")
        return cls(
            rpn=RPNParams.from_dict(d["rpn"]),
            box_pooler=PoolerParams.from_dict(d["box_pooler"]),
            mask_pooler=PoolerParams.from_dict(d["mask_pooler"]),
            box_predictor=BoxPredictorParams.from_dict(d["box_predictor"]),
            mask_threshold=float(d["mask_threshold"]),
            box_features=tuple(d["box_features"]),
            mask_features=tuple(d["mask_features"]),
        )


class MaskRCNNRun:
    """An exported Mask R-CNN's run: the ``dense`` graph, then :class:`MaskRCNNPipeline` calling the
    ``box_head`` and ``mask_head`` graphs (``deploy.json``'s ``pipeline``:
    :meth:`MaskRCNNPipeline.to_dict`)."""

    def __init__(self, settings: dict, box_head: Graph, mask_head: Graph):
        self.pipeline = MaskRCNNPipeline.from_dict(settings)
        self.box_head = box_head
        self.mask_head = mask_head

    def run(self, dense, image: Tensor, size: Tuple[int, int], output_size: Tuple[int, int]) -> Detections:
        """``dense``: :data:`instfcn_d2.deploy.DenseGraph`; ``image`` ``(3, h, w)`` of ``size``."""
        by_name, _ = dense(image)
        levels = sum(n.startswith("rpn_logits_") for n in by_name)
        features = {n[len("feature_"):]: t for n, t in by_name.items() if n.startswith("feature_")}
        logits = [by_name[f"rpn_logits_{i}"] for i in range(levels)]
        deltas = [by_name[f"rpn_deltas_{i}"] for i in range(levels)]
        return self.pipeline(features, logits, deltas, self.box_head, self.mask_head, size, output_size)
