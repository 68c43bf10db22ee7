"""Score maps on several pyramid levels: which level each RoI is assembled from.

With one map set per FPN level (``MODEL.ROI_HEADS.IN_FEATURES`` naming several levels), each RoI is
read from the level that fits its size, as detectron2's ``ROIPooler`` assigns Mask R-CNN's RoIs
(the FPN paper's Eq. 1): level ``floor(canonical_level + log2(sqrt(area) / canonical_box_size))``,
clamped to the levels there are. A large object is then read from a coarse map, where its ``k x k``
cells span enough context, and a small one from a fine map.

:class:`PyramidLevels` holds the levels' strides and reads them with
:func:`instfcn_d2.core.boxes.assign_boxes_to_levels` (detectron2's, in the detectron2-free layer).
"""
import math
from dataclasses import dataclass
from typing import Tuple

from torch import Tensor

from ..boxes import assign_boxes_to_levels

__all__ = ["PyramidLevels", "CANONICAL_BOX_SIZE", "CANONICAL_LEVEL"]

#: detectron2's ``ROIPooler`` defaults: a 224-px box (sqrt of its area) is read from level 4
#: (stride 16), the level of ImageNet's crop in the FPN paper.
CANONICAL_BOX_SIZE = 224.0
CANONICAL_LEVEL = 4


@dataclass(frozen=True)
class PyramidLevels:
    """The strides of the map sets a reader holds, finest first, and how RoIs choose one."""

    strides: Tuple[int, ...]  # e.g. (4, 8, 16, 32) for p2 ... p5
    canonical_box_size: float = CANONICAL_BOX_SIZE
    canonical_level: int = CANONICAL_LEVEL

    def __post_init__(self):
        strides = tuple(int(s) for s in self.strides)
        object.__setattr__(self, "strides", strides)
        if len(strides) < 2:
            raise ValueError(f"PyramidLevels needs at least two strides, got {strides}")
        levels = [math.log2(s) for s in strides]
        if any(level != int(level) for level in levels) or any(b - a != 1 for a, b in zip(levels, levels[1:])):
            raise ValueError(
                f"pyramid strides {strides}: expected consecutive powers of two, finest first (e.g. (4, 8, 16, 32))"
            )
        if self.canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be > 0, got {self.canonical_box_size}")

    @property
    def min_level(self) -> int:
        return int(math.log2(self.strides[0]))

    @property
    def max_level(self) -> int:
        return int(math.log2(self.strides[-1]))

    @property
    def spatial_scales(self) -> Tuple[float, ...]:
        return tuple(1.0 / s for s in self.strides)

    def assign(self, boxes: Tensor) -> Tensor:
        """``(R, 4)`` boxes ``(x1, y1, x2, y2)`` -> ``(R,)`` int64 indices into :attr:`strides`."""
        return assign_boxes_to_levels(
            boxes, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
