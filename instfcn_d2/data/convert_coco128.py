"""coco128 conversion: the files the models need that the ``coco128/`` folder lacks.

The ``coco128/`` folder, a small real slice of COCO 2017 (see ``datasets/README.md``), lacks two
things:

* val has only panoptic annotations: :func:`panoptic_to_instances` turns them into a COCO
  *instances* JSON (one RLE mask per thing segment), what ``load_coco_json`` and
  ``COCOEvaluator`` read;
* BiSeg's semantic branch wants per-pixel labels: :func:`convert_val` (from the panoptic PNGs,
  with the JSON in the same pass) and :func:`render_semantic_train` (from the instance masks)
  write ``uint8`` PNGs.

Semantic label convention (both splits), shape ``(H, W)`` uint8:

* ``0`` (:data:`BACKGROUND_LABEL`): stuff and anything that is not a thing;
* ``1..80``: contiguous thing index + 1, thing categories sorted by COCO id (person = 1,
  toothbrush = 80), i.e. ``thing_dataset_id_to_contiguous_id[cat_id] + 1``;
* ``255`` (:data:`IGNORE_LABEL`): crowd regions, and on val the unlabelled panoptic pixels
  (segment id 0).

On train, instances may overlap: the smaller instance (by mask pixel count; ties: higher
annotation id) wins, since it is usually the one in front. Crowd regions are painted first, so a
non-crowd instance is never ignored.

The dataset root may be read-only: everything derived goes to ``cache_root()/coco128``
(:func:`default_output_dir`). :func:`prepare_coco128` is idempotent (a stamp file per split
records the format version and the source folder; the work is skipped while the stamp is newer
than every input and all outputs exist) and every file is written to a temp name and renamed
(:mod:`.files`), so parallel processes can run it at once. It runs on the first load of a split
(:func:`.coco128.load_coco128`) and from the command line ``datasets/prepare_coco128.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from .files import write_json, write_label_png
from .paths import cache_root, datasets_root

__all__ = [
    "BACKGROUND_LABEL",
    "IGNORE_LABEL",
    "FORMAT_VERSION",
    "TRAIN_INSTANCES_JSON",
    "VAL_INSTANCES_JSON",
    "SEM_DIRS",
    "default_output_dir",
    "panoptic_to_instances",
    "convert_val",
    "render_semantic_train",
    "prepare_coco128",
    "val_json_ready",
]

logger = logging.getLogger(__name__)

BACKGROUND_LABEL = 0
IGNORE_LABEL = 255
# Bump when the content of a derived file changes: existing stamps then no longer match.
FORMAT_VERSION = 1

# Relative to the coco128 folder.
VAL_PANOPTIC_JSON = "annotations/panoptic_val2017.json"
VAL_PANOPTIC_PNG_DIR = "annotations/panoptic_val2017"
TRAIN_INSTANCES_JSON = "annotations/instances_train2017.json"
# Relative to the output folder.
VAL_INSTANCES_JSON = "instances_val2017.json"
SEM_DIRS = {"train": "sem_train2017", "val": "sem_val2017"}

_PROGRESS_EVERY = 25


def default_output_dir() -> Path:
    """Where derived coco128 files go: ``cache_root()/coco128`` (``$INSTFCN_D2_CACHE``, read now)."""
    return cache_root() / "coco128"


# ----------------------------------------------------------------------------------------------
# Small helpers: stamps, category maps


def _stamp_path(output: Path, split: str) -> Path:
    return output / f"{split}2017.stamp"


def _stamp_content(source: Path) -> Dict:
    return {"format_version": FORMAT_VERSION, "source": str(source.resolve())}


def _is_up_to_date(stamp: Path, source: Path, inputs: Iterable[Path], outputs: Iterable[Path]) -> bool:
    """True when ``stamp`` matches this format version and source folder, is newer than every
    input, and every output exists."""
    try:
        if json.loads(stamp.read_text()) != _stamp_content(source):
            return False
        stamp_mtime = stamp.stat().st_mtime
    except (FileNotFoundError, ValueError):
        return False
    if any(p.stat().st_mtime > stamp_mtime for p in inputs):
        return False
    return all(p.exists() for p in outputs)


def _load_json(path: Path) -> Dict:
    if not path.is_file():
        raise FileNotFoundError(f"coco128 annotation file missing: {path}")
    with open(path) as f:
        return json.load(f)


def _thing_id_to_label(categories: Sequence[Dict]) -> Dict[int, int]:
    """COCO category id -> semantic label (contiguous thing index + 1). A category counts as a
    thing when ``isthing`` is 1; instances JSONs have no ``isthing`` and list things only."""
    thing_ids = sorted(c["id"] for c in categories if c.get("isthing", 1) == 1)
    if len(thing_ids) >= IGNORE_LABEL:
        raise ValueError(f"{len(thing_ids)} thing categories do not fit a uint8 label map")
    return {cat_id: i + 1 for i, cat_id in enumerate(thing_ids)}


def _progress(what: str, done: int, total: int) -> None:
    if done % _PROGRESS_EVERY == 0 or done == total:
        logger.info("coco128 %s: %d/%d images", what, done, total)


# ----------------------------------------------------------------------------------------------
# Val: panoptic -> instances JSON and semantic labels


def _rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Panoptic segment ids from an ``(H, W, 3)`` uint8 PNG: ``R + 256 * G + 256^2 * B`` -> ``(H, W)``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _read_panoptic_png(png_dir: Path, ann: Dict, image: Dict) -> np.ndarray:
    """Segment ids ``(H, W)`` int64 of one panoptic annotation, checked against its image entry."""
    path = png_dir / ann["file_name"]
    if not path.is_file():
        raise FileNotFoundError(f"panoptic PNG missing: {path} (listed for image_id {ann['image_id']})")
    rgb = np.asarray(Image.open(path).convert("RGB"))
    expected = (image["height"], image["width"])
    if rgb.shape[:2] != expected:
        raise ValueError(
            f"panoptic PNG {path} is {rgb.shape[0]}x{rgb.shape[1]} (HxW) but image "
            f"{image['id']} ({image['file_name']}) is {expected[0]}x{expected[1]} in the JSON"
        )
    return _rgb2id(rgb)


def _check_segments(path: Path, ids: np.ndarray, segments: Sequence[Dict]) -> Dict[int, int]:
    """Pixel count per listed segment; raises when a listed segment is duplicated or has no
    pixels, or when the PNG holds a segment id that the JSON does not list."""
    uniq, counts = np.unique(ids, return_counts=True)
    pixels = dict(zip(uniq.tolist(), counts.tolist()))
    listed = [s["id"] for s in segments]
    if len(set(listed)) != len(listed):
        dup = sorted({i for i in listed if listed.count(i) > 1})
        raise ValueError(f"panoptic PNG {path}: segment ids {dup} listed more than once in segments_info")
    for s in segments:
        if pixels.get(s["id"], 0) == 0:
            raise ValueError(
                f"panoptic PNG {path}: segment {s['id']} (category_id {s['category_id']}) "
                "is listed in segments_info but has zero pixels"
            )
    unlisted = sorted(set(pixels) - set(listed) - {0})
    if unlisted:
        raise ValueError(
            f"panoptic PNG {path}: segment ids {unlisted[:10]} are in the PNG but not in segments_info"
        )
    return pixels


def _iter_panoptic(root: Path, what: str):
    """Yield ``(panoptic_json, image, ann, png_path, ids)`` for every val image, checked."""
    data = _load_json(root / VAL_PANOPTIC_JSON)
    png_dir = root / VAL_PANOPTIC_PNG_DIR
    images = {img["id"]: img for img in data["images"]}
    anns_by_image = {a["image_id"]: a for a in data["annotations"]}
    stray = sorted(set(anns_by_image) - set(images))
    if stray:
        raise ValueError(f"{root / VAL_PANOPTIC_JSON}: annotations for unknown image_ids {stray[:10]}")
    missing = [img["id"] for img in data["images"] if img["id"] not in anns_by_image]
    if missing:
        raise ValueError(f"{root / VAL_PANOPTIC_JSON}: no panoptic annotation for image_ids {missing[:10]}")
    for n, image in enumerate(data["images"], 1):
        ann = anns_by_image[image["id"]]
        ids = _read_panoptic_png(png_dir, ann, image)
        yield data, image, ann, png_dir / ann["file_name"], ids
        _progress(what, n, len(data["images"]))


def _val_pass(root: Path, sem_dir: Optional[Path]) -> Dict:
    """One pass over the val panoptic PNGs: the instances dict of :func:`panoptic_to_instances`,
    and, when ``sem_dir`` is given, ``<sem_dir>/<image stem>.png`` semantic labels."""
    import pycocotools.mask as mask_util

    out_images, annotations, data = [], [], None
    what = "val instances" + (" + semantic labels" if sem_dir is not None else "")
    for data, image, ann, path, ids in _iter_panoptic(root, what):
        thing_ids = {c["id"] for c in data["categories"] if c["isthing"] == 1}
        _check_segments(path, ids, ann["segments_info"])
        out_images.append(image)
        for seg in ann["segments_info"]:
            if seg["category_id"] not in thing_ids:
                continue
            rle = mask_util.encode(np.asfortranarray((ids == seg["id"]).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": seg["category_id"],
                    "segmentation": rle,
                    "area": seg["area"],
                    "bbox": seg["bbox"],
                    "iscrowd": seg["iscrowd"],
                    "panoptic_segment_id": seg["id"],
                }
            )
        if sem_dir is not None:
            label = _semantic_from_panoptic(ids, ann["segments_info"], _thing_id_to_label(data["categories"]))
            write_label_png(sem_dir / (Path(image["file_name"]).stem + ".png"), label)
    if data is None:
        raise ValueError(f"{root / VAL_PANOPTIC_JSON} lists no images")
    categories = [
        {k: c[k] for k in ("supercategory", "id", "name") if k in c}
        for c in sorted(data["categories"], key=lambda c: c["id"])
        if c["isthing"] == 1
    ]
    info = dict(data.get("info", {}))
    info["description"] = "COCO 2017 val instances derived from panoptic annotations (coco128)"
    return {
        "info": info,
        "licenses": data.get("licenses", []),
        "images": out_images,
        "annotations": annotations,
        "categories": categories,
    }


def panoptic_to_instances(root: os.PathLike) -> Dict:
    """COCO instances dict from the val panoptic annotations of the coco128 folder ``root``.

    One annotation per thing segment (``isthing: 1``), its mask an RLE (``counts`` as str) of the
    PNG pixels holding that segment id; ``bbox``, ``area``, ``iscrowd``, ``category_id`` are copied
    from ``segments_info``. Panoptic segment ids are only unique within an image (coco128 val has
    712 thing segments but 706 distinct ids), and pycocotools / ``load_coco_json`` need ids unique
    across the file, so annotations are numbered 1..N in file order and the original id is kept
    as ``panoptic_segment_id``. ``images`` and ``licenses`` are copied; ``categories`` are the
    thing categories with their COCO ids.
    """
    return _val_pass(Path(root), sem_dir=None)


def _semantic_from_panoptic(
    ids: np.ndarray, segments: Sequence[Dict], id_to_label: Dict[int, int]
) -> np.ndarray:
    """``(H, W)`` uint8 semantic labels from panoptic segment ids ``(H, W)``."""
    label = np.full(ids.shape, BACKGROUND_LABEL, dtype=np.uint8)
    label[ids == 0] = IGNORE_LABEL
    for seg in segments:
        if seg.get("iscrowd", 0):
            value = IGNORE_LABEL
        else:
            value = id_to_label.get(seg["category_id"], BACKGROUND_LABEL)
        if value != BACKGROUND_LABEL:
            label[ids == seg["id"]] = value
    return label


def convert_val(root: os.PathLike, output: os.PathLike) -> Dict[str, Path]:
    """Write ``<output>/instances_val2017.json`` (see :func:`panoptic_to_instances`) and
    ``<output>/sem_val2017/<image stem>.png`` in one pass over the panoptic PNGs.

    Returns ``{"val_json": ..., "sem_val": ...}``."""
    output = Path(output)
    json_path, sem_dir = output / VAL_INSTANCES_JSON, output / SEM_DIRS["val"]
    write_json(json_path, _val_pass(Path(root), sem_dir))
    logger.info("coco128: wrote %s and %s/", json_path, sem_dir)
    return {"val_json": json_path, "sem_val": sem_dir}


# ----------------------------------------------------------------------------------------------
# Train: instance masks -> semantic labels


def _coco_api(data: Dict):
    """A pycocotools COCO object over an in-memory dict, without its prints."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def render_semantic_train(root: os.PathLike, output: os.PathLike) -> Path:
    """Write ``<output>/sem_train2017/<image stem>.png`` from ``instances_train2017.json``
    (polygons and RLE alike, via pycocotools ``annToMask``); returns the folder.

    Crowd regions are painted ``255`` first; then non-crowd instances from the largest to the
    smallest mask, so that where instances overlap the smaller one wins.
    """
    root, out_dir = Path(root), Path(output) / SEM_DIRS["train"]
    data = _load_json(root / TRAIN_INSTANCES_JSON)
    id_to_label = _thing_id_to_label(data["categories"])
    coco = _coco_api(data)
    for n, image in enumerate(data["images"], 1):
        h, w = image["height"], image["width"]
        label = np.full((h, w), BACKGROUND_LABEL, dtype=np.uint8)
        crowd, things = [], []
        for ann in coco.imgToAnns.get(image["id"], []):
            if ann["category_id"] not in id_to_label:
                raise ValueError(
                    f"{root / TRAIN_INSTANCES_JSON}: annotation {ann['id']} has category_id "
                    f"{ann['category_id']} not among the file's categories"
                )
            mask = coco.annToMask(ann).astype(bool)
            (crowd if ann.get("iscrowd", 0) else things).append((int(mask.sum()), ann["id"], mask, ann))
        for _, _, mask, _ in crowd:
            label[mask] = IGNORE_LABEL
        for _, _, mask, ann in sorted(things, key=lambda t: (-t[0], t[1])):
            label[mask] = id_to_label[ann["category_id"]]
        write_label_png(out_dir / (Path(image["file_name"]).stem + ".png"), label)
        _progress("train semantic labels", n, len(data["images"]))
    return out_dir


