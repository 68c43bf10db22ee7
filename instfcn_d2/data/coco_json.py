"""COCO-format instance datasets given by their files: checked up front, and registered from config
keys so that ``tools/train_net.py`` trains and evaluates on them without any Python.

Config keys (declared in :func:`instfcn_d2.config.add_instfcn_config`; ``""`` = not used)::

    DATASETS.COCO_JSON_TRAIN        instances JSON of the training set
    DATASETS.COCO_IMAGE_ROOT_TRAIN  the folder its images' ``file_name`` are relative to
    DATASETS.COCO_JSON_TEST         instances JSON of the evaluation set
    DATASETS.COCO_IMAGE_ROOT_TEST

:func:`apply_coco_json_config` registers each JSON with detectron2's ``register_coco_instances``
under a name derived from its path (``<json stem>_<8 hex digits>``, the same in every process and
run), then sets ``DATASETS.TRAIN`` / ``DATASETS.TEST`` to it and ``MODEL.ROI_HEADS.NUM_CLASSES`` to
its number of categories. The config saved in ``OUTPUT_DIR/config.yaml`` keeps the keys, so
``--eval-only --config-file OUTPUT_DIR/config.yaml`` registers the same datasets again.

:func:`check_coco_json` rejects annotations that detectron2's loader would drop with a mere count
in a warning but that make COCO's evaluation (pycocotools, reading the JSON itself) fail after the
whole training, with ``input type is not supported`` and no hint of which annotation: an empty
polygon list (``[]``, ``[[]]``) or one whose first polygon has fewer than 3 points, an RLE of
another size than its image, a missing ``segmentation`` among annotations that have one. They are
rejected rather than dropped: a cleaned copy of the JSON would be needed for the evaluation, and
such annotations are bugs of the conversion that made the file, which the message lets the user
find (file, annotation id, image). Zero-size boxes with a valid mask only get a warning: the
training mapper takes their box from the mask.
"""
import hashlib
import json
import logging
import os
import re
from typing import Dict, Iterable, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

logger = logging.getLogger(__name__)

__all__ = ["CocoAnnotationError", "check_coco_json", "check_coco_json_datasets", "apply_coco_json_config", "coco_json_dataset_name"]

_MAX_LISTED = 10
_checked: Dict[tuple, dict] = {}  # (path, mtime, size) -> summary: each file is read once per process


class CocoAnnotationError(ValueError):
    """A COCO JSON holds annotations that its evaluation cannot read; the message names the file,
    the annotation ids and their images."""


