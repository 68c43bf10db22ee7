"""Backbones registered in detectron2's ``BACKBONE_REGISTRY`` on import:

- ``build_vgg16_dilated_backbone``: VGG-16, pool4 stride 1 + dilated conv5 (InstanceFCN), keys
  ``MODEL.VGG.*``;
- ``build_resnet_dilated_backbone``: detectron2's ResNet with dilated res4 / res5, keys
  ``MODEL.RESNETS.*`` + ``MODEL.DILATED_RESNET.*``;
- ``build_resnet_dilated_fpn_backbone``: detectron2's FPN on that ResNet (undilated), which
  allows R18 / R34 narrower than 64 channels, keys ``MODEL.FPN.*`` too.
"""

from .config import add_backbone_config
from .dilated_resnet import DilatedBasicBlock, build_resnet_dilated_backbone
from .resnet_fpn import build_resnet_dilated_fpn_backbone
from .vgg import VGG16, build_vgg16_dilated_backbone

__all__ = [
    "add_backbone_config",
    "DilatedBasicBlock",
    "build_resnet_dilated_backbone",
    "build_resnet_dilated_fpn_backbone",
    "VGG16",
    "build_vgg16_dilated_backbone",
]
