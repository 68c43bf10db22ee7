#!/usr/bin/env python
"""Adapt a detectron2 source tree to current torch / numpy / Pillow / setuptools before it is built.

Two detectron2 versions are supported, each with its own list of edits:

* ``main``: detectron2's main branch (the version ``pip install git+https://github.com/
  facebookresearch/detectron2.git`` gives). It already has the numpy-2 fixes and CPU launch; only
  ``model_zoo`` still imports ``pkg_resources``, which setuptools 81 removed.
* ``v0.6``: the October 2021 release, as the package index's ``pb1-detectron2==0.6`` sdist
  (no C++ sources). It predates numpy 2, Pillow 10, setuptools 81 and torch 2.

The version is recognised by a feature, not by ``__version__`` (both say "0.6"): main has
``detectron2.utils.comm.create_local_process_group``.

Rules every edit follows, so that a tree that differs from the expected one fails loudly instead
of being half-patched:

* ``old`` is one or more *whole lines* and must occur exactly ``count`` times;
* every edit is checked before any file is written, and every patched file must still compile;
* each edit says why it exists.

Behaviour that can be fixed from the project's side (DDP of a CPU model, resuming a checkpoint
written by another detectron2, Cityscapes imports) is fixed in ``instfcn_d2`` instead of here.
Running the tool twice is a no-op: the tree is stamped.

Usage: python dev/patch_detectron2.py SRC_DIR   (SRC_DIR holds setup.py and detectron2/)
"""
import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

STAMP = ".instfcn_d2_patched"


@dataclass(frozen=True)
class Edit:
    path: str  # relative to the source root
    old: str  # whole lines, each ending in "\n"
    new: str
    why: str
    count: int = 1  # exact number of occurrences of ``old``


class PatchError(RuntimeError):
    pass


