"""InstanceFCN after its graph: the model's own test time
(:class:`instfcn_d2.modeling.instance_fcn.inference.InstanceFCNInference`: top windows by
objectness, assembled, over the test scales, then the mask-box NMS and the pasting at the output
resolution), with the graph as the maps of each test scale.

The graph (:class:`instfcn_d2.export.graphs.InstanceFCNGraph`) returns ``mask_maps``
``(1, k*k, H, W)`` and ``objectness`` ``(1, H, W)`` for one padded image; it runs once per test
scale (``TEST.AUG.MIN_SIZES``), on the input resized as the eager model resizes it.
"""
from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..layers import window_assemble
from ..modeling.instance_fcn.inference import InstanceFCNInference, ProposalTest
from .detections import Detections

__all__ = ["InstanceFCNReader", "InstanceFCNRun", "settings_from_model"]


@dataclass
class InstanceFCNReader(InstanceFCNInference):
    """InstanceFCN's test time with the model's settings, without the model: windows assembled
    from the instance-sensitive maps by copying (the ``InstanceSensitive`` mask head's assembling)."""

    window_size: int  # m, feature pixels
    group_size: int  # k
    stride: int  # of the maps, image pixels
    test_params: ProposalTest

    def assemble_windows(self, mask_maps: Tensor, rows: Tensor) -> Tensor:
        return window_assemble(mask_maps, self.window_size, self.group_size, rows)

    def to_dict(self) -> dict:
        """``window_size``, ``group_size``, ``stride`` and ``test_params`` (the :class:`ProposalTest`
        fields), JSON-serialisable."""
        d = asdict(self)
        sizes = self.test_params.test_min_sizes
        d["test_params"]["test_min_sizes"] = None if sizes is None else list(sizes)  # JSON has no tuples
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InstanceFCNReader":
        test = dict(d["test_params"])
        if test.get("test_min_sizes") is not None:
            test["test_min_sizes"] = tuple(int(s) for s in test["test_min_sizes"])
        return cls(
            window_size=int(d["window_size"]),
            group_size=int(d["group_size"]),
            stride=int(d["stride"]),
            test_params=ProposalTest(**test),
        )


class InstanceFCNRun:
    """The part of an exported InstanceFCN after its graph (``deploy.json``'s ``pipeline``:
    :func:`settings_from_model`)."""

    def __init__(self, settings: dict):
        if settings.get("kind", "InstanceFCN") != "InstanceFCN":
            raise ValueError(f"InstanceFCNRun: settings of a {settings['kind']!r} model")
        self.reader = InstanceFCNReader.from_dict(settings)

    @torch.no_grad()
    def run(self, model, image: Tensor, size: Tuple[int, int], output_size: Tuple[int, int]) -> Detections:
        """
        Args:
            model: the :class:`instfcn_d2.deploy.DeployedModel` (its ``run_graph`` pads and runs
                the graph).
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
            outputs, _ = model.run_graph(images[0])
            by_name = dict(zip(model.output_names, outputs))
            h, w = images[0].shape[-2:]
            return by_name["mask_maps"], by_name["objectness"], [(int(h), int(w))]

        output_size = (int(output_size[0]), int(output_size[1]))
        proposals = self.reader.multi_scale_proposals([image], [output_size], maps_of)[0]
        classes = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.scores.device)
        return Detections(output_size, proposals.boxes, proposals.scores, classes, proposals.masks.to(torch.bool))


def settings_from_model(model) -> dict:
    """The JSON-serialisable settings of :class:`InstanceFCNRun` from a built ``InstanceFCN``
    meta-architecture (reads attributes only, so this module needs no detectron2).

    Raises:
        ValueError: for a mask head that does not assemble windows by copying from ``k*k`` maps
            (the ``DeepMask`` head: its per-window fc layers are not in the graph).
    """
    head = model.mask_head
    group_size = getattr(head, "group_size", None)
    if group_size is None or head.mask_size != head.window_size:
        raise ValueError(
            f"InstanceFCN with the {type(head).__name__} mask head is not exportable: its per-window layers run "
            "after the data-dependent window selection, outside the graph; export the instance-sensitive head "
            '(MODEL.INSTANCE_FCN.MASK_HEAD "InstanceSensitive")'
        )
    if int(head.window_size) != int(model.window_size):
        raise ValueError(f"mask head window size {head.window_size} != the model's {model.window_size}")
    reader = InstanceFCNReader(
        window_size=int(model.window_size),
        group_size=int(group_size),
        stride=int(model.stride),
        test_params=model.test_params,
    )
    return {"kind": "InstanceFCN", **reader.to_dict()}
