"""The one conversion from the core's result type to detectron2's: every model's inference, eager
or deployed (``instfcn_d2.export.evaluation``), goes through :func:`detections_to_instances`."""
from detectron2.structures import Boxes, Instances

from ..core.detections import Detections

__all__ = ["detections_to_instances"]


def detections_to_instances(detections: Detections) -> Instances:
    """:class:`instfcn_d2.core.Detections` as detectron2's ``Instances`` of the same image size:
    ``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_masks`` (``(K, 1, M, M)`` probabilities
    in the box frame, or ``(K, H, W)`` bool masks, as the detections hold them)."""
    result = Instances(tuple(int(s) for s in detections.image_size))
    result.pred_boxes = Boxes(detections.boxes)
    result.scores = detections.scores
    result.pred_classes = detections.classes
    result.pred_masks = detections.masks
    return result
