"""Input scale, anchor sizes and map stride chosen from a training set's object sizes.

The shipped configs are tuned to their datasets (the synthetic shapes: objects of 12 px to 70% of
a 192-px image). A user's data may hold objects of 10 px, where an RPN whose smallest anchor is
16 px and a stride-16 score map (one cell per object) lose most of them. :func:`suggest_sizes`
reads the COCO JSON and proposes, with the numbers it used:

- **scale**: the factor that brings the 10th percentile of object sides to at least
  ``min_object_side`` pixels (never below 1: images are not shrunk; at most ``max_upscale``),
  applied to the median image's shorter side: ``INPUT.MIN_SIZE_TEST`` and three training scales
  around it (0.83x, 0.92x, 1x), rounded to multiples of 32;
- **anchors**: powers of two from the one at or below the 5th percentile of object sides (at the
  chosen scale) to the one at or above the 95th, at most five (FPN's levels);
- **stride**: 8 when the median object side (at the chosen scale) spans fewer than
  ``cells_per_object`` cells of a stride-16 map, else 16. For FCIS / BiSeg, stride 8 is the dilated
  ResNet with ``RES4_DILATION 2``, ``RES5_DILATION 4``.
- **levels** (FCIS / BiSeg on an FPN trunk, ``configs/custom/``): the pyramid levels p2 ... p5 that
  the objects from the 5th percentile to the largest (at the chosen scale) fall on by detectron2's
  RoI level rule (``ROIPooler``: a 224-px box on p4). Up to the largest: a class of large objects
  can be rare, and the coarse levels cost little (p4 has 1/16 of p2's cells). One level: the score
  maps there. Several: FCIS reads each RoI from its level (``ROI_HEADS.IN_FEATURES`` all of them);
  BiSeg, whose prior and fused set take one map, the finest of them.
- **width** (``MODEL.FCIS.CONV_NEW_DIM``, FPN configs): the score maps have ``k*k*2*(C+1)``
  channels, so the 1x1 conv that makes them costs ``CONV_NEW_DIM * k*k*2*(C+1)`` per map cell. The
  width is the largest power of two that keeps that cost at most the one-class configs' (256 at
  C = 1), and at least 64: 256 for one class, 128 for two or three, 64 from four on. A rule on
  cost, so that many classes do not multiply the time of an iteration; not a measured optimum.

An object's side is the square root of its annotated ``area`` (the mask area COCO JSONs carry;
the box area when it is missing).
"""
import json
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..core.boxes import assign_boxes_to_levels

__all__ = ["SizeSuggestion", "SIZE_PARTS", "suggest_sizes", "config_overrides"]


@dataclass(frozen=True)
class SizeSuggestion:
    """What :func:`suggest_sizes` measured and chose (sides in pixels)."""

    num_objects: int
    object_side_percentiles: Dict[int, float]  # {5, 10, 50, 95}: sqrt(area), original images
    median_image_short_side: float
    scale: float  # applied to the images
    min_size_test: int
    min_size_train: Tuple[int, ...]
    anchor_sizes: Tuple[int, ...]
    stride: int  # of the score maps (8 or 16)
    num_classes: int = 1  # categories of the JSON
    pyramid_levels: Tuple[int, ...] = (2,)  # FPN levels (2 = p2) the objects fall on
    conv_new_dim: int = 256  # MODEL.FCIS.CONV_NEW_DIM for the FPN configs

    @property
    def level_names(self) -> Tuple[str, ...]:
        return tuple(f"p{level}" for level in self.pyramid_levels)

    def describe(self) -> str:
        p = self.object_side_percentiles
        return (
            f"{self.num_objects} objects; side sqrt(area) 5/10/50/95th percentile "
            f"{p[5]:.1f} / {p[10]:.1f} / {p[50]:.1f} / {p[95]:.1f} px; median image shorter side "
            f"{self.median_image_short_side:.0f} px -> scale {self.scale:.2f}: INPUT.MIN_SIZE_TEST "
            f"{self.min_size_test}, MIN_SIZE_TRAIN {self.min_size_train}; anchors {self.anchor_sizes}; "
            f"median object {p[50] * self.scale:.1f} px = {p[50] * self.scale / 16:.1f} cells at stride 16 "
            f"-> score maps at stride {self.stride}; FPN: objects from the 5th percentile to the largest on "
            f"{' ... '.join(dict.fromkeys((self.level_names[0], self.level_names[-1])))}, "
            f"{self.num_classes} class{'es' if self.num_classes != 1 else ''} -> CONV_NEW_DIM {self.conv_new_dim}"
        )


