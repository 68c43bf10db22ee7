"""Meta-architectures, registered in detectron2's ``META_ARCH_REGISTRY`` on import:

- ``InstanceFCN``: instance-sensitive score maps + objectness -> class-agnostic segment proposals.
- ``FCIS``: inside/outside position-sensitive score maps per RoI -> masks and classes jointly.
- ``BiSeg``: FCIS + a semantic-segmentation prior and fused stride-16 / stride-8 score maps.
"""
from .instance_fcn import InstanceFCN
from .fcis import FCIS
from .biseg import BiSeg

__all__ = ["InstanceFCN", "FCIS", "BiSeg"]
