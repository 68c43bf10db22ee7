"""BiSeg (Pham, Ito, Kozakaya, BMVC 2017): FCIS with a semantic-segmentation prior and fused
multi-scale position-sensitive score maps.

Read top to bottom:

- :mod:`.config`: the ``MODEL.BISEG`` keys (a BiSeg config is an FCIS config plus these);
- :mod:`.semantic_prior`: the semantic branch, the RoI crop of its probabilities, the Bayesian
  combination with the inside likelihoods and the fusion of the two map sets;
- :mod:`.heads`: ``BiSegROIHeads``: FCIS's heads whose per-RoI likelihoods are fused and
  prior-weighted;
- :mod:`.meta_arch`: the ``BiSeg`` meta-architecture: FCIS plus the semantic branch, its loss and
  its ``sem_seg`` output.
"""
from .config import add_biseg_config
from .heads import BISEG_PRIOR_MODES, BiSegMaps, BiSegROIHeads
from .meta_arch import BiSeg, labels_to_fcis_order
from .semantic_prior import PRIOR_MODES, SemanticBranch, combine_prior, crop_roi_prior, fuse_likelihoods

__all__ = [
    "add_biseg_config",
    "BISEG_PRIOR_MODES",
    "BiSegMaps",
    "BiSegROIHeads",
    "BiSeg",
    "labels_to_fcis_order",
    "PRIOR_MODES",
    "SemanticBranch",
    "combine_prior",
    "crop_roi_prior",
    "fuse_likelihoods",
]
