"""FCIS (Li, Qi, Dai, Ji, Wei, CVPR 2017): fully convolutional instance-aware semantic
segmentation with inside/outside position-sensitive score maps.

Read top to bottom:

- :mod:`.config`: the ``MODEL.FCIS`` keys (defaults = the paper / official code);
- :mod:`.score_maps`: the position-sensitive map layers, their channel layout, and how assembled
  maps read as class scores, masks and box deltas;
- :mod:`.heads`: ``FCISROIHeads``: maps per image, assembled per RoI, losses and inference;
- :mod:`.losses`: the per-RoI losses and OHEM;
- :mod:`.inference`: per-class NMS and mask voting on one image's scored candidates;
- :mod:`.mask_voting`: the voting itself (MNC / FCIS ``mask_aggregation``);
- :mod:`.meta_arch`: the ``FCIS`` meta-architecture (detectron2's ``GeneralizedRCNN`` + FCIS's
  heads) and its post-processing.
"""
from .config import add_fcis_config
from .heads import FCISMaps, FCISROIHeads
from .inference import FCISTestParams, fcis_inference_single_image
from .meta_arch import FCIS, fcis_postprocess

__all__ = ["add_fcis_config", "FCISMaps", "FCISROIHeads", "FCISTestParams", "fcis_inference_single_image", "FCIS", "fcis_postprocess"]
