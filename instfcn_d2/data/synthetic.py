"""A built-in synthetic instance-segmentation dataset ("shapes") that needs no download.

Each image is a textured background (smooth colour noise, optionally stripes and a gradient)
with 1 to 6 filled shapes drawn on top of each other. The class of a shape is its geometry
(:data:`SHAPE_CLASSES`), never its colour: colours are random per instance. Sizes go from
``MIN_SHAPE_SIZE`` (12 px) to 70% of the image side. About a third of the images contain a
same-class pair placed on purpose either touching (disjoint masks, adjacent pixels) or
overlapping (the later one occludes the earlier one).

Rules that define the annotations:

- A shape's *full* mask is its rasterised area inside the image (pixel centres inside the shape).
- Shapes are drawn in order; an instance's *visible* mask is its full mask minus the full masks
  of every later shape that is kept. Visible masks of one image are therefore disjoint.
- Drop rule: a shape whose visible area is < ``MIN_VISIBLE_PIXELS`` (30 px) or
  < ``MIN_VISIBLE_FRACTION`` (30%) of its full area is removed *before drawing*: it is neither
  painted nor annotated, so every painted shape pixel belongs to an annotated instance. Shapes
  are decided top-down, which makes the rule exact (removing a shape only uncovers shapes below
  it, which are decided after it).
- The semantic label map is 0 for background and ``class_index + 1`` at every pixel of a visible
  mask (i.e. the class of the top-most shape there).

Determinism: image ``index`` of ``split`` is drawn from
``numpy.random.default_rng([seed, split_id, index])`` (split ids: train 0, val 1, other names
their CRC-32) using only element-wise float64 arithmetic, so the same numpy version produces
the same pixels on any machine and each image can be regenerated alone.

On-disk layout (written by :func:`generate_synthetic_shapes`, one call per split)::

    <root>/train/000000.png ...      RGB images, PNG
    <root>/sem_train/000000.png ...  uint8 semantic labels (0 = background, i + 1 = thing class i)
    <root>/train.json                COCO instances: RLE masks, XYWH boxes, area = mask pixels
    (same for val)

:func:`synthetic_shapes_root` generates both splits once into
``cache_root() / "shapes_v1_<hash of parameters>"`` (atomically, safe with several processes) and
:func:`register_synthetic_shapes` registers loaders for them in detectron2's catalogs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from iopath.common.file_io import file_lock
from PIL import Image

from .paths import cache_root

__all__ = [
    "SHAPE_CLASSES",
    "SHAPE_COLORS",
    "DEFAULT_PARAMS",
    "ShapesImage",
    "sample_shapes_image",
    "generate_synthetic_shapes",
    "synthetic_shapes_root",
    "register_synthetic_shapes",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the drawing changes: it is part of the cache folder name
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "ring")
# Fixed per-class colours for visualisation only (images use random colours).
SHAPE_COLORS: Tuple[Tuple[int, int, int], ...] = ((220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 165, 0))
DEFAULT_PARAMS: Dict[str, int] = {"image_size": 192, "num_train": 256, "num_val": 48, "seed": 0}

MIN_SHAPE_SIZE = 12.0
MAX_SHAPE_FRACTION = 0.7
MAX_INSTANCES = 6
PAIR_PROBABILITY = 0.35
MIN_VISIBLE_PIXELS = 30
MIN_VISIBLE_FRACTION = 0.3
_SPLIT_IDS = {"train": 0, "val": 1}


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------
class _Shape(NamedTuple):
    cls: int  # index into SHAPE_CLASSES
    cx: float  # centre, pixels (pixel (x, y) covers [x, x + 1) x [y, y + 1))
    cy: float
    size: float  # extent of the unrotated shape, pixels
    angle: float  # radians
    inner: float  # ring: inner radius / outer radius (unused by other classes)


def _shape_mask(shape: _Shape, image_size: int) -> np.ndarray:
    """Rasterise ``shape``: a bool ``(S, S)`` mask of the pixels whose centre lies inside it."""
    s = image_size
    mask = np.zeros((s, s), dtype=bool)
    # Every class fits in a circle of radius 0.75 * size (the rotated square's corner: 0.6 * size).
    reach = 0.75 * shape.size + 1.0
    x0, x1 = max(int(math.floor(shape.cx - reach)), 0), min(int(math.ceil(shape.cx + reach)), s)
    y0, y1 = max(int(math.floor(shape.cy - reach)), 0), min(int(math.ceil(shape.cy + reach)), s)
    if x0 >= x1 or y0 >= y1:
        return mask
    dx = (np.arange(x0, x1, dtype=np.float64) + 0.5 - shape.cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float64) + 0.5 - shape.cy)[:, None]
    name = SHAPE_CLASSES[shape.cls]
    r2 = dx * dx + dy * dy
    if name == "circle":
        r = shape.size / 2
        inside = r2 <= r * r
    elif name == "ring":
        r = shape.size / 2
        inside = (r2 <= r * r) & (r2 >= (r * shape.inner) ** 2)
    else:
        c, sn = math.cos(shape.angle), math.sin(shape.angle)
        u = c * dx + sn * dy  # coordinates in the shape's own frame
        v = -sn * dx + c * dy
        if name == "square":
            half = 0.85 * shape.size / 2
            inside = (np.abs(u) <= half) & (np.abs(v) <= half)
        elif name == "triangle":
            # Equilateral, circumradius R: the three edges lie at distance R / 2 from the centre.
            big_r = 0.6 * shape.size
            inside = np.ones_like(r2, dtype=bool)
            for k in range(3):
                a = 2 * math.pi * k / 3
                inside &= (math.cos(a) * u + math.sin(a) * v) <= big_r / 2
        else:  # pragma: no cover - SHAPE_CLASSES and this function must agree
            raise ValueError(f"unknown shape class {name!r}")
    mask[y0:y1, x0:x1] = inside
    return mask


def _random_shape(rng: np.random.Generator, image_size: int, cls: Optional[int] = None) -> _Shape:
    s = image_size
    cls = int(rng.integers(len(SHAPE_CLASSES))) if cls is None else cls
    # Log-uniform size: as many small as large shapes per octave.
    size = float(math.exp(rng.uniform(math.log(MIN_SHAPE_SIZE), math.log(MAX_SHAPE_FRACTION * s))))
    # Let at most ~30% of the extent leave the image; the drop rule handles the rest.
    margin = min(0.2 * size, s / 2)
    cx, cy = rng.uniform(margin, s - margin, size=2)
    return _Shape(cls, float(cx), float(cy), size, float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.45, 0.65)))


def _partner_shape(rng: np.random.Generator, anchor: _Shape, image_size: int, touching: bool) -> _Shape:
    """A shape of ``anchor``'s class next to it: touching it (disjoint, adjacent rasterised masks)
    or overlapping it (centre distance 45-80% of the sum of the radii)."""
    s = image_size
    size = float(np.clip(anchor.size * rng.uniform(0.6, 1.5), MIN_SHAPE_SIZE, MAX_SHAPE_FRACTION * s))
    # Half the time keep the anchor's orientation: edge-to-edge contact is the hard case.
    angle = anchor.angle if rng.random() < 0.5 else float(rng.uniform(0, 2 * math.pi))
    inner = float(rng.uniform(0.45, 0.65))
    # Prefer a direction that keeps the partner's centre inside the image.
    theta = float(rng.uniform(0, 2 * math.pi))
    far = (anchor.size + size) * 0.75 + 2.0
    for k in range(8):
        t = theta + k * math.pi / 4
        ex, ey = anchor.cx + far * 0.5 * math.cos(t), anchor.cy + far * 0.5 * math.sin(t)
        if 0 <= ex < s and 0 <= ey < s:
            theta = t
            break
    ux, uy = math.cos(theta), math.sin(theta)

    def at(dist: float) -> _Shape:
        return _Shape(anchor.cls, anchor.cx + dist * ux, anchor.cy + dist * uy, size, angle, inner)

    if not touching:
        return at(float(rng.uniform(0.45, 0.8)) * (anchor.size + size) / 2)

    # Walk in from a distance where the shapes cannot meet until they overlap, then bisect the
    # last step: the closest non-overlapping distance leaves the masks adjacent.
    anchor_mask = _shape_mask(anchor, s)
    hi = far
    lo = None
    while hi > 0:
        d = max(hi - 2.0, 0.0)
        if (_shape_mask(at(d), s) & anchor_mask).any():
            lo = d
            break
        hi = d
    if lo is None:  # e.g. a small ring fits in the anchor ring's hole: no contact along this line
        return at(far * 0.6)
    for _ in range(8):
        mid = (lo + hi) / 2
        if (_shape_mask(at(mid), s) & anchor_mask).any():
            lo = mid
        else:
            hi = mid
    return at(hi)


def _sample_layout(rng: np.random.Generator, image_size: int) -> List[_Shape]:
    """Shapes in drawing order (later ones occlude earlier ones)."""
    n = int(rng.integers(1, MAX_INSTANCES + 1))
    with_pair = n >= 2 and rng.random() < PAIR_PROBABILITY
    shapes = [_random_shape(rng, image_size) for _ in range(n - 1 if with_pair else n)]
    if with_pair:
        j = int(rng.integers(len(shapes)))
        touching = bool(rng.random() < 0.5)
        shapes.insert(j + 1, _partner_shape(rng, shapes[j], image_size, touching))
    return shapes


def _keep_visible(shapes: Sequence[_Shape], image_size: int):
    """Apply the drop rule top-down. Returns ``(shapes, full_masks, visible_masks)`` of the kept
    shapes in drawing order."""
    occupied = np.zeros((image_size, image_size), dtype=bool)
    kept = []
    for shape in reversed(shapes):
        full = _shape_mask(shape, image_size)
        visible = full & ~occupied
        n_vis, n_full = int(visible.sum()), int(full.sum())
        if n_vis >= MIN_VISIBLE_PIXELS and n_vis >= MIN_VISIBLE_FRACTION * n_full:
            kept.append((shape, full, visible))
            occupied |= full
    kept.reverse()
    return [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]


# ----------------------------------------------------------------------------------------------
# Painting
# ----------------------------------------------------------------------------------------------
def _upsample_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """``(g, g, 3)`` -> ``(size, size, 3)``, element-wise only (no BLAS, so bit-reproducible)."""
    g = grid.shape[0]
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * (g - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None, None] + grid[i0 + 1] * f[:, None, None]
    return rows[:, i0] * (1 - f)[None, :, None] + rows[:, i0 + 1] * f[None, :, None]


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Textured float64 ``(S, S, 3)`` background in [0, 255]-ish."""
    s = image_size
    g = int(rng.integers(3, 9))
    # A base colour plus bounded variation: textured, yet rarely as saturated as a shape.
    base = rng.uniform(40, 215, size=3)
    bg = _upsample_bilinear(base + rng.uniform(-70, 70, size=(g, g, 3)), s)
    y = np.arange(s, dtype=np.float64)[:, None] + 0.5
    x = np.arange(s, dtype=np.float64)[None, :] + 0.5
    if rng.random() < 0.6:  # stripes
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 32)
        phase, amplitude = rng.uniform(0, 2 * math.pi), rng.uniform(15, 50)
        wave = np.sin(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period + phase)
        bg += amplitude * wave[..., None] * rng.uniform(-1, 1, size=3)
    if rng.random() < 0.5:  # linear gradient
        theta = rng.uniform(0, 2 * math.pi)
        ramp = ((x - s / 2) * math.cos(theta) + (y - s / 2) * math.sin(theta)) / s
        bg += ramp[..., None] * rng.uniform(-80, 80, size=3)
    return bg


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _pick_color(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random colour that stands out against what surrounds ``mask`` on ``canvas`` now: the
    best of 16 candidates by the 20th percentile of the distance to the 2-px outer border."""
    border = _dilate(mask, 2) & ~mask
    candidates = rng.uniform(0, 255, size=(16, 3))
    if not border.any():
        return candidates[0]
    around = canvas[border]  # (P, 3)
    dist = np.sqrt(((around[None] - candidates[:, None]) ** 2).sum(-1))  # (16, P)
    score = np.percentile(dist, 20, axis=1)
    return candidates[int(np.argmax(score))]


class ShapesImage(NamedTuple):
    """One generated sample. ``image``: uint8 ``(S, S, 3)`` RGB; ``sem_seg``: uint8 ``(S, S)``;
    ``classes``: class index per instance (drawing order); ``full_masks`` / ``visible_masks``:
    bool ``(S, S)`` per instance (before / after occlusion by later instances)."""

    image: np.ndarray
    sem_seg: np.ndarray
    classes: List[int]
    full_masks: List[np.ndarray]
    visible_masks: List[np.ndarray]


def _split_id(split: str) -> int:
    return _SPLIT_IDS.get(split, zlib.crc32(split.encode("utf-8")))


def sample_shapes_image(image_size: int, seed: int, split: str, index: int) -> ShapesImage:
    """Draw image ``index`` of ``split``; a pure function of its arguments."""
    rng = np.random.default_rng([seed, _split_id(split), index])
    s = image_size
    canvas = _background(rng, s)
    while True:  # only reached again when border clipping dropped every shape
        shapes, full_masks, visible_masks = _keep_visible(_sample_layout(rng, s), s)
        if shapes:
            break
    sem = np.zeros((s, s), dtype=np.uint8)
    y = np.arange(s, dtype=np.float64)[:, None] + 0.5
    x = np.arange(s, dtype=np.float64)[None, :] + 0.5
    for shape, full in zip(shapes, full_masks):
        color = _pick_color(rng, canvas, full)
        shade = rng.uniform(-25, 25, size=3)  # soft shading so shapes are not flat decals
        theta = rng.uniform(0, 2 * math.pi)
        ramp = ((x - shape.cx) * math.cos(theta) + (y - shape.cy) * math.sin(theta)) / max(shape.size, 1.0)
        canvas[full] = (color + ramp[..., None] * shade)[full]
        sem[full] = shape.cls + 1
    canvas += rng.normal(0, rng.uniform(2, 7), size=canvas.shape)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return ShapesImage(image, sem, [s_.cls for s_ in shapes], full_masks, visible_masks)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def _save_png(array: np.ndarray, path: Path) -> None:
    # Fixed compression settings and no metadata chunks: the bytes depend only on the pixels.
    Image.fromarray(array).save(path, format="PNG", compress_level=6, optimize=False)


def _encode_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _tight_box_xywh(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(int(xs.max()) - x0 + 1), float(int(ys.max()) - y0 + 1)]


def generate_synthetic_shapes(
    out_dir, split: str, num_images: int, image_size: int = 192, seed: int = 0
) -> Path:
    """Write ``num_images`` images of ``split`` under ``out_dir`` (``<split>/``, ``sem_<split>/``,
    ``<split>.json``; see the module docstring) and return the path of the COCO json.

    Writes in place (no atomicity): use :func:`synthetic_shapes_root` for a shared cache.
    """
    _check_params(image_size=image_size, num_images=num_images, seed=seed)
    out_dir = Path(out_dir)
    image_dir, sem_dir = out_dir / split, out_dir / f"sem_{split}"
    image_dir.mkdir(parents=True, exist_ok=True)
    sem_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        sample = sample_shapes_image(image_size, seed, split, index)
        file_name = f"{index:06d}.png"
        _save_png(sample.image, image_dir / file_name)
        _save_png(sample.sem_seg, sem_dir / file_name)
        image_id = index + 1  # COCO tools treat id 0 as "missing" in places
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for cls, visible in zip(sample.classes, sample.visible_masks):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "segmentation": _encode_rle(visible),
                    "area": int(visible.sum()),
                    "bbox": _tight_box_xywh(visible),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": "instfcn_d2 synthetic shapes",
            "version": FORMAT_VERSION,
            "split": split,
            "image_size": image_size,
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)],
    }
    json_file = out_dir / f"{split}.json"
    json_file.write_text(json.dumps(coco, separators=(",", ":")))
    return json_file


def _check_params(**params) -> None:
    for key, value in params.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"synthetic shapes: {key} must be an int, got {value!r}")
        minimum = {"image_size": 32, "seed": 0}.get(key, 1)
        if value < minimum:
            raise ValueError(f"synthetic shapes: {key} must be >= {minimum}, got {value}")


def _resolve_params(params: dict) -> Dict[str, int]:
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise TypeError(f"synthetic shapes: unknown parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    resolved = {**DEFAULT_PARAMS, **params}
    _check_params(**resolved)
    return {k: int(v) for k, v in resolved.items()}


def _dataset_dir_name(params: Dict[str, int]) -> str:
    key = json.dumps({"format_version": FORMAT_VERSION, **params}, sort_keys=True)
    return f"shapes_v{FORMAT_VERSION}_{hashlib.sha1(key.encode('utf-8')).hexdigest()[:10]}"


def _publish(tmp: Path, final: Path) -> Path:
    """Rename the finished ``tmp`` folder to ``final``; if another process got there first, keep
    its copy (identical by construction) and delete ours."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def synthetic_shapes_root(**params) -> Path:
    """The folder holding both splits for ``params`` (keys of :data:`DEFAULT_PARAMS`), generated
    on first use under ``cache_root()`` (resolved now, not at import; created if missing).

    One process generates a given set: the others wait on an inter-process lock (iopath's
    ``file_lock`` on ``<root>/.<folder name>.lock``, which gives up after an hour), then find the
    published folder. Correctness does not depend on the lock (publishing is an atomic rename); it
    only avoids generating the same set N times.
    """
    params = _resolve_params(params)
    root = cache_root()
    final = root / _dataset_dir_name(params)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(str(root / f".{final.name}")):  # iopath locks "<path>.lock"
        if final.is_dir():  # another process finished while we waited
            return final
        logger.info("Generating synthetic shapes %s into %s", params, final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            for split, key in (("train", "num_train"), ("val", "num_val")):
                generate_synthetic_shapes(tmp, split, params[key], params["image_size"], params["seed"])
            (tmp / "params.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **params}, sort_keys=True))
            return _publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# ----------------------------------------------------------------------------------------------
# detectron2 catalogs
# ----------------------------------------------------------------------------------------------
def _load_split(params: Dict[str, int], split: str, dataset_name: str) -> List[dict]:
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    root = synthetic_shapes_root(**params)
    json_file, image_root, sem_root = root / f"{split}.json", root / split, root / f"sem_{split}"
    dicts = load_coco_json(str(json_file), str(image_root), dataset_name)
    for record in dicts:
        record["sem_seg_file_name"] = str(sem_root / Path(record["file_name"]).name)
    # Paths are known only now (cache_root() is read lazily). Metadata refuses to change a set
    # value, so keep an existing one: COCOEvaluator may have set json_file to its own conversion
    # when it was built before this loader ran, and that file holds the same annotations.
    meta = MetadataCatalog.get(dataset_name)
    for key, value in (("json_file", json_file), ("image_root", image_root), ("sem_seg_root", sem_root)):
        if not hasattr(meta, key):
            setattr(meta, key, str(value))
    return dicts


def register_synthetic_shapes(name_prefix: str = "instfcn_shapes", **params) -> Dict[str, str]:
    """Register ``<name_prefix>_train`` and ``<name_prefix>_val`` in detectron2's catalogs and
    return ``{split: dataset_name}``. ``params``: keys of :data:`DEFAULT_PARAMS`.

    Cheap: nothing is generated or read until ``DatasetCatalog.get``. Idempotent: registering the
    same names with the same parameters again is a no-op; with other parameters the previous
    registration (and its metadata) is replaced.

    ``json_file``, ``image_root`` and ``sem_seg_root`` are added to the metadata by the loader,
    because the cache folder is only resolved then (so an ``INSTFCN_D2_CACHE`` set after import
    is honoured). Until then ``COCOEvaluator`` finds no ``json_file`` and converts the dataset
    dicts itself, which gives the same annotations.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    params = _resolve_params(params)
    thing_classes = list(SHAPE_CLASSES)
    thing_colors = [list(c) for c in SHAPE_COLORS]
    names = {}
    for split in ("train", "val"):
        name = f"{name_prefix}_{split}"
        names[split] = name
        if name in DatasetCatalog.list():
            if getattr(MetadataCatalog.get(name), "synthetic_params", None) == params:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda p=params, s=split, n=name: _load_split(p, s, n))
        MetadataCatalog.get(name).set(
            thing_classes=thing_classes,
            thing_colors=thing_colors,
            stuff_classes=["background"] + thing_classes,
            stuff_colors=[[0, 0, 0]] + thing_colors,
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(thing_classes))},
            evaluator_type="coco",
            ignore_label=255,
            synthetic_params=dict(params),
        )
    return names
