"""An exported model behind detectron2's model interface, so ``inference_on_dataset`` and the
evaluators of ``train_net.py --eval-only`` evaluate it unchanged (``export_model.py --run-eval``)."""
from typing import Dict, List

import torch
from torch import nn

from ..deploy import DeployedModel
from ..modeling.instances import detections_to_instances

__all__ = ["DeployedModelAdapter"]


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
