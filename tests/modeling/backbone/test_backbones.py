"""Dilated VGG-16 / ResNet backbones (output strides, the hole algorithm's exactness, freezing)
and tools/convert_torchvision_vgg.py on a torchvision VGG-16 state dict made here."""

import copy
import pickle

import pytest
import torch
import torchvision
from conftest import load_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone
from torch import nn

from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.modeling.backbone.vgg import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    VGG16_CONV_NAMES,
)

VGG = ["MODEL.BACKBONE.NAME", "build_vgg16_dilated_backbone"]
DILATED_RESNET = ["MODEL.BACKBONE.NAME", "build_resnet_dilated_backbone"]
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


def _backbone(*opts):
    return build_backbone(get_instfcn_cfg(opts=list(opts)))


def _shapes(backbone):
    return {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}


def _close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


# ----------------------------------------------------------------------------------------- VGG-16


@pytest.mark.parametrize(
    "opts, conv5_stride",
    [
        ([], 8),  # InstanceFCN: pool4 stride 1, conv5 dilated 2 (the defaults)
        (["MODEL.VGG.POOL4_STRIDE", "2", "MODEL.VGG.CONV5_DILATION", "1"], 16),  # plain VGG-16
    ],
)
def test_vgg_output_strides_and_channels(opts, conv5_stride):
    torch.manual_seed(0)
    vgg = _backbone(*VGG, "MODEL.VGG.OUT_FEATURES", '["conv3", "conv4", "conv5"]', *opts)
    assert _shapes(vgg) == {"conv3": (256, 4), "conv4": (512, 8), "conv5": (512, conv5_stride)}
    out = vgg(torch.randn(1, 3, 64, 96))
    for name, spec in vgg.output_shape().items():
        assert out[name].shape == (1, spec.channels, 64 // spec.stride, 96 // spec.stride), name


def test_vgg_default_is_conv5_at_stride_8_and_skips_nothing_needed():
    vgg = _backbone(*VGG)
    assert _shapes(vgg) == {"conv5": (512, 8)}
    assert [n for n, _ in vgg.named_children()] == list(VGG16_CONV_NAMES)
    # A shallower output does not build the blocks after it.
    vgg3 = _backbone(*VGG, "MODEL.VGG.OUT_FEATURES", '["conv3"]')
    assert [n for n, _ in vgg3.named_children()] == list(VGG16_CONV_NAMES[:7])


def test_vgg_conv5_sees_far_pixels_through_dilation():
    """Via autograd: conv5_3 at stride 8 depends on the same 196 input columns as plain VGG-16's
    conv5_3 at stride 16 (same image position), not on the 148 of the stack without dilation."""
    torch.manual_seed(0)
    vgg = _backbone(*VGG).eval()
    plain = _backbone(*VGG, "MODEL.VGG.POOL4_STRIDE", "2", "MODEL.VGG.CONV5_DILATION", "1").eval()
    undilated = copy.deepcopy(vgg)
    for name in ("conv5_1", "conv5_2", "conv5_3"):
        getattr(undilated, name).dilation = (1, 1)
        getattr(undilated, name).padding = (1, 1)

    def columns_seen(model, out_col):
        x = torch.randn(1, 3, 16, 224, requires_grad=True)
        model(x)["conv5"][0, :, 0, out_col].sum().backward()
        cols = (x.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
        return cols.min().item(), cols.max().item()

    lo, hi = columns_seen(vgg, 14)
    assert (lo, hi) == columns_seen(plain, 7) and hi - lo + 1 == 196
    lo, hi = columns_seen(undilated, 14)
    assert hi - lo + 1 == 148


def test_vgg_freeze_at_and_norm():
    vgg = _backbone(*VGG, "MODEL.VGG.NORM", "BN", "MODEL.VGG.FREEZE_AT", "2")
    for name in VGG16_CONV_NAMES:
        conv = getattr(vgg, name)
        frozen = name.startswith(("conv1_", "conv2_"))
        assert all(p.requires_grad != frozen for p in conv.parameters()), name
        assert isinstance(conv.norm, FrozenBatchNorm2d if frozen else nn.BatchNorm2d), name
        assert conv.bias is None  # a norm follows: no conv bias
    assert all(p.requires_grad for p in _backbone(*VGG, "MODEL.VGG.FREEZE_AT", "0").parameters())


def test_vgg_group_norm_from_scratch_backward():
    torch.manual_seed(0)
    vgg = _backbone(*VGG, "MODEL.VGG.NORM", "GN", "MODEL.VGG.FREEZE_AT", "0")
    assert isinstance(vgg.conv5_3.norm, nn.GroupNorm)
    vgg(torch.randn(2, 3, 32, 32))["conv5"].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vgg.parameters())


@pytest.mark.parametrize(
    "opts, match",
    [
        (["MODEL.VGG.OUT_FEATURES", '["conv6"]'], "out_features"),
        (["MODEL.VGG.POOL4_STRIDE", "4"], "pool4_stride"),
        (["MODEL.VGG.FREEZE_AT", "6"], "freeze_at"),
    ],
)
def test_vgg_bad_config_is_named(opts, match):
    with pytest.raises(ValueError, match=match):
        _backbone(*VGG, *opts)


# --------------------------------------------------------------------- torchvision VGG-16 converter


@pytest.fixture(scope="module")
def torchvision_vgg16():
    """torchvision's vgg16 with random conv weights AND biases (its init zeroes biases, which would
    hide a bias mapping bug). Built on the meta device, then only ``features`` is materialised:
    the 123M classifier parameters would cost seconds and 0.5 GB for nothing."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None)
    features = model.features.to_empty(device="cpu").eval()
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.uniform_(layer.bias, -0.1, 0.1)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    # The converter drops the classifier unread: same keys as torchvision's, tiny placeholders.
    state.update({f"classifier.{k}": torch.zeros(1) for k in model.classifier.state_dict()})
    return features, state


@pytest.fixture(scope="module")
def converter():
    return load_tool("convert_torchvision_vgg")


@pytest.fixture
def converted_pkl(torchvision_vgg16, converter, tmp_path, capsys):
    _, state = torchvision_vgg16
    src, dst = tmp_path / "vgg16.pth", tmp_path / "vgg16_d2.pkl"
    torch.save(state, src)
    assert converter.main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "features.0.weight" in printed and "-> conv1_1.weight" in printed
    assert "features.28.bias" in printed and "-> conv5_3.bias" in printed
    assert "dropped 6 classifier key(s)" in printed
    return dst


def test_converted_weights_load_into_backbone_and_match_torchvision(
    torchvision_vgg16, converted_pkl
):
    features, state = torchvision_vgg16
    with open(converted_pkl, "rb") as f:
        payload = pickle.load(f)
    assert payload["__author__"] == "torchvision" and payload["matching_heuristics"] is True
    assert sorted(payload["model"]) == sorted(
        f"{n}.{p}" for n in VGG16_CONV_NAMES for p in ("weight", "bias")
    )

    vgg = _backbone(*VGG, "MODEL.VGG.OUT_FEATURES", '["conv3", "conv4", "conv5"]').eval()
    DetectionCheckpointer(vgg).load(str(converted_pkl))
    for name, idx in zip(VGG16_CONV_NAMES, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)):
        assert torch.equal(getattr(vgg, name).weight, state[f"features.{idx}.weight"]), name
        assert torch.equal(getattr(vgg, name).bias, state[f"features.{idx}.bias"]), name

    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = vgg(x)
        _close(out["conv3"], features[:16](x))  # relu3_3: identical architectures
        _close(out["conv4"], features[:23](x))  # relu4_3: still identical (after pool3)
        # relu5_3: the hole algorithm computes plain VGG-16's stride-16 map, densely.
        _close(out["conv5"][..., ::2, ::2], features[:30](x))
        plain = _backbone(
            *VGG, "MODEL.VGG.POOL4_STRIDE", "2", "MODEL.VGG.CONV5_DILATION", "1"
        ).eval()
        DetectionCheckpointer(plain).load(str(converted_pkl))
        _close(plain(x)["conv5"], features[:30](x))


def test_converted_weights_load_into_a_model_holding_the_backbone(torchvision_vgg16, converted_pkl):
    """The .pkl's matching heuristics find ``backbone.conv1_1.weight`` etc. in a full model."""
    _, state = torchvision_vgg16
    model = nn.Module()
    model.backbone = _backbone(*VGG)
    model.head = nn.Conv2d(512, 1, 1)
    DetectionCheckpointer(model).load(str(converted_pkl))
    assert torch.equal(model.backbone.conv3_2.weight, state["features.12.weight"])
    assert torch.equal(model.backbone.conv5_3.bias, state["features.28.bias"])


def test_converter_names_missing_and_misshaped_keys(torchvision_vgg16, converter, tmp_path, capsys):
    _, state = torchvision_vgg16
    missing = {k: v for k, v in state.items() if k != "features.10.weight"}
    with pytest.raises(
        converter.ConversionError, match=r"'features\.10\.weight' \(-> conv3_1\.weight\) is missing"
    ):
        converter.convert(missing)

    misshaped = dict(state, **{"features.24.bias": torch.zeros(256)})
    with pytest.raises(
        converter.ConversionError, match=r"'features\.24\.bias'.*\(256,\), expected \(512,\)"
    ):
        converter.convert(misshaped)

    # vgg16_bn puts BatchNorm layers at features.1, ...: refused, not silently mis-mapped.
    with pytest.raises(converter.ConversionError, match="features.1.weight"):
        converter.convert(dict(state, **{"features.1.weight": torch.ones(64)}))

    # The command line reports the same and exits 1 without writing anything.
    src, dst = tmp_path / "bad.pth", tmp_path / "bad.pkl"
    torch.save(missing, src)
    assert converter.main([str(src), str(dst)]) == 1
    assert "features.10.weight" in capsys.readouterr().err
    assert not dst.exists()


def test_converter_help_documents_pixel_normalisation(converter, capsys):
    with pytest.raises(SystemExit) as exit_info:
        converter.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "INPUT.FORMAT RGB" in text and "123.675" in text and "58.395" in text


def test_documented_pixel_mean_std_reproduce_torchvision_normalisation():
    """detectron2's (x - PIXEL_MEAN) / PIXEL_STD on 0..255 RGB == torchvision's on x / 255."""
    transforms = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
    x = torch.rand(3, 5, 5) * 255
    tv_mean, tv_std = (
        torch.tensor(transforms.mean)[:, None, None],
        torch.tensor(transforms.std)[:, None, None],
    )
    d2_mean, d2_std = (
        torch.tensor(TORCHVISION_PIXEL_MEAN)[:, None, None],
        torch.tensor(TORCHVISION_PIXEL_STD)[:, None, None],
    )
    torch.testing.assert_close((x - d2_mean) / d2_std, (x / 255 - tv_mean) / tv_std)


# ----------------------------------------------------------------------------------- dilated ResNet


@pytest.mark.parametrize(
    "depth_opts, channels", [(R18, (256, 512)), (["MODEL.RESNETS.DEPTH", "50"], (1024, 2048))]
)
def test_dilated_resnet_output_stride_8(depth_opts, channels):
    torch.manual_seed(0)
    net = _backbone(
        *DILATED_RESNET, *depth_opts, "MODEL.RESNETS.OUT_FEATURES", '["res3", "res4", "res5"]'
    )
    assert _shapes(net) == {
        "res3": (channels[0] // 2, 8),
        "res4": (channels[0], 8),
        "res5": (channels[1], 8),
    }
    out = net(torch.randn(1, 3, 64, 96))
    assert out["res5"].shape == (1, channels[1], 8, 12)


def test_dilated_resnet_output_stride_16():
    net = _backbone(
        *DILATED_RESNET,
        *R18,
        "MODEL.RESNETS.OUT_FEATURES",
        '["res5"]',
        "MODEL.DILATED_RESNET.RES4_DILATION",
        "1",
        "MODEL.DILATED_RESNET.RES5_DILATION",
        "2",
    )
    assert _shapes(net) == {"res5": (512, 16)}


STRIDE_16 = ["MODEL.DILATED_RESNET.RES4_DILATION", "1", "MODEL.DILATED_RESNET.RES5_DILATION", "2"]


@pytest.mark.parametrize(
    "opts, res4_step, res5_step",
    [
        (R18, 2, 4),
        (["MODEL.RESNETS.DEPTH", "50"], 2, 4),  # MSRA layout: stride in the 1x1 conv
        (["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.STRIDE_IN_1X1", "False"], 2, 4),
        (R18 + STRIDE_16, 1, 2),
        (["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.STRIDE_IN_1X1", "False"] + STRIDE_16, 1, 2),
    ],
    ids=["R18", "R50", "R50-stride-in-3x3", "R18-stride16", "R50-stride-in-3x3-stride16"],
)
def test_dilated_resnet_is_plain_resnet_computed_densely(opts, res4_step, res5_step):
    """Same parameter names as detectron2's ResNet (its state dict loads strictly), and with those
    weights res4 / res5 subsampled every res4_step / res5_step pixels ARE the plain ResNet's."""
    torch.manual_seed(0)
    features = ["MODEL.RESNETS.OUT_FEATURES", '["res4", "res5"]']
    plain = _backbone(*opts, *features).eval()  # detectron2's build_resnet_backbone
    dilated = _backbone(*DILATED_RESNET, *opts, *features).eval()
    dilated.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref, out = plain(x), dilated(x)
    _close(out["res4"][..., ::res4_step, ::res4_step], ref["res4"])
    _close(out["res5"][..., ::res5_step, ::res5_step], ref["res5"])


def test_dilated_resnet18_receptive_field_is_plain_resnet18s():
    """Via autograd: res5 at stride 8 depends on input pixels as far away as the plain R18's
    res5 does (435 px wide), not only on the 227 px of the same stack without dilation."""
    torch.manual_seed(0)
    features = ["MODEL.RESNETS.OUT_FEATURES", '["res5"]']
    dilated = _backbone(*DILATED_RESNET, *R18, *features).eval()
    plain = _backbone(*R18, *features).eval()
    undilated = copy.deepcopy(dilated)
    for m in undilated.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            m.dilation, m.padding = (1, 1), (1, 1)

    def columns_seen(model, out_col):
        x = torch.randn(1, 3, 8, 512, requires_grad=True)
        model(x)["res5"][0, :, 0, out_col].sum().backward()
        cols = (x.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
        return cols.min().item(), cols.max().item()

    # Column 32 at stride 8 is column 8 at stride 32: the same image position.
    assert columns_seen(dilated, 32) == columns_seen(plain, 8) == (39, 473)
    lo, hi = columns_seen(undilated, 32)
    assert hi - lo + 1 == 227


def test_dilated_resnet18_group_norm_from_scratch():
    """The CPU configs' setting: R18, GroupNorm, nothing frozen."""
    torch.manual_seed(0)
    net = _backbone(
        *DILATED_RESNET,
        *R18,
        "MODEL.RESNETS.NORM",
        "GN",
        "MODEL.BACKBONE.FREEZE_AT",
        "0",
        "MODEL.RESNETS.STRIDE_IN_1X1",
        "False",
        "MODEL.RESNETS.OUT_FEATURES",
        '["res5"]',
    )
    assert isinstance(net.res5[0].conv2.norm, nn.GroupNorm)
    assert net.res5[0].conv1.dilation == (2, 2) and net.res5[1].conv1.dilation == (4, 4)
    out = net(torch.randn(2, 3, 48, 48))["res5"]
    assert out.shape == (2, 512, 6, 6)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_dilated_resnet_freeze_at():
    net = _backbone(
        *DILATED_RESNET,
        *R18,
        "MODEL.BACKBONE.FREEZE_AT",
        "2",
        "MODEL.RESNETS.OUT_FEATURES",
        '["res5"]',
    )
    for name, p in net.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "res2."))), name