def _lines(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


_TRY_C = _lines(
    "try:",
    "    from detectron2 import _C",
    "except ImportError:  # built without detectron2._C",
    "    _C = None",
)

# model_zoo.get_config_file through the file system instead of pkg_resources (both versions).
_MODEL_ZOO = [
    Edit(
        "detectron2/model_zoo/model_zoo.py",
        _lines("import pkg_resources"),
        "",
        "pkg_resources is gone from setuptools >= 81",
    ),
    Edit(
        "detectron2/model_zoo/model_zoo.py",
        _lines(
            "    cfg_file = pkg_resources.resource_filename(",
            '        "detectron2.model_zoo", os.path.join("configs", config_path)',
            "    )",
        ),
        _lines('    cfg_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)'),
        "pkg_resources is gone from setuptools >= 81",
    ),
]


def _np_alias(path: str, old_line: str, new_line: str, why: str, count: int = 1) -> Edit:
    return Edit(path, _lines(old_line), _lines(new_line), why, count)


EDITS: Dict[str, List[Edit]] = {
    "main": list(_MODEL_ZOO),
    "v0.6": [
        Edit(
            "setup.py",
            _lines("    ext_modules=get_extensions(),"),
            _lines("    ext_modules=[],"),
            "v0.6's C++/CUDA sources predate torch 2 (THC headers) and the sdist has none: build "
            "pure Python; the ops the project needs come from torchvision",
        ),
        Edit(
            "setup.py",
            _lines(
                '    config_paths = glob.glob("configs/**/*.yaml", recursive=True) + glob.glob(',
                '        "configs/**/*.py", recursive=True',
                "    )",
            ),
            _lines(
                '    config_paths = [path.relpath(p, path.join("detectron2", "model_zoo")) for p in',
                '        glob.glob("detectron2/model_zoo/configs/**/*.yaml", recursive=True)',
                '        + glob.glob("detectron2/model_zoo/configs/**/*.py", recursive=True)]',
            ),
            "the sdist has no top-level configs/: ship the model-zoo configs it does have",
        ),
        Edit("detectron2/layers/deform_conv.py", _lines("from detectron2 import _C"), _TRY_C, "no detectron2._C"),
        Edit("detectron2/layers/rotated_boxes.py", _lines("from detectron2 import _C"), _TRY_C, "no detectron2._C"),
        Edit("detectron2/layers/roi_align_rotated.py", _lines("from detectron2 import _C"), _TRY_C, "no detectron2._C"),
        Edit("detectron2/evaluation/fast_eval_api.py", _lines("from detectron2 import _C"), _TRY_C, "no detectron2._C"),
        Edit(
            "detectron2/evaluation/coco_evaluation.py",
            _lines("    coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)"),
            _lines(
                "    from detectron2.evaluation import fast_eval_api",
                "",
                "    # Without detectron2._C the C++ evaluator is absent: pycocotools gives the same AP.",
                "    use_fast_impl = use_fast_impl and fast_eval_api._C is not None",
                "    coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)",
            ),
            "fall back to the official pycocotools evaluator",
        ),
        _np_alias(
            "detectron2/data/transforms/transform.py",
            "    def __init__(self, src_rect, output_size, interp=Image.LINEAR, fill=0):",
            "    def __init__(self, src_rect, output_size, interp=Image.BILINEAR, fill=0):",
            "Image.LINEAR was removed in Pillow 10 (it was an alias of BILINEAR)",
        ),
        *_MODEL_ZOO,
        _np_alias(
            "detectron2/data/build.py",
            "    histogram = np.zeros((num_classes,), dtype=np.int)",
            "    histogram = np.zeros((num_classes,), dtype=np.int64)",
            "np.int was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/data/build.py",
            '            [x["category_id"] for x in annos if not x.get("iscrowd", 0)], dtype=np.int',
            '            [x["category_id"] for x in annos if not x.get("iscrowd", 0)], dtype=np.int64',
            "np.int was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/sem_seg_evaluation.py",
            "            pred = np.array(output, dtype=np.int)",
            "            pred = np.array(output, dtype=np.int64)",
            "np.int was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/sem_seg_evaluation.py",
            "                gt = np.array(Image.open(f), dtype=np.int)",
            "                gt = np.array(Image.open(f), dtype=np.int64)",
            "np.int was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/sem_seg_evaluation.py",
            "        acc = np.full(self._num_classes, np.nan, dtype=np.float)",
            "        acc = np.full(self._num_classes, np.nan, dtype=np.float64)",
            "np.float was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/sem_seg_evaluation.py",
            "        iou = np.full(self._num_classes, np.nan, dtype=np.float)",
            "        iou = np.full(self._num_classes, np.nan, dtype=np.float64)",
            "np.float was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/sem_seg_evaluation.py",
            "        tp = self._conf_matrix.diagonal()[:-1].astype(np.float)",
            "        tp = self._conf_matrix.diagonal()[:-1].astype(np.float64)",
            "np.float was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/sem_seg_evaluation.py",
            "        pos_gt = np.sum(self._conf_matrix[:-1, :-1], axis=0).astype(np.float)",
            "        pos_gt = np.sum(self._conf_matrix[:-1, :-1], axis=0).astype(np.float64)",
            "np.float was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/sem_seg_evaluation.py",
            "        pos_pred = np.sum(self._conf_matrix[:-1, :-1], axis=1).astype(np.float)",
            "        pos_pred = np.sum(self._conf_matrix[:-1, :-1], axis=1).astype(np.float64)",
            "np.float was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/data/datasets/pascal_voc.py",
            "        fileids = np.loadtxt(f, dtype=np.str)",
            "        fileids = np.loadtxt(f, dtype=str)",
            "np.str was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/structures/masks.py",
            "        return np.zeros((height, width)).astype(np.bool)",
            "        return np.zeros((height, width)).astype(bool)",
            "np.bool was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/structures/masks.py",
            "    return mask_util.decode(rle).astype(np.bool)",
            "    return mask_util.decode(rle).astype(bool)",
            "np.bool was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/structures/masks.py",
            "        return torch.from_numpy(np.asarray(keep, dtype=np.bool))",
            "        return torch.from_numpy(np.asarray(keep, dtype=bool))",
            "np.bool was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/evaluation/pascal_voc_evaluation.py",
            '        difficult = np.array([x["difficult"] for x in R]).astype(np.bool)',
            '        difficult = np.array([x["difficult"] for x in R]).astype(bool)',
            "np.bool was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/utils/visualizer.py",
            "        return (self._seg != empty_ids[0]).numpy().astype(np.bool)",
            "        return (self._seg != empty_ids[0]).numpy().astype(bool)",
            "np.bool was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/utils/visualizer.py",
            "            yield (self._seg == sid).numpy().astype(np.bool), sinfo",
            "            yield (self._seg == sid).numpy().astype(bool), sinfo",
            "np.bool was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/utils/visualizer.py",
            "            mask = (self._seg == sid).numpy().astype(np.bool)",
            "            mask = (self._seg == sid).numpy().astype(bool)",
            "np.bool was removed in numpy 1.24",
        ),
        _np_alias(
            "detectron2/utils/video_visualizer.py",
            "        is_crowd = np.zeros((len(instances),), dtype=np.bool)",
            "        is_crowd = np.zeros((len(instances),), dtype=bool)",
            "np.bool was removed in numpy 1.24",
        ),
        Edit(
            "detectron2/export/__init__.py",
            _lines("from .api import *"),
            _lines(
                "try:",
                "    from .api import *",
                "except ImportError:  # caffe2 is absent from torch 2.x; TorchScript export still works",
                "    pass",
            ),
            "caffe2 is absent from torch 2.x",
        ),
        # Multi-process training on CPU-only machines, as detectron2's main branch does it.
        Edit(
            "detectron2/engine/launch.py",
            _lines('    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."'),
            _lines("    has_gpu = torch.cuda.is_available()"),
            "launch() on CPU-only machines",
        ),
        Edit(
            "detectron2/engine/launch.py",
            _lines('            backend="NCCL",'),
            _lines('            backend="NCCL" if has_gpu else "GLOO",'),
            "GLOO when there is no GPU",
        ),
        Edit(
            "detectron2/engine/launch.py",
            _lines(
                "    assert num_gpus_per_machine <= torch.cuda.device_count()",
                "    torch.cuda.set_device(local_rank)",
            ),
            _lines(
                "    if has_gpu:",
                "        assert num_gpus_per_machine <= torch.cuda.device_count()",
                "        torch.cuda.set_device(local_rank)",
            ),
            "no set_device without a GPU",
        ),
    ],
}


def detect_version(src: Path) -> str:
    """``"main"`` or ``"v0.6"`` for a detectron2 source tree; raises :class:`PatchError` otherwise."""
    comm = src / "detectron2" / "utils" / "comm.py"
    init = src / "detectron2" / "__init__.py"
    if not comm.is_file() or not init.is_file():
        raise PatchError(f"{src} is not a detectron2 source tree (no detectron2/utils/comm.py)")
    if "def create_local_process_group" in comm.read_text():
        return "main"
    if '__version__ = "0.6"' in init.read_text():
        return "v0.6"
    raise PatchError(f"{src}: unknown detectron2 version (supported: main, v0.6)")


def _find_whole_lines(text: str, old: str) -> int:
    """Occurrences of ``old`` that start at a line start (``old`` ends with a newline)."""
    count, start = 0, 0
    while True:
        i = text.find(old, start)
        if i < 0:
            return count
        if i == 0 or text[i - 1] == "\n":
            count += 1
        start = i + 1


def plan(src: Path, version: str) -> Dict[str, str]:
    """The patched text of every file the edits of ``version`` touch, checked, nothing written."""
    texts: Dict[str, str] = {}
    for edit in EDITS[version]:
        if not edit.old.endswith("\n"):
            raise PatchError(f"edit of {edit.path} is not made of whole lines: {edit.old!r}")
        path = src / edit.path
        if edit.path not in texts:
            if not path.is_file():
                raise PatchError(f"{path}: file missing (expected a detectron2 {version} source tree)")
            texts[edit.path] = path.read_text()
        text = texts[edit.path]
        found = _find_whole_lines(text, edit.old)
        if found != edit.count:
            raise PatchError(
                f"{edit.path}: expected {edit.count} occurrence(s) of these whole lines, found {found} "
                f"({edit.why}):\n{edit.old}"
            )
        texts[edit.path] = text.replace(edit.old, edit.new)
    for rel, text in texts.items():
        if rel.endswith(".py"):
            try:
                compile(text, rel, "exec")
            except SyntaxError as e:
                raise PatchError(f"{rel} would not compile after patching: {e}") from None
    return texts


def edits_digest(version: str) -> str:
    h = hashlib.sha256()
    for e in EDITS[version]:
        h.update(repr((e.path, e.old, e.new, e.count)).encode())
    return h.hexdigest()[:16]


def apply(src: Path, version: str = None) -> str:
    """Patch ``src`` in place; returns the detected version. A tree already stamped is left alone."""
    version = version or detect_version(src)
    stamp = src / STAMP
    expected = f"{version} {edits_digest(version)}\n"
    if stamp.exists():
        if stamp.read_text() == expected:
            print(f"[patch_detectron2] {src} already patched for detectron2 {version}")
            return version
        raise PatchError(f"{src} was patched by another set of edits ({stamp.read_text().strip()}); start from a fresh copy")
    texts = plan(src, version)
    for edit in EDITS[version]:
        print(f"[patch_detectron2] {version} {edit.path}: {edit.why}")
    for rel, text in texts.items():
        (src / rel).write_text(text)
    stamp.write_text(expected)
    return version


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="detectron2 source folder (holds setup.py and detectron2/)")
    parser.add_argument("--version", choices=sorted(EDITS), help="skip detection (default: detect from the tree)")
    parser.add_argument("--check", action="store_true", help="verify that every edit applies; write nothing")
    args = parser.parse_args(argv)
    try:
        version = args.version or detect_version(args.src)
        if args.check:
            plan(args.src, version)
            print(f"[patch_detectron2] {args.src}: all {len(EDITS[version])} edits for {version} apply")
        else:
            apply(args.src, version)
    except PatchError as e:
        print(f"[patch_detectron2] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
