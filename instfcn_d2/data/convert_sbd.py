"""SBD conversion: the release's MATLAB files (PASCAL VOC 2012 instance masks) into files
detectron2 reads.

Input, the layout of ``benchmark_RELEASE/`` from SBD's ``benchmark.tgz``:

    <root>/dataset/img/<name>.jpg
    <root>/dataset/cls/<name>.mat     GTcls:  Segmentation (H, W) 0 bg, 1..20 class [255 ignore];
                                              Boundaries, CategoriesPresent (unused)
    <root>/dataset/inst/<name>.mat    GTinst: Segmentation (H, W) 0 bg, 1..K instance id [255
                                              ignore]; Categories (K,) class 1..20 of instance k;
                                              Boundaries (unused)
    <root>/dataset/train.txt, val.txt one image name per line

Output, under the output folder (default ``$INSTFCN_D2_CACHE/sbd``, i.e.
``~/.cache/instfcn_d2/sbd``), where :mod:`.sbd` registers it from:

    annotations/sbd_<split>.json      COCO instances: the 20 VOC classes with ids 1..20 in VOC
                                      order, one RLE mask per instance with its bbox (from the
                                      mask) and area (pixels), iscrowd 0; image ids 1..N in list
                                      order, file_name <name>.jpg
    sem_seg/<split>/<name>.png        uint8 semantic labels: GTcls.Segmentation as is (0 bg,
                                      1..20 class, 255 ignore where SBD has it)
    annotations/sbd_<split>.stamp     format version, release folder and list file of the JSON

Every file is written to a temp name and renamed into place (:mod:`.files`). A split whose stamp
matches (same format version, release and list file) is skipped unless forced (``force=True``;
``--force`` of ``datasets/prepare_sbd.py``, the command line of :func:`prepare_sbd`). Bad input
stops the conversion with an error naming the file: a missing .mat or image, a .mat without the
expected struct or field, an instance id without a category, a category outside 1..20, a label
map whose size differs from the image's, an empty or duplicated list. An instance id that has a
category but no pixel is skipped with a warning naming file and instance.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .files import write_json, write_label_png
from .sbd import (
    IGNORE_LABEL,
    SPLITS,
    VOC_CLASSES,
    default_output_dir,
    release_dir,
    split_json,
    split_sem_dir,
)

__all__ = [
    "FORMAT_VERSION",
    "SBDFormatError",
    "read_list",
    "read_mat_struct",
    "image_size",
    "read_image_annotations",
    "is_up_to_date",
    "convert_split",
    "prepare_sbd",
]

logger = logging.getLogger(__name__)

# Bump when the content of an output changes: existing stamps then no longer match.
FORMAT_VERSION = 1
PROGRESS_EVERY = 500
NUM_CLASSES = len(VOC_CLASSES)


class SBDFormatError(ValueError):
    """An SBD input file is not what the release format says; the message names the file."""


# ----------------------------------------------------------------------------------------------
# Reading one image's files


def read_list(path: Path) -> List[str]:
    """Image names of a list file, one per line (blank lines skipped); raises on a missing or
    empty file and on duplicated names."""
    if not path.is_file():
        raise FileNotFoundError(f"SBD list file missing: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise SBDFormatError(f"SBD list file {path} is empty: no image names")
    dups = sorted(n for n, count in Counter(names).items() if count > 1)
    if dups:
        raise SBDFormatError(f"SBD list file {path} names images more than once: {dups[:5]}")
    return names


def read_mat_struct(path: Path, struct: str, fields: Sequence[str]) -> Dict[str, np.ndarray]:
    """The ``fields`` of the 1x1 MATLAB struct ``struct`` in ``path`` (``scipy.io.loadmat``)."""
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(f"SBD annotation file missing: {path}")
    try:
        # No squeeze_me / simplify_cells: they would turn a 1-pixel-thick label map or a single
        # instance's Categories into a lower-rank array; the struct is indexed [0, 0] instead,
        # as the MNC / FCIS readers of SBD do.
        data = loadmat(str(path), variable_names=[struct])
    except Exception as e:  # scipy raises several types on a damaged file; name the file
        raise SBDFormatError(f"cannot read {path} as a MATLAB file: {type(e).__name__}: {e}") from e
    if struct not in data:
        raise SBDFormatError(f"{path} has no variable '{struct}' (SBD's {struct} struct)")
    value = data[struct]
    names = value.dtype.names or ()
    if not names or value.shape != (1, 1):
        raise SBDFormatError(f"{path}: '{struct}' is a {value.dtype} array of shape {value.shape}, expected a 1x1 struct")
    missing = [f for f in fields if f not in names]
    if missing:
        raise SBDFormatError(f"{path}: struct '{struct}' lacks field(s) {missing} (has {sorted(names)})")
    return {f: value[f][0, 0] for f in fields}


def _label_map(path: Path, value, what: str, size: Tuple[int, int]) -> np.ndarray:
    """A ``(H, W)`` integer label map from a .mat field, checked against the image size."""
    arr = np.asarray(value)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise SBDFormatError(f"{path}: {what} must be a 2-d integer array, got {arr.dtype} of shape {arr.shape}")
    if arr.shape != size:
        raise SBDFormatError(
            f"{path}: {what} is {arr.shape[0]}x{arr.shape[1]} (HxW) but the image is {size[0]}x{size[1]}"
        )
    return arr


def image_size(path: Path) -> Tuple[int, int]:
    """``(height, width)`` from the image header (the pixels are not decoded)."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"SBD image missing: {path}")
    with Image.open(path) as im:
        width, height = im.size
    return height, width


