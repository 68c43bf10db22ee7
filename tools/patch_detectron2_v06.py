#!/usr/bin/env python
"""Adapt the detectron2 v0.6 source distribution to current torch / numpy / Pillow / setuptools.

Why this exists: on machines without GitHub access the only detectron2 source is the package
index's ``pb1-detectron2==0.6`` sdist. It has no C++ sources and predates numpy 2, Pillow 10,
setuptools 81 and torch 2; the sites below break (measured, see ../shared/ENVIRONMENT.md). Each
edit is an exact text replacement that must match once, so a different source tree fails loudly
instead of being half-patched. Running it twice is a no-op (the tree is stamped).

Usage: python tools/patch_detectron2_v06.py SRC_DIR   (SRC_DIR holds setup.py and detectron2/)
"""
import argparse
import sys
from pathlib import Path

STAMP = ".instfcn_d2_patched"

_TRY_C = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # adapted build without detectron2._C (no csrc in the sdist)\n"
    "    _C = None\n"
)

# (file, old text, new text, why)
PATCHES = [
    (
        "setup.py",
        "    ext_modules=get_extensions(),",
        "    ext_modules=get_extensions() if path.exists(path.join(path.dirname(path.abspath(__file__)),"
        " 'detectron2', 'layers', 'csrc', 'vision.cpp')) else [],",
        "the sdist ships no csrc: build pure-Python",
    ),
    (
        "setup.py",
        '    config_paths = glob.glob("configs/**/*.yaml", recursive=True) + glob.glob(\n'
        '        "configs/**/*.py", recursive=True\n'
        "    )",
        '    config_paths = [path.relpath(p, path.join("detectron2", "model_zoo")) for p in\n'
        '        glob.glob("detectron2/model_zoo/configs/**/*.yaml", recursive=True)\n'
        '        + glob.glob("detectron2/model_zoo/configs/**/*.py", recursive=True)]',
        "the sdist has no top-level configs/: ship the model-zoo configs it does have",
    ),
    ("detectron2/layers/deform_conv.py", "from detectron2 import _C\n", _TRY_C, "no _C"),
    ("detectron2/layers/rotated_boxes.py", "from detectron2 import _C\n", _TRY_C, "no _C"),
    ("detectron2/layers/roi_align_rotated.py", "from detectron2 import _C\n", _TRY_C, "no _C"),
    ("detectron2/evaluation/fast_eval_api.py", "from detectron2 import _C\n", _TRY_C, "no _C"),
    (
        "detectron2/evaluation/coco_evaluation.py",
        "    coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)",
        "    from detectron2.evaluation import fast_eval_api\n\n"
        "    # Without detectron2._C the C++ evaluator is absent: pycocotools gives the same AP.\n"
        "    use_fast_impl = use_fast_impl and fast_eval_api._C is not None\n"
        "    coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)",
        "fall back to the official pycocotools evaluator",
    ),
    (
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR",
        "interp=Image.BILINEAR",
        "Image.LINEAR was removed in Pillow 10",
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        "import pkg_resources\n",
        "",
        "pkg_resources is gone from setuptools >= 81",
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        '    cfg_file = pkg_resources.resource_filename(\n'
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
        "    )",
        "    cfg_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), \"configs\", config_path)",
        "pkg_resources is gone from setuptools >= 81",
    ),
    ("detectron2/data/build.py", "dtype=np.int)", "dtype=np.int64)", "np.int removed in numpy 1.24"),
    ("detectron2/data/build.py", "dtype=np.int\n", "dtype=np.int64\n", "np.int removed in numpy 1.24"),
    (
        "detectron2/evaluation/sem_seg_evaluation.py",
        "dtype=np.int)",
        "dtype=np.int64)",
        "np.int removed in numpy 1.24",
    ),
    (
        "detectron2/evaluation/sem_seg_evaluation.py",
        "np.float)",
        "np.float64)",
        "np.float removed in numpy 1.24",
    ),
    ("detectron2/data/datasets/pascal_voc.py", "dtype=np.str)", "dtype=str)", "np.str removed"),
    ("detectron2/structures/masks.py", "np.bool)", "bool)", "np.bool removed in numpy 1.24"),
    ("detectron2/evaluation/pascal_voc_evaluation.py", "np.bool)", "bool)", "np.bool removed"),
    ("detectron2/utils/visualizer.py", "np.bool)", "bool)", "np.bool removed"),
    ("detectron2/utils/video_visualizer.py", "np.bool)", "bool)", "np.bool removed"),
    (
        "detectron2/export/__init__.py",
        "from .api import *\n",
        "try:\n"
        "    from .api import *\n"
        "except ImportError:  # caffe2 is absent from torch 2.x; the TorchScript export below still works\n"
        "    pass\n",
        "caffe2 is absent from torch 2.x",
    ),
    # Multi-process training on CPU machines (later detectron2 versions behave this way).
    (
        "detectron2/engine/launch.py",
        '    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."\n',
        "    has_gpu = torch.cuda.is_available()\n",
        "launch on CPU-only machines",
    ),
    (
        "detectron2/engine/launch.py",
        '            backend="NCCL",',
        '            backend="NCCL" if has_gpu else "GLOO",',
        "GLOO when there is no GPU",
    ),
    (
        "detectron2/engine/launch.py",
        "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
        "    torch.cuda.set_device(local_rank)\n",
        "    if has_gpu:\n"
        "        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
        "        torch.cuda.set_device(local_rank)\n",
        "no set_device without a GPU",
    ),
    (
        "detectron2/engine/defaults.py",
        '    if "device_ids" not in kwargs:\n',
        '    if "device_ids" not in kwargs and next(model.parameters()).is_cuda:\n',
        "DDP of a CPU model takes no device_ids",
    ),
]


def apply(src: Path) -> int:
    if (src / STAMP).exists():
        print(f"[patch_detectron2] {src} already patched")
        return 0
    # Validate every patch before writing any, so a mismatch leaves the tree untouched.
    texts = {}
    for rel, old, new, why in PATCHES:
        path = src / rel
        if not path.is_file():
            raise SystemExit(f"[patch_detectron2] missing file {path} (expected detectron2 v0.6 sdist)")
        text = texts.get(rel, path.read_text())
        count = text.count(old)
        if count == 0:
            raise SystemExit(f"[patch_detectron2] {rel}: expected text not found ({why}): {old!r}")
        texts[rel] = text.replace(old, new)
        print(f"[patch_detectron2] {rel}: {why} ({count} site{'s' if count > 1 else ''})")
    for rel, text in texts.items():
        (src / rel).write_text(text)
    (src / STAMP).write_text("patched by instfcn-d2 tools/patch_detectron2_v06.py\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="unpacked pb1-detectron2-0.6 source folder")
    args = parser.parse_args(argv)
    return apply(args.src)


if __name__ == "__main__":
    sys.exit(main())
