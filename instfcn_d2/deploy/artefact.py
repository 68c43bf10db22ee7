"""An exported model on disk: one folder with the graph (Mask R-CNN: three graphs) in one of four
formats and ``deploy.json``, which says how to feed the graph and what runs after it.

``deploy.json`` keys: ``format`` (one of :data:`FORMATS`), ``graph`` (its file name; or ``graphs``,
``{name: file}``, for a model carried as several graphs: Mask R-CNN's ``dense``, ``box_head`` and
``mask_head``), ``model`` (``"FCIS"``, ``"BiSeg"``, ``"InstanceFCN"`` or ``"MaskRCNN"``), ``input_format`` (``INPUT.FORMAT``, e.g. ``"BGR"``),
``pixel_mean`` (the padding value), ``size_divisibility``, ``outputs`` (the graph's output names),
``pipeline`` (the settings of the part after the graph), ``class_names``, and the versions that
wrote it (``instfcn_d2``, ``torch``; ONNX: also ``onnx`` and the ``onnx_opset`` of the graphs).

An ``onnx`` folder runs with ONNX Runtime, an optional dependency (:data:`ONNX_INSTALL`): the
graph is the same dense part as in the other formats; the post-processing after it stays this
package's Python.
"""
import importlib
import json
import os
import warnings
from typing import Callable, List, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FORMATS",
    "KINDS",
    "GRAPH_FILES",
    "METADATA_FILE",
    "WHOLE_OUTPUTS",
    "WHOLE_FORMATS",
    "graph_file",
    "graph_files",
    "read_metadata",
    "check_metadata",
    "write_metadata",
    "load_graph",
    "ONNX_INSTALL",
    "require_onnx",
]

#: ``--format`` values: a traced ``torch.jit`` module, a ``torch.export`` program with dynamic
#: height and width, that program compiled ahead of time by AOTInductor, and an ONNX graph with
#: dynamic height and width that ONNX Runtime runs.
FORMATS = ("torchscript", "exported_program", "aoti", "onnx")
#: The formats a whole model (image to detections) exports to: ``torch.export`` with unbacked sizes.
WHOLE_FORMATS = ("exported_program", "aoti")
GRAPH_FILES = {"torchscript": "model.ts", "exported_program": "model.pt2", "aoti": "model_aoti.pt2", "onnx": "model.onnx"}
#: What the ``onnx`` format needs besides torch (optional dependencies: exporting needs all three,
#: running needs onnxruntime).
ONNX_INSTALL = "pip install onnxruntime onnx onnxscript"
METADATA_FILE = "deploy.json"
_KEYS = ("format", "model", "input_format", "pixel_mean", "size_divisibility", "outputs", "pipeline")
#: ``model`` values, and the graph outputs the post-processing of each reads.
KINDS = ("FCIS", "BiSeg", "InstanceFCN", "MaskRCNN")
REQUIRED_OUTPUTS = {
    "FCIS": ("rpn_logits_0", "rpn_deltas_0", "inside_outside", "box"),
    "BiSeg": ("rpn_logits_0", "rpn_deltas_0", "inside_outside", "box", "sem_seg_logits", "prior"),
    "InstanceFCN": ("mask_maps", "objectness"),
    "MaskRCNN": ("rpn_logits_0", "rpn_deltas_0"),
}
#: The models that export whole (``"whole": true``: one graph from image to detections,
#: ``instfcn_d2.export.whole``) and the outputs of that graph, in order.
WHOLE_OUTPUTS = {
    "FCIS": ("boxes", "scores", "classes", "masks"),
    "BiSeg": ("boxes", "scores", "classes", "masks", "sem_seg"),
}


def graph_file(fmt: str, name: str = "dense") -> str:
    """The file name of the graph ``name`` in format ``fmt``: ``GRAPH_FILES[fmt]`` for the dense
    graph, the same with ``name`` as stem for the others (``box_head.pt2``, ``mask_head_aoti.pt2``)."""
    base = GRAPH_FILES[fmt]
    return base if name == "dense" else base.replace("model", name, 1)