def read_image_annotations(dataset_dir: Path, name: str):
    """One image's ``(height, width)``, semantic labels ``(H, W)`` uint8 and instances
    ``[(instance id, class 1..20, mask (H, W) bool)]`` (ids ascending, zero-area ids skipped)."""
    size = image_size(dataset_dir / "img" / f"{name}.jpg")
    cls_path, inst_path = dataset_dir / "cls" / f"{name}.mat", dataset_dir / "inst" / f"{name}.mat"

    cls = read_mat_struct(cls_path, "GTcls", ("Segmentation",))
    semantic = _label_map(cls_path, cls["Segmentation"], "GTcls.Segmentation", size)
    bad = sorted(set(np.unique(semantic).tolist()) - set(range(NUM_CLASSES + 1)) - {IGNORE_LABEL})
    if bad:
        raise SBDFormatError(
            f"{cls_path}: GTcls.Segmentation has values {bad[:10]}; expected 0 (background), "
            f"1..{NUM_CLASSES} (class) or {IGNORE_LABEL} (ignore)"
        )

    inst = read_mat_struct(inst_path, "GTinst", ("Segmentation", "Categories"))
    ids = _label_map(inst_path, inst["Segmentation"], "GTinst.Segmentation", size)
    categories = np.atleast_1d(np.asarray(inst["Categories"])).ravel()
    if categories.size and not np.issubdtype(categories.dtype, np.number):
        raise SBDFormatError(f"{inst_path}: GTinst.Categories must be numeric, got {categories.dtype}")
    for k, c in enumerate(categories.tolist(), 1):
        if not (np.isfinite(c) and c == int(c) and 1 <= c <= NUM_CLASSES):
            raise SBDFormatError(
                f"{inst_path}: instance {k} has category {c}, outside 1..{NUM_CLASSES} (GTinst.Categories)"
            )
    present = [i for i in np.unique(ids).tolist() if i not in (0, IGNORE_LABEL)]
    orphans = [i for i in present if not 1 <= i <= len(categories)]
    if orphans:
        raise SBDFormatError(
            f"{inst_path}: instance id(s) {orphans[:10]} in GTinst.Segmentation have no category "
            f"(GTinst.Categories lists {len(categories)})"
        )
    instances = []
    for k in range(1, len(categories) + 1):
        if k not in present:
            category = VOC_CLASSES[int(categories[k - 1]) - 1]
            logger.warning("%s: instance %d (%s) has no pixels; skipped", inst_path, k, category)
            continue
        instances.append((k, int(categories[k - 1]), ids == k))
    return size, semantic.astype(np.uint8), instances


# ----------------------------------------------------------------------------------------------
# One split


def _categories() -> List[Dict]:
    return [{"id": i + 1, "name": n, "supercategory": "voc"} for i, n in enumerate(VOC_CLASSES)]


def _rle_annotations(masks: List[np.ndarray]):
    """COCO RLEs (``counts`` as str), areas and ``[x, y, w, h]`` boxes of ``(H, W)`` masks,
    from pycocotools (the box is the tight box of the mask's pixels)."""
    import pycocotools.mask as mask_util

    if not masks:
        return [], [], []
    rles = mask_util.encode(np.asfortranarray(np.stack(masks, axis=-1).astype(np.uint8)))
    areas = mask_util.area(rles).tolist()
    boxes = mask_util.toBbox(rles).tolist()
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles, areas, boxes


