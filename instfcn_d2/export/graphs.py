"""The part of each model that an exported artefact carries as a graph: image in, dense maps out.

Each graph takes one image ``(3, H, W)`` float32 in ``INPUT.FORMAT``, at the network's input
resolution and already padded to the backbone's size divisibility (the loader pads with the pixel
mean, which normalises to the 0 that detectron2's ``ImageList`` pads with), and returns a flat
tuple of tensors named by :meth:`DenseGraph.output_names`: what the model computes once per
image, before anything whose size depends on the data. What follows (the RPN's top-k and NMS,
the per-RoI assembling, per-class NMS and mask voting, the window top-k and mask-box NMS, the
pasting) runs after the graph in :mod:`instfcn_d2.deploy`, on the same code the models run.

detectron2's Mask R-CNN has weights after the data-dependent step (its box and mask heads run on
the RoIs the RPN and the box predictor pick), so it is three graphs: :class:`MaskRCNNGraph` (image
-> pooled-from features and the RPN head's outputs), :class:`MaskRCNNBoxHeadGraph` and
:class:`MaskRCNNMaskHeadGraph` (pooled features -> per-RoI outputs, the number of RoIs dynamic);
the pooling and the selections between them run in :mod:`instfcn_d2.deploy.mask_rcnn`.

Why the split: those steps pick a data-dependent number of boxes and loop over what they picked
(mask voting runs per detected class); ``torch.export`` would need every such branch rewritten as
tensor code, and tracing would freeze the counts of the sample image.
"""
from typing import Dict, List, Tuple

from torch import Tensor, nn

from ..core.fcis import FCISLevelMaps

__all__ = [
    "DenseGraph",
    "FCISGraph",
    "BiSegGraph",
    "InstanceFCNGraph",
    "MaskRCNNGraph",
    "MaskRCNNBoxHeadGraph",
    "MaskRCNNMaskHeadGraph",
    "dense_graph_for",
]


class DenseGraph(nn.Module):
    """Normalisation + the model's dense part. ``forward(image (3, H, W)) -> Tuple[Tensor, ...]``.

    ``kind``: the model it carries, as ``deploy.json`` names it (and :mod:`instfcn_d2.deploy`
    chooses the post-processing by).
    """

    kind: str = ""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def normalise(self, image: Tensor) -> Tensor:
        """``(3, H, W)`` -> ``(1, 3, H, W)`` as the model's ``preprocess_image``."""
        return ((image - self.model.pixel_mean) / self.model.pixel_std)[None]

    def output_names(self) -> List[str]:
        raise NotImplementedError


