"""SBD (PASCAL VOC 2012 instance masks): paths, class list and detectron2 registration.

The Semantic Boundaries Dataset release (``benchmark.tgz``, extracting to ``benchmark_RELEASE/``)
stores its masks as MATLAB files. :mod:`.convert_sbd` (command line ``datasets/prepare_sbd.py``)
converts them once into what detectron2 reads (see ``datasets/README.md``); this module knows
where those files are and registers them:

* ``sbd_train`` / ``sbd_val``: images ``<root>/benchmark_RELEASE/dataset/img/<name>.jpg``
  (``root`` = ``$DETECTRON2_DATASETS`` by default), annotations
  ``<output>/annotations/sbd_<split>.json`` (COCO format, RLE masks, category ids 1..20 in
  :data:`VOC_CLASSES` order) and semantic labels ``<output>/sem_seg/<split>/<name>.png``
  (``uint8``: 0 background, 1..20 class, 255 ignore), ``output`` = ``$INSTFCN_D2_CACHE/sbd`` by
  default (derived files never go into the dataset folder, which may be read-only).

Registration is lazy and cheap: nothing is read until ``DatasetCatalog.get``, and a dataset that
was not converted then raises ``FileNotFoundError`` naming the missing file and the command that
makes it. ``evaluator_type`` is ``"sbd"``: the trainer evaluates with the VOC region AP
(mAPr@0.5 / @0.7) and COCO AP.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Dict, List, Optional

from .paths import cache_root, datasets_root, sync_metadata_paths

__all__ = [
    "VOC_CLASSES",
    "IGNORE_LABEL",
    "DATASET_NAMES",
    "SPLITS",
    "release_dir",
    "default_output_dir",
    "split_json",
    "split_sem_dir",
    "sbd_metadata",
    "load_sbd",
    "register_sbd",
]

# PASCAL VOC order: SBD's class index k (1..20) is VOC_CLASSES[k - 1]; the JSON category ids are k.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
IGNORE_LABEL = 255
SPLITS = ("train", "val")
DATASET_NAMES = {"train": "sbd_train", "val": "sbd_val"}
RELEASE_DIRNAME = "benchmark_RELEASE"
PREPARE_SCRIPT = "datasets/prepare_sbd.py"


# ----------------------------------------------------------------------------------------------
# Paths (resolved when called, so an environment set after import is honoured)


def release_dir(root: Optional[os.PathLike] = None) -> Path:
    """The SBD release folder ``<root>/benchmark_RELEASE`` (``root``: the folder holding it,
    default ``$DETECTRON2_DATASETS``). Not checked here."""
    base = Path(root).expanduser() if root is not None else datasets_root()
    return base / RELEASE_DIRNAME


def default_output_dir() -> Path:
    """Where converted SBD files go by default: ``cache_root()/sbd`` (``$INSTFCN_D2_CACHE``)."""
    return cache_root() / "sbd"


def split_json(output: os.PathLike, split: str) -> Path:
    """``<output>/annotations/sbd_<split>.json``."""
    return Path(output) / "annotations" / f"sbd_{split}.json"


def split_sem_dir(output: os.PathLike, split: str) -> Path:
    """``<output>/sem_seg/<split>``: one ``<name>.png`` per image."""
    return Path(output) / "sem_seg" / split


def prepare_command(release: Path, output: Path) -> str:
    """The shell command that converts the release into ``output``."""
    return f"python {PREPARE_SCRIPT} --root {release} --output {output}"


# ----------------------------------------------------------------------------------------------
# detectron2 registration


def sbd_metadata() -> Dict:
    """Metadata shared by both splits (paths are added per split)."""
    return {
        "thing_classes": list(VOC_CLASSES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(VOC_CLASSES))},
        "stuff_classes": ["background"] + list(VOC_CLASSES),
        "ignore_label": IGNORE_LABEL,
        "evaluator_type": "sbd",
    }


def _paths(split: str, root: Optional[os.PathLike], output: Optional[os.PathLike]):
    """``(release, output, json_file, image_root, sem_seg_root)`` of a split, from the env now."""
    release = release_dir(root)
    out = Path(output).expanduser() if output is not None else default_output_dir()
    return release, out, split_json(out, split), release / "dataset" / "img", split_sem_dir(out, split)


def load_sbd(
    split: str,
    root: Optional[os.PathLike] = None,
    output: Optional[os.PathLike] = None,
    dataset_name: Optional[str] = None,
) -> List[Dict]:
    """detectron2 dataset dicts of an SBD split (``"train"`` or ``"val"``) from the converted
    files: ``load_coco_json`` records, each with a ``sem_seg_file_name``.

    Raises FileNotFoundError naming the expected file and the conversion command when the split
    was not converted, or naming the image folder when the release is not at ``root``.
    """
    from detectron2.data.datasets import load_coco_json

    if split not in SPLITS:
        raise ValueError(f"unknown SBD split {split!r}; expected one of {SPLITS}")
    release, out, json_file, image_root, sem_root = _paths(split, root, output)
    if not json_file.is_file():
        raise FileNotFoundError(
            f"SBD {split}: converted annotations not found at {json_file.resolve()}. Extract SBD's "
            f"benchmark.tgz into {release.parent.resolve()} (giving {RELEASE_DIRNAME}/) and run "
            f"`{prepare_command(release, out)}` (see datasets/README.md, section SBD)"
        )
    if not image_root.is_dir():
        raise FileNotFoundError(
            f"SBD {split}: image folder not found at {image_root.resolve()}; point DETECTRON2_DATASETS "
            f"(or register_sbd(root=...)) at the folder holding {RELEASE_DIRNAME}/"
        )
    if dataset_name is not None:
        sync_metadata_paths(
            dataset_name, json_file=str(json_file), image_root=str(image_root), sem_seg_root=str(sem_root)
        )
    records = load_coco_json(str(json_file), str(image_root), dataset_name)
    for r in records:
        r["sem_seg_file_name"] = str(sem_root / (Path(r["file_name"]).stem + ".png"))
    return records


def register_sbd(root: Optional[os.PathLike] = None, output: Optional[os.PathLike] = None) -> None:
    """Register ``sbd_train`` and ``sbd_val`` in detectron2's catalogs (replacing earlier entries).

    Args:
        root: the folder holding ``benchmark_RELEASE/``; None: ``$DETECTRON2_DATASETS``, read when
            the dataset is loaded.
        output: the folder the conversion wrote to; None: ``$INSTFCN_D2_CACHE/sbd``, read when
            the dataset is loaded.

    Metadata: :func:`sbd_metadata` plus ``image_root`` and ``sem_seg_root`` (from the environment
    now; the loader re-points them if it changed), and ``json_file`` only when the converted JSON
    already exists: ``COCOEvaluator`` reads ``json_file`` in its constructor, and without it
    converts the dataset dicts itself, which runs the loader (setting ``json_file``, or raising
    the "not converted" error), so a missing file is never handed to pycocotools.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for split, name in DATASET_NAMES.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(load_sbd, split, root, output, name))
        _, _, json_file, image_root, sem_root = _paths(split, root, output)
        meta = dict(sbd_metadata(), image_root=str(image_root), sem_seg_root=str(sem_root))
        if json_file.is_file():
            meta["json_file"] = str(json_file)
        MetadataCatalog.get(name).set(**meta)
