"""Pure-PyTorch reference implementations of the assembling ops (the oracles of the tests).

They are vectorised and differentiable through ordinary autograd, follow the same semantics as
the native kernels (see ``ps_roi_assemble.py`` and ``window_assemble.py``) and run on any device
and floating dtype, but are much slower and use much more memory: use them to check, not to train.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MAX_ADAPTIVE_SAMPLES",
    "ps_roi_assemble_reference",
    "ps_roi_class_logits_reference",
    "biseg_roi_class_logits_reference",
    "window_assemble_reference",
]

# Most samples per bin side that ps_roi_assemble's adaptive sampling (sampling_ratio <= 0) takes:
# ceil(roi_size / m), capped here so that a huge RoI costs bounded time and memory. The native
# kernels use the same constant (kMaxAdaptiveSamples in layers/csrc/common/sampling.h,
# where the choice of 64 is explained).
MAX_ADAPTIVE_SAMPLES = 64

# Elements of the largest intermediate gather per chunk of RoIs (bounds the memory use).
_CHUNK_ELEMENTS = 1 << 22


def _cells(k: int, m: int, device) -> Tensor:
    """``(m,)`` grid cell ``floor(p * k / m)`` of each output row / column ``p``."""
    return torch.div(torch.arange(m, device=device) * k, m, rounding_mode="floor")


def _axis_taps(
    start: Tensor, bin_size: Tensor, grid: Tensor, grid_max: int, m: int, size: int
) -> Tuple[Tensor, Tensor]:
    """Bilinear taps along one axis, as torchvision's ``bilinear_interpolate``.

    Args:
        start, bin_size: ``(R,)`` RoI start and bin size (feature-map coordinates).
        grid: ``(R,)`` integer samples per bin side (``<= 0``: no sample).
        grid_max: ``max(grid)``, the padded sample count.
    Returns:
        ``idx`` ``(R, m, 2 * grid_max)`` int64 rows/cols in ``[0, size)`` and ``w`` the same
        shape, the tap weights (0 for padded or out-of-map samples).
    """
    dtype, device = start.dtype, start.device
    p = torch.arange(m, device=device, dtype=dtype)
    i = torch.arange(grid_max, device=device)
    g = grid.clamp(min=1).to(dtype)
    # Same expression (and rounding) as torchvision's kernels: start + p*bin + (i+.5)*bin/grid.
    coord = (
        start[:, None, None]
        + p[None, :, None] * bin_size[:, None, None]
        + (i.to(dtype) + 0.5)[None, None, :] * bin_size[:, None, None] / g[:, None, None]
    )
    valid = (coord >= -1) & (coord <= size) & (i[None, None, :] < grid[:, None, None])
    c = coord.clamp(min=0)
    lo = c.floor().clamp(max=size - 1).long()
    at_end = lo >= size - 1
    hi = torch.where(at_end, lo, lo + 1)
    c = torch.where(at_end, lo.to(dtype), c)
    frac = c - lo.to(dtype)
    w = torch.stack([1 - frac, frac], dim=-1) * valid[..., None].to(dtype)
    idx = torch.stack([lo, hi], dim=-1).clamp(0, size - 1)
    R = start.shape[0]
    return idx.reshape(R, m, 2 * grid_max), w.reshape(R, m, 2 * grid_max)


def ps_roi_assemble_reference(
    input: Tensor,
    rois: Tensor,
    output_size: int,
    group_size: int,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Reference for :func:`instfcn_d2.layers.ps_roi_assemble`.

    Args:
        input: ``(N, k*k*C, H, W)``.
        rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates.
    Returns:
        ``(R, C, m, m)``: bin ``(ph, pw)`` of channel ``c`` is the RoIAlign average of input channel
        ``(c*k + floor(ph*k/m))*k + floor(pw*k/m)`` over the bin.
    """
    k, m = group_size, output_size
    N, Cin, H, W = input.shape
    C = Cin // (k * k)
    R = rois.shape[0]
    dtype, device = input.dtype, input.device
    out = input.new_zeros((R, C, m, m))
    if R == 0 or C == 0 or H == 0 or W == 0:
        return out + 0 * input.sum()  # keeps the autograd graph connected

    offset = 0.5 if aligned else 0.0
    boxes = rois[:, 1:].to(dtype) * spatial_scale - offset
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / m, roi_w / m
    if sampling_ratio > 0:
        grid_h = torch.full((R,), sampling_ratio, device=device, dtype=torch.long)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / m).clamp(max=MAX_ADAPTIVE_SAMPLES).long()
        grid_w = torch.ceil(roi_w / m).clamp(max=MAX_ADAPTIVE_SAMPLES).long()
    count = (grid_h * grid_w).clamp(min=1).to(dtype)
    gh_max = max(int(grid_h.max()), 1)
    gw_max = max(int(grid_w.max()), 1)
    ry, wy = _axis_taps(y1, bin_h, grid_h, gh_max, m, H)  # (R, m, TY)
    rx, wx = _axis_taps(x1, bin_w, grid_w, gw_max, m, W)  # (R, m, TX)

    cells = _cells(k, m, device)
    c = torch.arange(C, device=device)
    cin = (c[:, None, None] * k + cells[None, :, None]) * k + cells[None, None, :]  # (C, m, m)
    batch = rois[:, 0].long()
    flat = input.reshape(-1)

    per_roi = C * m * m * ry.shape[-1] * rx.shape[-1]
    chunk = max(1, _CHUNK_ELEMENTS // max(per_roi, 1))
    outs = []
    for s in range(0, R, chunk):
        e = min(R, s + chunk)
        plane = batch[s:e, None, None, None] * Cin + cin[None]  # (Rc, C, m, m)
        index = (
            (plane[..., None, None] * H + ry[s:e, None, :, None, :, None]) * W
            + rx[s:e, None, None, :, None, :]
        )  # (Rc, C, m, m, TY, TX)
        weight = wy[s:e, None, :, None, :, None] * wx[s:e, None, None, :, None, :]
        vals = flat[index] * weight
        outs.append(vals.sum(dim=(-1, -2)) / count[s:e, None, None, None])
    return torch.cat(outs, dim=0)


def ps_roi_class_logits_reference(
    input: Tensor,
    rois: Tensor,
    output_size: int,
    group_size: int,
    num_classes: int,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Reference for :func:`instfcn_d2.layers.ps_roi_class_logits`: the ``(R, 2*(C+1), m, m)``
    assembly viewed as ``(R, 2, C+1, m, m)`` (inside, outside), its max over inside / outside,
    averaged over the ``m x m`` cells -> ``(R, C+1)``."""
    assembled = ps_roi_assemble_reference(input, rois, output_size, group_size, spatial_scale, sampling_ratio, aligned)
    R, m = assembled.shape[0], output_size
    return assembled.view(R, 2, num_classes + 1, m, m).amax(dim=1).mean(dim=(-2, -1))


def biseg_roi_class_logits_reference(
    coarse: Tensor,
    fine: Optional[Tensor],
    prior: Optional[Tensor],
    rois: Tensor,
    mask_size: int,
    group_size: int,
    fine_group_size: int,
    num_classes: int,
    spatial_scale: float,
    fine_spatial_scale: float,
    sampling_ratio: int = -1,
    aligned: bool = True,
    prior_mode: str = "product",
    eps: float = 1e-6,
) -> Tensor:
    """Reference for :func:`instfcn_d2.layers.biseg_roi_class_logits`, written out from its
    definition: the coarse set assembled at ``M/2`` and upsampled x2 (bilinear,
    ``align_corners=False``) plus the fine set at ``M`` (or the coarse set at ``M``), the prior
    cropped at ``M`` with ``k = 1`` entering the inside maps, then FCIS's read-out -> ``(R, C+1)``."""
    M, K = mask_size, num_classes + 1
    if fine is None:
        likelihoods = ps_roi_assemble_reference(coarse, rois, M, group_size, spatial_scale, sampling_ratio, aligned)
    else:
        half = ps_roi_assemble_reference(coarse, rois, M // 2, group_size, spatial_scale, sampling_ratio, aligned)
        likelihoods = F.interpolate(half, size=(M, M), mode="bilinear", align_corners=False) + ps_roi_assemble_reference(
            fine, rois, M, fine_group_size, fine_spatial_scale, sampling_ratio, aligned
        )
    inside, outside = likelihoods[:, :K], likelihoods[:, K:]
    if prior_mode != "none":
        p = ps_roi_assemble_reference(prior, rois, M, 1, spatial_scale, sampling_ratio, True)
        inside = inside * p if prior_mode == "product" else inside + torch.log(p + eps)
    return torch.maximum(inside, outside).mean(dim=(-2, -1))


def window_assemble_reference(input: Tensor, positions: Tensor, window_size: int, group_size: int) -> Tensor:
    """Reference for :func:`instfcn_d2.layers.window_assemble`.

    Args:
        input: ``(N, k*k, H, W)``.
        positions: ``(P, 3)`` integer rows ``(batch_index, y, x)``: window top-left corners
            (they may lie partly or wholly outside the map; those pixels read 0).
    Returns:
        ``(P, m, m)``.
    """
    k, m = group_size, window_size
    N, KK, H, W = input.shape
    P = positions.shape[0]
    if P == 0:
        return input.new_zeros((0, m, m)) + 0 * input.sum()
    padded = torch.nn.functional.pad(input, (m, m, m, m))  # zeros around: outside pixels read 0
    Hp, Wp = H + 2 * m, W + 2 * m
    positions = positions.long()
    b = positions[:, 0]
    # Windows further out than m read only padding; clamping keeps their index inside it.
    y = positions[:, 1].clamp(-m, H) + m
    x = positions[:, 2].clamp(-m, W) + m
    cells = _cells(k, m, input.device)
    ar = torch.arange(m, device=input.device)
    group = cells[:, None] * k + cells[None, :]  # (m, m)
    index = (
        ((b[:, None, None] * KK + group[None]) * Hp + y[:, None, None] + ar[None, :, None]) * Wp
        + x[:, None, None]
        + ar[None, None, :]
    )
    return padded.reshape(-1)[index]
