"""VGG-16 with pool4 at stride 1 and dilated conv5 ("hole algorithm"): conv5_3 at output stride 8.

The trunk InstanceFCN uses (Dai et al., ECCV 2016, Sec. 3.1). Layout = torchvision's
``vgg16().features``: 13 3x3 convs ``conv1_1`` .. ``conv5_3`` (padding 1), each followed by ReLU,
2x2 / stride 2 max pools after ``conv1_2``, ``conv2_2``, ``conv3_3`` and ``conv4_3``; pool5 and the
fc layers are dropped (InstanceFCN's heads read conv5_3).

pool4 at stride 1 is a 2x2 max pool at stride 1 whose input is padded by one row / column at the
bottom / right (replicating the border): its output at ``(2i, 2j)`` is the stride-2 pool's output at
``(i, j)``, and conv5 dilated by 2 then reads exactly the pixels the stride-2 network's conv5 reads.
So the stride-8 conv5_3 map subsampled at even positions IS plain VGG-16's stride-16 conv5_3:
ImageNet weights keep their meaning (tests/modeling/test_backbones.py checks it). DeepLab's
prototxt uses a 3x3 / stride 1 / pad 1 pool4 instead, which is close but not exact.

Parameter names are ``conv{b}_{i}.weight`` / ``.bias`` (and ``conv{b}_{i}.norm.*`` with a norm);
``tools/convert_torchvision_vgg.py`` maps torchvision's ``features.{k}.*`` onto them with
:data:`TORCHVISION_VGG16_CONV_INDICES`.
"""

from typing import Dict, List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

__all__ = [
    "VGG16",
    "VGG16_BLOCKS",
    "VGG16_CONV_NAMES",
    "TORCHVISION_VGG16_CONV_INDICES",
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "build_vgg16_dilated_backbone",
]

# (output channels, number of 3x3 convs) of blocks conv1 .. conv5.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG16_CONV_NAMES = tuple(
    f"conv{b}_{i}" for b, (_, n) in enumerate(VGG16_BLOCKS, start=1) for i in range(1, n + 1)
)
# Index of each conv of VGG16_CONV_NAMES in torchvision's ``vgg16().features`` Sequential
# (ReLUs and max pools take the indices in between).
TORCHVISION_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# torchvision's ImageNet models take RGB in [0, 1] normalised by mean (0.485, 0.456, 0.406) and
# std (0.229, 0.224, 0.225); detectron2 feeds 0..255 pixels as (x - PIXEL_MEAN) / PIXEL_STD, so the
# matching config is INPUT.FORMAT "RGB" with these (255 * mean, 255 * std).
TORCHVISION_PIXEL_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_PIXEL_STD = (58.395, 57.12, 57.375)


