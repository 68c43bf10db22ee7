"""DeepMask-style labelling and sampling of InstanceFCN's sliding windows (pure functions).

Window geometry (the convention of the whole InstanceFCN implementation)
-------------------------------------------------------------------------
The objectness score at feature position ``(y, x)`` of a stride-``s`` map scores the ``m x m``
window *centred* on that position: its top-left feature pixel is ``(y - m//2, x - m//2)`` (the
row given to :func:`instfcn_d2.layers.window_assemble`) and in image pixels it covers
``[(x - m//2) * s, (x - m//2 + m) * s) x [(y - m//2) * s, (y - m//2 + m) * s)``, a square of side
``L = m * s`` (168 px for the paper's ``m = 21``, ``s = 8``) centred on ``((x + .5) s, (y + .5) s)``
(the centre of feature pixel ``(y, x)``) for odd ``m``, on ``(x s, y s)`` for even ``m``.
Windows may hang off the map / image: outside pixels are empty. :func:`window_grid`,
:func:`window_top_left` and :func:`window_boxes` are defined in
:mod:`instfcn_d2.core.instance_fcn.windows`.

Positive / negative windows (DeepMask, Pinheiro et al. NeurIPS 2015, Sec. 3.1)
-----------------------------------------------------------------------------
DeepMask calls a 224 x 224 patch positive when an object is centred in it within +-16 px and fully
contained in it with its larger side at 128 px, up to a scale factor 2^(+-1/4); negative when
every object is at least +-32 px off-centre or a factor 2^(+-1) off that scale; patches in between
are not used. Expressed relative to the window side ``L`` (the defaults of
:class:`WindowLabelParams`):

- ``offset(g, w) = max(|cx_g - cx_w|, |cy_g - cy_w|) / L`` (centre of the object's tight box),
- ``scale(g, w) = max(w_g, h_g) / (object_size_fraction * L)`` (``object_size_fraction`` = 128/224),
- positive for ``g``: ``offset <= positive_center_tol`` (16/224) and
  ``1/positive_scale_tol <= scale <= positive_scale_tol`` (2^(1/4)) and the tight box lies inside
  the window;
- negative for ``g``: ``offset >= negative_center_tol`` (32/224) or ``scale <= 1/negative_scale_tol``
  or ``scale >= negative_scale_tol`` (2);
- a window is positive if it is positive for some object (matched to the one nearest the
  canonical position), negative if it is negative for every object, ignored (-1) otherwise.
  An image without objects has only negative windows.
"""
import math
from dataclasses import dataclass
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import BitMasks, PolygonMasks
from torch import Tensor

# the window geometry lives in the detectron2-free .windows (test time needs it); re-exported here
from ...core.instance_fcn.windows import window_boxes, window_grid, window_top_left

__all__ = [
    "WindowLabelParams",
    "window_grid",
    "window_boxes",
    "window_top_left",
    "label_windows",
    "sample_windows",
    "window_mask_targets",
]


@dataclass(frozen=True)
class WindowLabelParams:
    """Tolerances of the DeepMask positive / negative definition, relative to the window side."""

    object_size_fraction: float = 128.0 / 224.0
    positive_center_tol: float = 16.0 / 224.0
    negative_center_tol: float = 32.0 / 224.0
    positive_scale_tol: float = 2.0 ** 0.25
    negative_scale_tol: float = 2.0

    def __post_init__(self):
        if not 0.0 < self.object_size_fraction <= 1.0:
            raise ValueError(f"object_size_fraction must be in (0, 1], got {self.object_size_fraction}")
        if not 0.0 <= self.positive_center_tol <= self.negative_center_tol:
            raise ValueError(
                "need 0 <= positive_center_tol <= negative_center_tol, got "
                f"{self.positive_center_tol} and {self.negative_center_tol}"
            )
        if not 1.0 <= self.positive_scale_tol <= self.negative_scale_tol:
            raise ValueError(
                "need 1 <= positive_scale_tol <= negative_scale_tol, got "
                f"{self.positive_scale_tol} and {self.negative_scale_tol}"
            )


