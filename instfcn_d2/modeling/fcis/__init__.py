"""FCIS (Li, Qi, Dai, Ji, Wei, CVPR 2017): fully convolutional instance-aware semantic
segmentation with inside/outside position-sensitive score maps.

Read top to bottom:

- :mod:`.config`: the ``MODEL.FCIS`` keys (defaults = the paper / official code);
- :mod:`.score_maps`: the position-sensitive map layers, their channel layout, and how assembled
  maps read as class scores, masks and box deltas;
- :mod:`.roi_reading`: how the maps are read per RoI (class scores, masks, box deltas) and the
  test-time pipeline on the RPN's RoIs (shared by the heads and by exported models);
- :mod:`.heads`: ``FCISROIHeads``: maps per image, assembled per RoI, losses and inference;
- :mod:`.losses`: the per-RoI losses and OHEM;
- :mod:`.inference`: per-class NMS and mask voting on one image's scored candidates;
- :mod:`.mask_voting`: the voting itself (MNC / FCIS ``mask_aggregation``);
- :mod:`.meta_arch`: the ``FCIS`` meta-architecture (detectron2's ``GeneralizedRCNN`` + FCIS's
  heads) and its post-processing.
"""
from ..._detectron2 import DETECTRON2_IMPORT_ERROR
from .inference import FCISDetections, FCISTestParams, fcis_inference_single_image
from .roi_reading import FCISMaps

__all__ = ["FCISMaps", "FCISDetections", "FCISTestParams", "fcis_inference_single_image"]

if DETECTRON2_IMPORT_ERROR is None:  # the detectron2 parts: config keys, heads, meta-architecture
    from .config import add_fcis_config
    from .heads import FCISROIHeads
    from .meta_arch import FCIS, fcis_postprocess

    __all__ += ["add_fcis_config", "FCISROIHeads", "FCIS", "fcis_postprocess"]
