"""RPN proposals from the RPN head's raw outputs: the same proposals as detectron2's ``RPN.forward``
in eval mode (``DefaultAnchorGenerator`` anchors, ``Box2BoxTransform.apply_deltas``, then
``find_top_rpn_proposals`` in test mode), written again because this layer runs without detectron2.

The head (``StandardRPNHead``) is part of the exported network; what follows it is here. Operations
and their order are detectron2's, so boxes and logits are bit-equal to it, in the same order.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
import torchvision
from torch import Tensor

from .boxes import apply_deltas, batched_nms, clamp_boxes, nonempty

__all__ = ["RPNParams", "grid_anchors", "rpn_proposals"]


@dataclass(frozen=True)
class RPNParams:
    """What an eval-mode detectron2 ``RPN`` needs besides its head: per level the anchor stride
    and the generator's cell anchors ``(A, 4)`` (python floats holding the exact float32 values),
    then the anchor offset, the box transform and the test-time selection."""

    strides: Tuple[int, ...]
    cell_anchors: Tuple[Tuple[Tuple[float, float, float, float], ...], ...]
    offset: float
    box_weights: Tuple[float, float, float, float]
    scale_clamp: float
    pre_nms_topk: int
    post_nms_topk: int
    nms_thresh: float
    min_box_size: float

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable (lists, ints, floats); float32 values survive the round trip since
        JSON keeps the shortest repr of a python float."""
        return {
            "strides": list(self.strides),
            "cell_anchors": [[list(a) for a in level] for level in self.cell_anchors],
            "offset": self.offset,
            "box_weights": list(self.box_weights),
            "scale_clamp": self.scale_clamp,
            "pre_nms_topk": self.pre_nms_topk,
            "post_nms_topk": self.post_nms_topk,
            "nms_thresh": self.nms_thresh,
            "min_box_size": self.min_box_size,
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RPNParams":
        return cls(
            strides=tuple(int(s) for s in d["strides"]),
            cell_anchors=tuple(
                tuple(tuple(float(v) for v in a) for a in level) for level in d["cell_anchors"]
            ),
            offset=float(d["offset"]),
            box_weights=tuple(float(w) for w in d["box_weights"]),
            scale_clamp=float(d["scale_clamp"]),
            pre_nms_topk=int(d["pre_nms_topk"]),
            post_nms_topk=int(d["post_nms_topk"]),
            nms_thresh=float(d["nms_thresh"]),
            min_box_size=float(d["min_box_size"]),
        )


def grid_anchors(size: Tuple[int, int], stride: int, offset: float, cell_anchors: Tensor) -> Tensor:
    """``(H * W * A, 4)`` anchors of an ``(H, W)`` map, the ``(A, 4)`` cell anchors shifted to
    every location (row-major, then anchor): ``DefaultAnchorGenerator._grid_anchors`` of a level."""
    grid_height, grid_width = size
    # detectron2 builds the shifts on the CPU, then moves them
    shifts_x = torch.arange(
        offset * stride, grid_width * stride, step=stride, dtype=torch.float32
    ).to(cell_anchors.device)
    shifts_y = torch.arange(
        offset * stride, grid_height * stride, step=stride, dtype=torch.float32
    ).to(cell_anchors.device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x = shift_x.reshape(-1)
    shift_y = shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell_anchors.view(1, -1, 4)).reshape(-1, 4)


def rpn_proposals(
    objectness_logits: List[Tensor],
    anchor_deltas: List[Tensor],
    image_size: Tuple[int, int],
    params: RPNParams,
) -> Tuple[Tensor, Tensor]:
    """Proposals of one image from the RPN head's outputs per level, logits ``(1, A, Hi, Wi)`` and
    deltas ``(1, A * 4, Hi, Wi)``; ``image_size = (h, w)`` is the unpadded input size.

    Returns ``(R, 4)`` float32 boxes and their ``(R,)`` logits, by decreasing logit: detectron2's
    ``proposals[0].proposal_boxes.tensor`` and ``proposals[0].objectness_logits``."""
    if len(objectness_logits) != len(params.strides) or len(anchor_deltas) != len(params.strides):
        raise ValueError(
            f"rpn_proposals: {len(params.strides)} levels expected, got {len(objectness_logits)} "
            f"logits and {len(anchor_deltas)} deltas"
        )
    device = anchor_deltas[0].device
    batch_idx = torch.arange(1, device=device)
    topk_scores, topk_proposals, level_ids = [], [], []
    for level_id, (logits, deltas) in enumerate(zip(objectness_logits, anchor_deltas)):
        if logits.shape[0] != 1 or deltas.shape[0] != 1:
            raise ValueError(f"rpn_proposals: one image expected, got a batch of {logits.shape[0]}")
        cell = torch.tensor(params.cell_anchors[level_id], dtype=torch.float32, device=device)
        anchors = grid_anchors(
            (logits.shape[-2], logits.shape[-1]), params.strides[level_id], params.offset, cell
        )
        # (1, A, H, W) -> (1, H*W*A) and (1, A*4, H, W) -> (1, H*W*A, 4): the anchors' order
        logits = logits.permute(0, 2, 3, 1).flatten(1)
        deltas = deltas.view(1, -1, 4, deltas.shape[-2], deltas.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
        proposals = apply_deltas(deltas.reshape(-1, 4), anchors, params.box_weights, params.scale_clamp)
        proposals = proposals.view(1, -1, 4)

        num_proposals = min(logits.shape[1], params.pre_nms_topk)
        scores_i, idx = logits.topk(num_proposals, dim=1)
        topk_proposals.append(proposals[batch_idx[:, None], idx])
        topk_scores.append(scores_i)
        level_ids.append(torch.full((num_proposals,), level_id, dtype=torch.int64, device=device))

    boxes = torch.cat(topk_proposals, dim=1)[0]
    scores = torch.cat(topk_scores, dim=1)[0]
    lvl = torch.cat(level_ids, dim=0)

    # detectron2 indexes only when something is dropped; an all-True mask gives the same tensors
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
    boxes = clamp_boxes(boxes, image_size)  # Boxes.clip; finite by the filter above

    keep = nonempty(boxes, threshold=params.min_box_size)
    boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]

    # detectron2's batched_nms is torchvision's on float boxes (fp16 lacks the range)
    keep = batched_nms(boxes.float(), scores, lvl, params.nms_thresh)
    keep = keep[: params.post_nms_topk]  # sorted by decreasing score already
    return boxes[keep], scores[keep]
