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

It also rejects what training would silently misread, or the evaluation fail on at its end:

* ids: an image id given to two images (pycocotools indexes images by id: one image is trained
  with the masks of both), annotation or category ids given twice, an annotation whose
  ``image_id`` or ``category_id`` is in no list;
* lists: no ``categories`` or an empty one (detectron2's loader dies on ``min()`` of no ids), no
  images (an evaluation set without images failed only after the whole schedule);
* values: a ``bbox`` missing, not four finite numbers (NaN, inf) or of negative width or height;
  a polygon with a coordinate that is not a finite number; ``iscrowd`` missing or not 0 / 1;
  ``area`` missing, not finite or negative (COCO's evaluation reads both for every object); an
  image ``width`` / ``height`` missing or not a positive integer.

Training and evaluation files get the same checks, each file once per process. With the image
folder, the image files are checked too, from their headers (:mod:`.image_files`): present,
readable, of a mode that ``read_image`` converts as the image means (16-bit and float images are
refused: PIL clips them at 255), of the JSON's size after the EXIF rotation.
"""
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Optional, Set

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .image_files import ImageEntry, image_file_problems

logger = logging.getLogger(__name__)

__all__ = ["CocoAnnotationError", "check_coco_json", "check_coco_json_datasets", "apply_coco_json_config", "coco_json_dataset_name"]

_MAX_LISTED = 10
_checked: Dict[tuple, dict] = {}  # (path, mtime, size) -> summary: each file is read once per process
_images_checked: Set[tuple] = set()  # ((path, mtime, size), image root): the images of each, once


class CocoAnnotationError(ValueError):
    """A COCO JSON, or the image files it lists, holds entries that training would misread or that
    its evaluation cannot read; the message names the file, the ids and the field."""


def _load_json(json_file: str) -> dict:
    try:
        with open(json_file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CocoAnnotationError(f"{json_file}: not valid JSON: {e}") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return _is_number(value) and math.isfinite(value)


def _all_finite(values: list) -> bool:
    """Whether every entry of ``values`` is a finite number. By ``sum`` (in C: NaN and inf carry
    through it, None, strings and lists raise), so a JSON of a million polygons takes a fraction
    of a second; entry by entry only where the sum is not finite (it may overflow)."""
    try:
        if math.isfinite(sum(values)):
            return True
    except TypeError:  # None, a string, a nested list
        return False
    return all(_is_finite_number(v) for v in values)


def _positive_integer(value) -> bool:
    """An image ``width`` / ``height``: a positive whole number (``96`` or ``96.0``)."""
    return _is_finite_number(value) and value > 0 and value == int(value)


def _segmentation_problem(segm, height, width) -> Optional[str]:
    """Why COCO's evaluation cannot read ``segm``, or training would misread it (``None``: they
    can). ``height`` / ``width``: its image's, ``None`` when the image entry has none."""
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
    for k, polygon in enumerate(segm):
        if not _all_finite(polygon):  # NaN rasterises to garbage in training and in pycocotools
            return f"segmentation polygon {k} has a coordinate that is not a finite number: {_short(polygon)}"
    return None


def _bbox_problem(bbox) -> Optional[str]:
    """Why ``bbox`` is no box (``None``: it is one, possibly of zero size). Training reads it
    (detectron2's mapper fails on a missing one) and so does the box AP of the evaluation."""
    if bbox is None:
        return "no bbox ([x, y, width, height], which training and the box evaluation read)"
    if not isinstance(bbox, list) or len(bbox) != 4:
        return f"bbox {bbox!r} is not [x, y, width, height]"
    if not _all_finite(bbox):
        return f"bbox {bbox!r} has a value that is not a finite number"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {bbox!r} has a negative width or height"
    return None


def _crowd_and_area_problems(ann) -> List[str]:
    """``iscrowd`` and ``area``, which COCO's evaluation reads for every ground-truth object: a
    missing one fails it at the very end (``KeyError``); a negative area leaves the object out of
    every area range, silently; an ``iscrowd`` other than 0 / 1 is a crowd to some readers
    (pycocotools, detectron2) and a plain object to others (``int("0")``)."""
    problems = []
    if "iscrowd" not in ann:
        problems.append("no iscrowd (COCO's evaluation reads it: 0 for an object, 1 for a crowd region)")
    elif ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], str):
        problems.append(f"iscrowd {ann['iscrowd']!r} is not 0 or 1")
    area = ann.get("area")
    if "area" not in ann:
        problems.append("no area (COCO's evaluation reads it: the mask's area in pixels)")
    elif not _is_finite_number(area):
        problems.append(f"area {area!r} is not a finite number")
    elif area < 0:
        problems.append(f"area {area!r} is negative (COCO's evaluation would leave the object out of every area range)")
    return problems


