"""Position-sensitive RoI assembling (FCIS, BiSeg): ``ps_roi_assemble`` and ``PSRoIAssemble``.

Each RoI is split into an ``m x m`` grid of output bins and a coarser ``k x k`` grid of
position-sensitive cells (``k <= m``; FCIS uses ``m = 21, k = 7``). Output bin ``(ph, pw)`` of
output channel ``c`` reads input channel ``(c*k + gi)*k + gj`` with ``gi = floor(ph*k/m)``,
``gj = floor(pw*k/m)`` (the R-FCN / FCIS / torchvision ``ps_roi_align`` layout) and is the
bilinear RoIAlign average over the bin, exactly as detectron2's ``ROIAlign``:

- ``aligned=True``: pixel-centre (-0.5) shift of the RoI, no size clamp (detectron2's default for
  new models); ``aligned=False``: no shift, RoI width/height clamped to at least 1.
- ``sampling_ratio > 0``: that many samples per bin side; ``<= 0`` (adaptive): ``ceil(roi_size / m)``,
  at most ``MAX_ADAPTIVE_SAMPLES`` (64), so a huge RoI costs bounded time and memory (the cap only
  changes bins wider than 64 pixels of the map read, far beyond the models' RoIs).
- samples outside ``[-1, H] x [-1, W]`` contribute 0.

With ``m == k`` (and ``aligned=True``) this is ``torchvision.ops.ps_roi_align``; with ``k == 1``
it is ``torchvision.ops.roi_align`` / detectron2's ``ROIAlign``. Gradients flow to ``input`` (not to
``rois``). The op is ``torch.ops.instfcn_d2.ps_roi_assemble`` (CPU: float32/float64; CUDA: also
float16/bfloat16), usable under ``torch.jit.trace``, ``torch.compile`` and ``torch.export``.
"""
import torch
from torch import Tensor, nn

from ._ext import check_sizes  # (importing _ext loads instfcn_d2._C, which defines torch.ops.instfcn_d2)

from .reference import MAX_ADAPTIVE_SAMPLES  # noqa: F401  (the cap of adaptive sampling, shared with the kernels)

__all__ = ["ps_roi_assemble", "PSRoIAssemble", "MAX_ADAPTIVE_SAMPLES"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---- fake (meta) kernels: shapes only, for torch.compile / torch.export -------------------------
@torch.library.register_fake("instfcn_d2::ps_roi_assemble")
def _ps_roi_assemble_fake(input, rois, spatial_scale, output_size, group_size, sampling_ratio, aligned):
    torch._check(input.dim() == 4, lambda: f"ps_roi_assemble: input must be 4-D, got {tuple(input.shape)}")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "ps_roi_assemble: rois must be (R, 5)")
    torch._check(input.dtype == rois.dtype, lambda: "ps_roi_assemble: rois and input dtypes differ")
    channels = input.shape[1] // (group_size * group_size)
    return input.new_empty((rois.shape[0], channels, output_size, output_size))


@torch.library.register_fake("instfcn_d2::ps_roi_assemble_backward")
def _ps_roi_assemble_backward_fake(
    grad, rois, spatial_scale, output_size, group_size, sampling_ratio, aligned, batch_size, channels, height, width
):
    return grad.new_empty((batch_size, channels, height, width))


# ---- autograd: the backward op scatters; its own gradient is the forward op (it is linear) -----
def _setup_forward(ctx, inputs, output):
    input, rois, spatial_scale, output_size, group_size, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, output_size, group_size, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)


def _backward_forward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.instfcn_d2.ps_roi_assemble_backward(grad, rois, *ctx.params, *ctx.input_shape)
    return grad_input, None, None, None, None, None, None


def _setup_backward(ctx, inputs, output):
    grad, rois, spatial_scale, output_size, group_size, sampling_ratio, aligned = inputs[:7]
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, output_size, group_size, sampling_ratio, aligned)


