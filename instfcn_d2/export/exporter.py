"""Write an exported model: the dense graph (:mod:`.graphs`; Mask R-CNN: also its per-RoI box and
mask head graphs) in one format and ``deploy.json`` with the settings of the post-processing that
:mod:`instfcn_d2.deploy` runs after it (:mod:`.settings`); or, with ``whole``, one graph from the
image to the detections (:mod:`.whole`)."""
import logging
import os
import time
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import __version__
from ..core.postprocess import pad_to_divisibility
from ..deploy.artefact import FORMATS, WHOLE_FORMATS, graph_file, require_onnx, write_metadata
from .graphs import MaskRCNNGraph, dense_graph_for
from .settings import fcis_pipeline, mask_rcnn_pipeline, pipeline_settings
from .whole import WHOLE_KINDS, WholeModel, whole_output_names

__all__ = ["export_model", "MIN_SIDE", "MAX_SIDE"]

logger = logging.getLogger(__name__)

#: The image sides an ``exported_program`` / ``aoti`` artefact accepts (its dynamic dimensions; an
#: ``onnx`` graph records the dimensions as symbols, ONNX Runtime does not check the range).
MIN_SIDE, MAX_SIDE = 32, 4096
#: The most RoIs a Mask R-CNN box / mask head graph takes at once (its dynamic first dimension).
MAX_ROIS = 1 << 16