@pytest.mark.parametrize(
    "opts, match",
    [
        (["MODEL.DILATED_RESNET.RES5_DILATION", "2"], r"RES4_DILATION, RES5_DILATION"),
        (["MODEL.RESNETS.RES5_DILATION", "2"], "MODEL.RESNETS.RES5_DILATION is 2"),
        (["MODEL.RESNETS.DEPTH", "18"], r"STEM_OUT_CHANNELS \(64\) must equal MODEL.RESNETS.RES2_OUT_CHANNELS \(256\)"),
    ],
)
def test_dilated_resnet_bad_config_is_named(opts, match):
    with pytest.raises(ValueError, match=match):
        _backbone(*DILATED_RESNET, *opts)


def test_dilated_r18_may_be_narrower_than_imagenets():
    # trained from scratch (the shapes configs), R18 may halve its widths: 32-64-128-256
    narrow = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32"]
    fcis = ["MODEL.DILATED_RESNET.RES4_DILATION", "1", "MODEL.DILATED_RESNET.RES5_DILATION", "2"]
    net = _backbone(*DILATED_RESNET, *narrow, *fcis, "MODEL.RESNETS.OUT_FEATURES", '["res2", "res3", "res4", "res5"]')
    assert _shapes(net) == {"res2": (32, 4), "res3": (64, 8), "res4": (128, 16), "res5": (256, 16)}
    out = net(torch.zeros(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 16, 16), "res3": (1, 64, 8, 8), "res4": (1, 128, 4, 4), "res5": (1, 256, 4, 4)
    }