def label_windows(gt_boxes: Tensor, win_boxes: Tensor, params: WindowLabelParams = WindowLabelParams()):
    """Label windows positive (1) / negative (0) / ignored (-1) following DeepMask (module docstring).

    Args:
        gt_boxes: ``(G, 4)`` XYXY tight boxes of the objects' masks (image pixels); ``G`` may be 0.
        win_boxes: ``(P, 4)`` XYXY square window boxes (image pixels), e.g. from :func:`window_boxes`.
        params: the tolerances.

    Returns:
        labels: ``(P,)`` int64 in {-1, 0, 1};
        matched: ``(P,)`` int64 index into ``gt_boxes`` of the object a positive window is matched
        to (the one with the smallest normalised distance to the canonical position), -1 elsewhere.
    """
    P = win_boxes.shape[0]
    device = win_boxes.device
    if gt_boxes.numel() == 0:
        return torch.zeros(P, dtype=torch.int64, device=device), torch.full((P,), -1, dtype=torch.int64, device=device)
    gt = gt_boxes.to(torch.float32)[:, None, :]  # (G, 1, 4)
    win = win_boxes.to(torch.float32)[None, :, :]  # (1, P, 4)
    side = win[..., 2] - win[..., 0]  # (1, P)

    g_cx, g_cy = (gt[..., 0] + gt[..., 2]) / 2, (gt[..., 1] + gt[..., 3]) / 2
    w_cx, w_cy = (win[..., 0] + win[..., 2]) / 2, (win[..., 1] + win[..., 3]) / 2
    offset = torch.maximum((g_cx - w_cx).abs(), (g_cy - w_cy).abs()) / side  # (G, P)

    g_size = torch.maximum(gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1])
    # |log scale|; a degenerate (empty) object gets +inf: never positive, negative everywhere
    log_scale = torch.log(g_size / (params.object_size_fraction * side)).abs()
    log_scale = torch.nan_to_num(log_scale, nan=math.inf, posinf=math.inf)

    eps = 1e-4 * side  # containment up to float rounding of pixel coordinates
    contained = (
        (gt[..., 0] >= win[..., 0] - eps)
        & (gt[..., 1] >= win[..., 1] - eps)
        & (gt[..., 2] <= win[..., 2] + eps)
        & (gt[..., 3] <= win[..., 3] + eps)
    )
    tol = 1e-6  # keeps decisions at exactly the tolerance stable under float rounding
    positive = (
        (offset <= params.positive_center_tol + tol)
        & (log_scale <= math.log(params.positive_scale_tol) + tol)
        & contained
    )
    negative = (offset >= params.negative_center_tol - tol) | (log_scale >= math.log(params.negative_scale_tol) - tol)

    labels = torch.full((P,), -1, dtype=torch.int64, device=device)
    labels[negative.all(dim=0)] = 0
    is_pos = positive.any(dim=0)
    labels[is_pos] = 1

    # normalised distance to the canonical position (centre offset 0, scale 1) picks the match
    cost = offset / max(params.positive_center_tol, 1e-12) + log_scale / max(math.log(params.positive_scale_tol), 1e-12)
    cost = torch.where(positive, cost, torch.full_like(cost, math.inf))
    matched = torch.where(is_pos, cost.argmin(dim=0), torch.full_like(labels, -1))
    return labels, matched


def sample_windows(labels: Tensor, num_samples: int = 256, positive_fraction: float = 0.5) -> Tuple[Tensor, Tensor]:
    """Sample window indices for the loss (detectron2's ``subsample_labels``).

    At most ``int(num_samples * positive_fraction)`` positives (128 of 256: the paper's 1:1); when
    there are fewer positives the remaining slots are filled with negatives, so an image still
    contributes ``num_samples`` windows when it has enough negatives.

    Returns ``(pos_idx, neg_idx)``, 1-D int64 indices into ``labels``.
    """
    return subsample_labels(labels, num_samples, positive_fraction, bg_label=0)


def window_mask_targets(
    gt_masks: Union[BitMasks, PolygonMasks, Tensor], matched: Tensor, win_boxes: Tensor, mask_size: int
) -> Tensor:
    """Ground-truth masks of the matched instances cropped to their windows, ``(P, M, M)`` float 0/1.

    Args:
        gt_masks: the image's instance masks at image resolution: ``BitMasks`` / ``(G, H, W)``
            tensor, or ``PolygonMasks`` (rasterised inside each window).
        matched: ``(P,)`` index of each window's instance.
        win_boxes: ``(P, 4)`` XYXY window boxes in image pixels (integer-valued, as from
            :func:`window_boxes`); parts outside the image are background.
        mask_size: ``M``, side of the target (``m`` for InstanceFCN, 56 for ~DeepMask).

    Bit masks are cropped at image resolution with zero padding, reduced to ``M x M`` by area
    averaging (exact ``s x s`` block means when the window side is ``M * s``) and binarised at 0.5.
    """
    P = matched.shape[0]
    if isinstance(gt_masks, PolygonMasks):
        if P == 0:
            return torch.zeros((0, mask_size, mask_size), device=win_boxes.device)
        return gt_masks[matched].crop_and_resize(win_boxes, mask_size).to(torch.float32)
    masks = gt_masks.tensor if isinstance(gt_masks, BitMasks) else gt_masks
    if P == 0:
        return torch.zeros((0, mask_size, mask_size), device=masks.device)
    H, W = masks.shape[-2:]
    boxes = win_boxes.round().to(torch.int64)
    side = int((boxes[0, 2] - boxes[0, 0]).item())
    canvas = torch.zeros((P, side, side), dtype=torch.float32, device=masks.device)
    for p, ((x0, y0, x1, y1), g) in enumerate(zip(boxes.tolist(), matched.tolist())):
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if ix1 > ix0 and iy1 > iy0:
            canvas[p, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = masks[g, iy0:iy1, ix0:ix1]
    small = F.interpolate(canvas[:, None], size=(mask_size, mask_size), mode="area")[:, 0]
    return (small >= 0.5).to(torch.float32)
