#!/usr/bin/env python
"""A model benchmark of tools/ with every timed forward under mixed precision (autocast).

    python dev/gpu_check/bench_amp.py fcis         [flags of tools/benchmark_fcis.py]
    python dev/gpu_check/bench_amp.py instance_fcn [flags of tools/benchmark_instance_fcn.py]

The tool runs unchanged, except that each ``model(inputs)`` call it times (and its warm-up) runs
inside ``torch.autocast(device, dtype)``, entered and left around that one forward as an
application would (so the casts of the weights are part of every timed forward). ``--amp-dtype``:
``float16`` (default on CUDA) or ``bfloat16``. The models, the images and the score threshold are
the tool's; its table, ratios and plot are then those of the mixed-precision forwards.

``--fp32-postprocess``: FCIS / BiSeg's per-class NMS, mask voting and pasting
(``fcis_inference_single_image`` and what follows) run outside autocast on float32 copies of the
scores and mask logits; the network, the RPN and the assembling stay under autocast. A fallback
for when the plain run fails in post-processing (mask voting's ``index_add_`` of float32
resampled masks into a half-precision buffer, found by the CPU run below).

``--models A,B``: only the tool's models whose names start with one of these (e.g.
``FCIS,BiSeg``: the CPU run below skips Mask R-CNN, whose bfloat16 convolutions the CPU emulates).

On the CPU (``--device cpu``, used by ``GPU_CHECK_DRY_RUN=1 dev/gpu_check.sh`` to exercise this
path without a GPU) autocast runs in bfloat16, and the native assembling ops, whose CPU kernels
are float32/float64 only, compute in float32 on the upcast inputs and return the input's dtype.
Their argument checks stay as on CUDA (a float32 RoI tensor beside bfloat16 maps still fails), so
a dtype mix-up in the models shows up there as it would on the GPU. CPU timings of such a run
mean nothing.
"""
import argparse
import contextlib
import importlib
import importlib.util
import os
import sys

import torch

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")
TOOL_MODULES = {"fcis": "benchmark_fcis", "instance_fcn": "benchmark_instance_fcn"}


def load_tool(name: str):
    """``tools/<name>.py`` imported from its path (tools/ holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def allow_cpu_low_precision() -> None:
    """Let the CPU run the native ops under bfloat16 autocast: float32 inside, input dtype out."""
    for name in ("instfcn_d2.layers.ps_roi_assemble", "instfcn_d2.layers.window_assemble"):
        module = importlib.import_module(name)  # the modules (the package exports their functions)
        module._CPU_DTYPES = module._CUDA_DTYPES  # the checks as on CUDA: same dtype, not only fp32

    namespace = torch.ops.instfcn_d2
    for name in ("ps_roi_assemble", "window_assemble"):
        op = getattr(namespace, name)

        def upcast(input, other, *args, _op=op):
            if input.device.type != "cpu" or input.dtype in (torch.float32, torch.float64):
                return _op(input, other, *args)
            other = other.float() if other.is_floating_point() else other
            return _op(input.float(), other, *args).to(input.dtype)

        setattr(namespace, name, upcast)


def fp32_postprocess(device_type: str) -> None:
    """FCIS / BiSeg post-processing outside autocast, on float32 scores and mask logits."""
    from instfcn_d2.core.fcis import reading  # where the per-RoI pipeline looks it up

    original = reading.fcis_inference_single_image

    def in_float32(boxes, scores, mask_logits, image_size, params):
        def mask_logits32(indices, class_index):
            return mask_logits(indices, class_index).float()

        with torch.autocast(device_type, enabled=False):
            return original(boxes.float(), scores.float(), mask_logits32, image_size, params)

    reading.fcis_inference_single_image = in_float32


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("tool", choices=sorted(TOOL_MODULES))
    p.add_argument("--amp-dtype", choices=["float16", "bfloat16"], default=None)
    p.add_argument("--fp32-postprocess", action="store_true")
    p.add_argument("--models", default=None)
    args, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print(__doc__)
    device = "cpu"
    for i, a in enumerate(rest):
        if a == "--device" and i + 1 < len(rest):
            device = rest[i + 1]
        elif a.startswith("--device="):
            device = a.split("=", 1)[1]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    dtype_name = args.amp_dtype or ("float16" if device_type == "cuda" else "bfloat16")
    if device_type == "cpu" and dtype_name != "bfloat16":
        p.error("on the CPU autocast runs bfloat16 only (--amp-dtype bfloat16)")
    dtype = getattr(torch, dtype_name)

    with contextlib.redirect_stdout(sys.stderr):  # what importing the package prints
        from instfcn_d2 import benchmark

        tool = load_tool(TOOL_MODULES[args.tool])
    if args.models:
        prefixes = tuple(m.strip() for m in args.models.split(",") if m.strip())
        all_specs = tool.model_specs

        def some_specs(*a, **k):
            return [spec for spec in all_specs(*a, **k) if spec[0].startswith(prefixes)]

        tool.model_specs = some_specs
    forward = benchmark._timed_forward

    def forward_under_autocast(*a, **k):
        with torch.autocast(device_type, dtype=dtype):
            return forward(*a, **k)

    benchmark._timed_forward = forward_under_autocast
    if device_type == "cpu":
        allow_cpu_low_precision()
    if args.fp32_postprocess:
        fp32_postprocess(device_type)
    post = "; FCIS / BiSeg post-processing in float32" if args.fp32_postprocess else ""
    print(f"mixed precision: torch.autocast({device_type!r}, dtype=torch.{dtype_name}) around each forward{post}", flush=True)
    try:
        return tool.main(rest)
    finally:
        benchmark._timed_forward = forward


if __name__ == "__main__":
    sys.exit(main())
