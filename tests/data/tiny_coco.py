"""A tiny COCO-format instance dataset written by the tests: textured images with squares
(polygons) and discs (RLE) of two categories, ids 3 ("square") and 7 ("disc") as a real JSON may
number them, written with ``json.dump``."""
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

CATEGORIES = [{"id": 7, "name": "disc", "supercategory": "shape"}, {"id": 3, "name": "square", "supercategory": "shape"}]
SQUARE, DISC = 3, 7


def _square(x0, y0, side):
    return [[x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]]


def write_tiny_coco(root, num_images=6, size=96, seed=0, empty_images=(), crowd_images=(), edit=None):
    """Write ``root/images/*.png`` and ``root/annotations.json``; returns ``(json_path, image_dir)``.

    Each image holds a square (polygon) and a disc (RLE, uncompressed counts) that may overlap,
    drawn in that order (the disc in front). ``empty_images``: indices of images without
    annotations; ``crowd_images``: indices whose disc is a crowd region. ``edit(data)`` may change
    the JSON content before it is written."""
    root = Path(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, annotations = [], []
    for i in range(num_images):
        img = rng.uniform(60, 120, (size, size, 3)) + 20 * np.sin(xx / 5.0 + i)[..., None]
        name = f"img_{i:02d}.png"
        images.append({"id": 100 + i, "file_name": name, "height": size, "width": size})
        if i not in empty_images:
            side = int(rng.integers(size // 4, size // 2))
            x0, y0 = (int(v) for v in rng.integers(2, size - side - 2, 2))
            img[y0 : y0 + side, x0 : x0 + side] = (200, 60, 40)
            annotations.append({
                "id": len(annotations) + 1, "image_id": 100 + i, "category_id": SQUARE, "iscrowd": 0,
                "segmentation": _square(x0, y0, side), "area": float(side * side), "bbox": [x0, y0, side, side],
            })
            r = float(rng.uniform(size / 8, size / 5))
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
            disc = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
            img[disc] = (40, 180, 220)
            rle = mask_util.encode(np.asfortranarray(disc.astype(np.uint8)))
            counts = _uncompressed_counts(disc)
            bbox = [float(v) for v in mask_util.toBbox(rle)]
            annotations.append({
                "id": len(annotations) + 1, "image_id": 100 + i, "category_id": DISC, "iscrowd": int(i in crowd_images),
                "segmentation": {"size": [size, size], "counts": counts}, "area": float(disc.sum()), "bbox": bbox,
            })
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images_dir / name)
    data = {"images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
    if edit is not None:
        edit(data)
    json_path = root / "annotations.json"
    with open(json_path, "w") as f:
        json.dump(data, f)
    return str(json_path), str(images_dir)


def _uncompressed_counts(mask):
    """COCO's uncompressed RLE counts (column-major runs, starting with zeros) of a bool mask."""
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return runs