# ------------------------------------------------------------------------- FPN on the dilated ResNet

NARROW_FPN = [
    "MODEL.BACKBONE.NAME", "build_resnet_dilated_fpn_backbone",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.OUT_FEATURES", '["res2", "res3", "res4", "res5"]',
    "MODEL.DILATED_RESNET.RES4_DILATION", "1", "MODEL.DILATED_RESNET.RES5_DILATION", "1",
    "MODEL.FPN.IN_FEATURES", '["res2", "res3", "res4", "res5"]', "MODEL.FPN.OUT_CHANNELS", "24",
]


def test_fpn_on_a_narrow_r18_gives_p2_to_p6():
    torch.manual_seed(0)
    net = _backbone(*NARROW_FPN)
    assert _shapes(net) == {f"p{i}": (24, 2**i) for i in range(2, 7)}
    assert net.size_divisibility == 32
    assert net.bottom_up.res2[0].conv1.weight.shape[0] == 16  # the narrow trunk, not detectron2's 64
    out = net(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 24, 16, 24), "p3": (1, 24, 8, 12), "p4": (1, 24, 4, 6), "p5": (1, 24, 2, 3), "p6": (1, 24, 1, 2)
    }


def test_fpn_refuses_a_dilated_trunk_and_names_the_keys():
    with pytest.raises(ValueError, match=r"RES4_DILATION and RES5_DILATION to 1 \(got 1, 2\)"):
        _backbone(*NARROW_FPN, "MODEL.DILATED_RESNET.RES5_DILATION", "2")
