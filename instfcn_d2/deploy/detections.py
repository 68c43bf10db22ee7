"""What an exported model returns for one image."""
from dataclasses import dataclass
from typing import Optional, Tuple

from torch import Tensor

__all__ = ["Detections"]


@dataclass
class Detections:
    """One image's instances at the output resolution, highest score first (the fields of
    detectron2's ``Instances``: ``pred_boxes``, ``scores``, ``pred_classes``, ``pred_masks``)."""

    image_size: Tuple[int, int]  # (H, W) of the output
    boxes: Tensor  # (K, 4) XYXY float32
    scores: Tensor  # (K,)
    classes: Tensor  # (K,) int64 (0 for InstanceFCN's class-agnostic proposals)
    masks: Tensor  # (K, H, W) bool
    sem_seg: Optional[Tensor] = None  # BiSeg: (C+1, H, W) class probabilities, channel = semantic label

    def __len__(self) -> int:
        return len(self.scores)
