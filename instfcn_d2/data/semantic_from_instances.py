"""Semantic labels derived from instance annotations (BiSeg on a dataset without label files).

BiSeg's semantic branch learns per-pixel labels: 0 background, ``c + 1`` thing class ``c``. SBD,
coco128 and the built-in shapes ship them as label PNGs (``sem_seg_file_name``); a plain instance
dataset (``register_coco_instances``) has only its instances, which determine the same labels.
:func:`semantic_from_instances` is the rule, used both by the training mapper (on the augmented
masks, so labels and image stay aligned) and by the evaluation of BiSeg's ``sem_seg`` output
(on the record's masks at the original resolution), so that the two agree:

* a pixel inside an instance of class ``c`` is ``c + 1``, a pixel outside every instance ``0``;
* a crowd region (``iscrowd`` = 1: many objects of a class outlined together, where it is unknown
  which pixels are background) is ``ignore_value`` (no loss, not scored), except where a
  non-crowd instance covers it: that pixel's class is known;
* where non-crowd instances overlap, **the smaller one wins** (it is drawn on top). Overlaps mean
  that two independently drawn outlines disagree; the object in front is usually the smaller one
  (a cup on a table, a person on a sofa) and the outline of the larger one tends to run over it,
  not the reverse. Drawing the larger one on top could also erase the smaller one completely,
  whereas the larger one loses only a small part of its area. Equal areas: the later annotation
  wins (it is drawn later).

"Area" is the pixel count of the mask as given: of the augmented mask in training, of the mask
at the record's resolution in evaluation (a resize keeps the order except for ties of rounding).

:func:`segmentation_to_mask` rasterises one annotation's ``segmentation`` (polygons, RLE or a
mask array); :func:`semantic_from_annotations` applies the rule to a list of annotations in
detectron2's dataset format (contiguous ``category_id``).
"""
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["semantic_from_instances", "semantic_from_annotations", "segmentation_to_mask", "polygons_to_mask"]

# Polygons reaching further than this many image areas are rasterised on the image canvas itself
# (pycocotools moves their outside vertices: up to a pixel off along the border) rather than on
# a canvas holding them whole (exact, see polygons_to_mask).
_MAX_CANVAS_AREA_FACTOR = 64


