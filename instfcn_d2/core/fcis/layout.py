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

The maps are a 1x1 conv of the ``conv_new`` features, and assembling is linear (bilinear samples
averaged per bin), so a RoI's assembled maps can also be computed from its assembled *features*
(:func:`assemble_conv1x1`): ``D`` channels sampled once per bin, then each bin's ``D -> K`` weights
of its grid cell. In training only the sampled RoIs are read, and this costs
``R * M*M * D * K`` multiply-adds instead of the maps' ``H * W * D * k*k*K`` (at stride 4, C = 10,
D = 64, k = 7: 0.16 G for 256 RoIs vs 5.3 G for a batch of four 512-px images).
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
    "assemble_conv1x1",
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


def assemble_conv1x1(
    features: Tensor,
    weight: Tensor,
    bias: Tensor,
    rois: Tensor,
    output_size: int,
    group_size: int,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """``ps_roi_assemble(conv1x1(features, weight, bias), rois, output_size, group_size, ...)``
    without the maps: ``(N, D, H, W)`` features, ``(k*k*K, D)`` weight and ``(k*k*K,)`` bias of a
    position-sensitive map set, ``(R, 5)`` RoIs -> ``(R, K, m, m)`` (the same values to float
    rounding, differentiable in all three).

    The features are assembled at ``m x m`` bins with one cell (``group_size = 1``: the same samples
    for every channel, as every cell's channels are sampled at their bin), together with a channel
    of ones whose assembled value is the share of a bin's samples that fall on the map (a sample off
    the map reads 0 from the maps, not their bias); then bin ``(y, x)`` applies the weights of its
    cell ``(floor(y*k/m), floor(x*k/m))`` (:func:`instfcn_d2.layers.ps_roi_assemble`'s layout)."""
    k, m = group_size, output_size
    N, D, H, W = features.shape
    if weight.dim() != 2 or weight.shape[1] != D or weight.shape[0] % (k * k) or bias.shape != weight.shape[:1]:
        raise ValueError(
            f"assemble_conv1x1: weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not make k*k*K = "
            f"multiple of {k * k} maps from {D} feature channels"
        )
    K = weight.shape[0] // (k * k)
    ones = features.new_ones((N, 1, H, W))
    pooled = ps_roi_assemble(
        torch.cat([features, ones], dim=1), rois.to(features.dtype), m, 1, spatial_scale, sampling_ratio, aligned
    )  # (R, D+1, m, m)
    cells = torch.div(torch.arange(m, device=features.device) * k, m, rounding_mode="floor")
    per_cell = torch.cat([weight, bias[:, None]], dim=1).view(K, k, k, D + 1)
    per_bin = per_cell[:, cells][:, :, cells]  # (K, m, m, D+1): the weights each bin applies
    return torch.einsum("rdyx,kyxd->rkyx", pooled, per_bin)