def _dynamic_shapes(divisibility: int):
    from torch.export import Dim

    if divisibility > 1:
        h = Dim("h_blocks", min=max(1, MIN_SIDE // divisibility), max=MAX_SIDE // divisibility)
        w = Dim("w_blocks", min=max(1, MIN_SIDE // divisibility), max=MAX_SIDE // divisibility)
        return {"image": {1: divisibility * h, 2: divisibility * w}}
    return {"image": {1: Dim("height", min=MIN_SIDE, max=MAX_SIDE), 2: Dim("width", min=MIN_SIDE, max=MAX_SIDE)}}


def _roi_samples(graph: MaskRCNNGraph, dense_outputs: Sequence[Tensor]) -> dict:
    """``{name: (R, C, S, S)}`` contiguous sample inputs of the per-RoI graphs, with the channels
    of the pooled features and the poolers' output sides. Random values: only shapes are traced."""
    settings = mask_rcnn_pipeline(graph.model)
    by_name = dict(zip(graph.output_names(), dense_outputs))
    g = torch.Generator().manual_seed(0)
    samples = {}
    for name, key, features in (("box_head", "box_pooler", "box_features"), ("mask_head", "mask_pooler", "mask_features")):
        channels = by_name[f"feature_{getattr(settings, features)[0]}"].shape[1]
        side = getattr(settings, key).output_size
        # 3 RoIs: torch.export specialises a dimension whose sample is 0 or 1
        samples[name] = torch.randn(3, channels, side, side, generator=g)
    return samples


def _save_onnx(module: nn.Module, sample: Tensor, dynamic_shapes, path: str, input_name: str, output_names) -> int:
    """``module`` as an ONNX graph at ``path``, with ``dynamic_shapes`` (those of the
    ``exported_program`` format); returns the ONNX opset of the graph.

    The dynamo exporter (``torch.onnx.export(dynamo=True)``: ``torch.export`` then a translation
    of its ATen graph into ONNX): it exports every graph here (FCIS, BiSeg, InstanceFCN, Mask
    R-CNN's dense, box and mask head graphs; torch 2.14, onnxscript 0.7) with the same dynamic
    dimensions as ``exported_program`` (the height and width multiples of the size divisibility),
    and ONNX Runtime's outputs match eager's to ~1e-5 (float rounding). No failure made a fallback
    necessary. The TorchScript-based exporter (``dynamo=False``, ``dynamic_axes``) also exports
    FCIS, but torch 2.14 warns that it is deprecated and will be removed, and its dynamic axes
    are free names (no divisibility, no range). Only the dense part is in
    the graph (it ends at the maps, as in the other formats); the post-processing after it is the
    package's Python (:mod:`instfcn_d2.deploy`)."""
    program = torch.onnx.export(
        module,
        (sample,),
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        input_names=[input_name],
        output_names=list(output_names),
        external_data=False,  # one file per graph, as in the other formats (these models are < 2 GB)
        verbose=False,
    )
    program.save(path, external_data=False)
    return max((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _save_graph(module: nn.Module, sample: Tensor, dynamic_shapes, fmt: str, path: str, input_name: str = "image",
                output_names=()) -> Optional[int]:
    """``module`` traced / exported on ``sample`` (contiguous, as the loader feeds it: AOTInductor
    compiles the input strides in) and written to ``path`` in ``fmt``. ``onnx``: returns the opset."""
    sample = sample.contiguous()
    if fmt == "torchscript":
        traced = torch.jit.trace(module, (sample,), check_trace=False)
        torch.jit.save(traced, path)
        return None
    if fmt == "onnx":
        return _save_onnx(module, sample, dynamic_shapes, path, input_name, output_names)
    _write_program(torch.export.export(module, (sample,), dynamic_shapes=dynamic_shapes), fmt, path)
    return None


def _write_program(program, fmt: str, path: str) -> None:
    """An exported program saved as is (``exported_program``) or compiled by AOTInductor (``aoti``)."""
    if fmt == "exported_program":
        torch.export.save(program, path)
    else:
        # Inductor's default converts the convolutions to channels-last; on an AVX2 CPU (2
        # threads, FCIS R18 maps of a 608 x 800 image) oneDNN then took 0.82 s against 0.63 s
        # for eager's contiguous layout, and 0.61 s with the layout kept (layout_optimization off)
        with torch._inductor.config.patch(layout_optimization=False):
            torch._inductor.aoti_compile_and_package(program, package_path=path)


def _save_whole(module: nn.Module, image: Tensor, fmt: str, path: str) -> None:
    """The whole model (:class:`.whole.WholeModel`) exported with a dynamic image and output size
    and saved in ``fmt`` (``exported_program`` or ``aoti``)."""
    from torch.export import Dim

    h, w = image.shape[-2:]
    # an output size unlike the image's, so that tracing cannot tie the two together
    output_like = image.new_empty((2 * int(h) + 1, 2 * int(w) + 1, 0))
    # sizes from 2: torch.export specialises dimensions of size 0 and 1
    dynamic = {
        "image": {1: Dim("height", min=MIN_SIDE, max=MAX_SIDE), 2: Dim("width", min=MIN_SIDE, max=MAX_SIDE)},
        "output_like": {0: Dim("out_height", min=2, max=4 * MAX_SIDE), 1: Dim("out_width", min=2, max=4 * MAX_SIDE)},
    }
    program = torch.export.export(module, (image.contiguous(), output_like), dynamic_shapes=dynamic, strict=False)
    _write_program(program, fmt, path)


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


@torch.no_grad()
def export_model(
    model: nn.Module,
    fmt: str,
    sample_image: Tensor,
    output_dir: str,
    *,
    input_format: str = "BGR",
    class_names: Optional[Sequence[str]] = None,
    test_resize: Optional[Tuple[int, int]] = None,
    whole: bool = False,
) -> str:
    """Export ``model`` (FCIS, BiSeg, InstanceFCN or detectron2's Mask R-CNN, built and loaded, on
    the CPU) into ``output_dir``.

    Args:
        fmt: one of :data:`instfcn_d2.deploy.artefact.FORMATS` (``onnx`` needs the optional
            packages onnx, onnxscript and onnxruntime).
        sample_image: ``(3, h, w)`` an image at the network's input resolution (traced with; the
            ``exported_program`` / ``aoti`` / ``onnx`` graphs accept any height and width in
            ``[MIN_SIDE, MAX_SIDE]``).
        input_format: the config's ``INPUT.FORMAT``, recorded for the loader.
        class_names: recorded for the loader (the test dataset's ``thing_classes``).
        test_resize: ``(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, recorded so that the loaded
            model takes raw images of any size and resizes them as ``DefaultPredictor`` does.
        whole: one graph from the image to the detections (:mod:`.whole`; FCIS and BiSeg, in the
            ``exported_program`` and ``aoti`` formats) instead of the dense graph and Python after it.

    Returns:
        the path of the (dense) graph file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {FORMATS}")
    if whole and fmt not in WHOLE_FORMATS:
        raise ValueError(f"--whole exports to {WHOLE_FORMATS}, not {fmt!r}")
    if fmt == "onnx":  # before anything is built or written
        require_onnx(what="export_model(..., 'onnx')")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("export_model: export a model on the CPU (MODEL.DEVICE cpu); the artefacts run on the CPU")
    model.eval()
    graph = dense_graph_for(model).eval()
    if whole and graph.kind not in WHOLE_KINDS:
        raise ValueError(
            f"--whole: a {graph.kind} exports as a graph only (its post-processing runs in Python after it); "
            f"the models that export whole: {WHOLE_KINDS}"
        )
    if whole and int(model.backbone.size_divisibility) > 1:
        # padding inside the graph makes the padded size a remainder expression, and torch.export
        # cannot prove the FPN levels' sizes consistent for every image size
        raise ValueError(
            f"--whole: this {graph.kind} pads its input to multiples of {model.backbone.size_divisibility} (an FPN "
            "trunk); whole graphs take the dilated trunks (size divisibility 1, the paper's configs) for now; "
            "export this one without --whole"
        )
    divisibility = int(model.backbone.size_divisibility)
    square = getattr(model.backbone, "padding_constraints", {}).get("square_size", 0)
    if square:
        raise ValueError(f"export_model: backbone padding_constraints square_size = {square} is not supported")
    # contiguous, as the loader hands images to the graph: AOTInductor compiles the input strides in
    image = pad_to_divisibility(sample_image.to(torch.float32), divisibility, model.pixel_mean).contiguous()
    os.makedirs(output_dir, exist_ok=True)
    start = time.perf_counter()
    opset = None
    if whole:
        files = {"dense": graph_file(fmt, "whole")}
        path = os.path.join(output_dir, files["dense"])
        _save_whole(WholeModel(graph, fcis_pipeline(model), divisibility).eval(), sample_image.to(torch.float32), fmt, path)
    else:
        path = os.path.join(output_dir, graph_file(fmt))
        opset = _save_graph(graph, image, _dynamic_shapes(divisibility), fmt, path, "image", graph.output_names())
        files = {"dense": graph_file(fmt)}
    if isinstance(graph, MaskRCNNGraph):
        from torch.export import Dim

        samples = _roi_samples(graph, graph(image))
        for name, module in graph.roi_graphs().items():
            module.eval()
            files[name] = graph_file(fmt, name)
            rois = {"pooled": {0: Dim(f"{name}_rois", min=1, max=MAX_ROIS)}}
            outputs = ("class_logits", "box_deltas") if name == "box_head" else ("mask_logits",)
            _save_graph(module, samples[name], rois, fmt, os.path.join(output_dir, files[name]), "pooled", outputs)
    logger.info("exported %s graph(s) of %s in %.1f s: %s", fmt, type(model).__name__, time.perf_counter() - start, path)
    # one graph: the "graph" key that artefacts have always had; several: "graphs", name -> file
    graph_key = {"graph": files["dense"]} if len(files) == 1 else {"graphs": files}
    write_metadata(
        output_dir,
        {
            "format": fmt,
            **graph_key,
            "model": graph.kind,
            "input_format": input_format,
            "pixel_mean": model.pixel_mean.flatten().tolist(),
            "size_divisibility": divisibility,
            "outputs": whole_output_names(graph.kind) if whole else graph.output_names(),
            **({"whole": True} if whole else {}),
            "pipeline": pipeline_settings(model, graph.kind),
            "class_names": list(class_names or []),
            **({"test_resize": {"min_size": int(test_resize[0]), "max_size": int(test_resize[1])}} if test_resize else {}),
            "instfcn_d2": __version__,
            "torch": torch.__version__,
            **({"onnx": _onnx_version(), "onnx_opset": opset} if fmt == "onnx" else {}),
        },
    )
    return path