class FCISGraph(DenseGraph):
    """FCIS: the RPN head's outputs per level and the inside/outside and box maps.

    Outputs: ``rpn_logits_i`` ``(1, A, H_i, W_i)`` and ``rpn_deltas_i`` ``(1, A*4, H_i, W_i)`` for
    each RPN level ``i``, ``inside_outside`` ``(1, k*k*2*(C+1), H, W)``, ``box`` ``(1, k*k*4, H, W)``;
    with maps on several pyramid levels (the reader's ``levels``) ``inside_outside_l`` and ``box_l``
    for each level ``l``, finest first.
    """

    kind = "FCIS"

    def rpn_levels(self) -> int:
        return len(self.model.proposal_generator.in_features)

    def rpn_output_names(self) -> List[str]:
        names = []
        for i in range(self.rpn_levels()):
            names += [f"rpn_logits_{i}", f"rpn_deltas_{i}"]
        return names

    def output_names(self) -> List[str]:
        names = self.rpn_output_names()
        levels = self.model.roi_heads.reader.levels
        if levels is None:
            return names + ["inside_outside", "box"]
        for level in range(len(levels.strides)):
            names += [f"inside_outside_{level}", f"box_{level}"]
        return names

    def rpn_outputs(self, features) -> List[Tensor]:
        rpn = self.model.proposal_generator
        logits, deltas = rpn.rpn_head([features[f] for f in rpn.in_features])
        return [t for pair in zip(logits, deltas) for t in pair]

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        return self.dense_outputs(self.normalise(image))

    def dense_outputs(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The outputs of a normalised, padded ``(1, 3, H, W)`` input."""
        features = self.model.backbone(x)
        maps = self.model.score_maps(None, features)  # FCIS's score_maps reads only the features
        if isinstance(maps, FCISLevelMaps):
            return (*self.rpn_outputs(features), *[t for m in maps.levels for t in (m.inside_outside, m.box)])
        return (*self.rpn_outputs(features), maps.inside_outside, maps.box)


class BiSegGraph(FCISGraph):
    """BiSeg: FCIS's outputs, the stride-8 set ``fine`` (with ``MODEL.BISEG.FUSE``), the semantic
    branch's ``sem_seg_logits`` ``(1, C+1, H, W)`` (label order) and the ``prior`` the heads read
    (their softmax in FCIS's class order)."""

    kind = "BiSeg"

    def output_names(self) -> List[str]:
        names = super().output_names()
        if self.model.roi_heads.reader.fuse:
            names.append("fine")
        return names + ["sem_seg_logits", "prior"]

    def dense_outputs(self, x: Tensor) -> Tuple[Tensor, ...]:
        features = self.model.backbone(x)
        maps = self.model.score_maps(None, features)  # BiSeg's score_maps reads only the features
        fine = (maps.fine,) if self.model.roi_heads.reader.fuse else ()
        return (*self.rpn_outputs(features), maps.inside_outside, maps.box, *fine, maps.sem_seg_logits, maps.prior)


class InstanceFCNGraph(DenseGraph):
    """InstanceFCN: ``mask_maps`` ``(1, k*k, H, W)`` instance-sensitive maps and ``objectness``
    ``(1, H, W)`` window logits (run once per test scale)."""

    kind = "InstanceFCN"

    def output_names(self) -> List[str]:
        return ["mask_maps", "objectness"]

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        x = self.normalise(image)
        features = self.model.backbone(x)[self.model.in_feature]
        if self.model.feature_reduce is not None:
            features = self.model.feature_reduce(features)
        return self.model.mask_head(features), self.model.objectness_head(features)


class MaskRCNNGraph(FCISGraph):
    """detectron2's Mask R-CNN, dense part: the RPN head's outputs per level (as FCIS's) and the
    features the RoI heads pool from, ``feature_<name>`` ``(1, C, H_i, W_i)`` (FPN: ``p2`` .. ``p5``;
    C4: ``res4``)."""

    kind = "MaskRCNN"

    def feature_names(self) -> List[str]:
        heads = self.model.roi_heads
        names = list(getattr(heads, "box_in_features", heads.in_features))
        names += [f for f in getattr(heads, "mask_in_features", ()) if f not in names]
        return names

    def output_names(self) -> List[str]:
        rpn = self.rpn_output_names()
        return rpn + [f"feature_{f}" for f in self.feature_names()]

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        features = self.model.backbone(self.normalise(image))
        return (*self.rpn_outputs(features), *[features[f] for f in self.feature_names()])

    def roi_graphs(self) -> Dict[str, nn.Module]:
        """``{"box_head": ..., "mask_head": ...}``, the per-RoI graphs."""
        heads = self.model.roi_heads
        return {"box_head": MaskRCNNBoxHeadGraph(heads), "mask_head": MaskRCNNMaskHeadGraph(heads)}


class MaskRCNNBoxHeadGraph(nn.Module):
    """Pooled features ``(R, C, S, S)`` -> class logits ``(R, K+1)`` and box deltas ``(R, 4K)``
    (``(R, 4)`` class-agnostic): ``box_head`` + ``box_predictor`` (FPN), ``res5``, mean, and
    ``box_predictor`` (C4). ``R`` is dynamic (>= 1: the deployed model skips the graph for none)."""

    def __init__(self, heads: nn.Module):
        super().__init__()
        self.res5 = getattr(heads, "res5", None)
        self.box_head = getattr(heads, "box_head", None)
        self.box_predictor = heads.box_predictor

    def forward(self, pooled: Tensor) -> Tuple[Tensor, Tensor]:
        if self.res5 is not None:  # Res5ROIHeads: res5 on the pooled res4, averaged
            x = self.res5(pooled).mean(dim=[2, 3])
        else:
            x = self.box_head(pooled)
        return self.box_predictor(x)


class MaskRCNNMaskHeadGraph(nn.Module):
    """Pooled features ``(D, C, S', S')`` -> mask logits ``(D, K, M, M)`` (``(D, 1, M, M)``
    class-agnostic): the mask head's layers, before ``mask_rcnn_inference`` (C4: after ``res5``)."""

    def __init__(self, heads: nn.Module):
        super().__init__()
        self.res5 = getattr(heads, "res5", None)
        self.mask_head = heads.mask_head

    def forward(self, pooled: Tensor) -> Tensor:
        x = self.res5(pooled) if self.res5 is not None else pooled
        return self.mask_head.layers(x)


def _check_mask_rcnn(model: nn.Module) -> None:
    """Raise ValueError for the GeneralizedRCNN variants :mod:`instfcn_d2.deploy.mask_rcnn` does not
    reproduce."""
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
    from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead

    heads = model.roi_heads
    what = f"export: GeneralizedRCNN with {type(heads).__name__}"
    if type(heads) not in (StandardROIHeads, Res5ROIHeads):
        raise ValueError(f"{what} is not exportable; exportable ROI heads: StandardROIHeads (FPN), Res5ROIHeads (C4)")
    if type(model.proposal_generator) is not RPN:
        raise ValueError(f"{what}: proposal generator {type(model.proposal_generator).__name__} is not exportable (RPN only)")
    if type(heads.box_predictor) is not FastRCNNOutputLayers:
        raise ValueError(f"{what}: box predictor {type(heads.box_predictor).__name__} is not exportable")
    if not heads.mask_on or not isinstance(heads.mask_head, BaseMaskRCNNHead):
        raise ValueError(f"{what}: exportable with a mask head only (MODEL.MASK_ON True, a BaseMaskRCNNHead)")
    if getattr(heads, "keypoint_on", False):
        raise ValueError(f"{what}: the keypoint head is not exportable")
    if type(heads) is StandardROIHeads:
        if heads.mask_pooler is None or heads.box_pooler is None:
            raise ValueError(f"{what}: heads without a pooler are not exportable")


def dense_graph_for(model: nn.Module) -> DenseGraph:
    """The :class:`DenseGraph` of a built model (FCIS, BiSeg, InstanceFCN or detectron2's Mask R-CNN)."""
    from ..modeling import BiSeg, FCIS, InstanceFCN
    from ..modeling.instance_fcn.heads import InstanceSensitiveMaskHead

    if isinstance(model, FCIS) and getattr(model.roi_heads, "class_head", None) is not None:
        raise ValueError(
            'export: MODEL.FCIS.CLASS_HEAD "fc" is not exportable: its box head runs on the RoIs after the '
            'data-dependent proposal selection; export a model with the assembled class scores ("assembled")'
        )
    if isinstance(model, BiSeg):
        return BiSegGraph(model)
    if isinstance(model, FCIS):
        return FCISGraph(model)
    if isinstance(model, InstanceFCN):
        if not isinstance(model.mask_head, InstanceSensitiveMaskHead):
            raise ValueError(
                f"export: InstanceFCN with the {type(model.mask_head).__name__} mask head is not exportable: its "
                "per-window fully connected layers run after the data-dependent window selection; export the "
                'instance-sensitive head (MODEL.INSTANCE_FCN.MASK_HEAD "InstanceSensitive")'
            )
        return InstanceFCNGraph(model)
    from detectron2.modeling import GeneralizedRCNN

    if type(model) is GeneralizedRCNN:
        _check_mask_rcnn(model)
        return MaskRCNNGraph(model)
    raise ValueError(
        f"export: no graph for {type(model).__name__}; exportable meta-architectures: FCIS, BiSeg, InstanceFCN, "
        "GeneralizedRCNN (Mask R-CNN)"
    )
