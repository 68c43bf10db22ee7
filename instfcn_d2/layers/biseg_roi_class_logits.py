"""BiSeg's class logits of RoIs, read straight from its map sets and semantic prior:
``biseg_roi_class_logits`` (inference only).

BiSeg's likelihood of RoI ``r``, class ``c`` and cell ``(i, j)`` fuses FCIS's inside/outside maps
(``k1``, assembled at ``M/2`` and upsampled x2) with a second set (``k2``, assembled at ``M``) and
weights the inside one by the semantic prior cropped to the RoI; its class logit is, as FCIS's,
the mean over the ``M x M`` cells of ``max(inside, outside)``::

    L = interpolate(A(coarse, M/2, k1), (M, M), bilinear) + A(fine, M, k2)      # (R, 2*(C+1), M, M)
    inside = L[:, :C+1] * A(prior, M, 1)        (prior_mode "product"; "log": + log(prior + eps))
    logits = max(inside, L[:, C+1:]).mean(cells)                               # (R, C+1)

with ``A`` = :func:`~instfcn_d2.layers.ps_roi_assemble` (the prior cropped with ``aligned=True``).
Without ``fine``, ``L = A(coarse, M, k1)``; with ``prior_mode "none"``, no prior. The op computes this
without materialising ``L`` or the prior's crop (each ``(R, C+1, M, M)``: 340 MB at R = 600, C = 80,
M = 42 in float32): each (RoI, class) assembles its own planes into buffers of one RoI (the bins of
``ps_roi_assemble``, computed by the same code) and reduces them. It agrees with the tensor path to
float rounding (about 1e-15 relative in float64, 1e-6 in float32). No gradient. The op is
``torch.ops.instfcn_d2.biseg_roi_class_logits`` (CPU: float32/float64; CUDA: also
float16/bfloat16), with a fake kernel for ``torch.compile`` / ``torch.export``.
"""
from typing import Optional

import torch
from torch import Tensor

from ._ext import check_sizes  # (importing _ext loads instfcn_d2._C, which defines torch.ops.instfcn_d2)
from .ps_roi_assemble import _check_inputs

__all__ = ["biseg_roi_class_logits", "PRIOR_MODE_CODES"]

_OP = "biseg_roi_class_logits"
#: ``prior_mode`` names and the codes the kernels take.
PRIOR_MODE_CODES = {"none": 0, "product": 1, "log": 2}


@torch.library.register_fake("instfcn_d2::biseg_roi_class_logits")
def _biseg_roi_class_logits_fake(
    coarse, fine, prior, rois, spatial_scale, group_size, fine_spatial_scale, fine_group_size, mask_size,
    sampling_ratio, aligned, num_classes, prior_mode, eps,
):
    torch._check(coarse.dim() == 4, lambda: f"{_OP}: coarse must be 4-D, got {tuple(coarse.shape)}")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: f"{_OP}: rois must be (R, 5)")
    torch._check(coarse.dtype == rois.dtype, lambda: f"{_OP}: rois and coarse dtypes differ")
    expected = group_size * group_size * 2 * (num_classes + 1)
    torch._check(coarse.shape[1] == expected, lambda: f"{_OP}: coarse has {coarse.shape[1]} channels, expected {expected}")
    return coarse.new_empty((rois.shape[0], num_classes + 1))


def _no_backward(ctx, grad):
    raise RuntimeError(
        f"{_OP} has no gradient (it is BiSeg's inference-time class read-out); for gradients read the "
        "class logits from BiSegReader.roi_inside_outside (BiSegReader.roi_class_logits_chunked)"
    )


torch.library.register_autograd("instfcn_d2::biseg_roi_class_logits", _no_backward)


def _check_set(name: str, maps: Tensor, rois: Tensor, group_size: int, num_classes: int, per_class: int) -> None:
    expected = group_size * group_size * per_class * (num_classes + 1)
    if maps.dim() != 4 or maps.shape[1] != expected:
        raise ValueError(
            f"{_OP}: {name} has shape {tuple(maps.shape)}, expected (N, {expected}, H, W) channels for "
            f"k = {group_size}, C = {num_classes}"
        )
    _check_inputs(maps, rois, group_size, _OP)


def biseg_roi_class_logits(
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
    """BiSeg's ``(R, C+1)`` class logits of RoIs (see the module's docstring for the formula).

    Args:
        coarse: ``(N, k1*k1*2*(C+1), H, W)`` FCIS's inside/outside maps, at ``spatial_scale``.
        fine: ``(N, k2*k2*2*(C+1), H2, W2)`` the second set at ``fine_spatial_scale``, or None
            (no fusion: the coarse set assembled at ``M``).
        prior: ``(N, C+1, Hp, Wp)`` semantic probabilities in FCIS's class order (background last)
            at ``spatial_scale``; None exactly when ``prior_mode`` is ``"none"``.
        rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates; the maps' dtype
            and device.
        mask_size: ``M`` (even when fused).
        group_size, fine_group_size: ``k1``, ``k2``.
        num_classes: ``C``.
        sampling_ratio, aligned: as :func:`~instfcn_d2.layers.ps_roi_assemble` (the prior is always
            cropped with ``aligned=True``).
        prior_mode: ``"product"``, ``"log"`` or ``"none"``; ``eps`` is added to the prior before the log.

    Returns:
        ``(R, C+1)``; not differentiable.
    """
    if prior_mode not in PRIOR_MODE_CODES:
        raise ValueError(f"{_OP}: prior_mode must be one of {tuple(PRIOR_MODE_CODES)}, got {prior_mode!r}")
    if (prior is None) != (prior_mode == "none"):
        raise ValueError(f"{_OP}: a prior is needed exactly when prior_mode is not 'none' (prior_mode {prior_mode!r})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"{_OP}: num_classes (C) must be an int >= 0, got {num_classes!r}")
    if isinstance(mask_size, bool) or not isinstance(mask_size, int):
        raise TypeError(f"{_OP}: mask_size must be an int, got {mask_size!r}")
    if fine is not None and mask_size % 2:
        raise ValueError(f"{_OP}: mask_size must be even with a fine set (the coarse one is assembled at M/2), got {mask_size}")
    why = "every position-sensitive cell needs at least one output bin"
    check_sizes(_OP, "mask_size / 2" if fine is not None else "mask_size",
                mask_size // 2 if fine is not None else mask_size, group_size, why)
    _check_set("coarse", coarse, rois, group_size, num_classes, 2)
    if fine is not None:
        check_sizes(_OP, "mask_size", mask_size, fine_group_size, why)
        _check_set("fine", fine, rois, fine_group_size, num_classes, 2)
    if prior is not None:
        _check_set("prior", prior, rois, 1, num_classes, 1)
    for name, maps in (("fine", fine), ("prior", prior)):
        if maps is not None and maps.shape[0] != coarse.shape[0]:
            raise ValueError(f"{_OP}: {name} has {maps.shape[0]} images, coarse {coarse.shape[0]}")
    return torch.ops.instfcn_d2.biseg_roi_class_logits(
        coarse, fine, prior, rois, float(spatial_scale), group_size, float(fine_spatial_scale), int(fine_group_size),
        mask_size, int(sampling_ratio), bool(aligned), num_classes, PRIOR_MODE_CODES[prior_mode], float(eps),
    )
