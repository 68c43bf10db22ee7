"""FCIS's class logits of RoIs, read straight from the inside/outside score maps:
``ps_roi_class_logits`` (inference only).

For FCIS's inside/outside maps ``(N, k*k*2*(C+1), H, W)`` (layout: :mod:`instfcn_d2.core.fcis.layout`,
inside score of class ``c`` = assembled output channel ``c``, outside = ``(C+1) + c``), the class
logit of RoI ``r`` and class ``c`` is the mean over the ``m x m`` assembled cells of
``max(inside, outside)``::

    A = ps_roi_assemble(input, rois, m, k, spatial_scale, sampling_ratio, aligned)  # (R, 2*(C+1), m, m)
    logits = A.view(R, 2, C + 1, m, m).amax(dim=1).mean(dim=(-2, -1))              # (R, C+1)

The op computes this without materialising ``A`` (``(R, 2*(C+1), m, m)``: 86 MB at R = 300,
C = 80, m = 21 in float32): each (RoI, class) assembles its ``2*m*m`` bins with the code of
``ps_roi_assemble`` (the same bin values, bit for bit, on the same device) and adds up their maxima,
in another order than ``torch.mean`` (CPU: in float64). It agrees with the expression above to
float rounding: about 1e-15 relative in float64, 1e-7 in float32. It has no gradient (calling
``backward`` through it raises): train through :func:`~instfcn_d2.layers.ps_roi_assemble`.
The op is ``torch.ops.instfcn_d2.ps_roi_class_logits`` (CPU: float32/float64; CUDA: also
float16/bfloat16), with a fake kernel for ``torch.compile`` / ``torch.export``.
"""
import torch
from torch import Tensor

from ._ext import check_sizes  # (importing _ext loads instfcn_d2._C, which defines torch.ops.instfcn_d2)
from .ps_roi_assemble import _check_inputs

__all__ = ["ps_roi_class_logits"]

_OP = "ps_roi_class_logits"


# ---- fake (meta) kernel: the shape only, for torch.compile / torch.export -------------------------
@torch.library.register_fake("instfcn_d2::ps_roi_class_logits")
def _ps_roi_class_logits_fake(
    input, rois, spatial_scale, output_size, group_size, sampling_ratio, aligned, num_classes
):
    torch._check(input.dim() == 4, lambda: f"{_OP}: input must be 4-D, got {tuple(input.shape)}")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: f"{_OP}: rois must be (R, 5)")
    torch._check(input.dtype == rois.dtype, lambda: f"{_OP}: rois and input dtypes differ")
    expected = group_size * group_size * 2 * (num_classes + 1)
    torch._check(
        input.shape[1] == expected,
        lambda: f"{_OP}: input has {input.shape[1]} channels, expected k*k*2*(C+1) = {expected}",
    )
    return input.new_empty((rois.shape[0], num_classes + 1))


# ---- autograd: none; a clear error instead of a silent zero or a generic message --------------------
def _no_backward(ctx, grad):
    raise RuntimeError(
        f"{_OP} has no gradient (it is FCIS's inference-time class read-out); for gradients compute "
        "inside_outside_class_logits(split_inside_outside(ps_roi_assemble(...))) instead"
    )


torch.library.register_autograd("instfcn_d2::ps_roi_class_logits", _no_backward)


# ---- Python face ---------------------------------------------------------------------------------
def _check_class_maps(input: Tensor, rois: Tensor, group_size: int, num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"{_OP}: num_classes must be an int, got {num_classes!r}")
    if num_classes < 0:
        raise ValueError(f"{_OP}: num_classes (C) must be >= 0, got {num_classes}")
    if input.dim() == 4:
        expected = group_size * group_size * 2 * (num_classes + 1)
        if input.shape[1] != expected:
            raise ValueError(
                f"{_OP}: input has {input.shape[1]} channels, expected k*k*2*(C+1) = {expected} for "
                f"k = {group_size}, C = {num_classes} (FCIS's inside/outside maps)"
            )
    _check_inputs(input, rois, group_size, _OP)


def ps_roi_class_logits(
    input: Tensor,
    rois: Tensor,
    output_size: int,
    group_size: int,
    num_classes: int,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """FCIS's ``(R, C+1)`` class logits of RoIs: per RoI and class, the mean over the ``m x m``
    cells that :func:`~instfcn_d2.layers.ps_roi_assemble` would assemble of ``max(inside, outside)``.

    Args:
        input: ``(N, k*k*2*(C+1), H, W)`` FCIS inside/outside maps.
        rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates; same device and
            dtype as ``input``.
        output_size: ``m``, assembled cells per side (FCIS: ``M = 21``).
        group_size: ``k``, position-sensitive cells per side (``1 <= k <= m``).
        num_classes: ``C``, the foreground classes (``C+1`` with the background, last).
        spatial_scale, sampling_ratio, aligned: as :func:`~instfcn_d2.layers.ps_roi_assemble`.

    Returns:
        ``(R, C+1)``; not differentiable.
    """
    why = "every position-sensitive cell needs at least one output bin"
    check_sizes(_OP, "output_size", output_size, group_size, why)
    _check_class_maps(input, rois, group_size, num_classes)
    return torch.ops.instfcn_d2.ps_roi_class_logits(
        input, rois, float(spatial_scale), output_size, group_size, int(sampling_ratio), bool(aligned), num_classes
    )
