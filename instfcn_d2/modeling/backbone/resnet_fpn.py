"""detectron2's FPN on the project's ResNet (:func:`.dilated_resnet.build_resnet_dilated_backbone`).

detectron2's own ``build_resnet_fpn_backbone`` builds its ``build_resnet_backbone``, which pins
R18 / R34 to 64 channels (its ImageNet weights have them); trained from scratch, a narrower trunk
buys more iterations in a fixed budget. The pyramid itself is detectron2's ``FPN`` with
``LastLevelMaxPool`` (p2 ... p6), exactly as in ``build_resnet_fpn_backbone``.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .dilated_resnet import build_resnet_dilated_backbone

__all__ = ["build_resnet_dilated_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_dilated_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN (``cfg.MODEL.FPN``) on :func:`build_resnet_dilated_backbone`; the pyramid needs strides
    that double from level to level, so res4 / res5 must not be dilated."""
    d = cfg.MODEL.DILATED_RESNET
    if (d.RES4_DILATION, d.RES5_DILATION) != (1, 1):
        raise ValueError(
            "build_resnet_dilated_fpn_backbone: an FPN needs res4 and res5 at strides 16 and 32; set "
            f"MODEL.DILATED_RESNET.RES4_DILATION and RES5_DILATION to 1 (got {d.RES4_DILATION}, {d.RES5_DILATION})"
        )
    return FPN(
        bottom_up=build_resnet_dilated_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