def _stamp(release: Path, list_file: Path) -> Dict:
    return {"format_version": FORMAT_VERSION, "release": str(release.resolve()), "list_file": str(list_file.resolve())}


def _stamp_path(output: Path, split: str) -> Path:
    return split_json(output, split).with_suffix(".stamp")


def is_up_to_date(release: Path, output: Path, split: str, list_file: Path) -> bool:
    """Whether ``split`` was converted by this format version from this release and list."""
    try:
        stamp = json.loads(_stamp_path(output, split).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return stamp == _stamp(release, list_file) and split_json(output, split).is_file()


def convert_split(release: Path, output: Path, split: str, list_file: Optional[Path] = None) -> Dict[str, int]:
    """Convert one split (see the module docstring); returns ``{"images": N, "instances": M}``."""
    dataset_dir = release / "dataset"
    list_file = list_file if list_file is not None else dataset_dir / f"{split}.txt"
    names = read_list(list_file)
    sem_dir = split_sem_dir(output, split)
    images, annotations = [], []
    for image_id, name in enumerate(names, 1):
        (height, width), semantic, instances = read_image_annotations(dataset_dir, name)
        images.append({"id": image_id, "file_name": f"{name}.jpg", "height": height, "width": width})
        rles, areas, boxes = _rle_annotations([m for _, _, m in instances])
        for (k, category, _), rle, area, box in zip(instances, rles, areas, boxes):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "area": float(area),
                    "bbox": [float(v) for v in box],
                    "iscrowd": 0,
                    "sbd_instance_id": k,
                }
            )
        write_label_png(sem_dir / f"{name}.png", semantic)
        if image_id % PROGRESS_EVERY == 0 or image_id == len(names):
            logger.info("sbd %s: %d/%d images (%.0f%%), %d instances", split, image_id, len(names),
                        100.0 * image_id / len(names), len(annotations))
    data = {
        "info": {
            "description": f"SBD {split} instance masks (PASCAL VOC 2012), converted by datasets/prepare_sbd.py",
            "release": str(release.resolve()),
            "list_file": str(list_file.resolve()),
        },
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
    }
    write_json(split_json(output, split), data)
    # Written last: its presence means every output of the split is complete.
    write_json(_stamp_path(output, split), _stamp(release, list_file))
    return {"images": len(images), "instances": len(annotations)}


def prepare_sbd(
    root: Optional[os.PathLike] = None,
    output: Optional[os.PathLike] = None,
    splits: Sequence[str] = SPLITS,
    lists: Optional[Dict[str, os.PathLike]] = None,
    force: bool = False,
) -> Dict[str, Path]:
    """Convert ``splits`` of the release folder ``root`` into ``output``, skipping those already
    up to date (unless ``force``). ``lists``: ``{split: list file}`` replacing the default
    ``<root>/dataset/<split>.txt``. Returns ``{split: JSON path}``.

    ``root`` defaults to ``release_dir()`` (``$DETECTRON2_DATASETS/benchmark_RELEASE``),
    ``output`` to ``default_output_dir()`` (``$INSTFCN_D2_CACHE/sbd``), both read now."""
    release = Path(root).expanduser() if root is not None else release_dir()
    output = Path(output).expanduser() if output is not None else default_output_dir()
    if not (release / "dataset").is_dir():
        raise FileNotFoundError(
            f"SBD release not found: {release / 'dataset'} is not a folder; pass --root pointing at "
            "benchmark_RELEASE/ (extracted from SBD's benchmark.tgz)"
        )
    lists = {k: Path(v).expanduser() for k, v in (lists or {}).items()}
    written = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown SBD split {split!r}; expected one of {SPLITS}")
        list_file = lists.get(split, release / "dataset" / f"{split}.txt")
        if not force and is_up_to_date(release, output, split, list_file):
            logger.info("sbd %s: up to date in %s (--force to redo)", split, output)
        else:
            logger.info("sbd %s: converting %s (list %s) into %s", split, release, list_file, output)
            counts = convert_split(release, output, split, list_file)
            logger.info("sbd %s: %d images, %d instances", split, counts["images"], counts["instances"])
        written[split] = split_json(output, split)
    return written