class VGG16(Backbone):
    """VGG-16 conv trunk. ``forward(x)``: ``x`` of shape ``(N, C_in, H, W)`` -> dict of the
    requested ``conv{b}`` maps, ``(N, C_b, ~H / stride_b, ~W / stride_b)`` (pools floor odd sizes,
    as torchvision's do)."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        out_features: Sequence[str] = ("conv5",),
        norm: str = "",
        freeze_at: int = 0,
        pool4_stride: int = 1,
        conv5_dilation: int = 2,
    ):
        """
        Args:
            in_channels: channels of the input image.
            out_features: subset of "conv1" .. "conv5"; blocks after the deepest are not built.
            norm: normalisation after each conv ("" for none; see detectron2's ``get_norm``).
            freeze_at: number of blocks, from conv1, whose parameters are frozen (0 .. 5).
            pool4_stride: 1 (output stride 8 at conv5) or 2 (plain VGG-16, stride 16).
            conv5_dilation: dilation (and padding) of conv5_1 .. conv5_3.
        """
        super().__init__()
        valid = [f"conv{b}" for b in range(1, len(VGG16_BLOCKS) + 1)]
        out_features = list(out_features)
        if not out_features or any(f not in valid for f in out_features):
            raise ValueError(
                f"VGG16 out_features must be a non-empty subset of {valid}, got {out_features}"
            )
        if pool4_stride not in (1, 2):
            raise ValueError(f"VGG16 pool4_stride must be 1 or 2, got {pool4_stride}")
        if int(conv5_dilation) != conv5_dilation or conv5_dilation < 1:
            raise ValueError(f"VGG16 conv5_dilation must be an integer >= 1, got {conv5_dilation}")
        if not 0 <= freeze_at <= len(VGG16_BLOCKS):
            raise ValueError(f"VGG16 freeze_at must be in 0..{len(VGG16_BLOCKS)}, got {freeze_at}")
        self._out_features = out_features
        self._pool4_stride = pool4_stride
        num_blocks = max(valid.index(f) for f in out_features) + 1

        # Conv names per built block, e.g. [["conv1_1", "conv1_2"], ...].
        self._block_convs: List[List[str]] = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        channels, stride = in_channels, 1
        for b, (out_channels, num_convs) in enumerate(VGG16_BLOCKS[:num_blocks], start=1):
            if b > 1:
                stride *= pool4_stride if b == 5 else 2  # the pool in front of block b
            dilation = int(conv5_dilation) if b == 5 else 1
            names = []
            for i in range(1, num_convs + 1):
                conv = Conv2d(
                    channels,
                    out_channels,
                    kernel_size=3,
                    padding=dilation,
                    dilation=dilation,
                    bias=not norm,
                    norm=get_norm(norm, out_channels),
                )
                # kaiming normal (fan_out, ReLU), zero bias: torchvision's VGG init too.
                weight_init.c2_msra_fill(conv)
                name = f"conv{b}_{i}"
                self.add_module(name, conv)
                names.append(name)
                channels = out_channels
            self._block_convs.append(names)
            self._out_feature_channels[f"conv{b}"] = out_channels
            self._out_feature_strides[f"conv{b}"] = stride
        self.freeze(freeze_at)

    def _pool(self, before_block: int, x: torch.Tensor) -> torch.Tensor:
        if before_block == 5 and self._pool4_stride == 1:
            # One replicated row / column at the bottom / right keeps the size; see module doc.
            return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), kernel_size=2, stride=1)
        return F.max_pool2d(x, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"VGG16 takes an input of shape (N, C, H, W), got {tuple(x.shape)}")
        outputs = {}
        for b, names in enumerate(self._block_convs, start=1):
            if b > 1:
                x = self._pool(b, x)
            for name in names:
                x = F.relu_(getattr(self, name)(x))
            if f"conv{b}" in self._out_features:
                outputs[f"conv{b}"] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> "VGG16":
        """Freeze blocks conv1 .. conv{freeze_at}: no gradients, BatchNorm -> FrozenBatchNorm2d."""
        for names in self._block_convs[:freeze_at]:
            for name in names:
                conv = getattr(self, name)
                for p in conv.parameters():
                    p.requires_grad = False
                FrozenBatchNorm2d.convert_frozen_batchnorm(conv)  # replaces conv.norm in place
        return self


def _vgg_cfg(cfg):
    if "VGG" not in cfg.MODEL:
        raise KeyError(
            "cfg.MODEL.VGG is missing: build the config with instfcn_d2.config.get_instfcn_cfg() "
            "or call instfcn_d2.add_instfcn_config(cfg) before build_vgg16_dilated_backbone"
        )
    return cfg.MODEL.VGG


@BACKBONE_REGISTRY.register()
def build_vgg16_dilated_backbone(cfg, input_shape: ShapeSpec) -> VGG16:
    """VGG-16 from ``cfg.MODEL.VGG`` (see ``instfcn_d2/modeling/backbone/config.py``)."""
    vgg = _vgg_cfg(cfg)
    return VGG16(
        input_shape.channels,
        out_features=vgg.OUT_FEATURES,
        norm=vgg.NORM,
        freeze_at=vgg.FREEZE_AT,
        pool4_stride=vgg.POOL4_STRIDE,
        conv5_dilation=vgg.CONV5_DILATION,
    )