def _hashable_id(value):
    """An id as a dict key, ``None`` for a missing or unusable one (``null``, a list)."""
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None


def _duplicate_ids(entries: list, plural: str, singular: str, describe=lambda e: None) -> List[str]:
    """One line per id that several of ``entries`` share: pycocotools indexes them by id and keeps
    the last, so an image takes another's annotations, an annotation hides another."""
    ids = [_hashable_id(entry.get("id")) for entry in entries]
    repeated = {key for key, n in Counter(ids).items() if n > 1 and key is not None}
    groups = defaultdict(list)
    for key, entry in zip(ids, entries):
        if key in repeated:
            groups[key].append(entry)
    problems = []
    for key, group in groups.items():
        names = [str(describe(e)) for e in group if describe(e) is not None]
        shown = f" ({', '.join(names[:_MAX_LISTED])}{', ...' if len(names) > _MAX_LISTED else ''})" if names else ""
        problems.append(f"{singular} id {key}: {len(group)} {plural} have this id{shown}")
    return problems


def _category_problems(categories: list) -> List[str]:
    problems = _duplicate_ids(categories, "categories", "category", lambda c: c.get("name"))
    for i, cat in enumerate(categories):
        if _hashable_id(cat.get("id")) is None:
            problems.append(f"categories[{i}] ({cat.get('name')}): 'id' {cat.get('id')!r} is missing or not a number")
        elif not isinstance(cat.get("name"), str):
            problems.append(f"category id {cat['id']}: no 'name' (a string; the model's class names come from it)")
    return problems


def _image_problems(images: list) -> List[str]:
    problems = _duplicate_ids(images, "images", "image", lambda img: img.get("file_name"))
    for i, img in enumerate(images):
        label = f"image id {img['id']}" if _hashable_id(img.get("id")) is not None else f"images[{i}]"
        where = f"{label} ({img.get('file_name', '<no file_name>')})"
        if _hashable_id(img.get("id")) is None:
            problems.append(f"{where}: 'id' {img.get('id')!r} is missing or not a number")
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            problems.append(f"{where}: no 'file_name'")
        for field in ("width", "height"):  # detectron2's loader reads both; its mapper compares them
            if field not in img:
                problems.append(f"{where}: no '{field}'")
            elif not _positive_integer(img[field]):
                problems.append(f"{where}: {field} {img[field]!r} is not a positive integer")
    return problems


def _image_size(img: dict):
    """``(height, width)`` of an image entry, ``(None, None)`` when it has no valid one (reported
    on its own)."""
    if _positive_integer(img.get("height")) and _positive_integer(img.get("width")):
        return img["height"], img["width"]
    return None, None


#: Pixels a box may reach past the image's border (rounding of converted annotations).
BOX_BORDER_SLACK = 1.0


