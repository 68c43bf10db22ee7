"""InstanceFCN after its graph: the model's own test time
(:class:`instfcn_d2.core.instance_fcn.WindowProposer`: top windows by objectness, assembled, over
the test scales, then the mask-box NMS and the pasting at the output resolution), with the graph as
the maps of each test scale and the windows assembled by copying (``window_assemble``, the
``InstanceSensitive`` mask head's assembling).

The graph (the exporter's ``InstanceFCNGraph``) returns ``mask_maps`` ``(1, k*k, H, W)`` and
``objectness`` ``(1, H, W)`` for one padded image; it runs once per test scale
(``TEST.AUG.MIN_SIZES``), on the input resized as the eager model resizes it.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..core.detections import Detections
from ..core.instance_fcn import WindowProposer
from ..layers import window_assemble

__all__ = ["InstanceFCNRun", "pipeline_dict"]


def pipeline_dict(proposer: WindowProposer, group_size: int) -> dict:
    """``deploy.json``'s ``pipeline`` of an InstanceFCN: its proposer's settings and ``k`` of the
    maps its windows are assembled from."""
    return {"kind": "InstanceFCN", **proposer.to_dict(), "group_size": int(group_size)}


class InstanceFCNRun:
    """The part of an exported InstanceFCN after its graph (``deploy.json``'s ``pipeline``:
    :func:`pipeline_dict`)."""

    def __init__(self, settings: dict):
        if settings.get("kind", "InstanceFCN") != "InstanceFCN":
            raise ValueError(f"InstanceFCNRun: settings of a {settings['kind']!r} model")
        self.proposer = WindowProposer.from_dict(settings)
        self.group_size = int(settings["group_size"])

    def assemble_windows(self, mask_maps: Tensor, rows: Tensor) -> Tensor:
        """:data:`instfcn_d2.core.instance_fcn.inference.AssembleWindows` by copying from the maps."""
        return window_assemble(mask_maps, self.proposer.window_size, self.group_size, rows)

    @torch.no_grad()
    def run(self, dense, image: Tensor, size: Tuple[int, int], output_size: Tuple[int, int]) -> Detections:
        """
        Args:
            dense: :data:`instfcn_d2.deploy.DenseGraph` (pads and runs the graph).
            image: ``(3, h, w)`` float32 in ``INPUT.FORMAT``, at the network's input resolution
                (the largest test scale, as the eager model gets it).
            size: ``(h, w)`` of ``image``.
            output_size: ``(height, width)`` of the result; the test scales are shorter sides of
                an image of this size, as for the eager model's ``"height"`` / ``"width"``.

        Returns:
            :class:`Detections` at ``output_size``: class-agnostic proposals (classes all 0),
            bool masks, the tight boxes of the masks, objectness scores, highest first.
        """
        if tuple(image.shape[-2:]) != tuple(size):
            raise ValueError(f"InstanceFCNRun: image of shape {tuple(image.shape)} but size {tuple(size)}")

        def maps_of(images: List[Tensor]) -> Tuple[Tensor, Tensor, Sequence[Tuple[int, int]]]:
            # the graph takes one image: the eager model's batch of one
            if len(images) != 1:
                raise ValueError(f"an exported InstanceFCN runs one image at a time, got {len(images)}")
            by_name, _ = dense(images[0])
            h, w = images[0].shape[-2:]
            return by_name["mask_maps"], by_name["objectness"], [(int(h), int(w))]

        output_size = (int(output_size[0]), int(output_size[1]))
        return self.proposer.multi_scale_proposals([image], [output_size], maps_of, self.assemble_windows)[0]
