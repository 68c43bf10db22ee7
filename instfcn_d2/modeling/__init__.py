"""The three methods, one folder each, and what they share (registered in detectron2's
registries on import):

- :mod:`.instance_fcn`: ``InstanceFCN``: class-agnostic segment proposals;
- :mod:`.fcis`: ``FCIS`` and ``FCISROIHeads``: instances with classes from inside/outside maps;
- :mod:`.biseg`: ``BiSeg`` and ``BiSegROIHeads``: FCIS + a semantic prior and fused maps;
- :mod:`.backbone`: the dilated trunks (VGG-16, ResNet) the papers use;
- :mod:`.common`: the few helpers the methods share.
"""
from .._detectron2 import DETECTRON2_IMPORT_ERROR

# Without detectron2 only the detectron2-free modules of each method can be imported, one by one
# (the inference after the maps, which exported models run).
if DETECTRON2_IMPORT_ERROR is None:
    from . import backbone  # noqa: F401  (build_vgg16_dilated_backbone, build_resnet_dilated_backbone)
    from . import instance_fcn, fcis, biseg  # noqa: F401,E402

    from .biseg import BiSeg, BiSegROIHeads  # noqa: E402
    from .fcis import FCIS, FCISROIHeads  # noqa: E402
    from .instance_fcn import InstanceFCN  # noqa: E402

__all__ = ["InstanceFCN", "FCIS", "FCISROIHeads", "BiSeg", "BiSegROIHeads"]