def _bbox_outside_problem(bbox, height, width) -> str:
    """A valid ``[x, y, w, h]`` box reaching more than :data:`BOX_BORDER_SLACK` pixels past the
    image of ``height x width`` (``None``: not checked), or ``""``. Training clips such a box (or
    drops it as empty) without a word, and COCO's box AP scores against the box as written."""
    if height is None:
        return ""
    x, y, w, h = (float(v) for v in bbox)
    s = BOX_BORDER_SLACK
    if x < -s or y < -s or x + w > width + s or y + h > height + s:
        return f"bbox {list(bbox)} reaches outside the image of height x width {height} x {width}"
    return ""


def _annotation_problems(data: dict, images: dict):
    """``(problems, zero_boxes)`` of the annotations: lines naming annotation id, image and field;
    ids of annotations with a valid mask and a box of zero width or height."""
    category_ids = {_hashable_id(c.get("id")) for c in data["categories"]}
    any_segmentation = any("segmentation" in a for a in data["annotations"])
    problems = _duplicate_ids(data["annotations"], "annotations", "annotation")
    zero_boxes = []
    for i, ann in enumerate(data["annotations"]):
        img = images.get(_hashable_id(ann.get("image_id")), {})
        found = []
        if _hashable_id(ann.get("id")) is None:
            found.append(f"'id' {ann.get('id')!r} is missing or not a number")
        if not img:
            found.append(f"image_id {ann.get('image_id')!r} is not in 'images'")
        if _hashable_id(ann.get("category_id")) not in category_ids:
            found.append(f"category_id {ann.get('category_id')} is not in 'categories'")
        bbox = ann.get("bbox")
        box_problem = _bbox_problem(bbox) or _bbox_outside_problem(bbox, *_image_size(img))
        if box_problem:
            found.append(box_problem)
        found += _crowd_and_area_problems(ann)
        if "segmentation" not in ann or ann["segmentation"] is None:
            if any_segmentation:
                found.append("no segmentation (other annotations of the file have one)")
        else:
            segm_problem = _segmentation_problem(ann["segmentation"], *_image_size(img))
            if segm_problem:
                found.append(segm_problem)
            elif not box_problem and (bbox[2] == 0 or bbox[3] == 0):
                zero_boxes.append(str(ann.get("id")))
        if found:
            label = f"annotation id {ann['id']}" if _hashable_id(ann.get("id")) is not None else f"annotations[{i}]"
            where = f"{label} (image id {ann.get('image_id')}, {img.get('file_name', '<image not in images>')})"
            problems += [f"{where}: {p}" for p in found]
    return problems, zero_boxes


def _check_lists(json_file: str, data) -> None:
    """The three lists, with at least one image and one category: raise naming the file and the
    key otherwise (detectron2's loader fails on no categories with ``min() arg is an empty
    sequence``; an evaluation set without images fails only after the whole training)."""
    if not isinstance(data, dict):
        raise CocoAnnotationError(f"{json_file}: not a COCO instances JSON (it holds a {type(data).__name__}, not an object "
                                  "with images, annotations, categories)")
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise CocoAnnotationError(f"{json_file}: no '{field}' list (a COCO instances JSON has images, annotations, categories)")
        if any(not isinstance(entry, dict) for entry in data[field]):
            raise CocoAnnotationError(f"{json_file}: '{field}' holds entries that are not objects")
    if not data["images"]:
        raise CocoAnnotationError(f"{json_file}: 'images' is empty: there is nothing to train or evaluate on")
    if not data["categories"]:
        raise CocoAnnotationError(f"{json_file}: 'categories' is empty: the model's classes are the JSON's categories")


def _raise_listed(header: str, problems: List[str], advice: str) -> None:
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise CocoAnnotationError(f"{header}:\n  {listed}{more}\n{advice}")


