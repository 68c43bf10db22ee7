"""The whole model in one graph: image in, detections out (FCIS and BiSeg).

:class:`WholeModel` runs what a graph-only artefact splits between its graph and Python: the
normalisation and padding, the dense part (:mod:`.graphs`), then the post-processing of
:mod:`instfcn_d2.deploy.fcis` (the RPN's top-k and NMS, the per-RoI reading, per-class NMS, mask
voting, the pasting at the output size), the same code the eager models run. ``torch.export``
traces all of it with the sizes the data decides (the RPN's kept boxes, the candidates above the
score threshold, the detections, the voting pairs) as unbacked sizes and torchvision's NMS as an
operator; AOTInductor compiles it into one ``.pt2`` that C++ loads (``tools/deploy/``).

Inputs: ``image`` ``(3, h, w)`` float32 pixels in ``INPUT.FORMAT`` at the network's input
resolution (resized as ``DefaultPredictor`` resizes, not padded) and ``output_like``, any tensor of
shape ``(height, width, 0)``: its shape is the output size (a shape, not values, so that the
graph's sizes stay symbolic). Outputs: ``boxes`` ``(K, 4)``, ``scores`` ``(K,)``, ``classes``
``(K,)`` int64, ``masks`` ``(K, height, width)`` bool, and for BiSeg ``sem_seg``
``(C+1, height, width)``.

The trunk must not pad (size divisibility 1: the dilated trunks of the paper's configs): with an
FPN trunk's padding to multiples of 32 inside the graph the padded size is a remainder expression,
and ``torch.export`` cannot prove the pyramid levels' sizes consistent for every image size.
InstanceFCN (its post-processing pastes windows in groups of equal size, a loop over sizes the
data decides) and detectron2's Mask R-CNN (its box and mask heads run between data-dependent
steps, in detectron2's own code) export as graphs only.
"""
from typing import List, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..deploy.artefact import WHOLE_OUTPUTS
from ..deploy.fcis import FCISOutputs, FCISPipeline
from .graphs import BiSegGraph, FCISGraph

__all__ = ["WholeModel", "WHOLE_KINDS", "whole_output_names"]

#: The models that export whole; the others export their dense graph only.
WHOLE_KINDS = tuple(WHOLE_OUTPUTS)


def whole_output_names(kind: str) -> List[str]:
    """The outputs of a whole graph of a ``kind`` model, in order."""
    return list(WHOLE_OUTPUTS[kind])


class WholeModel(nn.Module):
    """``forward(image (3, h, w), output_like (height, width, 0)) -> (boxes, scores, classes, masks[, sem_seg])``."""

    def __init__(self, graph: FCISGraph, pipeline: FCISPipeline, size_divisibility: int):
        super().__init__()
        if graph.kind not in WHOLE_KINDS:
            raise ValueError(f"a {graph.kind} does not export whole; the models that do: {WHOLE_KINDS}")
        # not named "graph": an exported program's module has its own attribute of that name
        self.dense = graph
        self.pipeline = pipeline
        self.kind = graph.kind
        self.size_divisibility = max(1, int(size_divisibility))
        self.names = graph.output_names()

    def forward(self, image: Tensor, output_like: Tensor) -> Tuple[Tensor, ...]:
        h, w = image.shape[-2:]
        d = self.size_divisibility
        # normalised, then padded with 0 at the bottom / right, as detectron2's ImageList pads
        x = F.pad(self.dense.normalise(image), (0, (-w) % d, 0, (-h) % d))
        outputs = FCISOutputs.from_graph(dict(zip(self.names, self.dense.dense_outputs(x))), isinstance(self.dense, BiSegGraph))
        det = self.pipeline(outputs, (h, w), (x.shape[-2], x.shape[-1]), (output_like.shape[0], output_like.shape[1]))
        out = (det.boxes, det.scores, det.classes, det.masks)
        return out + ((det.sem_seg,) if self.kind == "BiSeg" else ())