def graph_files(metadata: dict) -> dict:
    """``{name: file}`` of an artefact's graphs (``{"dense": graph}`` for single-graph models)."""
    if "graphs" in metadata:
        return dict(metadata["graphs"])
    return {"dense": metadata["graph"]}


def _missing(metadata: dict) -> list:
    missing = [k for k in _KEYS if k not in metadata]
    if "graph" not in metadata and "graphs" not in metadata:
        missing.insert(1, "graph")
    return missing


def write_metadata(directory: str, metadata: dict) -> str:
    missing = _missing(metadata)
    if missing:
        raise ValueError(f"deploy metadata misses {missing}")
    path = os.path.join(directory, METADATA_FILE)
    with open(path, "w") as f:
        json.dump(metadata, f, indent=1)
    return path


def read_metadata(directory: str) -> dict:
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: an exported model is the folder that tools/export_model.py --output wrote"
        )
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file ({e}); re-export the model with tools/export_model.py") from e
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} holds a {type(metadata).__name__}, not the object of an exported model's settings")
    missing = _missing(metadata)
    if missing:
        raise ValueError(f"{path} misses the keys {missing}; re-export the model with tools/export_model.py")
    check_metadata(path, metadata)
    written_with = metadata.get("torch")
    # an ONNX graph does not depend on the torch that runs the post-processing
    if metadata["format"] != "onnx" and written_with and written_with.split("+")[0] != torch.__version__.split("+")[0]:
        warnings.warn(
            f"{path} was exported with torch {written_with}, this is torch {torch.__version__}: "
            "ExportedProgram and AOTInductor artefacts are not guaranteed to load across torch versions"
        )
    return metadata


def check_metadata(path: str, metadata: dict) -> None:
    """Raise ValueError naming ``path`` and the key when a value of ``deploy.json`` cannot be right
    (a hand-edited or mixed-up folder), before any graph is loaded."""

    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{path}: {key!r} {why}; re-export the model with tools/export_model.py")

    if metadata["format"] not in FORMATS:
        raise bad("format", f"is {metadata['format']!r}, not one of {FORMATS}")
    kind = metadata["model"]
    if kind not in KINDS:
        raise bad("model", f"is {kind!r}, not one of {KINDS}")
    if metadata["input_format"] not in ("BGR", "RGB"):
        raise bad("input_format", f"is {metadata['input_format']!r}, not 'BGR' or 'RGB'")
    mean = metadata["pixel_mean"]
    if not isinstance(mean, list) or len(mean) != 3 or not all(isinstance(v, (int, float)) for v in mean):
        raise bad("pixel_mean", f"is {mean!r}, not three numbers")
    div = metadata["size_divisibility"]
    if not isinstance(div, int) or isinstance(div, bool) or div < 0:
        raise bad("size_divisibility", f"is {div!r}, not an integer >= 0")
    outputs = metadata["outputs"]
    if not isinstance(outputs, list) or not all(isinstance(n, str) for n in outputs):
        raise bad("outputs", "is not a list of output names")
    whole = metadata.get("whole", False)
    if not isinstance(whole, bool):
        raise bad("whole", f"is {whole!r}, not true or false")
    if whole:
        if kind not in WHOLE_OUTPUTS or metadata["format"] not in WHOLE_FORMATS:
            raise bad("whole", f"is true for a {kind} in {metadata['format']!r}; whole graphs: {sorted(WHOLE_OUTPUTS)} "
                      f"in {WHOLE_FORMATS}")
        if tuple(outputs) != WHOLE_OUTPUTS[kind]:
            raise bad("outputs", f"is {outputs}; a whole {kind} graph returns {list(WHOLE_OUTPUTS[kind])}")
    required = list(REQUIRED_OUTPUTS[kind])
    if kind == "FCIS" and "inside_outside_0" in outputs:  # maps on several pyramid levels, finest first
        levels = sum(n.startswith("inside_outside_") for n in outputs)
        required = required[:2] + [f"{name}_{level}" for level in range(levels) for name in ("inside_outside", "box")]
    absent = [n for n in required if n not in outputs]
    if absent and not whole:
        raise bad("outputs", f"lacks {absent}, which a {kind}'s post-processing reads (it names {outputs})")
    pipeline = metadata["pipeline"]
    if not isinstance(pipeline, dict):
        raise bad("pipeline", "is not an object of settings")
    if pipeline.get("kind", kind) != kind:
        raise bad("pipeline", f"holds the settings of a {pipeline.get('kind')!r}, but 'model' says {kind!r}")
    files = graph_files(metadata)
    if not isinstance(files, dict) or not all(isinstance(f, str) for f in files.values()):
        raise bad("graphs" if "graphs" in metadata else "graph", "does not name the graph file(s)")
    if kind == "MaskRCNN" and not {"dense", "box_head", "mask_head"} <= set(files):
        raise bad("graphs", f"names {sorted(files)}; a MaskRCNN needs 'dense', 'box_head' and 'mask_head'")