def _check_content(json_file: str, data) -> dict:
    """The checks of :func:`check_coco_json` on the parsed file; returns its summary."""
    _check_lists(json_file, data)
    images = {}
    for img in data["images"]:
        images.setdefault(_hashable_id(img.get("id")), img)  # the first of a duplicated id: reported anyway
    images.pop(None, None)
    annotation_problems, zero_boxes = _annotation_problems(data, images)
    problems = _image_problems(data["images"]) + _category_problems(data["categories"]) + annotation_problems
    if problems:
        _raise_listed(
            f"{json_file}: {len(problems)} problem(s) in its images, categories or annotations that training would "
            "misread or COCO's evaluation cannot read (detectron2's loader drops some of them with a count in a "
            "warning, or trains on the wrong data; the final evaluation reads the JSON itself)",
            problems,
            "Fix or delete these entries in the JSON.",
        )
    if zero_boxes:
        logger.warning(
            "%s: %d annotation(s) with a valid mask have a bbox of zero width or height (ids %s%s); the training "
            "takes their box from the mask, the box AP of the evaluation reads the JSON's box",
            json_file, len(zero_boxes), ", ".join(zero_boxes[:_MAX_LISTED]), ", ..." if len(zero_boxes) > _MAX_LISTED else "",
        )
    return {"images": len(data["images"]), "annotations": len(data["annotations"]), "categories": len(data["categories"])}


def _check_image_files(json_file: str, data: dict, image_root: str) -> None:
    """:func:`.image_files.image_file_problems` on every image of the (checked) file, raising
    them as one :class:`CocoAnnotationError`."""
    entries = [
        ImageEntry(os.path.join(image_root, img["file_name"]), img["width"], img["height"], f"image id {img['id']}")
        for img in data["images"]
    ]
    problems = image_file_problems(entries)
    if problems:
        _raise_listed(
            f"{json_file}: {len(problems)} image file(s) under {image_root} that training would misread or fail on",
            problems,
            "Convert or replace these files, or correct their width / height in the JSON.",
        )


def check_coco_json(json_file: str, data: Optional[dict] = None, image_root: Optional[str] = None) -> dict:
    """Check a COCO instances JSON for entries that training would misread or its evaluation
    cannot read (see the module docstring); raise :class:`CocoAnnotationError` listing them (file,
    id, image, field). Warns about zero-size boxes of annotations with a valid mask. With
    ``image_root`` (the folder the images' ``file_name`` are relative to), also checks the image
    files from their headers (:mod:`.image_files`: present, a mode that the loader reads as it
    is, the JSON's size). Returns a summary (``images``, ``annotations``, ``categories``:
    counts). ``data``: the file's parsed content, when already loaded. Each file (path, mtime,
    size) is checked once per process, its images once per image folder."""
    stat = os.stat(json_file)
    key = (os.path.abspath(json_file), stat.st_mtime_ns, stat.st_size)
    if key not in _checked:
        data = _load_json(json_file) if data is None else data
        _checked[key] = _check_content(json_file, data)
    if image_root is not None and (key, os.path.abspath(image_root)) not in _images_checked:
        data = _load_json(json_file) if data is None else data
        _check_image_files(json_file, data, image_root)
        _images_checked.add((key, os.path.abspath(image_root)))
    return _checked[key]


def check_coco_json_datasets(dataset_names: Iterable[str]) -> None:
    """:func:`check_coco_json` on the JSON file (metadata ``json_file``) of each dataset that has
    one on disk, with its images (metadata ``image_root``, as ``register_coco_instances`` sets
    it); others are skipped (their loaders convert or check their own data)."""
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file", None)
        if json_file and os.path.isfile(json_file):
            check_coco_json(json_file, image_root=meta.get("image_root", None))


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
    first = os.path.join(image_root, data["images"][0]["file_name"])
    if not os.path.isfile(first):  # the wrong folder: one message rather than every image missing
        raise FileNotFoundError(
            f"{root_key} = {image_root} does not hold the first image of {json_file} ({first} not found): "
            "it must be the folder that the images' file_name are relative to"
        )
    check_coco_json(json_file, data, image_root)
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
