"""Native position-sensitive assembling layers (``torch.ops.instfcn_d2.*``) and their references.

- :func:`ps_roi_assemble` / :class:`PSRoIAssemble`: per-RoI ``m x m`` assembling with bilinear
  (RoIAlign) sampling from ``k x k`` position-sensitive groups, for FCIS and BiSeg.
- :func:`ps_roi_class_logits`: FCIS's ``(R, C+1)`` class logits read from its inside/outside maps
  without assembling them (inference only).
- :func:`biseg_roi_class_logits`: BiSeg's ``(R, C+1)`` class logits from its two map sets and
  semantic prior, likewise without assembling them (inference only).
- :func:`window_assemble` / :class:`WindowAssemble`: InstanceFCN's ``m x m`` sliding windows
  assembled by copying from ``k*k`` instance-sensitive maps at listed positions.
- :func:`nms`, :func:`batched_nms`: torchvision's greedy NMS (and its per-group form) in this library (for whole exported models, which run where
  torchvision's ops library cannot be loaded).
- :mod:`.reference`: pure-PyTorch oracles of the ops (slow; for tests).
"""
from ._ext import has_cuda
from .biseg_roi_class_logits import biseg_roi_class_logits
from .nms import batched_nms, nms
from .ps_roi_assemble import PSRoIAssemble, ps_roi_assemble
from .ps_roi_class_logits import ps_roi_class_logits
from .window_assemble import WindowAssemble, window_assemble

__all__ = ["PSRoIAssemble", "ps_roi_assemble", "ps_roi_class_logits", "biseg_roi_class_logits", "WindowAssemble", "window_assemble", "nms", "batched_nms", "has_cuda"]
