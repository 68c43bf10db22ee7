"""BiSeg after its maps, detectron2 free (read top to bottom):

- :mod:`.prior`: the RoI crop of the semantic probabilities, their combination with the inside
  likelihoods and the fusion of the two map sets;
- :mod:`.reading`: :class:`BiSegReader`, FCIS's reader with BiSeg's fused, prior-weighted
  likelihoods.
"""
from .prior import PRIOR_MODES, combine_prior, crop_roi_prior, fuse_likelihoods
from .reading import BISEG_PRIOR_MODES, BiSegMaps, BiSegReader, labels_to_fcis_order

__all__ = [
    "BiSegMaps",
    "BiSegReader",
    "BISEG_PRIOR_MODES",
    "PRIOR_MODES",
    "labels_to_fcis_order",
    "combine_prior",
    "crop_roi_prior",
    "fuse_likelihoods",
]
