"""FCIS and BiSeg after their graph: RPN proposals, then the models' own per-RoI reading and
test-time pipeline (:mod:`instfcn_d2.modeling.fcis.roi_reading`,
:mod:`instfcn_d2.modeling.biseg.roi_reading`), then the pasting at the output resolution."""
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling.biseg.roi_reading import BiSegMaps, BiSegRoIReading
from ..modeling.fcis.inference import FCISTestParams
from ..modeling.fcis.roi_reading import FCISMaps, FCISRoIReading
from .boxes import apply_deltas
from .detections import Detections
from .postprocess import detector_postprocess, sem_seg_postprocess
from .rpn import RPNParams, rpn_proposals

__all__ = ["FCISReader", "BiSegReader", "FCISOutputs", "FCISPipeline"]


@dataclass
class FCISReader(FCISRoIReading):
    """FCIS's per-RoI reading with the heads' settings (``MODEL.FCIS``), without the heads."""

    num_classes: int
    group_size: int
    mask_size: int
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    test_candidates: str
    test_params: FCISTestParams
    box_weights: Tuple[float, float, float, float]
    box_scale_clamp: float

    def apply_box_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        return apply_deltas(deltas, boxes, self.box_weights, self.box_scale_clamp)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FCISReader":
        d = dict(d)
        d["test_params"] = FCISTestParams(**d["test_params"])
        d["box_weights"] = tuple(d["box_weights"])
        return cls(**d)


@dataclass
class BiSegReader(BiSegRoIReading, FCISReader):
    """BiSeg's per-RoI reading (``MODEL.FCIS`` + ``MODEL.BISEG``), without the heads."""

    fuse: bool
    prior_mode: str
    fine_group_size: int
    fine_spatial_scale: float


@dataclass
class FCISOutputs:
    """A graph's outputs (:class:`instfcn_d2.export.graphs.FCISGraph` / ``BiSegGraph``), by name."""

    rpn_logits: Sequence[Tensor]  # per level (1, A, H_i, W_i)
    rpn_deltas: Sequence[Tensor]  # per level (1, A*4, H_i, W_i)
    maps: FCISMaps  # FCISMaps, or BiSegMaps for BiSeg

    @classmethod
    def from_graph(cls, outputs: Sequence[Tensor], names: Sequence[str], biseg: bool) -> "FCISOutputs":
        if len(outputs) != len(names):
            raise ValueError(f"the graph returned {len(outputs)} tensors, its metadata names {len(names)}: {list(names)}")
        by_name = dict(zip(names, outputs))
        levels = sum(n.startswith("rpn_logits_") for n in names)
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
        else:
            maps = FCISMaps(inside_outside=by_name["inside_outside"], box=by_name["box"])
        return cls(logits, deltas, maps)


@dataclass
class FCISPipeline:
    """Graph outputs of one image -> :class:`.detections.Detections`, as ``FCIS.inference`` /
    ``BiSeg.inference`` (with ``extra_outputs``) compute them."""

    reader: FCISReader  # or BiSegReader
    rpn: RPNParams
    mask_threshold: float

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
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
        det = self.reader.detect(outputs.maps, rois, [len(rois)], [image_size])[0]
        boxes, scores, classes, masks = detector_postprocess(
            det.boxes, det.scores, det.classes, det.mask_probs, image_size, output_size, self.mask_threshold
        )
        sem_seg = None
        if isinstance(outputs.maps, BiSegMaps):
            sem_seg = semantic_probabilities(outputs.maps.sem_seg_logits, image_size, padded_size, output_size)
        return Detections(output_size, boxes, scores, classes, masks.to(torch.bool), sem_seg)


def semantic_probabilities(
    logits: Tensor, image_size: Tuple[int, int], padded_size: Tuple[int, int], output_size: Tuple[int, int]
) -> Tensor:
    """BiSeg's ``sem_seg`` output: ``(1, C+1, h, w)`` logits upsampled to the padded input, softmax,
    cropped to the image and resized to the output: ``(C+1, height, width)``."""
    up = F.interpolate(logits, size=tuple(padded_size), mode="bilinear", align_corners=False)
    probs = F.softmax(up, dim=1)[0]
    return sem_seg_postprocess(probs, image_size, output_size[0], output_size[1])


def reader_from_heads(heads) -> FCISReader:
    """The :class:`FCISReader` (or :class:`BiSegReader`) with the settings of built heads
    (an ``FCISROIHeads`` / ``BiSegROIHeads``); reads attributes only."""
    transform = heads.box_regression.transform
    common = dict(
        num_classes=heads.num_classes,
        group_size=heads.group_size,
        mask_size=heads.mask_size,
        spatial_scale=heads.spatial_scale,
        sampling_ratio=heads.sampling_ratio,
        aligned=heads.aligned,
        test_candidates=heads.test_candidates,
        test_params=heads.test_params,
        box_weights=tuple(float(w) for w in transform.weights),
        box_scale_clamp=float(transform.scale_clamp),
    )
    if isinstance(heads, BiSegRoIReading):
        return BiSegReader(
            **common,
            fuse=heads.fuse,
            prior_mode=heads.prior_mode,
            fine_group_size=heads.fine_group_size,
            fine_spatial_scale=heads.fine_spatial_scale,
        )
    return FCISReader(**common)


def pipeline_from_dict(d: dict) -> FCISPipeline:
    reader_cls = BiSegReader if d["kind"] == "BiSeg" else FCISReader
    return FCISPipeline(reader_cls.from_dict(d["reader"]), RPNParams.from_dict(d["rpn"]), float(d["mask_threshold"]))


def pipeline_to_dict(p: FCISPipeline, kind: str) -> dict:
    return {"kind": kind, "reader": p.reader.to_dict(), "rpn": p.rpn.to_dict(), "mask_threshold": p.mask_threshold}


class FCISRun:
    """An exported FCIS / BiSeg: the graph on the padded image, then :class:`FCISPipeline`."""

    def __init__(self, kind: str, settings: dict):
        self.biseg = kind == "BiSeg"
        self.pipeline = pipeline_from_dict(settings)

    def run(self, model, image: Tensor, size: Tuple[int, int], output_size: Tuple[int, int]) -> Detections:
        """``model``: the :class:`instfcn_d2.deploy.DeployedModel`; ``image`` ``(3, h, w)`` float32."""
        outputs, padded_size = model.run_graph(image)
        maps = FCISOutputs.from_graph(outputs, model.output_names, self.biseg)
        return self.pipeline(maps, size, padded_size, output_size)


__all__ += ["reader_from_heads", "pipeline_from_dict", "pipeline_to_dict", "semantic_probabilities", "FCISRun"]