def _round32(x: float) -> int:
    return max(32, int(round(x / 32.0)) * 32)


#: the FPN levels FCIS's and BiSeg's maps may be read from, and the RoI level rule's canonical box
FPN_LEVELS = (2, 5)
#: CONV_NEW_DIM of the one-class FPN configs, and the narrowest the width rule goes
ONE_CLASS_CONV_NEW_DIM, MIN_CONV_NEW_DIM = 256, 64


def _fpn_level(side: float) -> int:
    box = torch.tensor([[0.0, 0.0, side, side]])
    return FPN_LEVELS[0] + int(assign_boxes_to_levels(box, *FPN_LEVELS, canonical_box_size=224, canonical_level=4)[0])


def _conv_new_dim(num_classes: int) -> int:
    budget = ONE_CLASS_CONV_NEW_DIM * 2 / (num_classes + 1)  # same channels * width as at C = 1
    return int(min(ONE_CLASS_CONV_NEW_DIM, max(MIN_CONV_NEW_DIM, 2 ** math.floor(math.log2(budget)))))


def suggest_sizes(
    json_file: str, min_object_side: float = 12.0, max_upscale: float = 2.0, cells_per_object: float = 2.0
) -> SizeSuggestion:
    """Read ``json_file`` (COCO instances) and choose scales, anchors and stride (module docstring)."""
    with open(json_file) as f:
        data = json.load(f)
    sides = []
    for a in data.get("annotations", []):
        if a.get("iscrowd", 0):
            continue
        area = a.get("area")
        if area is None and "bbox" in a:
            area = a["bbox"][2] * a["bbox"][3]
        if area and area > 0:
            sides.append(math.sqrt(area))
    if not sides:
        raise ValueError(f"{json_file}: no non-crowd annotation with a positive 'area' or 'bbox': nothing to measure")
    short = [min(im["height"], im["width"]) for im in data.get("images", []) if "height" in im and "width" in im]
    if not short:
        raise ValueError(f"{json_file}: its images have no 'height' / 'width'")
    pct = {q: float(np.percentile(sides, q)) for q in (5, 10, 50, 95)}
    median_short = float(np.median(short))
    scale = min(max(1.0, min_object_side / pct[10]), max_upscale)
    test = _round32(median_short * scale)
    train = tuple(sorted({_round32(test * f) for f in (0.83, 0.92, 1.0)}))
    lo = 2 ** math.floor(math.log2(max(pct[5] * scale, 1.0)))
    hi = 2 ** math.ceil(math.log2(max(pct[95] * scale, lo)))
    anchors = []
    size = lo
    while size <= hi:
        anchors.append(int(size))
        size *= 2
    if len(anchors) > 5:  # keep the five around the median
        mid = min(range(len(anchors)), key=lambda i: abs(math.log2(anchors[i]) - math.log2(pct[50] * scale)))
        start = min(max(0, mid - 2), len(anchors) - 5)
        anchors = anchors[start : start + 5]
    stride = 8 if pct[50] * scale < cells_per_object * 16 else 16
    categories = {c["id"] for c in data.get("categories", []) if "id" in c}
    num_classes = len(categories) or len({a["category_id"] for a in data["annotations"] if "category_id" in a}) or 1
    levels = tuple(range(_fpn_level(pct[5] * scale), _fpn_level(max(sides) * scale) + 1))
    return SizeSuggestion(
        len(sides), pct, median_short, scale, test, train, tuple(anchors), stride, num_classes, levels,
        _conv_new_dim(num_classes),
    )


