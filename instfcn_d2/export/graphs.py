"""The part of each model that an exported artefact carries as a graph: image in, dense maps out.

Each graph takes one image ``(3, H, W)`` float32 in ``INPUT.FORMAT``, at the network's input
resolution and already padded to the backbone's size divisibility (the loader pads with the pixel
mean, which normalises to the 0 that detectron2's ``ImageList`` pads with), and returns a flat
tuple of tensors named by :meth:`DenseGraph.output_names`: what the model computes once per
image, before anything whose size depends on the data. What follows (the RPN's top-k and NMS,
the per-RoI assembling, per-class NMS and mask voting, the window top-k and mask-box NMS, the
pasting) runs after the graph in :mod:`instfcn_d2.deploy`, on the same code the models run.

Why the split: those steps pick a data-dependent number of boxes and loop over what they picked
(mask voting runs per detected class); ``torch.export`` would need every such branch rewritten as
tensor code, and tracing would freeze the counts of the sample image.
"""
from typing import List, Tuple

from torch import Tensor, nn

__all__ = ["DenseGraph", "FCISGraph", "BiSegGraph", "InstanceFCNGraph", "dense_graph_for"]


class DenseGraph(nn.Module):
    """Normalisation + the model's dense part. ``forward(image (3, H, W)) -> Tuple[Tensor, ...]``."""

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
    each RPN level ``i``, ``inside_outside`` ``(1, k*k*2*(C+1), H, W)``, ``box`` ``(1, k*k*4, H, W)``.
    """

    def rpn_levels(self) -> int:
        return len(self.model.proposal_generator.in_features)

    def output_names(self) -> List[str]:
        names = []
        for i in range(self.rpn_levels()):
            names += [f"rpn_logits_{i}", f"rpn_deltas_{i}"]
        return names + ["inside_outside", "box"]

    def rpn_outputs(self, features) -> List[Tensor]:
        rpn = self.model.proposal_generator
        logits, deltas = rpn.rpn_head([features[f] for f in rpn.in_features])
        return [t for pair in zip(logits, deltas) for t in pair]

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        features = self.model.backbone(self.normalise(image))
        maps = self.model.score_maps(None, features)  # FCIS's score_maps reads only the features
        return (*self.rpn_outputs(features), maps.inside_outside, maps.box)


class BiSegGraph(FCISGraph):
    """BiSeg: FCIS's outputs, the stride-8 set ``fine`` (with ``MODEL.BISEG.FUSE``), the semantic
    branch's ``sem_seg_logits`` ``(1, C+1, H, W)`` (label order) and the ``prior`` the heads read
    (their softmax in FCIS's class order)."""

    def output_names(self) -> List[str]:
        names = super().output_names()
        if self.model.roi_heads.fuse:
            names.append("fine")
        return names + ["sem_seg_logits", "prior"]

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        features = self.model.backbone(self.normalise(image))
        maps = self.model.score_maps(None, features)  # BiSeg's score_maps reads only the features
        fine = (maps.fine,) if self.model.roi_heads.fuse else ()
        return (*self.rpn_outputs(features), maps.inside_outside, maps.box, *fine, maps.sem_seg_logits, maps.prior)


class InstanceFCNGraph(DenseGraph):
    """InstanceFCN: ``mask_maps`` ``(1, k*k, H, W)`` instance-sensitive maps and ``objectness``
    ``(1, H, W)`` window logits (run once per test scale)."""

    def output_names(self) -> List[str]:
        return ["mask_maps", "objectness"]

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        x = self.normalise(image)
        features = self.model.backbone(x)[self.model.in_feature]
        if self.model.feature_reduce is not None:
            features = self.model.feature_reduce(features)
        return self.model.mask_head(features), self.model.objectness_head(features)


def dense_graph_for(model: nn.Module) -> DenseGraph:
    """The :class:`DenseGraph` of a built model (FCIS, BiSeg or InstanceFCN)."""
    from ..modeling import BiSeg, FCIS, InstanceFCN
    from ..modeling.instance_fcn.heads import InstanceSensitiveMaskHead

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
    raise ValueError(
        f"export: no graph for {type(model).__name__}; exportable meta-architectures: FCIS, BiSeg, InstanceFCN"
    )
