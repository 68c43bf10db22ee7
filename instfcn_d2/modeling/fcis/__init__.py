"""FCIS (Li, Qi, Dai, Ji, Wei, CVPR 2017): fully convolutional instance-aware semantic
segmentation with inside/outside position-sensitive score maps.

Read top to bottom:

- :mod:`.config`: the ``MODEL.FCIS`` keys (defaults = the paper / official code);
- :mod:`.score_maps`: the 1x1 conv making the position-sensitive maps (their channel layout and
  how assembled maps read as class scores, masks and box deltas: :mod:`instfcn_d2.core.fcis.layout`);
- :mod:`.heads`: ``FCISROIHeads``: maps per image; per RoI, the reader they own
  (:class:`instfcn_d2.core.fcis.FCISReader`: assembling, class scores, masks, box deltas, the
  test-time pipeline with NMS and mask voting), the losses and inference;
- :mod:`.losses`: the per-RoI losses and OHEM;
- :mod:`.meta_arch`: the ``FCIS`` meta-architecture (detectron2's ``GeneralizedRCNN`` + FCIS's
  heads) and its post-processing.
"""
from .config import add_fcis_config
from .heads import FCISROIHeads
from .meta_arch import FCIS, fcis_postprocess

__all__ = ["add_fcis_config", "FCISROIHeads", "FCIS", "fcis_postprocess"]
