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


#: the nested multi-class set: ids as a user's JSON may number them
NESTED_CATEGORIES = [{"id": 1, "name": "facade"}, {"id": 2, "name": "window"}, {"id": 5, "name": "sign"},
                     {"id": 9, "name": "car"}]
FACADE, WINDOW, SIGN, CAR = 1, 2, 5, 9


def write_nested_coco(root, num_images=6, size=128, seed=0):
    """Write ``root/images/*.png`` and ``root/annotations.json`` of several classes per image,
    nested as on a street photo: a facade (polygon) holding two windows (polygons), one window
    holding a sign (RLE), and a car (RLE) in front of the facade's lower edge. Every image has all
    four classes; annotations are listed largest first except the sign, listed before its window
    (the derived labels must not depend on the order). Returns ``(json_path, image_dir, layout)``
    with ``layout[i]`` the pixel boxes ``{name: (x0, y0, x1, y1)}`` of image ``i``."""
    root = Path(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, annotations, layout = [], [], []
    colours = {FACADE: (180, 170, 150), WINDOW: (40, 60, 90), SIGN: (220, 200, 30), CAR: (200, 30, 30)}

    def add(image_id, cat, segmentation, area, bbox):
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                            "segmentation": segmentation, "area": float(area), "bbox": [float(v) for v in bbox]})

    for i in range(num_images):
        img = rng.uniform(90, 130, (size, size, 3)) + 10 * np.sin(xx / 7.0 + i)[..., None]
        name = f"nested_{i:02d}.png"
        image_id = 200 + i
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        o = int(rng.integers(0, 8))
        boxes = {
            "facade": (8 + o, 6, 112 + o // 2, 96),
            "window": (20 + o, 16, 52 + o, 48),
            "window2": (68 + o // 2, 16, 100 + o // 2, 48),
            "sign": (28 + o, 24, 40 + o, 34),
            "car": (40 + o, 84, 90 + o, 110),
        }
        layout.append(boxes)
        fx0, fy0, fx1, fy1 = boxes["facade"]
        img[fy0:fy1, fx0:fx1] = colours[FACADE]
        add(image_id, FACADE, [[fx0, fy0, fx1, fy0, fx1, fy1, fx0, fy1]], (fx1 - fx0) * (fy1 - fy0),
            [fx0, fy0, fx1 - fx0, fy1 - fy0])
        sx0, sy0, sx1, sy1 = boxes["sign"]
        sign = (xx >= sx0) & (xx < sx1) & (yy >= sy0) & (yy < sy1)
        for key in ("window", "window2"):
            x0, y0, x1, y1 = boxes[key]
            img[y0:y1, x0:x1] = colours[WINDOW]
            if key == "window":  # the sign is listed before the window that holds it
                img[sign] = colours[SIGN]
                add(image_id, SIGN, {"size": [size, size], "counts": _uncompressed_counts(sign)}, sign.sum(),
                    [sx0, sy0, sx1 - sx0, sy1 - sy0])
            add(image_id, WINDOW, [[x0, y0, x1, y0, x1, y1, x0, y1]], (x1 - x0) * (y1 - y0), [x0, y0, x1 - x0, y1 - y0])
        cx0, cy0, cx1, cy1 = boxes["car"]
        car = (((xx + 0.5 - (cx0 + cx1) / 2) / ((cx1 - cx0) / 2)) ** 2 + ((yy + 0.5 - (cy0 + cy1) / 2) / ((cy1 - cy0) / 2)) ** 2) <= 1
        img[car] = colours[CAR]
        rle = mask_util.encode(np.asfortranarray(car.astype(np.uint8)))
        add(image_id, CAR, {"size": [size, size], "counts": _uncompressed_counts(car)}, car.sum(),
            [float(v) for v in mask_util.toBbox(rle)])
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images_dir / name)
    data = {"images": images, "annotations": annotations, "categories": [dict(c) for c in NESTED_CATEGORIES]}
    json_path = root / "annotations.json"
    with open(json_path, "w") as f:
        json.dump(data, f)
    return str(json_path), str(images_dir), layout
