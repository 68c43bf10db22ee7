"""Image files of a dataset checked from their headers, before training reads them.

detectron2's ``read_image`` converts every image with PIL to the model's format (RGB, flipped to
BGR). For the 8-bit modes (``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGB``, ``RGBA``, ``CMYK``,
``YCbCr``, ...) that conversion is what the image means. For modes of more than 8 bits per band
(``I;16``, ``I;16B``, ``I``, ``F``) PIL clips at 255: a 16-bit image of values in the thousands
reads as nearly all white, and training goes on without a word. Such files are refused, naming
them, rather than scaled here: which range maps to 0-255 is the data's business (16-bit medical
or depth images have their own windows), so the user converts them once with the scaling they
mean.

An image whose size is not its record's ``width`` x ``height`` stops detectron2's mapper with
``SizeMismatchError`` when it is read, possibly hours into training: the size is compared here
first, after the EXIF rotation that ``read_image`` applies (orientations 5-8 swap width and
height).

Only headers are read (``Image.open`` parses them; nothing is decoded): PIL gives mode, size and
EXIF from them. One exception is a PNG whose ``eXIf`` chunk follows the pixel data, which PIL reads
only by decoding: its rotation is not seen here, and a size mismatch it causes is still reported
by detectron2 (file named) when the image is read.
"""
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, NamedTuple, Optional

import numpy as np
from PIL import Image, ImageMode

__all__ = ["ImageEntry", "image_file_problem", "image_file_problems"]

_EXIF_ORIENTATION = 274  # the tag detectron2's read_image applies
_SWAPS_SIZE = (5, 6, 7, 8)  # transpose, rotate 270, transverse, rotate 90
_THREADS = 8  # header reads wait on the disk (or a network file system), not the CPU


class ImageEntry(NamedTuple):
    """An image file and the size its dataset record gives it; ``label`` names the record in
    messages (e.g. ``"image id 7"``)."""

    path: str
    width: int
    height: int
    label: str


@functools.lru_cache(maxsize=None)
def _mode_problem(mode: str) -> Optional[str]:
    """Why ``read_image`` would misread an image of PIL mode ``mode`` (``None``: it reads it as
    the image means). Decided once per mode."""
    typestr = ImageMode.getmode(mode).typestr
    if typestr not in ("|u1", "|b1"):
        return (
            f"mode {mode!r} ({np.dtype(typestr).name} values) is read by detectron2 through PIL's conversion to "
            "RGB, which clips the values to 0-255: convert the file to 8-bit (L or RGB) with the "
            "scaling its values need"
        )
    try:
        Image.new(mode, (1, 1)).convert("RGB")
    except ValueError as e:
        return f"mode {mode!r} has no conversion to RGB in PIL ({e}): save it as RGB"
    return None


def _size_as_read(image: Image.Image) -> tuple:
    """``(width, height, rotated)`` of ``image`` after the EXIF orientation detectron2's
    ``read_image`` applies. ``Image.getexif`` of the base class: PNG's own decodes the pixels to
    look for an ``eXIf`` chunk after them."""
    try:
        orientation = Image.Image.getexif(image).get(_EXIF_ORIENTATION)
    except Exception:  # as read_image: an unreadable EXIF block rotates nothing
        orientation = None
    width, height = image.size
    if orientation in _SWAPS_SIZE:
        return height, width, True
    return width, height, False


def image_file_problem(entry: ImageEntry) -> Optional[str]:
    """Why ``entry``'s file would be misread or fail when training reads it (``None``: it will be
    read as it is). Reads the file's header only."""
    if not os.path.isfile(entry.path):
        return "no such file"
    try:
        with Image.open(entry.path) as image:
            mode_problem = _mode_problem(image.mode)
            if mode_problem:
                return mode_problem
            width, height, rotated = _size_as_read(image)
    except Exception as e:  # UnidentifiedImageError, a truncated header, DecompressionBombError, ...
        return f"not an image file PIL can read ({type(e).__name__}: {e})"
    if (width, height) != (entry.width, entry.height):
        how = "width x height, after its EXIF rotation" if rotated else "width x height"
        return (
            f"{width} x {height} ({how}) but the JSON says {entry.width} x {entry.height}: detectron2 "
            "stops with SizeMismatchError when it reads the image"
        )
    return None


def image_file_problems(entries: Iterable[ImageEntry]) -> List[str]:
    """One line per file of ``entries`` that :func:`image_file_problem` finds at fault
    (``"<label> (<path>): <why>"``), in the order given. Headers are read by a few threads."""
    entries = list(entries)
    with ThreadPoolExecutor(max_workers=min(_THREADS, max(1, len(entries)))) as pool:
        found = list(pool.map(image_file_problem, entries))
    return [f"{e.label} ({e.path}): {why}" for e, why in zip(entries, found) if why]