def _backward_backward(ctx, grad_grad_input):
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.instfcn_d2.ps_roi_assemble(grad_grad_input, rois, *ctx.params)
    return (grad_grad,) + (None,) * 10


torch.library.register_autograd("instfcn_d2::ps_roi_assemble", _backward_forward, setup_context=_setup_forward)
torch.library.register_autograd(
    "instfcn_d2::ps_roi_assemble_backward", _backward_backward, setup_context=_setup_backward
)


# ---- Python face ---------------------------------------------------------------------------------
def _check_sizes(output_size: int, group_size: int) -> None:
    why = "every position-sensitive cell needs at least one output bin"
    check_sizes("ps_roi_assemble", "output_size", output_size, group_size, why)


def _check_inputs(input: Tensor, rois: Tensor, group_size: int, op: str = "ps_roi_assemble") -> None:
    """The checks of ``input`` (channels divisible by ``k*k``) and ``rois`` that ``op`` makes."""
    if input.dim() != 4:
        raise ValueError(f"{op}: input must have shape (N, k*k*C, H, W), got {tuple(input.shape)}")
    kk = group_size * group_size
    if input.shape[1] % kk != 0:
        raise ValueError(
            f"{op}: input has {input.shape[1]} channels, not divisible by k*k = {kk} "
            f"(group_size k = {group_size})"
        )
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"{op}: rois must have shape (R, 5) = (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}"
        )
    if rois.device != input.device:
        raise ValueError(f"{op}: rois is on {rois.device} but input is on {input.device}")
    if rois.dtype != input.dtype:
        raise TypeError(
            f"{op}: rois has dtype {rois.dtype} but input has {input.dtype}; "
            "convert with rois.to(input.dtype)"
        )
    allowed = _CPU_DTYPES if input.device.type == "cpu" else _CUDA_DTYPES
    if input.dtype not in allowed:
        raise TypeError(
            f"{op}: {input.device.type} kernel supports {[str(d) for d in allowed]}, got {input.dtype}"
        )


def ps_roi_assemble(
    input: Tensor,
    rois: Tensor,
    output_size: int,
    group_size: int,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Assemble ``m x m`` outputs per RoI from ``k x k`` groups of position-sensitive score maps.

    Args:
        input: ``(N, k*k*C, H, W)`` score maps; channel ``(c*k + gi)*k + gj`` scores output channel
            ``c`` at cell ``(gi, gj)``.
        rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates; same device and
            dtype as ``input``.
        output_size: ``m``, output bins per side.
        group_size: ``k``, position-sensitive cells per side (``1 <= k <= m``).
        spatial_scale: image-to-feature scale (``1 / stride``).
        sampling_ratio: samples per bin side; ``<= 0`` for ``min(ceil(roi_size / m), 64)``
            (``MAX_ADAPTIVE_SAMPLES``; ``roi_size`` in pixels of ``input``).
        aligned: detectron2's ``ROIAlign(aligned=True)`` half-pixel convention.

    Returns:
        ``(R, C, m, m)``.
    """
    _check_sizes(output_size, group_size)
    _check_inputs(input, rois, group_size)
    return torch.ops.instfcn_d2.ps_roi_assemble(
        input, rois, float(spatial_scale), output_size, group_size, int(sampling_ratio), bool(aligned)
    )


class PSRoIAssemble(nn.Module):
    """Module form of :func:`ps_roi_assemble`, in the style of detectron2's ``ROIAlign``.

    ``forward(input (N, k*k*C, H, W), rois (R, 5)) -> (R, C, m, m)``. Like ``ROIAlign`` it casts
    ``rois`` to ``input``'s dtype (so float32 boxes work with a float16 input under autocast).
    """

    def __init__(
        self, output_size: int, group_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool = True
    ):
        super().__init__()
        _check_sizes(output_size, group_size)
        self.output_size = output_size
        self.group_size = group_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return ps_roi_assemble(
            input,
            rois.to(dtype=input.dtype),
            self.output_size,
            self.group_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, group_size={self.group_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