#: the parts of a :class:`SizeSuggestion` that :func:`config_overrides` can apply ("levels": the
#: map levels and width of FCIS / BiSeg on an FPN trunk)
SIZE_PARTS = ("scale", "anchors", "stride", "levels")


def config_overrides(
    s: SizeSuggestion, meta_architecture: str, parts: Sequence[str] = SIZE_PARTS, fpn: bool = False
) -> List[str]:
    """``KEY VALUE`` command-line overrides of ``s`` for a model: ``"FCIS"``, ``"BiSeg"``,
    ``"InstanceFCN"`` (input scales only: its sliding windows have no anchors) or
    ``"GeneralizedRCNN"`` (detectron2's Mask R-CNN with FPN: one anchor size per level; its
    strides are FPN's). ``parts``: which of :data:`SIZE_PARTS` to apply (to ablate them).
    ``fpn``: FCIS / BiSeg on an FPN trunk (``configs/custom/``): anchors per level as Mask R-CNN's,
    the map levels and width instead of a dilation."""
    unknown = sorted(set(parts) - set(SIZE_PARTS))
    if unknown:
        raise ValueError(f"config_overrides: unknown parts {unknown}; expected some of {SIZE_PARTS}")
    if meta_architecture not in ("FCIS", "BiSeg", "InstanceFCN", "GeneralizedRCNN"):
        raise ValueError(f"config_overrides: unknown meta-architecture {meta_architecture!r}")

    def tup(values: Sequence[int]) -> str:
        return "(" + ",".join(str(v) for v in values) + ",)"

    out = []
    if "scale" in parts:
        out += ["INPUT.MIN_SIZE_TRAIN", tup(s.min_size_train), "INPUT.MIN_SIZE_TEST", str(s.min_size_test)]
    if meta_architecture in ("FCIS", "BiSeg") and fpn:
        if "anchors" in parts:
            out += _fpn_anchor_overrides(s)
        if "levels" in parts:
            levels = list(s.level_names) if meta_architecture == "FCIS" else [s.level_names[0]]
            out += ["MODEL.ROI_HEADS.IN_FEATURES", "[" + ",".join(f'"{n}"' for n in levels) + "]"]
            if meta_architecture == "BiSeg":
                out += ["MODEL.BISEG.FINE_IN_FEATURE", levels[0]]
            out += ["MODEL.FCIS.CONV_NEW_DIM", str(s.conv_new_dim)]
    elif meta_architecture in ("FCIS", "BiSeg"):
        if "anchors" in parts:
            out += ["MODEL.ANCHOR_GENERATOR.SIZES", "[[" + ",".join(str(a) for a in s.anchor_sizes) + "]]"]
        if "stride" in parts:
            dilations = {8: ("2", "4"), 16: ("1", "2")}[s.stride]
            out += ["MODEL.DILATED_RESNET.RES4_DILATION", dilations[0], "MODEL.DILATED_RESNET.RES5_DILATION", dilations[1]]
    elif meta_architecture == "GeneralizedRCNN" and "anchors" in parts:
        out += _fpn_anchor_overrides(s)
    return out


def _fpn_anchor_overrides(s: SizeSuggestion) -> List[str]:
    """One anchor size per level of p2 ... p6."""
    levels = list(s.anchor_sizes) + [s.anchor_sizes[-1] * 2 ** (i + 1) for i in range(5 - len(s.anchor_sizes))]
    return ["MODEL.ANCHOR_GENERATOR.SIZES", "[" + ",".join(f"[{a}]" for a in levels) + "]"]
