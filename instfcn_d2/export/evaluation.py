"""An exported model behind detectron2's model interface, so ``inference_on_dataset`` and the
evaluators of ``train_net.py --eval-only`` evaluate it unchanged (``export_model.py --run-eval``)."""
from typing import Dict, List

import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from ..deploy import DeployedModel, Detections

__all__ = ["DeployedModelAdapter", "detections_to_instances"]


def detections_to_instances(det: Detections) -> Instances:
    """:class:`instfcn_d2.deploy.Detections` -> ``Instances`` (``pred_boxes``, ``scores``,
    ``pred_classes``, ``pred_masks``) at the output resolution."""
    result = Instances(det.image_size)
    result.pred_boxes = Boxes(det.boxes)
    result.scores = det.scores
    result.pred_classes = det.classes
    result.pred_masks = det.masks
    return result


class DeployedModelAdapter(nn.Module):
    """``forward(batched_inputs)`` as a detectron2 model at inference: each input's ``"image"``
    (``(3, h, w)`` in ``INPUT.FORMAT``, resized by the test mapper) and ``"height"`` /
    ``"width"`` -> ``[{"instances": Instances}]``, plus ``"sem_seg"`` for BiSeg."""

    def __init__(self, deployed: DeployedModel):
        super().__init__()
        self.deployed = deployed

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        results = []
        for x in batched_inputs:
            image = x["image"]
            size = (int(x.get("height", image.shape[-2])), int(x.get("width", image.shape[-1])))
            det = self.deployed(image, size)
            result = {"instances": detections_to_instances(det)}
            if det.sem_seg is not None:
                result["sem_seg"] = det.sem_seg
            results.append(result)
        return results
