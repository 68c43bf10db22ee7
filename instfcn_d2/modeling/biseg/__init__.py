"""BiSeg (Pham, Ito, Kozakaya, BMVC 2017): FCIS with a semantic-segmentation prior and fused
multi-scale position-sensitive score maps.

Read top to bottom:

- :mod:`.config`: the ``MODEL.BISEG`` keys (a BiSeg config is an FCIS config plus these);
- :mod:`.semantic_prior`: the semantic branch, the RoI crop of its probabilities, the Bayesian
  combination with the inside likelihoods and the fusion of the two map sets;
- :mod:`.roi_reading`: BiSeg's per-RoI likelihoods (fused, prior-weighted) over FCIS's reading;
- :mod:`.heads`: ``BiSegROIHeads``: FCIS's heads whose per-RoI likelihoods are fused and
  prior-weighted;
- :mod:`.meta_arch`: the ``BiSeg`` meta-architecture: FCIS plus the semantic branch, its loss and
  its ``sem_seg`` output.
"""
from ..._detectron2 import DETECTRON2_IMPORT_ERROR
from .roi_reading import BISEG_PRIOR_MODES, BiSegMaps, labels_to_fcis_order
from .semantic_prior import PRIOR_MODES, SemanticBranch, combine_prior, crop_roi_prior, fuse_likelihoods

__all__ = [
    "BISEG_PRIOR_MODES",
    "BiSegMaps",
    "labels_to_fcis_order",
    "PRIOR_MODES",
    "SemanticBranch",
    "combine_prior",
    "crop_roi_prior",
    "fuse_likelihoods",
]

if DETECTRON2_IMPORT_ERROR is None:  # the detectron2 parts: config keys, heads, meta-architecture
    from .config import add_biseg_config
    from .heads import BiSegROIHeads
    from .meta_arch import BiSeg

    __all__ += ["add_biseg_config", "BiSegROIHeads", "BiSeg"]
