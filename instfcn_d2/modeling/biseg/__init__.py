"""BiSeg (Pham, Ito, Kozakaya, BMVC 2017): FCIS with a semantic-segmentation prior and fused
multi-scale position-sensitive score maps.

Read top to bottom:

- :mod:`.config`: the ``MODEL.BISEG`` keys (a BiSeg config is an FCIS config plus these);
- :mod:`.semantic_prior`: the semantic branch (its RoI crop, the Bayesian combination with the
  inside likelihoods and the fusion of the two map sets: :mod:`instfcn_d2.core.biseg.prior`);
- :mod:`.heads`: ``BiSegROIHeads``: FCIS's heads with the second map set, owning BiSeg's reader
  (:class:`instfcn_d2.core.biseg.BiSegReader`: fused, prior-weighted likelihoods per RoI);
- :mod:`.meta_arch`: the ``BiSeg`` meta-architecture: FCIS plus the semantic branch, its loss and
  its ``sem_seg`` output.
"""
from .config import add_biseg_config
from .heads import BiSegROIHeads
from .meta_arch import BiSeg
from .semantic_prior import SemanticBranch

__all__ = ["add_biseg_config", "BiSegROIHeads", "BiSeg", "SemanticBranch"]
