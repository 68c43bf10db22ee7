"""What every model returns for one image, eager or deployed, before it becomes detectron2's
``Instances`` (``instfcn_d2.modeling.detections_to_instances``)."""
from dataclasses import dataclass
from typing import Optional, Tuple

from torch import Tensor

__all__ = ["Detections"]


@dataclass
class Detections:
    """One image's instances, highest score first (the fields of detectron2's ``Instances``:
    ``pred_boxes``, ``scores``, ``pred_classes``, ``pred_masks``).

    ``masks`` is in one of two forms, as detectron2's ``pred_masks`` is before and after
    ``detector_postprocess``:

    - ``(K, H, W)`` bool, pasted at ``image_size`` (the output of every model at its output
      resolution; InstanceFCN's proposals);
    - ``(K, 1, M, M)`` foreground probabilities, each in its box's frame (FCIS / BiSeg at the
      network's input resolution, before pasting).
    """

    image_size: Tuple[int, int]  # (H, W) the boxes and masks refer to
    boxes: Tensor  # (K, 4) XYXY
    scores: Tensor  # (K,)
    classes: Tensor  # (K,) int64 in [0, C) (0 for InstanceFCN's class-agnostic proposals)
    masks: Tensor  # (K, H, W) bool, or (K, 1, M, M) probabilities in the box frame
    sem_seg: Optional[Tensor] = None  # BiSeg: (C+1, H, W) class probabilities, channel = semantic label

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def masks_pasted(self) -> bool:
        """True for ``(K, H, W)`` masks at ``image_size``, False for ``(K, 1, M, M)`` in box frames."""
        return self.masks.dim() == 3
