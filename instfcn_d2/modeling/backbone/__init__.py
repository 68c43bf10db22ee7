"""Backbones registered in detectron2's ``BACKBONE_REGISTRY`` on import:

- ``build_vgg16_dilated_backbone``: VGG-16, pool4 stride 1 + dilated conv5 (InstanceFCN), keys
  ``MODEL.VGG.*``;
- ``build_resnet_dilated_backbone``: detectron2's ResNet with dilated res4 / res5, keys
  ``MODEL.RESNETS.*`` + ``MODEL.DILATED_RESNET.*``.
"""

from .config import add_backbone_config
from .dilated_resnet import DilatedBasicBlock, build_resnet_dilated_backbone
from .vgg import VGG16, build_vgg16_dilated_backbone

__all__ = [
    "add_backbone_config",
    "DilatedBasicBlock",
    "build_resnet_dilated_backbone",
    "VGG16",
    "build_vgg16_dilated_backbone",
]
