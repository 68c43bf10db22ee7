"""coco128, a small real slice of COCO 2017: detectron2 registration and loading.

``coco128_train`` / ``coco128_val`` read the images and the train instances JSON from the
``coco128/`` folder (see ``datasets/README.md``) and the files derived from it (val instances
JSON, semantic label PNGs of both splits) from ``cache_root()/coco128``. Those derived files are
made by :mod:`.convert_coco128`, on the first load of a split when missing or out of date.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Dict, List, Optional

from .convert_coco128 import (
    IGNORE_LABEL,
    SEM_DIRS,
    TRAIN_INSTANCES_JSON,
    VAL_INSTANCES_JSON,
    default_output_dir,
    prepare_coco128,
    val_json_ready,
)
from .paths import datasets_root, sync_metadata_paths

__all__ = [
    "DATASET_NAMES",
    "IMAGE_DIRS",
    "coco128_dir",
    "load_coco128",
    "register_coco128",
]

# Relative to the coco128 folder.
IMAGE_DIRS = {"train": "train2017", "val": "val2017"}
DATASET_NAMES = {"train": "coco128_train", "val": "coco128_val"}


def coco128_dir(root: Optional[os.PathLike] = None) -> Path:
    """The coco128 folder: ``<root>/coco128``, ``root`` defaulting to ``datasets_root()``
    (``$DETECTRON2_DATASETS``, read now). Raises FileNotFoundError naming the path looked at."""
    base = Path(root).expanduser() if root is not None else datasets_root()
    path = base / "coco128"
    if not path.is_dir():
        how = (
            f"register_coco128(root={str(root)!r}) points at a folder without coco128/"
            if root is not None
            else "set DETECTRON2_DATASETS to the folder holding coco128/ "
            "or symlink datasets/coco128 to it"
        )
        raise FileNotFoundError(f"coco128 not found at {path.resolve()}: {how}")
    return path


def _split_paths(split: str, root: Optional[os.PathLike]):
    """``(coco_dir, json_file, image_root, sem_seg_root)`` of a split, from the env read now;
    raises FileNotFoundError when the coco128 folder is missing."""
    coco_dir = coco128_dir(root)
    out = default_output_dir()
    json_file = coco_dir / TRAIN_INSTANCES_JSON if split == "train" else out / VAL_INSTANCES_JSON
    return coco_dir, json_file, coco_dir / IMAGE_DIRS[split], out / SEM_DIRS[split]


def load_coco128(
    split: str, root: Optional[os.PathLike] = None, dataset_name: Optional[str] = None
) -> List[Dict]:
    """detectron2 dataset dicts of a coco128 split (``"train"`` or ``"val"``).

    Paths are resolved now (``root`` or ``$DETECTRON2_DATASETS``; ``$INSTFCN_D2_CACHE``) and
    written into the metadata of ``dataset_name``, the derived files are made if missing
    (:func:`.convert_coco128.prepare_coco128`), then records come from ``load_coco_json`` (train:
    the original instances JSON; val: the derived one), each with a ``sem_seg_file_name``.
    """
    from detectron2.data.datasets import load_coco_json

    coco_dir, json_file, image_root, sem_root = _split_paths(split, root)
    if dataset_name is not None:
        sync_metadata_paths(
            dataset_name, json_file=str(json_file), image_root=str(image_root), sem_seg_root=str(sem_root)
        )
    prepare_coco128(coco_dir, default_output_dir(), splits=(split,))
    records = load_coco_json(str(json_file), str(image_root), dataset_name)
    for r in records:
        r["sem_seg_file_name"] = str(sem_root / (Path(r["file_name"]).stem + ".png"))
    return records


def _coco_thing_metadata() -> Dict:
    """Thing metadata as detectron2's builtin COCO (``builtin_meta._get_coco_instances_meta``)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    things = [c for c in COCO_CATEGORIES if c["isthing"] == 1]
    thing_classes = [c["name"] for c in things]
    thing_colors = [c["color"] for c in things]
    return {
        "thing_classes": thing_classes,
        "thing_colors": thing_colors,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["background"] + thing_classes,
        "stuff_colors": [[0, 0, 0]] + thing_colors,
        "ignore_label": IGNORE_LABEL,
        "evaluator_type": "coco",
    }


def register_coco128(root: Optional[os.PathLike] = None) -> None:
    """Register ``coco128_train`` and ``coco128_val`` in detectron2's catalogs.

    ``root`` is the folder holding ``coco128/`` (detectron2's ``register_all_coco`` convention);
    ``None`` means ``$DETECTRON2_DATASETS`` (default ``./datasets``), read when the dataset is
    loaded, not now. The loaders convert on first use.

    Metadata is that of detectron2's builtin COCO plus ``stuff_classes``, ``ignore_label``,
    ``image_root``, ``json_file`` and ``sem_seg_root``, the paths from the environment at
    registration; the loader re-points them if the environment changed since. Val's
    ``json_file`` is the derived ``cache_root()/coco128/instances_val2017.json``, set here only
    when that file is already there: ``COCOEvaluator`` (v0.6) reads ``json_file`` in its
    constructor, and when the key is absent it converts the dataset dicts itself
    (``convert_to_coco_json``), which runs the loader, which converts the val split and sets
    ``json_file``. So an evaluator built before the first load (detectron2's tutorial order) works
    on a fresh cache too. Registering again replaces the previous entries.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    thing_meta = _coco_thing_metadata()
    for split, name in DATASET_NAMES.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(load_coco128, split, root, name))
        coco_dir = (Path(root).expanduser() if root is not None else datasets_root()) / "coco128"
        meta = dict(thing_meta, image_root=str(coco_dir / IMAGE_DIRS[split]))
        if split == "train":
            meta["json_file"] = str(coco_dir / TRAIN_INSTANCES_JSON)
        out = default_output_dir()
        meta["sem_seg_root"] = str(out / SEM_DIRS[split])
        if split == "val" and val_json_ready(coco_dir, out):
            meta["json_file"] = str(out / VAL_INSTANCES_JSON)
        MetadataCatalog.get(name).set(**meta)
