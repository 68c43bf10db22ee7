"""The three methods as detectron2 models, one folder each, and what they share (registered in
detectron2's registries on import). What they compute after their maps is in the detectron2-free
:mod:`instfcn_d2.core`, which exported models run too.

- :mod:`.instance_fcn`: ``InstanceFCN``: class-agnostic segment proposals;
- :mod:`.fcis`: ``FCIS`` and ``FCISROIHeads``: instances with classes from inside/outside maps;
- :mod:`.biseg`: ``BiSeg`` and ``BiSegROIHeads``: FCIS + a semantic prior and fused maps;
- :mod:`.backbone`: the dilated trunks (VGG-16, ResNet) the papers use;
- :mod:`.common`: the few helpers the methods share;
- :mod:`.instances`: :class:`instfcn_d2.core.Detections` as detectron2's ``Instances``.
"""
from . import backbone  # noqa: F401  (build_vgg16_dilated_backbone, build_resnet_dilated_backbone)
from .biseg import BiSeg, BiSegROIHeads
from .fcis import FCIS, FCISROIHeads
from .instance_fcn import InstanceFCN
from .instances import detections_to_instances

__all__ = ["InstanceFCN", "FCIS", "FCISROIHeads", "BiSeg", "BiSegROIHeads", "detections_to_instances"]