def _load_json(json_file: str) -> dict:
    try:
        with open(json_file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CocoAnnotationError(f"{json_file}: not valid JSON: {e}") from None


def _segmentation_problem(segm, height, width) -> Optional[str]:
    """Why COCO's evaluation cannot read ``segm`` (``None``: it can)."""
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            return f"RLE segmentation without 'counts' and 'size' (keys: {sorted(segm)})"
        if height is not None and [int(s) for s in segm["size"]] != [int(height), int(width)]:
            return f"RLE segmentation of size {list(segm['size'])} on an image of height x width {height} x {width}"
        return None
    if not isinstance(segm, list):
        return f"segmentation of type {type(segm).__name__} (expected polygons or RLE)"
    if not segm:
        return "empty segmentation list []"
    if any(not isinstance(p, list) for p in segm):
        return "polygon segmentation must be a list of [x0, y0, x1, y1, ...] lists"
    first = segm[0]
    if len(first) < 6 or len(first) % 2:
        # pycocotools decides polygons vs box from the first entry's length: fewer than 6 numbers
        # is either an error ("input type is not supported") or read as a box
        return f"first polygon has {len(first)} coordinates (needs an even number >= 6, 3 points): {_short(segm)}"
    return None


def check_coco_json(json_file: str, data: Optional[dict] = None) -> dict:
    """Check a COCO instances JSON for annotations its evaluation cannot read (see the module
    docstring); raise :class:`CocoAnnotationError` listing them (file, annotation id, image id and
    file name). Warns about zero-size boxes of annotations with a valid mask. Returns a summary
    (``images``, ``annotations``, ``categories``: counts). ``data``: the file's parsed content,
    when already loaded. Each file (path, mtime, size) is checked once per process."""
    stat = os.stat(json_file)
    key = (os.path.abspath(json_file), stat.st_mtime_ns, stat.st_size)
    if key in _checked:
        return _checked[key]
    if data is None:
        data = _load_json(json_file)
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise CocoAnnotationError(f"{json_file}: no '{field}' list (a COCO instances JSON has images, annotations, categories)")
    images = {img.get("id"): img for img in data["images"]}
    category_ids = {c.get("id") for c in data["categories"]}
    any_segmentation = any("segmentation" in a for a in data["annotations"])
    problems, zero_boxes = [], []
    for ann in data["annotations"]:
        img = images.get(ann.get("image_id"), {})
        where = f"annotation id {ann.get('id')} (image id {ann.get('image_id')}, {img.get('file_name', '<image not in images>')})"
        bbox = ann.get("bbox")
        if bbox is not None and len(bbox) != 4:
            problems.append(f"{where}: bbox {bbox!r} is not [x, y, width, height]")
        if ann.get("category_id") not in category_ids:
            problems.append(f"{where}: category_id {ann.get('category_id')} is not in 'categories'")
        if "segmentation" not in ann or ann["segmentation"] is None:
            if any_segmentation:
                problems.append(f"{where}: no segmentation (other annotations of the file have one)")
            continue
        problem = _segmentation_problem(ann["segmentation"], img.get("height"), img.get("width"))
        if problem:
            problems.append(f"{where}: {problem}")
        elif bbox is not None and len(bbox) == 4 and (bbox[2] <= 0 or bbox[3] <= 0):
            zero_boxes.append(str(ann.get("id")))
    if problems:
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise CocoAnnotationError(
            f"{json_file}: {len(problems)} annotation(s) that COCO's evaluation cannot read (detectron2's "
            f"loader would drop some of them from training, then the final evaluation fails on them):\n  {listed}{more}\n"
            "Fix or delete these annotations in the JSON."
        )
    if zero_boxes:
        logger.warning(
            "%s: %d annotation(s) with a valid mask have a bbox of zero width or height (ids %s%s); the training "
            "takes their box from the mask, the box AP of the evaluation reads the JSON's box",
            json_file, len(zero_boxes), ", ".join(zero_boxes[:_MAX_LISTED]), ", ..." if len(zero_boxes) > _MAX_LISTED else "",
        )
    summary = {"images": len(data["images"]), "annotations": len(data["annotations"]), "categories": len(data["categories"])}
    _checked[key] = summary
    return summary


def check_coco_json_datasets(dataset_names: Iterable[str]) -> None:
    """:func:`check_coco_json` on the JSON file (metadata ``json_file``) of each dataset that has
    one on disk; others are skipped (their loaders convert or check their own data)."""
    for name in dataset_names:
        json_file = MetadataCatalog.get(name).get("json_file", None)
        if json_file and os.path.isfile(json_file):
            check_coco_json(json_file)


def coco_json_dataset_name(json_file: str, image_root: str) -> str:
    """The registered name of a JSON + image folder: the JSON's file stem and a hash of both
    absolute paths (stable across processes and runs, distinct for distinct files)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(json_file))[0]) or "coco"
    digest = hashlib.sha1(f"{os.path.abspath(json_file)}|{os.path.abspath(image_root)}".encode()).hexdigest()[:8]
    return f"{stem}_{digest}"


def _register(split: str, json_file: str, image_root: str) -> tuple:
    """Check and register one split's files; returns (name, categories sorted by id, summary)."""
    json_key, root_key = f"DATASETS.COCO_JSON_{split}", f"DATASETS.COCO_IMAGE_ROOT_{split}"
    if not json_file:
        raise ValueError(f"{root_key} is set ({image_root}) but {json_key} is empty: give the instances JSON too")
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{json_key}: no such file: {json_file}")
    if not image_root:
        raise ValueError(f"{json_key} is set but {root_key} is empty: set it to the folder holding the images of {json_file}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"{root_key}: no such folder: {image_root} (the images of {json_file})")
    data = _load_json(json_file)
    summary = check_coco_json(json_file, data)
    if data["images"]:
        first = os.path.join(image_root, data["images"][0].get("file_name", ""))
        if not os.path.isfile(first):
            raise FileNotFoundError(
                f"{root_key} = {image_root} does not hold the first image of {json_file} ({first} not found): "
                "it must be the folder that the images' file_name are relative to"
            )
    categories = sorted(data["categories"], key=lambda c: c["id"])
    name = coco_json_dataset_name(json_file, image_root)
    json_abs, root_abs = os.path.abspath(json_file), os.path.abspath(image_root)
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_abs, root_abs)
    meta = MetadataCatalog.get(name)
    classes = [c["name"] for c in categories]
    if meta.get("thing_classes", None) != classes:  # as detectron2's loader sets them on first load
        if meta.get("thing_classes", None) is not None:
            raise ValueError(f"dataset '{name}' ({json_file}) was registered with other categories in this process")
        # stuff_classes: the names of the semantic labels BiSeg predicts (0 background, c + 1 class c),
        # as the project's other datasets declare them (drawn by tools/visualize_predictions.py)
        meta.set(thing_classes=classes, stuff_classes=["background"] + classes)
    return name, categories, summary


def apply_coco_json_config(cfg) -> List[str]:
    """Register the datasets of ``DATASETS.COCO_JSON_TRAIN`` / ``_TEST`` (module docstring) and set
    ``DATASETS.TRAIN`` / ``TEST`` and ``MODEL.ROI_HEADS.NUM_CLASSES`` in ``cfg`` (not frozen).
    Returns one line per change, for the log; nothing when the keys are empty. Errors name the
    missing JSON or folder, or the annotations (:func:`check_coco_json`)."""
    splits = [s for s in ("TRAIN", "TEST") if cfg.DATASETS[f"COCO_JSON_{s}"] or cfg.DATASETS[f"COCO_IMAGE_ROOT_{s}"]]
    if not splits:
        return []
    if cfg.is_frozen():
        raise ValueError("apply_coco_json_config needs a mutable config; call it before cfg.freeze()")
    notes, categories = [], {}
    for split in splits:
        json_file, root = cfg.DATASETS[f"COCO_JSON_{split}"], cfg.DATASETS[f"COCO_IMAGE_ROOT_{split}"]
        name, categories[split], summary = _register(split, json_file, root)
        old = tuple(cfg.DATASETS[split])
        cfg.DATASETS[split] = (name,)
        notes.append(
            f"DATASETS.COCO_JSON_{split}: registered '{name}' ({summary['images']} images, {summary['annotations']} "
            f"annotations, {summary['categories']} categories) from {json_file}, images under {root}; "
            f"DATASETS.{split} {old} -> {(name,)}"
        )
    if len(categories) == 2:
        ids = {s: [(c["id"], c["name"]) for c in categories[s]] for s in categories}
        if ids["TRAIN"] != ids["TEST"]:
            raise ValueError(
                f"the categories of DATASETS.COCO_JSON_TRAIN ({cfg.DATASETS.COCO_JSON_TRAIN}: {ids['TRAIN'][:8]}) and "
                f"DATASETS.COCO_JSON_TEST ({cfg.DATASETS.COCO_JSON_TEST}: {ids['TEST'][:8]}) differ: the model's "
                "class indices would not match; give both files the same 'categories'"
            )
    cats = categories.get("TRAIN", categories.get("TEST"))
    old = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(cats)
    shown = ", ".join(c["name"] for c in cats[:8]) + (", ..." if len(cats) > 8 else "")
    notes.append(f"MODEL.ROI_HEADS.NUM_CLASSES {old} -> {len(cats)} (the JSON's categories: {shown})")
    return notes


def _short(obj, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
