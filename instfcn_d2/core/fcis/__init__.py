"""FCIS after its maps, detectron2 free (read top to bottom):

- :mod:`.layout`: the channel layout of the inside/outside and box maps, and how assembled maps
  read as class scores, masks and box deltas;
- :mod:`.reading`: :class:`FCISReader`, the per-RoI reading and the test-time pipeline;
- :mod:`.levels`: which pyramid level each RoI is read from, when the maps are on several;
- :mod:`.inference`: per-class NMS and mask voting on one image's scored candidates;
- :mod:`.mask_voting`: the voting itself (MNC / FCIS ``mask_aggregation``).
"""
from .inference import MASK_VOTING_FRAMES, FCISTestParams, fcis_inference_single_image
from .levels import PyramidLevels
from .reading import CLASS_LOGITS_ROIS_PER_CHUNK, TEST_CANDIDATES, FCISFeatureMaps, FCISLevelMaps, FCISMaps, FCISReader

__all__ = [
    "FCISMaps",
    "FCISLevelMaps",
    "FCISFeatureMaps",
    "PyramidLevels",
    "FCISReader",
    "FCISTestParams",
    "fcis_inference_single_image",
    "TEST_CANDIDATES",
    "CLASS_LOGITS_ROIS_PER_CHUNK",
    "MASK_VOTING_FRAMES",
]
