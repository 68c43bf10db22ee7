"""InstanceFCN after its maps, detectron2 free (read top to bottom):

- :mod:`.windows`: the sliding windows' geometry (centre, top-left feature pixel, image box);
- :mod:`.inference`: :class:`WindowProposer`, the top windows by objectness, assembled, over the
  test scales;
- :mod:`.postprocessing`: window masks -> proposals (paste, binarise, NMS on the masks' boxes).
"""
from .inference import ProposalTest, WindowProposer, resize_shortest_edge_shape
from .postprocessing import NMS_BOX_RESOLUTIONS, window_masks_to_proposals
from .windows import window_boxes, window_grid, window_top_left

__all__ = [
    "ProposalTest",
    "WindowProposer",
    "resize_shortest_edge_shape",
    "NMS_BOX_RESOLUTIONS",
    "window_masks_to_proposals",
    "window_boxes",
    "window_grid",
    "window_top_left",
]
