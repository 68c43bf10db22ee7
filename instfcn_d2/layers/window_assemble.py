"""Instance-sensitive window assembling (InstanceFCN): ``window_assemble`` and ``WindowAssemble``.

The ``k*k`` instance-sensitive score maps score "this pixel is at relative position (gi, gj) of
an instance". A sliding ``m x m`` window (``m = 21`` feature pixels, ``k = 5`` in the paper) is
assembled by pure copying: pixel ``(u, v)`` of the window whose top-left corner is ``(y, x)`` is
``input[n, gi*k + gj, y+u, x+v]`` with ``gi = floor(u*k/m)``, ``gj = floor(v*k/m)``.

Windows are assembled at listed ``positions``, ``(P, 3)`` integer rows ``(batch_index, y, x)`` of
their top-left corners: ``(N, k*k, H, W) -> (P, m, m)``; pixels outside the map read 0 and get no
gradient. InstanceFCN assembles only the windows it needs (the top-scoring ones at inference, the
sampled ones in training), never every window of the map: that would be an ``m*m``-fold copy of
the maps.

The op is ``torch.ops.instfcn_d2.window_assemble`` (CPU: float32/float64; CUDA: also
float16/bfloat16), differentiable w.r.t. ``input`` and usable under ``torch.jit.trace``,
``torch.compile`` and ``torch.export``.
"""
import torch
from torch import Tensor, nn

from ._ext import check_sizes  # (importing _ext loads instfcn_d2._C, which defines torch.ops.instfcn_d2)

__all__ = ["window_assemble", "WindowAssemble"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---- fake (meta) kernels -------------------------------------------------------------------------
@torch.library.register_fake("instfcn_d2::window_assemble")
def _listed_fake(input, positions, window_size, group_size):
    return input.new_empty((positions.shape[0], window_size, window_size))


@torch.library.register_fake("instfcn_d2::window_assemble_backward")
def _listed_backward_fake(grad, positions, window_size, group_size, batch_size, height, width):
    return grad.new_empty((batch_size, group_size * group_size, height, width))


# ---- autograd: copying is linear, so each backward's own gradient is its forward ----------------
def _listed_setup(ctx, inputs, output):
    input, positions, window_size, group_size = inputs
    ctx.save_for_backward(positions)
    ctx.params = (window_size, group_size)
    ctx.shape = (input.shape[0], input.shape[2], input.shape[3])


def _listed_backward(ctx, grad):
    (positions,) = ctx.saved_tensors
    grad_input = torch.ops.instfcn_d2.window_assemble_backward(grad, positions, *ctx.params, *ctx.shape)
    return grad_input, None, None, None


def _listed_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.params = inputs[2:4]


def _listed_backward_backward(ctx, grad_grad_input):
    (positions,) = ctx.saved_tensors
    return (torch.ops.instfcn_d2.window_assemble(grad_grad_input, positions, *ctx.params),) + (None,) * 6


torch.library.register_autograd("instfcn_d2::window_assemble", _listed_backward, setup_context=_listed_setup)
torch.library.register_autograd(
    "instfcn_d2::window_assemble_backward", _listed_backward_backward, setup_context=_listed_backward_setup
)


# ---- Python face ---------------------------------------------------------------------------------
def _check_sizes(window_size: int, group_size: int) -> None:
    check_sizes("window_assemble", "window_size", window_size, group_size, "every grid cell needs at least one window pixel")


def _check_input(input: Tensor, group_size: int) -> None:
    kk = group_size * group_size
    if input.dim() != 4 or input.shape[1] != kk:
        raise ValueError(
            f"window_assemble: input must have shape (N, k*k, H, W) with k*k = {kk} channels "
            f"(group_size k = {group_size}), got {tuple(input.shape)}"
        )
    allowed = _CPU_DTYPES if input.device.type == "cpu" else _CUDA_DTYPES
    if input.dtype not in allowed:
        raise TypeError(
            f"window_assemble: {input.device.type} kernel supports {[str(d) for d in allowed]}, got {input.dtype}"
        )


def _check_positions(positions: Tensor, input: Tensor) -> Tensor:
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(
            f"window_assemble: positions must have shape (P, 3) = (batch_index, y, x), got {tuple(positions.shape)}"
        )
    if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.dtype == torch.bool:
        raise TypeError(f"window_assemble: positions must be an integer tensor, got {positions.dtype}")
    if positions.device != input.device:
        raise ValueError(f"window_assemble: positions is on {positions.device} but input is on {input.device}")
    return positions.to(torch.int64)


def window_assemble(input: Tensor, window_size: int, group_size: int, positions: Tensor) -> Tensor:
    """Assemble ``m x m`` windows from ``k*k`` instance-sensitive score maps by copying.

    Args:
        input: ``(N, k*k, H, W)``; channel ``gi*k + gj`` scores relative position ``(gi, gj)``.
        window_size: ``m``, window side in feature pixels.
        group_size: ``k``, cells per window side (``1 <= k <= m``).
        positions: ``(P, 3)`` integer rows ``(batch_index, y, x)`` of window top-left corners
            (they may lie partly or wholly outside the map).

    Returns:
        ``(P, m, m)``.
    """
    _check_sizes(window_size, group_size)
    _check_input(input, group_size)
    if not isinstance(positions, Tensor):
        raise TypeError(f"window_assemble: positions must be a (P, 3) integer tensor, got {type(positions).__name__}")
    positions = _check_positions(positions, input)
    return torch.ops.instfcn_d2.window_assemble(input, positions, window_size, group_size)


class WindowAssemble(nn.Module):
    """Module form of :func:`window_assemble`.

    ``forward(input (N, k*k, H, W), positions (P, 3)) -> (P, m, m)``.
    """

    def __init__(self, window_size: int = 21, group_size: int = 5):
        super().__init__()
        _check_sizes(window_size, group_size)
        self.window_size = window_size
        self.group_size = group_size

    def forward(self, input: Tensor, positions: Tensor) -> Tensor:
        return window_assemble(input, self.window_size, self.group_size, positions)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, group_size={self.group_size}"
