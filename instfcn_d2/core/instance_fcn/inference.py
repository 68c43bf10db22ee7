"""InstanceFCN at test time, after the maps: the top windows by objectness, assembled, over the
test scales (``TEST.AUG``), then merged into proposals (:mod:`.postprocessing`).

Everything here is parameter free and detectron2 free: it runs on the ``(N, k*k, H, W)``
instance-sensitive maps and ``(N, H, W)`` objectness logits of any source. :class:`WindowProposer`
is a part: frozen settings plus the functions that use them. The meta-architecture
(``instfcn_d2.modeling.instance_fcn.InstanceFCN``) owns one and hands it its maps and its mask
head's assembling; exported models (:mod:`instfcn_d2.deploy.instance_fcn`), whose graph ends at the
maps, load the same settings and run the same code after the graph.

- :class:`ProposalTest`: the test settings (``MODEL.INSTANCE_FCN`` and ``TEST.AUG``);
- :func:`resize_shortest_edge_shape`: the size of one test scale (detectron2's
  ``ResizeShortestEdge.get_output_shape``);
- :meth:`WindowProposer.window_candidates`: one image's top windows at one scale;
- :meth:`WindowProposer.multi_scale_proposals`: the whole test: per scale resize, maps and
  candidates, then the mask-box NMS over the candidates of all scales.
"""
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..detections import Detections
from ..transforms import resize_shortest_edge_shape
from .postprocessing import NMS_BOX_RESOLUTIONS, window_masks_to_proposals
from .windows import window_boxes, window_grid, window_top_left

__all__ = ["ProposalTest", "WindowProposer", "MapsOf", "AssembleWindows", "resize_shortest_edge_shape"]

#: ``maps_of(images) -> (mask_maps, objectness, image_sizes)``: the maps of a list of ``(3, h, w)``
#: float images (raw pixels in ``INPUT.FORMAT``, not normalised): ``(N, k*k, H, W)``
#: instance-sensitive maps and ``(N, H, W)`` objectness logits of the batch, padded as the model
#: pads, and each image's ``(h, w)`` before padding.
MapsOf = Callable[[List[Tensor]], Tuple[Tensor, Tensor, Sequence[Tuple[int, int]]]]
#: ``assemble_windows(mask_maps, rows) -> (P, M, M)``: mask logits of the windows whose top-left
#: feature pixels are the ``(P, 3)`` rows ``(batch_index, y, x)``, assembled from the
#: ``(N, k*k, H, W)`` maps (the mask head's ``assemble``; deployed: ``window_assemble``).
AssembleWindows = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ProposalTest:
    """How proposals are made at test time (``MODEL.INSTANCE_FCN`` and ``TEST.AUG``).

    ``test_min_sizes``: shorter sides of the multi-scale test (``None``: the input as given); each
    scale resizes the given image tensor to that shorter side of the *original* image (``height``
    / ``width``), so the mapper should hand over the largest scale (``INPUT.MIN_SIZE_TEST =
    max(TEST.AUG.MIN_SIZES)``) and the others downsample it.
    """

    pre_nms_topk: int = 2000
    score_thresh: float = 0.0
    mask_thresh: float = 0.5
    nms_thresh: float = 0.8
    nms_box_resolution: str = "window"  # one of NMS_BOX_RESOLUTIONS
    detections_per_image: int = 1000
    test_min_sizes: Optional[Tuple[int, ...]] = None
    test_max_size: int = 4000

    def __post_init__(self):
        if self.nms_box_resolution not in NMS_BOX_RESOLUTIONS:
            raise ValueError(
                f"MODEL.INSTANCE_FCN.NMS_BOX_RESOLUTION must be one of {NMS_BOX_RESOLUTIONS}, got {self.nms_box_resolution!r}"
            )


