"""FCIS and BiSeg after their graph: RPN proposals, then the models' own per-RoI reading and
test-time pipeline (:class:`instfcn_d2.core.fcis.FCISReader`,
:class:`instfcn_d2.core.biseg.BiSegReader`, loaded from ``deploy.json``), then the pasting at the
output resolution."""
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.biseg import BiSegMaps, BiSegReader
from ..core.detections import Detections
from ..core.fcis import FCISLevelMaps, FCISMaps, FCISReader
from ..core.postprocess import detector_postprocess, sem_seg_postprocess
from ..core.rpn import RPNParams, rpn_proposals

__all__ = ["FCISOutputs", "FCISPipeline", "FCISRun", "semantic_probabilities"]

KINDS = ("FCIS", "BiSeg")


@dataclass
class FCISOutputs:
    """A graph's outputs (the exporter's ``FCISGraph`` / ``BiSegGraph``), by meaning."""

    rpn_logits: Sequence[Tensor]  # per level (1, A, H_i, W_i)
    rpn_deltas: Sequence[Tensor]  # per level (1, A*4, H_i, W_i)
    maps: FCISMaps  # FCISMaps (FCISLevelMaps with maps on several levels), or BiSegMaps for BiSeg

    @classmethod
    def from_graph(cls, by_name: Dict[str, Tensor], biseg: bool) -> "FCISOutputs":
        levels = sum(n.startswith("rpn_logits_") for n in by_name)
        logits = [by_name[f"rpn_logits_{i}"] for i in range(levels)]
        deltas = [by_name[f"rpn_deltas_{i}"] for i in range(levels)]
        if biseg:
            maps = BiSegMaps(
                inside_outside=by_name["inside_outside"],
                box=by_name["box"],
                fine=by_name.get("fine"),
                sem_seg_logits=by_name["sem_seg_logits"],
                prior=by_name["prior"],
            )
        elif "inside_outside_0" in by_name:  # one map set per pyramid level
            count = sum(n.startswith("inside_outside_") for n in by_name)
            maps = FCISLevelMaps(
                [FCISMaps(inside_outside=by_name[f"inside_outside_{l}"], box=by_name[f"box_{l}"]) for l in range(count)]
            )
        else:
            maps = FCISMaps(inside_outside=by_name["inside_outside"], box=by_name["box"])
        return cls(logits, deltas, maps)


@dataclass
class FCISPipeline:
    """Graph outputs of one image -> :class:`Detections`, as ``FCIS.inference`` /
    ``BiSeg.inference`` (with ``extra_outputs``) compute them."""

    reader: FCISReader  # or BiSegReader
    rpn: RPNParams
    mask_threshold: float

    @property
    def kind(self) -> str:
        return "BiSeg" if isinstance(self.reader, BiSegReader) else "FCIS"

    @torch.no_grad()
    def __call__(
        self, outputs: FCISOutputs, image_size: Tuple[int, int], padded_size: Tuple[int, int], output_size: Tuple[int, int]
    ) -> Detections:
        """
        Args:
            image_size: ``(h, w)`` of the image at the network input, before padding.
            padded_size: ``(H, W)`` of the padded graph input.
            output_size: ``(height, width)`` of the result.
        """
        boxes, _ = rpn_proposals(outputs.rpn_logits, outputs.rpn_deltas, image_size, self.rpn)
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)  # image 0; no int count (export)
        det = self.reader.detect(outputs.maps, rois, [rois.shape[0]], [image_size])[0]
        boxes, scores, classes, masks = detector_postprocess(
            det.boxes, det.scores, det.classes, det.masks, image_size, output_size, self.mask_threshold
        )
        sem_seg = None
        if isinstance(outputs.maps, BiSegMaps):
            sem_seg = semantic_probabilities(outputs.maps.sem_seg_logits, image_size, padded_size, output_size)
        return Detections(output_size, boxes, scores, classes, masks.to(torch.bool), sem_seg)

    def to_dict(self) -> dict:
        """``deploy.json``'s ``pipeline``; :meth:`from_dict` reads it back."""
        return {"kind": self.kind, "reader": self.reader.to_dict(), "rpn": self.rpn.to_dict(), "mask_threshold": self.mask_threshold}

    @classmethod
    def from_dict(cls, d: dict) -> "FCISPipeline":
        if d.get("kind") not in KINDS:
            raise ValueError(f"FCISPipeline: settings of a {d.get('kind')!r} model, expected one of {KINDS}")
        reader_cls = BiSegReader if d["kind"] == "BiSeg" else FCISReader
        return cls(reader_cls.from_dict(d["reader"]), RPNParams.from_dict(d["rpn"]), float(d["mask_threshold"]))


def semantic_probabilities(
    logits: Tensor, image_size: Tuple[int, int], padded_size: Tuple[int, int], output_size: Tuple[int, int]
) -> Tensor:
    """BiSeg's ``sem_seg`` output: ``(1, C+1, h, w)`` logits upsampled to the padded input, softmax,
    cropped to the image and resized to the output: ``(C+1, height, width)``."""
    up = F.interpolate(logits, size=tuple(padded_size), mode="bilinear", align_corners=False)
    probs = F.softmax(up, dim=1)[0]
    return sem_seg_postprocess(probs, image_size, output_size[0], output_size[1])


class FCISRun:
    """An exported FCIS / BiSeg: the graph on the padded image, then :class:`FCISPipeline`."""

    def __init__(self, kind: str, settings: dict):
        self.pipeline = FCISPipeline.from_dict(settings)
        if self.pipeline.kind != kind:
            raise ValueError(f"deploy.json: the model is a {kind!r} but its pipeline settings are a {self.pipeline.kind!r}'s")

    def run(self, dense, image: Tensor, size: Tuple[int, int], output_size: Tuple[int, int]) -> Detections:
        """``dense``: :data:`instfcn_d2.deploy.DenseGraph`; ``image`` ``(3, h, w)`` float32 of ``size``."""
        by_name, padded_size = dense(image)
        outputs = FCISOutputs.from_graph(by_name, self.pipeline.kind == "BiSeg")
        return self.pipeline(outputs, size, padded_size, output_size)
