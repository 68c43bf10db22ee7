"""What the model tests share: the tiny from-scratch trunk overrides and a synthetic two-shape image.

Kept beside conftest.py (on pytest's import path) so that tests/modeling/test_*.py import it by
name, like ``conftest.REPO_ROOT``.
"""
import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from instfcn_d2.modeling.common import mask_tight_boxes

# R18 with GroupNorm trained from scratch (no ImageNet weights in the tests):
# every stage trainable, 64-wide res2, stride in the 3x3 conv, real pixel std.
R18_GN_FROM_SCRATCH = [
    "MODEL.DEVICE", "cpu",
    "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
]


def square_disc_sample(seed, size=(96, 96), sides=(36, 32), polygons=False, classes_alternate=True, file_name=None):
    """A textured image with a square then a disc (then a square, ... one per entry of ``sides``),
    each of random colour, a later shape cut out of the earlier ones where they overlap, as the
    dataset mapper returns it: ``image`` uint8 ``(3, H, W)``, ``instances`` with ``gt_masks``
    (``BitMasks``, or ``PolygonMasks`` of the same shapes with ``polygons``), tight ``gt_boxes``
    and ``gt_classes`` (0 for squares, 1 for discs with ``classes_alternate``, else all 0),
    ``height``, ``width`` and ``file_name`` when given."""
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[:H, :W]
    image = rng.uniform(40, 90, (3, 1, 1)) + 25 * np.sin(xx / 6.0 + seed)[None] + rng.normal(0, 4, (3, H, W))
    masks, polys = [], []
    for j, side in enumerate(sides):
        cx, cy = rng.uniform(side / 2 + 2, W - side / 2 - 2), rng.uniform(side / 2 + 2, H - side / 2 - 2)
        if j % 2 == 0:
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            mask = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
            polys.append([np.array([x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side], dtype=np.float64)])
        else:
            mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= (side / 2) ** 2
            t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            polys.append([np.stack([cx + side / 2 * np.cos(t), cy + side / 2 * np.sin(t)], 1).reshape(-1)])
        for prev in masks:
            mask &= ~prev
        image[:, mask] = rng.uniform(0, 255, (3, 1))
        masks.append(mask)
    inst = Instances((H, W))
    bit = torch.from_numpy(np.stack(masks))
    inst.gt_masks = PolygonMasks(polys) if polygons else BitMasks(bit)
    inst.gt_boxes = Boxes(mask_tight_boxes(bit))
    classes = [j % 2 if classes_alternate else 0 for j in range(len(sides))]
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    image = torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8))
    sample = {"image": image, "instances": inst, "height": H, "width": W}
    if file_name is not None:
        sample["file_name"] = file_name
    return sample