@dataclass(frozen=True)
class WindowProposer:
    """InstanceFCN's test time on its maps: the model's settings and the functions that use them."""

    window_size: int  # m, feature pixels
    stride: int  # of the maps, image pixels
    test_params: ProposalTest = ProposalTest()

    def to_dict(self) -> Dict[str, Any]:
        """The settings, JSON-serialisable; :meth:`from_dict` reads them back."""
        d = asdict(self)
        sizes = self.test_params.test_min_sizes
        d["test_params"]["test_min_sizes"] = None if sizes is None else list(sizes)  # JSON has no tuples
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "WindowProposer":
        test = dict(d["test_params"])
        if test.get("test_min_sizes") is not None:
            test["test_min_sizes"] = tuple(int(s) for s in test["test_min_sizes"])
        return cls(window_size=int(d["window_size"]), stride=int(d["stride"]), test_params=ProposalTest(**test))

    def window_centres(self, image_size: Tuple[int, int], map_size: Tuple[int, int], device=None) -> Tensor:
        """``(P, 2)`` feature positions ``(y, x)`` whose window centre lies inside the unpadded image,
        on ``device``."""
        s = self.stride
        h = min(int(map_size[0]), math.ceil(image_size[0] / s))
        w = min(int(map_size[1]), math.ceil(image_size[1] / s))
        return window_grid(h, w, device=device)

    def window_candidates(
        self,
        mask_maps: Tensor,
        objectness: Tensor,
        index: int,
        image_size: Tuple[int, int],
        output_size: Tuple[int, int],
        assemble_windows: AssembleWindows,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """The top ``pre_nms_topk`` windows of image ``index`` by objectness, assembled.

        Windows are ranked by objectness *before* assembling, so only candidates are assembled;
        the result equals assembling every window and then keeping the same top ones.

        Args:
            mask_maps: ``(N, k*k, H, W)`` the batch's instance-sensitive maps.
            objectness: ``(N, H, W)`` the batch's window logits.
            image_size: ``(h, w)`` of image ``index`` at the network input, before padding.
            output_size: ``(height, width)`` of the result.
            assemble_windows: the windows' mask logits from the maps.

        Returns ``(P, M, M)`` mask probabilities, ``(P, 4)`` window boxes at ``output_size`` and
        ``(P,)`` objectness probabilities (decreasing).
        """
        m = self.window_size
        centres = self.window_centres(image_size, objectness.shape[-2:], device=objectness.device)
        scores = objectness[index, centres[:, 0], centres[:, 1]].sigmoid()
        scores, order = scores.topk(min(self.test_params.pre_nms_topk, len(scores)))
        keep = scores > self.test_params.score_thresh
        scores, centres = scores[keep], centres[order[keep]]
        tl = window_top_left(centres, m)
        rows = torch.cat([torch.full_like(tl[:, :1], index), tl], dim=1)
        probs = assemble_windows(mask_maps, rows).sigmoid()
        boxes = window_boxes(centres, m, self.stride)
        # window boxes from the network's input resolution to the output resolution
        scale = boxes.new_tensor([output_size[1] / image_size[1], output_size[0] / image_size[0]] * 2)
        return probs, boxes * scale, scores

    def resize_for_test(self, image: Tensor, output_size: Tuple[int, int], min_size: Optional[int]) -> Tensor:
        """The ``(3, h, w)`` image at test scale ``min_size`` (shorter side of the original image of
        ``output_size``), float32 on the image's device; or as given (``None``, or already at that
        size)."""
        if min_size is None:
            return image
        h, w = resize_shortest_edge_shape(output_size[0], output_size[1], min_size, self.test_params.test_max_size)
        if (h, w) == tuple(image.shape[-2:]):
            return image
        image = image[None].to(torch.float32)
        return F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]

    def multi_scale_proposals(
        self,
        images: Sequence[Tensor],
        output_sizes: Sequence[Tuple[int, int]],
        maps_of: MapsOf,
        assemble_windows: AssembleWindows,
    ) -> List[Detections]:
        """Proposals per image, merged over the test scales (``test_min_sizes``) before the
        mask-box NMS.

        Args:
            images: ``(3, h, w)`` images at the network's input resolution (the largest test
                scale), raw pixels in ``INPUT.FORMAT``.
            output_sizes: ``(height, width)`` of each result (the original image's size).
            maps_of: computes the maps of the images of one scale, as one batch
                (the meta-architecture's trunk and branches, or an exported graph).
            assemble_windows: the windows' mask logits from those maps.

        Returns one :class:`Detections` per image at its output size: class-agnostic proposals
        (classes 0), bool masks, the tight boxes of the masks, objectness scores, highest first.
        """
        test = self.test_params
        candidates = [[] for _ in images]  # per image: (probs, boxes, scores) per scale
        for min_size in test.test_min_sizes or (None,):
            scaled = [self.resize_for_test(x, out, min_size) for x, out in zip(images, output_sizes)]
            mask_maps, objectness, image_sizes = maps_of(scaled)
            for i, (image_size, out_size) in enumerate(zip(image_sizes, output_sizes)):
                candidates[i].append(
                    self.window_candidates(mask_maps, objectness, i, image_size, out_size, assemble_windows)
                )

        results = []
        for cands, out_size in zip(candidates, output_sizes):
            probs, boxes, scores = (torch.cat(parts) for parts in zip(*cands))
            results.append(
                window_masks_to_proposals(
                    probs,
                    boxes,
                    scores,
                    out_size,
                    mask_threshold=test.mask_thresh,
                    nms_threshold=test.nms_thresh,
                    nms_box_resolution=test.nms_box_resolution,
                    max_detections=test.detections_per_image,
                )
            )
        return results
