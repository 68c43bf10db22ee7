"""The detectron2-free core: what the models compute after their dense maps, and what that needs.

Imported by both :mod:`instfcn_d2.modeling` (eager models, with detectron2) and
:mod:`instfcn_d2.deploy` (exported models, without it), so that both run one inference code path.
It needs torch, torchvision and :mod:`instfcn_d2.layers` only, and imports nothing above it.

- :mod:`.boxes`: box decoding, clipping, the tight boxes of masks;
- :mod:`.detections`: :class:`Detections`, the one result type of every model;
- :mod:`.postprocess`: padding, mask pasting and resizing to the output resolution;
- :mod:`.rpn`: detectron2's RPN proposals from the RPN head's outputs;
- :mod:`.fcis`: FCIS's channel layout, per-RoI reading (:class:`FCISReader`), NMS and mask voting;
- :mod:`.biseg`: BiSeg's semantic prior per RoI and its reader (:class:`BiSegReader`);
- :mod:`.instance_fcn`: InstanceFCN's windows, test time (:class:`WindowProposer`) and proposals.
"""
from .biseg import BiSegMaps, BiSegReader
from .detections import Detections
from .fcis import FCISMaps, FCISReader, FCISTestParams
from .instance_fcn import ProposalTest, WindowProposer

__all__ = [
    "Detections",
    "FCISMaps",
    "FCISReader",
    "FCISTestParams",
    "BiSegMaps",
    "BiSegReader",
    "ProposalTest",
    "WindowProposer",
]