def polygons_to_mask(polygons: Sequence, height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool mask of the union of ``polygons`` (each ``[x0, y0, x1, y1, ...]``
    in pixel coordinates, as in COCO), exact also for polygons reaching outside the image.

    pycocotools' rasteriser is exact for vertices inside its canvas but moves vertices outside it,
    which shifts the edges that cross the border by up to a pixel. A polygon cut by a crop (whose
    vertices then lie outside the cropped image) is therefore drawn on a canvas that holds it
    whole, shifted by whole pixels, and the image's part cut out: the same pixels as drawing the
    uncropped polygon and cropping the mask (no shapely needed, unlike detectron2's polygon crop).
    """
    polys = [np.asarray(p, dtype=np.float64).reshape(-1) for p in polygons]
    polys = [p for p in polys if len(p) >= 6 and len(p) % 2 == 0]
    if not polys:
        return np.zeros((height, width), dtype=bool)
    pts = np.concatenate([p.reshape(-1, 2) for p in polys])
    if pts[:, 0].max() <= 0 or pts[:, 1].max() <= 0 or pts[:, 0].min() >= width or pts[:, 1].min() >= height:
        return np.zeros((height, width), dtype=bool)  # wholly outside (e.g. cropped away)
    x0, y0 = min(0, math.floor(pts[:, 0].min())), min(0, math.floor(pts[:, 1].min()))
    x1, y1 = max(width, math.ceil(pts[:, 0].max())), max(height, math.ceil(pts[:, 1].max()))
    if (x1 - x0) * (y1 - y0) > _MAX_CANVAS_AREA_FACTOR * max(height * width, 1):
        x0, y0, x1, y1 = 0, 0, width, height
    shift = np.array([x0, y0], dtype=np.float64)
    shifted = [(p.reshape(-1, 2) - shift).reshape(-1).tolist() for p in polys]
    rle = mask_util.merge(mask_util.frPyObjects(shifted, y1 - y0, x1 - x0))
    canvas = mask_util.decode(rle).astype(bool)
    return canvas[-y0 : -y0 + height, -x0 : -x0 + width]


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool mask of one annotation's ``segmentation``: polygons
    (``[[x0, y0, ...], ...]``; polygons of fewer than 3 points are skipped, as detectron2's COCO
    loader does), COCO RLE (compressed or not; its ``size`` must be ``[height, width]``) or a 2-D
    array. Raises ``ValueError`` for anything else, naming what it got."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError(f"RLE segmentation needs 'counts' and 'size', got keys {sorted(segmentation)}")
        size = tuple(int(s) for s in segmentation["size"])
        if size != (height, width):
            raise ValueError(f"RLE segmentation of size {list(size)} on an image of {height}x{width}")
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_util.frPyObjects(rle, height, width)
        return mask_util.decode(rle).astype(bool)
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (height, width):
            raise ValueError(f"mask segmentation of shape {segmentation.shape} on an image of {height}x{width}")
        return segmentation.astype(bool)
    if isinstance(segmentation, (list, tuple)):
        polys = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            raise ValueError(
                f"polygon segmentation without a polygon of >= 3 points: {_short(segmentation)}"
            )
        return polygons_to_mask(polys, height, width)
    raise ValueError(f"cannot read a segmentation of type {type(segmentation).__name__}")


def semantic_from_instances(
    masks: Sequence[np.ndarray],
    classes: Sequence[int],
    iscrowd: Optional[Sequence[bool]] = None,
    *,
    image_size: Optional[Tuple[int, int]] = None,
    ignore_value: int = 255,
) -> np.ndarray:
    """The ``(H, W)`` int64 semantic label map of instance masks, by the module's rule.

    Args:
        masks: one ``(H, W)`` bool (or 0/1) mask per instance, or an ``(N, H, W)`` array.
        classes: contiguous thing class ``c >= 0`` of each instance (label ``c + 1``).
        iscrowd: per instance, whether it is a crowd region (default: none is).
        image_size: ``(H, W)``; needed when there is no mask (an empty image: all background).
        ignore_value: label of crowd regions (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).
    """
    masks = [np.asarray(m).astype(bool, copy=False) for m in masks]
    classes = [int(c) for c in classes]
    iscrowd = [False] * len(masks) if iscrowd is None else [bool(c) for c in iscrowd]
    if not len(masks) == len(classes) == len(iscrowd):
        raise ValueError(f"{len(masks)} masks, {len(classes)} classes and {len(iscrowd)} crowd flags: one each per instance")
    if image_size is None:
        if not masks:
            raise ValueError("semantic_from_instances: no masks and no image_size")
        image_size = masks[0].shape
    image_size = tuple(int(s) for s in image_size)
    for i, m in enumerate(masks):
        if m.shape != image_size:
            raise ValueError(f"mask {i} has shape {m.shape}, expected {image_size}")
    for c in classes:
        if c < 0 or c + 1 == ignore_value:
            raise ValueError(f"class {c} cannot be labelled: labels are class + 1 and {ignore_value} means unlabelled")

    labels = np.zeros(image_size, dtype=np.int64)
    for m, crowd in zip(masks, iscrowd):
        if crowd:
            labels[m] = ignore_value
    instances = [i for i, crowd in enumerate(iscrowd) if not crowd]
    areas = {i: int(masks[i].sum()) for i in instances}
    # largest first, so smaller ones are drawn over them; sorted() is stable: on equal areas the
    # later annotation is drawn later, on top
    for i in sorted(instances, key=lambda i: -areas[i]):
        labels[masks[i]] = classes[i] + 1
    return labels


def semantic_from_annotations(annotations: Sequence[dict], image_size: Tuple[int, int], ignore_value: int = 255) -> np.ndarray:
    """:func:`semantic_from_instances` of annotations in detectron2's dataset format
    (``segmentation``, contiguous ``category_id``, optional ``iscrowd``) on an image of
    ``image_size`` = ``(H, W)``. An annotation without ``segmentation`` is an error."""
    height, width = image_size
    masks, classes, crowd = [], [], []
    for i, ann in enumerate(annotations):
        if "segmentation" not in ann:
            raise ValueError(
                f"annotation {i} (category_id {ann.get('category_id')}) has no 'segmentation': "
                "semantic labels are derived from instance masks"
            )
        try:
            masks.append(segmentation_to_mask(ann["segmentation"], height, width))
        except ValueError as e:
            raise ValueError(f"annotation {i} (category_id {ann.get('category_id')}): {e}") from None
        classes.append(ann["category_id"])
        crowd.append(ann.get("iscrowd", 0))
    return semantic_from_instances(masks, classes, crowd, image_size=(height, width), ignore_value=ignore_value)


def _short(obj, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."
