"""InstanceFCN's sliding-window geometry (pure functions, detectron2 free).

The objectness score at feature position ``(y, x)`` of a stride-``s`` map scores the ``m x m``
window *centred* on that position: its top-left feature pixel is ``(y - m//2, x - m//2)`` (the
row given to :func:`instfcn_d2.layers.window_assemble`) and in image pixels it covers
``[(x - m//2) * s, (x - m//2 + m) * s) x [(y - m//2) * s, (y - m//2 + m) * s)``, a square of side
``L = m * s``. Windows may hang off the map / image: outside pixels are empty. See
``instfcn_d2.modeling.instance_fcn.window_labels`` for how training labels them and
:mod:`.inference` for how test time picks them.
"""
import torch
from torch import Tensor

__all__ = ["window_grid", "window_top_left", "window_boxes"]


def window_grid(height: int, width: int, device=None) -> Tensor:
    """All feature positions of a ``height x width`` grid, row-major: ``(height*width, 2)`` int64 ``(y, x)``."""
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)


def window_top_left(centers_yx: Tensor, window_size: int) -> Tensor:
    """``(P, 2)`` centre positions ``(y, x)`` -> ``(P, 2)`` top-left feature pixels ``(y - m//2, x - m//2)``."""
    return centers_yx - window_size // 2


def window_boxes(centers_yx: Tensor, window_size: int, stride: float) -> Tensor:
    """Image-pixel XYXY boxes ``(P, 4)`` (float) of the windows centred on feature positions ``(P, 2)``."""
    tl = window_top_left(centers_yx, window_size).to(torch.float32) * stride
    side = float(window_size * stride)
    y0, x0 = tl[:, 0], tl[:, 1]
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)