def load_graph(directory: str, metadata: dict, name: str = "dense") -> Callable[..., List[Tensor]]:
    """The graph ``name`` of an exported model as ``inputs -> [Tensor, ...]`` (the dense graph:
    ``image (3, H, W)``; a whole graph: ``image, output_like``)."""
    files = graph_files(metadata)
    if name not in files:
        raise ValueError(f"{os.path.join(directory, METADATA_FILE)} names no {name!r} graph (it has {sorted(files)})")
    path = os.path.join(directory, files[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} (named by {os.path.join(directory, METADATA_FILE)}) not found")
    fmt = metadata["format"]
    if fmt == "onnx":
        return _load_onnx(path, directory)
    try:
        if fmt == "torchscript":
            module = torch.jit.load(path, map_location="cpu").eval()
        elif fmt == "exported_program":
            module = torch.export.load(path).module()
        else:
            module = torch._inductor.aoti_load_package(path)
    except Exception as e:  # torch raises many types for a damaged file (zip reader, pickle, C++ errors)
        raise ValueError(
            f"{path} cannot be loaded as a {fmt!r} graph ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
            f"the file is damaged (a copy cut short?) or not the format {os.path.join(directory, METADATA_FILE)} says; "
            "re-export the model with tools/export_model.py"
        ) from e

    def graph(*inputs: Tensor) -> List[Tensor]:
        out = module(*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return graph


def require_onnx(*modules: str, what: str) -> None:
    """Import ``modules`` (default: onnxruntime, onnx, onnxscript) or raise ImportError saying that
    ``what`` needs them and how to install them."""
    missing = []
    for name in modules or ("onnxruntime", "onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"{what} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"{ONNX_INSTALL} (optional dependencies of instfcn_d2, in dev/requirements.txt)"
        )


def _load_onnx(path: str, directory: str) -> Callable[[Tensor], List[Tensor]]:
    """An ONNX graph in an ONNX Runtime session on the CPU, as ``input -> [Tensor, ...]``: torch
    tensors in and out (numpy float32 in between), outputs in the graph's order (the order of
    ``deploy.json``'s ``outputs`` for the dense graph, as in the other formats)."""
    require_onnx("onnxruntime", what=f"{path} (an 'onnx' artefact)")
    import onnxruntime as ort

    options = ort.SessionOptions()
    # as many threads as torch, which runs the post-processing: the formats compare alike
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        raise ValueError(
            f"{path} cannot be loaded as an 'onnx' graph ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
            f"the file is damaged (a copy cut short?) or not the format {os.path.join(directory, METADATA_FILE)} says; "
            "re-export the model with tools/export_model.py"
        ) from e
    inputs = [i.name for i in session.get_inputs()]
    if len(inputs) != 1:
        raise ValueError(
            f"{path} is an ONNX graph of {len(inputs)} inputs ({inputs}), not one that tools/export_model.py wrote "
            "(one input: the image, or the pooled RoI features); re-export the model with tools/export_model.py"
        )
    feed = inputs[0]

    def graph(x: Tensor) -> List[Tensor]:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return [torch.from_numpy(out) for out in session.run(None, {feed: array})]

    graph.session = session  # for inspection (providers, input and output names)
    return graph


def output_names(metadata: dict) -> Sequence[str]:
    return list(metadata["outputs"])
