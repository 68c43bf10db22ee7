"""``add_backbone_config(cfg)``: keys of the dilated VGG-16 and dilated ResNet backbones.

Called by :func:`instfcn_d2.config.add_instfcn_config`; calling it twice is harmless.
"""

from detectron2.config import CfgNode as CN


def add_backbone_config(cfg: CN) -> CN:
    """Add ``MODEL.VGG`` and ``MODEL.DILATED_RESNET`` to ``cfg`` in place (and return it)."""
    _C = cfg

    # VGG-16 with the "hole algorithm" (MODEL.BACKBONE.NAME "build_vgg16_dilated_backbone").
    #
    # ImageNet weights: convert torchvision's vgg16-397923af.pth with
    # tools/convert_torchvision_vgg.py and set MODEL.WEIGHTS to the .pkl it writes. Those weights
    # expect torchvision's input, so the config must also say
    #   INPUT.FORMAT: "RGB"
    #   MODEL.PIXEL_MEAN: [123.675, 116.28, 103.53]   # 255 * ImageNet mean (R, G, B)
    #   MODEL.PIXEL_STD: [58.395, 57.12, 57.375]      # 255 * ImageNet std (R, G, B)
    # (detectron2's defaults are BGR with PIXEL_STD 1, the convention of its Caffe2 ResNets).
    if "VGG" not in _C.MODEL:
        _C.MODEL.VGG = CN()
        # Feature maps returned, any of "conv1" .. "conv5" (the ReLU output of the block's last
        # conv, before the block's pool). Strides: conv1 1, conv2 2, conv3 4, conv4 8,
        # conv5 8 * POOL4_STRIDE. Blocks after the deepest one named are not built.
        _C.MODEL.VGG.OUT_FEATURES = ["conv5"]
        # Normalisation after each conv: "" (none, as torchvision's vgg16), "GN", "BN",
        # "FrozenBN", ... (anything detectron2's get_norm takes). Convs have a bias only without
        # norm. Use "GN" to train from scratch on a CPU with small batches.
        _C.MODEL.VGG.NORM = ""
        # Number of conv blocks frozen, counted from conv1 (0: none, 2: conv1_x and conv2_x as
        # Fast R-CNN fine-tunes VGG-16, 5: all). Independent of MODEL.BACKBONE.FREEZE_AT, whose
        # stages are ResNet's: set it to 0 to train from scratch.
        _C.MODEL.VGG.FREEZE_AT = 2
        # pool4 stride: 1 (InstanceFCN, output stride 8) or 2 (plain VGG-16, output stride 16).
        _C.MODEL.VGG.POOL4_STRIDE = 1
        # Dilation of conv5_1 .. conv5_3; 2 with POOL4_STRIDE 1 makes conv5 compute exactly the
        # plain VGG-16's conv5_3, densely (the hole algorithm), 1 with POOL4_STRIDE 2.
        _C.MODEL.VGG.CONV5_DILATION = 2

    # detectron2's ResNet with dilated res4 / res5 (MODEL.BACKBONE.NAME
    # "build_resnet_dilated_backbone"). Everything else (DEPTH, NORM, OUT_FEATURES,
    # STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, STRIDE_IN_1X1, NUM_GROUPS, WIDTH_PER_GROUP) is read from
    # MODEL.RESNETS and MODEL.BACKBONE.FREEZE_AT as detectron2's build_resnet_backbone reads them;
    # detectron2's own MODEL.RESNETS.RES5_DILATION must stay 1 (v0.6 only allows 1 or 2, and not
    # for R18/R34). Note detectron2's default OUT_FEATURES is ["res4"]: set ["res5"] for stride 8.
    if "DILATED_RESNET" not in _C.MODEL:
        _C.MODEL.DILATED_RESNET = CN()
        # A dilated stage runs at the resolution of the stage before it (its stride-2 conv becomes
        # stride 1) and doubles the dilation of what follows. Allowed (RES4, RES5) pairs:
        # (2, 4) -> output stride 8 (InstanceFCN / DeepLab), (1, 2) -> 16 (FCIS), (1, 1) -> 32.
        _C.MODEL.DILATED_RESNET.RES4_DILATION = 2
        _C.MODEL.DILATED_RESNET.RES5_DILATION = 4
    return cfg
