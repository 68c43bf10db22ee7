"""InstanceFCN (Dai, He, Li, Ren, Sun, ECCV 2016): class-agnostic segment proposals from
instance-sensitive score maps, assembled by sliding windows.

Read top to bottom:

- :mod:`.config`: the ``MODEL.INSTANCE_FCN`` keys (defaults = the paper's settings);
- :mod:`.heads`: the mask branch (``k*k`` instance-sensitive maps, or the ~DeepMask baseline) and
  the objectness branch;
- :mod:`.windows`: the sliding windows' geometry (centre, top-left feature pixel, image box);
- :mod:`.window_labels`: DeepMask's positive / negative windows and their mask targets (training);
- :mod:`.inference`: test time after the maps: the top windows by objectness, assembled, over the
  test scales (shared by the meta-architecture and by exported models);
- :mod:`.postprocessing`: window masks -> proposals (paste, binarise, NMS on the masks' boxes);
- :mod:`.meta_arch`: the ``InstanceFCN`` meta-architecture: trunk -> maps -> windows -> losses
  or proposals.
"""
from ..._detectron2 import DETECTRON2_IMPORT_ERROR
from .inference import InstanceFCNInference, ProposalTest, resize_shortest_edge_shape
from .postprocessing import WindowProposals, window_masks_to_proposals
from .windows import window_boxes, window_grid, window_top_left

__all__ = [
    "InstanceFCNInference",
    "ProposalTest",
    "resize_shortest_edge_shape",
    "WindowProposals",
    "window_masks_to_proposals",
    "window_boxes",
    "window_grid",
    "window_top_left",
]

if DETECTRON2_IMPORT_ERROR is None:  # the detectron2 parts: config keys, heads, meta-architecture
    from .config import add_instance_fcn_config
    from .heads import INSTANCE_FCN_MASK_HEAD_REGISTRY, DeepMaskHead, InstanceSensitiveMaskHead, ObjectnessHead
    from .meta_arch import InstanceFCN, WindowTraining, proposals_to_instances

    __all__ += [
        "add_instance_fcn_config",
        "INSTANCE_FCN_MASK_HEAD_REGISTRY",
        "InstanceSensitiveMaskHead",
        "DeepMaskHead",
        "ObjectnessHead",
        "InstanceFCN",
        "WindowTraining",
        "proposals_to_instances",
    ]
