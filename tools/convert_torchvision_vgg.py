#!/usr/bin/env python
"""Convert torchvision's ImageNet VGG-16 checkpoint into weights for build_vgg16_dilated_backbone.

Maps the 13 convs of torchvision's ``vgg16`` (``features.0.weight`` .. ``features.28.bias``) to the
backbone's names (``conv1_1.weight`` .. ``conv5_3.bias``), drops the classifier (fc6..fc8) and
writes a detectron2 ``.pkl``: ``{"model": {name: numpy array}, "__author__": "torchvision",
"matching_heuristics": True}``. detectron2's ``DetectionCheckpointer`` then matches the names by
suffix, so the file loads into the bare backbone and into any model holding it as ``backbone``.

torchvision's weights expect RGB input in [0, 1] normalised by the ImageNet mean / std;
detectron2 feeds 0..255 pixels as (x - PIXEL_MEAN) / PIXEL_STD, so a config using these weights
must set:

    INPUT.FORMAT "RGB"
    MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]
    MODEL.PIXEL_STD [58.395, 57.12, 57.375]

Usage (download vgg16-397923af.pth yourself, from torchvision's model URLs):

    python tools/convert_torchvision_vgg.py vgg16-397923af.pth vgg16_instfcn.pkl
    ... MODEL.BACKBONE.NAME build_vgg16_dilated_backbone MODEL.WEIGHTS vgg16_instfcn.pkl
"""

import argparse
import pickle
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import torch

from instfcn_d2.modeling.backbone.vgg import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    TORCHVISION_VGG16_CONV_INDICES,
    VGG16_BLOCKS,
    VGG16_CONV_NAMES,
)

DROPPED_PREFIXES = ("classifier.",)


class ConversionError(ValueError):
    """The input is not a torchvision VGG-16 state dict (names the key at fault)."""


def _expected_shapes() -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """torchvision key -> (backbone key, expected shape), in network order."""
    out_channels = [c for c, n in VGG16_BLOCKS for _ in range(n)]
    in_channels = [3] + out_channels[:-1]
    table = {}
    for name, idx, c_in, c_out in zip(
        VGG16_CONV_NAMES, TORCHVISION_VGG16_CONV_INDICES, in_channels, out_channels
    ):
        table[f"features.{idx}.weight"] = (f"{name}.weight", (c_out, c_in, 3, 3))
        table[f"features.{idx}.bias"] = (f"{name}.bias", (c_out,))
    return table


def convert(
    state_dict: Mapping[str, torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """torchvision VGG-16 state dict -> (backbone state dict, mapping lines, dropped keys).

    Raises ConversionError naming the key on a missing key, a wrongly shaped tensor or an
    unexpected ``features.*`` key (e.g. the BatchNorm layers of ``vgg16_bn``).
    """
    table = _expected_shapes()
    converted, lines = {}, []
    for src, (dst, shape) in table.items():
        if src not in state_dict:
            raise ConversionError(
                f"key '{src}' (-> {dst}) is missing from the checkpoint; is it torchvision's vgg16?"
            )
        value = state_dict[src]
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"key '{src}' holds a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != shape:
            raise ConversionError(
                f"key '{src}' (-> {dst}) has shape {tuple(value.shape)}, expected {shape}; "
                "is it torchvision's vgg16 (not vgg16_bn / vgg19)?"
            )
        converted[dst] = value.detach().to("cpu", torch.float32)
        lines.append(f"{src:20s} {str(shape):20s} -> {dst}")
    dropped = [k for k in state_dict if k.startswith(DROPPED_PREFIXES)]
    unexpected = [k for k in state_dict if k not in table and k not in dropped]
    if unexpected:
        raise ConversionError(
            f"key '{unexpected[0]}' is not part of torchvision's vgg16 "
            f"({len(unexpected)} unexpected key(s): {unexpected[:5]})"
        )
    return converted, lines, dropped


def load_torchvision_checkpoint(path: str) -> Mapping[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError("file not found") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a {type(data).__name__}, not a state dict")
    return data


def write_detectron2_pkl(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    # numpy arrays: detectron2's convention for .pkl weights, readable without torch.
    payload = {
        "model": {k: v.numpy() for k, v in state_dict.items()},
        "__author__": "torchvision",
        "matching_heuristics": True,
    }
    with open(path, "wb") as f:
        pickle.dump(payload, f)


def _parser() -> argparse.ArgumentParser:
    mean = list(TORCHVISION_PIXEL_MEAN)
    std = list(TORCHVISION_PIXEL_STD)
    return argparse.ArgumentParser(
        description=(
            "Convert torchvision's VGG-16 ImageNet checkpoint (e.g. vgg16-397923af.pth, downloaded "
            "by you) into a detectron2 .pkl for MODEL.BACKBONE.NAME build_vgg16_dilated_backbone. "
            "The classifier (fc) layers are dropped."
        ),
        epilog=(
            "The weights expect torchvision's input normalisation; use them with INPUT.FORMAT RGB "
            f'MODEL.PIXEL_MEAN "{mean}" MODEL.PIXEL_STD "{std}" (255 x ImageNet mean / std).'
        ),
    )


def main(argv=None) -> int:
    parser = _parser()
    parser.add_argument("input", help="torchvision VGG-16 state dict (.pth)")
    parser.add_argument("output", help="detectron2 weights to write; must end in .pkl")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        parser.error(
            "output must end in .pkl (detectron2 reads the matching heuristics only from .pkl): "
            f"{args.output}"
        )
    try:
        converted, lines, dropped = convert(load_torchvision_checkpoint(args.input))
    except ConversionError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 1
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_detectron2_pkl(converted, args.output)
    print("\n".join(lines))
    print(f"dropped {len(dropped)} classifier key(s): {', '.join(dropped)}")
    print(f"wrote {len(converted)} tensors to {args.output}")
    print(
        f'use with: INPUT.FORMAT RGB MODEL.PIXEL_MEAN "{list(TORCHVISION_PIXEL_MEAN)}" '
        f'MODEL.PIXEL_STD "{list(TORCHVISION_PIXEL_STD)}"'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
