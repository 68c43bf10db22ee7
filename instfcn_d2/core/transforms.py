"""The test-time resize of detectron2's ``DefaultPredictor`` (``ResizeShortestEdge`` with
``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), written again because deployment takes raw images
without detectron2: the same output size (the same float operations) and the same pixels (PIL's
bilinear resize of uint8 images, as ``ResizeTransform.apply_image``; ``F.interpolate`` for float
images, as it does for them)."""
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["resize_shortest_edge_shape", "resize_image"]


def resize_shortest_edge_shape(height: int, width: int, short_edge_length: int, max_size: int) -> Tuple[int, int]:
    """``(h, w)`` of an image of ``height x width`` resized to shorter side ``short_edge_length``,
    scaled down so that its longer side stays ``<= max_size``: detectron2's
    ``ResizeShortestEdge.get_output_shape`` (the same float operations, so the same rounding)."""
    h, w = height, width
    size = short_edge_length * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """An ``(H, W, C)`` image resized to ``size = (h, w)`` bilinearly, as detectron2's
    ``ResizeTransform.apply_image``: PIL for uint8, ``F.interpolate`` (``align_corners=False``)
    for other dtypes. Returns the image itself when it already has that size."""
    h, w = int(size[0]), int(size[1])
    if image.shape[:2] == (h, w):
        return image
    if image.dtype == np.uint8:
        if image.ndim == 3 and image.shape[2] == 1:
            return np.asarray(Image.fromarray(image[:, :, 0], mode="L").resize((w, h), Image.BILINEAR))[..., None]
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    nchw = tensor.permute(2, 0, 1)[None] if tensor.dim() == 3 else tensor[None, None]
    out = F.interpolate(nchw, (h, w), mode="bilinear", align_corners=False)[0]
    return (out.permute(1, 2, 0) if tensor.dim() == 3 else out[0]).numpy()
