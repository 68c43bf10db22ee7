"""Exported models served without detectron2: ``load(folder)`` -> a callable that takes images and
returns :class:`Detections`.

Needs torch, torchvision (its NMS) and this package's compiled ops, not detectron2::

    from instfcn_d2.deploy import load
    model = load("output/export/fcis_aoti")            # a folder written by tools/export_model.py
    det = model(cv2.imread("street.jpg"))              # H x W x 3 uint8 BGR, any size (rgb=True for RGB)
    det.boxes, det.scores, det.classes, det.masks      # at the image's size

A raw image is resized as detectron2's ``DefaultPredictor`` resizes it (the exported config's
``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and the results come back at its own size; a list of
images gives a list of results. A ``(3, h, w)`` tensor is taken as already resized (as a
detectron2 input's ``"image"``), with ``output_size`` the ``"height"`` / ``"width"``.

An artefact is a graph (image -> dense maps, made by ``instfcn_d2.export``) plus the model's own
post-processing, the same code the eager models run (:mod:`instfcn_d2.core`), here after the graph
(:mod:`.fcis`, :mod:`.instance_fcn`); Mask R-CNN adds two per-RoI graphs, its box and mask heads,
called from its post-processing (:mod:`.mask_rcnn`). Each pipeline receives the graphs as plain
callables; nothing here calls back into the loaded model.
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..core.detections import Detections
from ..core.postprocess import pad_to_divisibility
from ..core.transforms import resize_image, resize_shortest_edge_shape
from .artefact import FORMATS, METADATA_FILE, graph_files, load_graph, read_metadata

__all__ = ["load", "DeployedModel", "Detections", "FORMATS", "DenseGraph", "pad_to_divisibility"]

#: ``dense(image) -> (outputs, padded_size)``: the dense graph on a ``(3, h, w)`` float32 image,
#: padded as the model pads it: its outputs by name and the ``(H, W)`` it ran at.
DenseGraph = Callable[[Tensor], Tuple[Dict[str, Tensor], Tuple[int, int]]]


class DeployedModel:
    """An exported model, loaded (:func:`load`). ``model(image, output_size) -> Detections``."""

    def __init__(self, directory: str):
        self.directory = directory
        self.metadata = read_metadata(directory)
        self.kind = self.metadata["model"]
        self.format = self.metadata["format"]
        self.input_format = self.metadata["input_format"]
        self.class_names = list(self.metadata.get("class_names") or [])
        self.size_divisibility = int(self.metadata["size_divisibility"])
        self.pixel_mean = torch.tensor(self.metadata["pixel_mean"], dtype=torch.float32).view(-1, 1, 1)
        self.output_names = list(self.metadata["outputs"])
        resize = self.metadata.get("test_resize")  # absent in folders exported before it was recorded
        self.test_resize = None if resize is None else (int(resize["min_size"]), int(resize["max_size"]))
        # name -> graph; "dense" takes the image, Mask R-CNN's "box_head" / "mask_head" pooled features
        self.graphs = {name: load_graph(directory, self.metadata, name) for name in graph_files(self.metadata)}
        self.graph = self.graphs["dense"]
        # one graph from the image to the detections (FCIS, BiSeg): nothing of the pipeline runs here
        self.whole = bool(self.metadata.get("whole", False))
        try:
            self.pipeline = _pipeline(self.kind, self.metadata["pipeline"], self.graphs)
        except (KeyError, TypeError, ValueError) as e:
            what = f"misses the setting {e}" if isinstance(e, KeyError) else f"has settings that do not fit: {e}"
            raise ValueError(
                f"{os.path.join(directory, METADATA_FILE)}: 'pipeline' {what}; re-export the model with "
                "tools/export_model.py"
            ) from e

    def pad(self, image: Tensor) -> Tensor:
        """``(3, h, w)`` -> ``(3, H, W)`` padded to the size divisibility (:func:`pad_to_divisibility`)."""
        return pad_to_divisibility(image, self.size_divisibility, self.pixel_mean)

    def run_graph(self, image: Tensor) -> Tuple[Dict[str, Tensor], Tuple[int, int]]:
        """:data:`DenseGraph` of this model: the graph's outputs on ``image`` (``(3, h, w)``) by name,
        and the padded size it ran at."""
        # contiguous: the exported graphs were made with a contiguous image, and an AOTInductor
        # graph reads its input with those strides (a transposed HWC image would be misread)
        padded = self.pad(image).contiguous()
        outputs = self._named(self.graph(padded))
        return outputs, (int(padded.shape[-2]), int(padded.shape[-1]))

    def _named(self, outputs: List[Tensor]) -> Dict[str, Tensor]:
        """The graph's outputs by the names deploy.json gives them (their count checked)."""
        if len(outputs) != len(self.output_names):
            raise ValueError(
                f"{self.directory}: the graph returned {len(outputs)} tensors, its deploy.json names "
                f"{len(self.output_names)}: {self.output_names}"
            )
        return dict(zip(self.output_names, outputs))

    @torch.no_grad()
    def __call__(
        self,
        image: Union[np.ndarray, Tensor, Sequence[np.ndarray]],
        output_size: Optional[Tuple[int, int]] = None,
        *,
        rgb: bool = False,
    ) -> Union[Detections, List[Detections]]:
        """
        Args:
            image: a raw image, ``(H, W, 3)`` uint8 as OpenCV reads it (BGR; ``rgb=True`` for
                RGB), of any size: resized as ``DefaultPredictor`` does, results at ``(H, W)``;
                or a list of them (a list of results); or a ``(3, h, w)`` tensor, uint8 or float,
                channels in ``input_format``, already at the network's input resolution.
            output_size: for a tensor only: ``(height, width)`` of the result (default ``(h, w)``),
                as the ``"height"`` / ``"width"`` of a detectron2 input.
            rgb: the raw image's channels are RGB (PIL, matplotlib), not BGR.
        """
        if isinstance(image, (list, tuple)):
            return [self(x, rgb=rgb) for x in image]
        if isinstance(image, np.ndarray):
            if output_size is not None:
                raise ValueError("output_size is for a resized (3, h, w) tensor; a raw image's results come at its own size")
            return self.run_raw(image, rgb=rgb)
        image = self.check_image(image)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        output_size = size if output_size is None else (int(output_size[0]), int(output_size[1]))
        if self.whole:
            return self.run_whole(image, output_size)
        return self.pipeline.run(self.run_graph, image, size, output_size)

    def run_whole(self, image: Tensor, output_size: Tuple[int, int]) -> Detections:
        """A whole graph on a ``(3, h, w)`` float32 image: the detections at ``output_size``."""
        # the output size travels as the shape of an empty tensor (instfcn_d2.export.whole)
        named = self._named(self.graph(image.contiguous(), image.new_empty((output_size[0], output_size[1], 0))))
        return Detections(
            output_size, named["boxes"], named["scores"], named["classes"], named["masks"].to(torch.bool), named.get("sem_seg")
        )

    def run_raw(self, image: np.ndarray, rgb: bool = False) -> Detections:
        """Detections of a raw ``(H, W, 3)`` uint8 image at its own size: channels put in the
        model's order, resized as ``DefaultPredictor`` does, run."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected a raw image (H, W, 3) as OpenCV or PIL read it, got an array of shape {image.shape}"
                + (" (a grey image: convert it with cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))" if image.ndim == 2 else "")
            )
        if image.dtype != np.uint8:
            raise ValueError(f"expected a raw image of dtype uint8 (0..255), got {image.dtype}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"the image is empty: {image.shape}")
        if self.test_resize is None:
            raise ValueError(
                f"{os.path.join(self.directory, METADATA_FILE)} records no 'test_resize' (exported by an earlier "
                "version): pass the image as a (3, h, w) tensor resized to the model's test size, or re-export it"
            )
        if rgb != (self.input_format == "RGB"):
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        min_size, max_size = self.test_resize
        size = (height, width) if min_size <= 0 else resize_shortest_edge_shape(height, width, min_size, max_size)
        resized = resize_image(np.ascontiguousarray(image), size)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        return self(tensor, output_size=(height, width))

    def check_image(self, image) -> Tensor:
        """``image`` as float32 ``(3, h, w)`` pixels in 0..255, or a ValueError saying what is wrong
        with it (a layout, a value range or a type the model does not take would otherwise give
        other detections without a word)."""
        if not isinstance(image, Tensor):
            raise ValueError(
                f"expected a raw image (H, W, 3) numpy array or a (3, H, W) torch.Tensor, got a {type(image).__name__}"
            )
        channels = self.pixel_mean.shape[0]
        if image.dim() != 3 or image.shape[0] != channels:
            hint = ""
            if image.dim() == 3 and image.shape[-1] == channels:
                hint = " (an H x W x 3 array as OpenCV reads it? pass torch.as_tensor(array).permute(2, 0, 1))"
            raise ValueError(
                f"expected one image (C={channels}, H, W) in {self.input_format}, got {tuple(image.shape)}{hint}"
            )
        if min(image.shape[-2:]) < 1:
            raise ValueError(f"the image is empty: {tuple(image.shape)}")
        if image.dtype == torch.bool or image.is_complex():
            raise ValueError(f"the image is of dtype {image.dtype}; expected uint8 or float pixels in 0..255")
        if image.dtype == torch.uint8:
            return image.to(torch.float32)
        image = image.to(torch.float32)
        if not bool(torch.isfinite(image).all()):
            raise ValueError("the image holds NaN or infinite values; expected pixels in 0..255")
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"the image's values lie in [{low:g}, {high:g}]; expected raw pixels in 0..255 ({self.input_format}), "
                "not normalised ones (the graph subtracts the pixel mean itself)"
            )
        if 0 < high <= 1:
            raise ValueError(
                f"the image's values lie in [{low:g}, {high:g}], as a float image in [0, 1]; the model takes pixels "
                f"in 0..255 ({self.input_format}): multiply by 255"
            )
        return image


def _pipeline(kind: str, settings: dict, graphs: Dict[str, Callable[[Tensor], List[Tensor]]]):
    if kind in ("FCIS", "BiSeg"):
        from .fcis import FCISRun

        return FCISRun(kind, settings)
    if kind == "InstanceFCN":
        from .instance_fcn import InstanceFCNRun

        return InstanceFCNRun(settings)
    if kind == "MaskRCNN":
        from .mask_rcnn import MaskRCNNRun

        return MaskRCNNRun(settings, box_head=graphs["box_head"], mask_head=graphs["mask_head"])
    raise ValueError(
        f"unknown exported model kind {kind!r}; this instfcn_d2 serves FCIS, BiSeg, InstanceFCN and MaskRCNN"
    )


def load(directory: str) -> DeployedModel:
    """Load an exported model (the ``--output`` folder of ``tools/export_model.py``)."""
    return DeployedModel(directory)
