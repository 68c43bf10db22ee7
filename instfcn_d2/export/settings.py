"""The post-processing settings of a built model, read off its detectron2 modules: what
``deploy.json``'s ``pipeline`` holds and :mod:`instfcn_d2.deploy` loads back.

FCIS and BiSeg carry the reader their heads own (:class:`instfcn_d2.core.fcis.FCISReader`) as it
is; the RPN, the RoI poolers and Mask R-CNN's box predictor are read from detectron2's modules into
the core's / deployment's settings types.
"""
from typing import Callable, Dict

from torch import nn

from ..core.rpn import RPNParams
from ..deploy.fcis import FCISPipeline
from ..deploy.instance_fcn import pipeline_dict as instance_fcn_pipeline_dict
from ..deploy.mask_rcnn import BoxPredictorParams, MaskRCNNPipeline, PoolerParams
from ..modeling.instance_fcn.heads import InstanceSensitiveMaskHead

__all__ = [
    "pipeline_settings",
    "rpn_params_from_detectron2",
    "pooler_params_from_detectron2",
    "fcis_pipeline",
    "mask_rcnn_pipeline",
    "instance_fcn_pipeline",
]


def pipeline_settings(model: nn.Module, kind: str) -> dict:
    """``deploy.json``'s ``pipeline`` of ``model``, a built model of ``kind`` (a graph's
    ``kind``: ``"FCIS"``, ``"BiSeg"``, ``"InstanceFCN"`` or ``"MaskRCNN"``)."""
    makers: Dict[str, Callable[[nn.Module], dict]] = {
        "FCIS": lambda m: fcis_pipeline(m).to_dict(),
        "BiSeg": lambda m: fcis_pipeline(m).to_dict(),
        "InstanceFCN": instance_fcn_pipeline,
        "MaskRCNN": lambda m: mask_rcnn_pipeline(m).to_dict(),
    }
    if kind not in makers:
        raise ValueError(f"pipeline_settings: unknown model kind {kind!r}; expected one of {sorted(makers)}")
    return makers[kind](model)


def fcis_pipeline(model: nn.Module) -> FCISPipeline:
    """An FCIS / BiSeg meta-architecture's RPN, reader and mask threshold."""
    return FCISPipeline(
        model.roi_heads.reader, rpn_params_from_detectron2(model.proposal_generator), float(model.mask_threshold)
    )


def instance_fcn_pipeline(model: nn.Module) -> dict:
    """An InstanceFCN meta-architecture's proposer and the ``k`` of its instance-sensitive maps.

    Raises:
        ValueError: for a mask head that does not assemble windows by copying from ``k*k`` maps
            (the ``DeepMask`` head: its per-window fc layers are not in the graph).
    """
    head = model.mask_head
    if not isinstance(head, InstanceSensitiveMaskHead) or head.mask_size != head.window_size:
        raise ValueError(
            f"InstanceFCN with the {type(head).__name__} mask head is not exportable: its per-window layers run "
            "after the data-dependent window selection, outside the graph; export the instance-sensitive head "
            '(MODEL.INSTANCE_FCN.MASK_HEAD "InstanceSensitive")'
        )
    if int(head.window_size) != int(model.proposer.window_size):
        raise ValueError(f"mask head window size {head.window_size} != the model's {model.proposer.window_size}")
    return instance_fcn_pipeline_dict(model.proposer, head.group_size)


def rpn_params_from_detectron2(rpn) -> RPNParams:
    """The :class:`RPNParams` of a detectron2 ``RPN`` (``model.proposal_generator``), test-time
    values."""
    gen = rpn.anchor_generator
    if type(gen).__name__ != "DefaultAnchorGenerator" or getattr(gen, "box_dim", None) != 4:
        raise ValueError(
            f"rpn_params_from_detectron2: only DefaultAnchorGenerator (axis-aligned boxes) is "
            f"supported, got {type(gen).__name__}"
        )
    # BufferList iterates its buffers in level order; tolist() of float32 gives exact python floats
    cell_anchors = tuple(
        tuple(tuple(float(v) for v in a) for a in buf.detach().cpu().tolist())
        for buf in gen.cell_anchors
    )
    t = rpn.box2box_transform
    return RPNParams(
        strides=tuple(int(s) for s in gen.strides),
        cell_anchors=cell_anchors,
        offset=float(gen.offset),
        box_weights=tuple(float(w) for w in t.weights),
        scale_clamp=float(t.scale_clamp),
        pre_nms_topk=int(rpn.pre_nms_topk[False]),
        post_nms_topk=int(rpn.post_nms_topk[False]),
        nms_thresh=float(rpn.nms_thresh),
        min_box_size=float(rpn.min_box_size),
    )


def pooler_params_from_detectron2(pooler) -> PoolerParams:
    """The :class:`PoolerParams` of a detectron2 ``ROIPooler`` (attributes only).

    Raises:
        ValueError: for ``ROIPool`` / ``ROIAlignRotated`` poolers (not ported)."""
    kinds = {type(p).__name__ for p in pooler.level_poolers}
    if kinds != {"ROIAlign"}:
        raise ValueError(f"export: only ROIAlign / ROIAlignV2 poolers are supported, got {sorted(kinds)}")
    first = pooler.level_poolers[0]
    size = tuple(int(s) for s in pooler.output_size)
    if size[0] != size[1]:
        raise ValueError(f"export: square pooler output expected, got {size}")
    return PoolerParams(
        output_size=size[0],
        scales=tuple(float(p.spatial_scale) for p in pooler.level_poolers),
        sampling_ratio=int(first.sampling_ratio),
        aligned=bool(first.aligned),
        min_level=int(pooler.min_level),
        max_level=int(pooler.max_level),
        canonical_box_size=int(pooler.canonical_box_size),
        canonical_level=int(pooler.canonical_level),
    )


def mask_rcnn_pipeline(model) -> MaskRCNNPipeline:
    """The post-processing settings of a built detectron2 Mask R-CNN (``GeneralizedRCNN`` with
    ``StandardROIHeads`` or ``Res5ROIHeads``)."""
    heads = model.roi_heads
    predictor = heads.box_predictor
    if type(heads).__name__ == "Res5ROIHeads":
        box_pooler = mask_pooler = pooler_params_from_detectron2(heads.pooler)
        box_features = mask_features = tuple(heads.in_features)
    else:
        box_pooler = pooler_params_from_detectron2(heads.box_pooler)
        mask_pooler = pooler_params_from_detectron2(heads.mask_pooler)
        box_features, mask_features = tuple(heads.box_in_features), tuple(heads.mask_in_features)
    t = predictor.box2box_transform
    box = BoxPredictorParams(
        box_weights=tuple(float(w) for w in t.weights),
        scale_clamp=float(t.scale_clamp),
        use_sigmoid_ce=bool(getattr(predictor, "use_sigmoid_ce", False)),
        score_thresh=float(predictor.test_score_thresh),
        nms_thresh=float(predictor.test_nms_thresh),
        topk_per_image=int(predictor.test_topk_per_image),
    )
    # GeneralizedRCNN._postprocess calls detector_postprocess with its default threshold
    return MaskRCNNPipeline(
        rpn_params_from_detectron2(model.proposal_generator), box_pooler, mask_pooler, box, 0.5, box_features, mask_features
    )