# ----------------------------------------------------------------------------------------------
# Entry point: idempotent preparation of one or both splits


def _split_files(root: Path, output: Path, split: str):
    """``(inputs, outputs)`` of one split, for the up-to-date check."""
    if split == "val":
        data = _load_json(root / VAL_PANOPTIC_JSON)
        png_dir = root / VAL_PANOPTIC_PNG_DIR
        inputs = [root / VAL_PANOPTIC_JSON] + [png_dir / a["file_name"] for a in data["annotations"]]
        outputs = [output / VAL_INSTANCES_JSON]
        json_images = data["images"]
    elif split == "train":
        data = _load_json(root / TRAIN_INSTANCES_JSON)
        inputs, outputs, json_images = [root / TRAIN_INSTANCES_JSON], [], data["images"]
    else:
        raise ValueError(f"unknown coco128 split {split!r}; expected 'train' or 'val'")
    sem_dir = output / SEM_DIRS[split]
    outputs += [sem_dir / (Path(img["file_name"]).stem + ".png") for img in json_images]
    return [p for p in inputs if p.exists()], outputs


def prepare_coco128(
    root: Optional[os.PathLike] = None,
    output: Optional[os.PathLike] = None,
    splits: Sequence[str] = ("train", "val"),
    force: bool = False,
) -> Dict[str, Path]:
    """Derive coco128's extra files, skipping each split that is already up to date.

    Args:
        root: the coco128 folder; default ``datasets_root()/coco128``.
        output: where derived files go; default ``cache_root()/coco128``.
        splits: any of ``"train"`` (``sem_train2017/``) and ``"val"``
            (``instances_val2017.json`` and ``sem_val2017/``).
        force: redo the conversion even when the stamps say it is up to date.

    Returns:
        ``{"val_json": ..., "sem_val": ..., "sem_train": ...}`` for the splits asked.
    """
    root = Path(root).expanduser() if root is not None else datasets_root() / "coco128"
    if not root.is_dir():
        raise FileNotFoundError(
            f"coco128 folder not found at {root.resolve()}: pass --root / root=, or set "
            "DETECTRON2_DATASETS to the folder holding coco128/"
        )
    output = Path(output).expanduser() if output is not None else default_output_dir()
    output.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Path] = {}
    for split in splits:
        inputs, outputs = _split_files(root, output, split)
        stamp = _stamp_path(output, split)
        if force or not _is_up_to_date(stamp, root, inputs, outputs):
            logger.info("coco128: preparing %s from %s into %s", split, root, output)
            if split == "val":
                convert_val(root, output)
            else:
                render_semantic_train(root, output)
            # Written last: its presence means every output of the split is complete.
            write_json(stamp, _stamp_content(root))
        else:
            logger.info("coco128: %s is up to date in %s", split, output)
        if split == "val":
            result["val_json"] = output / VAL_INSTANCES_JSON
        result[f"sem_{split}"] = output / SEM_DIRS[split]
    return result


def val_json_ready(root: os.PathLike, output: os.PathLike) -> bool:
    """Whether ``<output>/instances_val2017.json`` exists, made by this format version from the
    coco128 folder ``root`` (a cheap check, fit for registration at import: only the stamp is
    read, no input)."""
    output = Path(output)
    try:
        stamp = json.loads(_stamp_path(output, "val").read_text())
    except (FileNotFoundError, ValueError):
        return False
    return stamp == _stamp_content(Path(root)) and (output / VAL_INSTANCES_JSON).is_file()
