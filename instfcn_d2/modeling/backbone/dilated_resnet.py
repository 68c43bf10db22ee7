"""detectron2's ResNet with dilated res4 / res5 ("hole algorithm"): output stride 8 or 16.

Built from detectron2's own ``BasicStem``, ``BottleneckBlock``, ``BasicBlock``, ``ResNet`` and
``ResNet.make_stage``, so parameter names are detectron2's (``stem.conv1.*``, ``res4.0.conv2.*``,
...) and detectron2's ImageNet checkpoints (``detectron2://ImageNetPretrained/MSRA/R-50.pkl``, or
torchvision ResNets converted by detectron2's ``convert-torchvision-to-d2.py``) load unchanged.

A dilated stage keeps the resolution of the stage before it: its stride-2 conv runs at stride 1
and every 3x3 conv after that point is dilated by the stage's dilation. The strided conv itself
keeps the previous dilation, which makes the dilated network compute exactly the plain network's
features, densely (its res5 at stride 8 subsampled every 4th pixel equals the plain res5 at
stride 32; the tests check it):

- ``BottleneckBlock`` with ``STRIDE_IN_1X1`` (MSRA weights): the stride is in the 1x1 conv, so all
  3x3 convs of the stage get the new dilation (detectron2's own RES5_DILATION convention).
- ``BottleneckBlock`` without it (torchvision weights): the first block's 3x3 conv is the strided
  one and keeps the previous dilation (as torchvision's ``replace_stride_with_dilation`` does).
- ``BasicBlock`` (R18 / R34): the first block's conv1 is the strided conv; see
  :class:`DilatedBasicBlock`.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

__all__ = ["DilatedBasicBlock", "build_resnet_dilated_backbone", "VALID_DILATIONS"]

# (RES4_DILATION, RES5_DILATION) -> output stride. Each removed stride doubles the dilation of
# what follows; other pairs would not be the hole algorithm of a pretrained ResNet.
VALID_DILATIONS = {(1, 1): 32, (1, 2): 16, (2, 4): 8}

_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def _dilate_(conv, dilation: int) -> None:
    # A 3x3 conv with padding == dilation keeps the map size, as padding 1 did undilated.
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)


class DilatedBasicBlock(BasicBlock):
    """detectron2's ``BasicBlock`` (two 3x3 convs) with dilated convs.

    detectron2 v0.6's ``BasicBlock`` takes no ``dilation`` argument (only ``BottleneckBlock``
    does), so R18 / R34 cannot be dilated with it. This subclass builds the parent block and only
    changes the two convs' dilation / padding afterwards, so parameter names, initialisation and
    ``forward`` stay detectron2's and its checkpoints load unchanged.

    Both 3x3 convs are dilated (some re-implementations dilate only conv1): for the dilated network
    to compute the pretrained network's function, every conv after a removed stride must be.
    ``conv1_dilation`` sets conv1 apart: in a stage's first block conv1 is the conv whose stride
    was removed, which keeps the previous stage's dilation.
    """

    def __init__(
        self, in_channels, out_channels, *, stride=1, norm="BN", dilation=1, conv1_dilation=None
    ):
        super().__init__(in_channels, out_channels, stride=stride, norm=norm)
        _dilate_(self.conv1, dilation if conv1_dilation is None else conv1_dilation)
        _dilate_(self.conv2, dilation)


def _check_cfg(cfg, depth: int, res4_dilation: int, res5_dilation: int) -> None:
    r = cfg.MODEL.RESNETS
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
        )
    if (res4_dilation, res5_dilation) not in VALID_DILATIONS:
        raise ValueError(
            "MODEL.DILATED_RESNET.(RES4_DILATION, RES5_DILATION) must be one of "
            f"{sorted(VALID_DILATIONS)} (output stride {VALID_DILATIONS}), "
            f"got ({res4_dilation}, {res5_dilation})"
        )
    if r.RES5_DILATION != 1:
        raise ValueError(
            f"MODEL.RESNETS.RES5_DILATION is {r.RES5_DILATION}: build_resnet_dilated_backbone "
            "ignores detectron2's key; leave it at 1 and set MODEL.DILATED_RESNET.RES5_DILATION"
        )
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE is not supported by build_resnet_dilated_backbone "
            "(and deformable convs need detectron2's compiled ops)"
        )
    if depth < 50:
        # detectron2 pins R18/R34 to 64 channels because its ImageNet weights have them; a trunk
        # trained from scratch (the CPU configs) may be narrower, as long as the basic blocks'
        # widths match: stem out == res2 out.
        if r.STEM_OUT_CHANNELS != r.RES2_OUT_CHANNELS:
            raise ValueError(
                f"MODEL.RESNETS.STEM_OUT_CHANNELS ({r.STEM_OUT_CHANNELS}) must equal "
                f"MODEL.RESNETS.RES2_OUT_CHANNELS ({r.RES2_OUT_CHANNELS}) for R{depth}"
            )
        if r.NUM_GROUPS != 1:
            raise ValueError(f"MODEL.RESNETS.NUM_GROUPS must be 1 for R{depth}, got {r.NUM_GROUPS}")


@BACKBONE_REGISTRY.register()
def build_resnet_dilated_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """detectron2 ResNet from ``cfg.MODEL.RESNETS`` with res4 / res5 dilated by
    ``cfg.MODEL.DILATED_RESNET.RES4_DILATION`` / ``RES5_DILATION``; frozen stages from
    ``cfg.MODEL.BACKBONE.FREEZE_AT`` as in detectron2's ``build_resnet_backbone``."""
    if "DILATED_RESNET" not in cfg.MODEL:
        raise KeyError(
            "cfg.MODEL.DILATED_RESNET is missing: build the config with "
            "instfcn_d2.config.get_instfcn_cfg() or call instfcn_d2.add_instfcn_config(cfg)"
        )
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    dilations = (
        1,
        1,
        cfg.MODEL.DILATED_RESNET.RES4_DILATION,
        cfg.MODEL.DILATED_RESNET.RES5_DILATION,
    )
    _check_cfg(cfg, depth, dilations[2], dilations[3])

    stem = BasicStem(
        in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM
    )
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    prev_dilation = 1
    for idx, (num_blocks, dilation) in enumerate(zip(_BLOCKS_PER_STAGE[depth], dilations)):
        # A stage whose dilation grew traded its stride for holes; res2 has the stem's max pool.
        first_stride = 1 if idx == 0 or dilation > prev_dilation else 2
        # The conv that carries the (removed) stride keeps the previous dilation; see module doc.
        strided_conv_dilations = [prev_dilation] + [dilation] * (num_blocks - 1)
        kwargs = dict(
            num_blocks=num_blocks,
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            in_channels=in_channels,
            out_channels=out_channels,
            norm=r.NORM,
        )
        if depth < 50:
            kwargs.update(
                block_class=DilatedBasicBlock,
                dilation=dilation,
                conv1_dilation_per_block=strided_conv_dilations,
            )
        else:
            kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=r.STRIDE_IN_1X1,
                num_groups=r.NUM_GROUPS,
                dilation_per_block=(
                    [dilation] * num_blocks if r.STRIDE_IN_1X1 else strided_conv_dilations
                ),
            )
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
        prev_dilation = dilation
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
