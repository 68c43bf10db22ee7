"""An exported model's outputs against the original model's, on one image."""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..deploy import DeployedModel

__all__ = [
    "Comparison",
    "compare_with_eager",
    "masks_agree",
    "BOX_ATOL",
    "SCORE_ATOL",
    "MIN_MASK_IOU",
    "MIN_INSTANCE_MASK_IOU",
    "MAX_FLIPPED_PIXELS",
]

#: What "equal" allows. The graph may compute the maps in another order of operations
#: (AOTInductor fuses and vectorises), which moves values by float32 rounding; everything after
#: the graph is the same code. A mask pixel whose probability sits at the binarisation threshold
#: may flip, hence IoUs, not bit-equality, for the masks: the IoU of all masks together (pixels in
#: both / pixels in either, summed over the instances) >= MIN_MASK_IOU, and each instance's
#: >= MIN_INSTANCE_MASK_IOU (a small mask with a few flipped edge pixels: 0.9976 was seen), or it
#: differs in at most MAX_FLIPPED_PIXELS pixels (one flipped pixel of an 89-pixel Mask R-CNN mask
#: under ONNX Runtime is an IoU of 0.989, with features equal to 1e-5).
BOX_ATOL, SCORE_ATOL, MIN_MASK_IOU, MIN_INSTANCE_MASK_IOU = 1e-2, 1e-4, 0.999, 0.99
MAX_FLIPPED_PIXELS = 2


@dataclass
class Comparison:
    num_eager: int
    num_exported: int
    max_box_diff: float
    max_score_diff: float
    min_mask_iou: float
    classes_equal: bool
    total_mask_iou: float = 1.0
    max_sem_seg_diff: Optional[float] = None

    @property
    def equal(self) -> bool:
        return (
            self.num_eager == self.num_exported
            and self.classes_equal
            and self.max_box_diff <= BOX_ATOL
            and self.max_score_diff <= SCORE_ATOL
            and self.total_mask_iou >= MIN_MASK_IOU
            and self.min_mask_iou >= MIN_INSTANCE_MASK_IOU
            and (self.max_sem_seg_diff is None or self.max_sem_seg_diff <= SCORE_ATOL)
        )

    def __str__(self) -> str:
        text = (
            f"{self.num_exported} detections (original {self.num_eager}), classes "
            f"{'equal' if self.classes_equal else 'DIFFER'}, max |box diff| {self.max_box_diff:.2g} px, "
            f"max |score diff| {self.max_score_diff:.2g}, mask IoU {self.total_mask_iou:.6f} (lowest instance "
            f"{self.min_mask_iou:.6f})"
        )
        if self.max_sem_seg_diff is not None:
            text += f", max |sem_seg diff| {self.max_sem_seg_diff:.2g}"
        return text + (": equal" if self.equal else ": NOT EQUAL")


def _mask_ious(a: Tensor, b: Tensor) -> Tuple[Tensor, float]:
    """Per-instance IoUs ``(K,)`` of two ``(K, H, W)`` bool mask sets, and the IoU of all together.
    An instance whose masks differ in at most :data:`MAX_FLIPPED_PIXELS` pixels counts as 1."""
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    total = (inter.sum() / union.sum()).item() if union.sum() > 0 else 1.0
    ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return torch.where(union - inter <= MAX_FLIPPED_PIXELS, torch.ones_like(ious), ious), total


def masks_agree(a: Tensor, b: Tensor) -> bool:
    """Two ``(K, H, W)`` bool mask sets are equal up to threshold flips (:data:`MIN_MASK_IOU`,
    :data:`MIN_INSTANCE_MASK_IOU`)."""
    if a.shape != b.shape:
        return False
    if len(a) == 0:
        return True
    per_instance, total = _mask_ious(a, b)
    return total >= MIN_MASK_IOU and per_instance.min().item() >= MIN_INSTANCE_MASK_IOU


@torch.no_grad()
def compare_with_eager(model: nn.Module, deployed: DeployedModel, image: Tensor, output_size: Tuple[int, int]) -> Comparison:
    """Run ``model`` (detectron2 inputs) and ``deployed`` on ``image`` (``(3, h, w)`` at the
    network's input resolution) with results at ``output_size``, and compare."""
    h, w = int(output_size[0]), int(output_size[1])
    eager = model([{"image": image, "height": h, "width": w}])[0]
    ref = eager["instances"].to("cpu")
    det = deployed(image, (h, w))
    n = min(len(ref), len(det))
    box = (ref.pred_boxes.tensor[:n] - det.boxes[:n]).abs().max().item() if n else 0.0
    score = (ref.scores[:n] - det.scores[:n]).abs().max().item() if n else 0.0
    per_instance, total = _mask_ious(ref.pred_masks[:n].bool(), det.masks[:n]) if n else (torch.ones(1), 1.0)
    iou = per_instance.min().item()
    classes = bool(torch.equal(ref.pred_classes[:n], det.classes[:n]))
    sem = None
    if "sem_seg" in eager and det.sem_seg is not None:
        sem = (eager["sem_seg"].cpu() - det.sem_seg).abs().max().item()
    return Comparison(
        num_eager=len(ref),
        num_exported=len(det),
        max_box_diff=box,
        max_score_diff=score,
        min_mask_iou=iou,
        classes_equal=classes,
        total_mask_iou=total,
        max_sem_seg_diff=sem,
    )
