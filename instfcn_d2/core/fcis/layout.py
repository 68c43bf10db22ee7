"""FCIS's position-sensitive score maps: their channel layout, and how assembled maps are read as
class scores, masks and box deltas (FCIS and BiSeg). The 1x1 conv that makes them is
``instfcn_d2.modeling.fcis.score_maps.PSScoreMaps``.

A position-sensitive map set for ``num_outputs`` per-RoI output channels has ``k*k*num_outputs``
channels; :func:`instfcn_d2.layers.ps_roi_assemble` reads channel ``(o*k + gi)*k + gj`` for output
channel ``o`` at grid cell ``(gi, gj)`` (the R-FCN / FCIS / torchvision layout).

FCIS inside/outside layout (the one place it is defined; every FCIS / BiSeg module follows it):
the maps are one tensor ``(N, k*k*2*(C+1), H, W)`` assembled as ``2*(C+1)`` output channels with

- output channel ``o = c``           : *inside* score of class ``c``,
- output channel ``o = (C+1) + c``   : *outside* score of class ``c``,

for ``c`` in ``0 .. C`` where, as everywhere in detectron2, ``0 .. C-1`` are the foreground
classes and ``C`` is background. An assembled ``(R, 2*(C+1), M, M)`` tensor therefore *views* as
``(R, 2, C+1, M, M)`` with ``[:, 0]`` = inside and ``[:, 1]`` = outside
(:func:`split_inside_outside`). (The official FCIS code orders the same channels otherwise: its
``ChannelOperator`` groups them per class, an (outside, inside) pair for each class. The order does
not matter when training from scratch; weights converted from that code need their channels
permuted.)

Reading the assembled ``(R, 2, C+1, M, M)`` logits: a class score is the RoI mean of the per-pixel
``max(inside, outside)`` (:func:`inside_outside_class_logits`), a mask the per-pixel softmax of
inside vs outside of its class (:func:`inside_outside_mask_probs`).

Box regression maps (R-FCN style, class-agnostic): ``k*k*4`` channels, output channel ``o`` =
delta ``(dx, dy, dw, dh)[o]``, assembled ``k x k`` and averaged (:func:`assemble_box_deltas`).
"""
import torch
from torch import Tensor

from ...layers import ps_roi_assemble

__all__ = [
    "split_inside_outside",
    "inside_outside_channel",
    "inside_outside_class_logits",
    "inside_outside_mask_probs",
    "assemble_box_deltas",
]


def inside_outside_channel(class_index: int, outside: bool, num_classes: int) -> int:
    """The assembled output channel of the inside (or outside) score of ``class_index``
    (``0 .. C``, ``C`` = background) for ``num_classes = C`` foreground classes."""
    if not 0 <= class_index <= num_classes:
        raise ValueError(f"class_index must be in [0, {num_classes}] (C = {num_classes}), got {class_index}")
    return class_index + (num_classes + 1) * int(outside)


def split_inside_outside(assembled: Tensor) -> Tensor:
    """``(R, 2*(C+1), M, M)`` assembled inside/outside scores -> ``(R, 2, C+1, M, M)`` (a view)."""
    if assembled.dim() != 4 or assembled.shape[1] % 2:
        raise ValueError(f"expected assembled inside/outside scores (R, 2*(C+1), M, M), got {tuple(assembled.shape)}")
    R, two_c1, M, M2 = assembled.shape
    return assembled.view(R, 2, two_c1 // 2, M, M2)


def inside_outside_class_logits(inside_outside: Tensor) -> Tensor:
    """``(R, 2, C+1, M, M)`` inside/outside logits -> ``(R, C+1)`` class logits: the per-pixel
    ``max(inside, outside)`` (a pixel is evidence for class c whether it is inside or outside an
    instance of c) averaged over the RoI."""
    return inside_outside.amax(dim=1).mean(dim=(-2, -1))  # amax: no argmax indices to compute


def inside_outside_mask_probs(inside_outside: Tensor) -> Tensor:
    """``(R, 2, M, M)`` inside/outside logits of one class per RoI -> ``(R, M, M)`` foreground
    probability, the per-pixel softmax over (inside, outside) taken at "inside"."""
    return torch.softmax(inside_outside, dim=1)[:, 0]


def assemble_box_deltas(
    box_maps: Tensor,
    rois: Tensor,
    group_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """R-FCN's position-sensitive box regression: ``(N, k*k*4, H, W)`` maps and ``(R, 5)`` RoIs
    -> ``(R, 4)`` class-agnostic deltas, each the average of its ``k x k`` assembled cells
    (position-sensitive RoI pooling with ``m = k``, then global average pooling)."""
    cells = ps_roi_assemble(
        box_maps, rois.to(box_maps.dtype), group_size, group_size, spatial_scale, sampling_ratio, aligned
    )
    return cells.mean(dim=(2, 3))
