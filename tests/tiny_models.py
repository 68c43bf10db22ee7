"""What the model tests share: the tiny from-scratch trunk overrides and a synthetic two-shape image.

Kept beside conftest.py (on pytest's import path) so that tests/modeling/test_*.py import it by
name, like ``conftest.REPO_ROOT``.
"""
import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

from conftest import REPO_ROOT

from instfcn_d2.core.boxes import mask_tight_boxes

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


# Tiny trunks (8-wide R18 with BatchNorm) keep each checkpoint under 1 MB.
TINY_TRUNK = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "192",
]
FCIS_HEADS = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "2",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.FCIS.CONV_NEW_DIM", "16",
    "MODEL.FCIS.GROUP_SIZE", "3",
    "MODEL.FCIS.MASK_SIZE", "7",
    "MODEL.FCIS.SCORE_THRESH_TEST", "0.0",
    "MODEL.FCIS.DETECTIONS_PER_IMAGE", "10",
]
#: the box weights the checkpoints' outputs were saved with (the shapes configs' recipe then): how
#: box deltas are decoded, not a parameter, so the outputs are compared with the same decoding
SAVED_BOX_WEIGHTS = ["MODEL.FCIS.BBOX_REG_WEIGHTS", "(10.0, 10.0, 5.0, 5.0)"]
TINY_CHECKPOINT_MODELS = {
    "fcis": ("configs/shapes/fcis_R18_cpu.yaml", FCIS_HEADS + SAVED_BOX_WEIGHTS),
    "biseg": (
        "configs/shapes/biseg_fused_7_9_R18_cpu.yaml",
        FCIS_HEADS + SAVED_BOX_WEIGHTS + ["MODEL.BISEG.GROUP_SIZE_FINE", "5", "MODEL.BISEG.SEM_SEG_CONV_DIM", "16",
                      "MODEL.BISEG.FINE_CONV_NEW_DIM", "8", "MODEL.BISEG.MASK_SIZE", "0"],
    ),
    "instance_fcn": (
        "configs/shapes/instance_fcn_R18_cpu.yaml",
        ["MODEL.INSTANCE_FCN.MASK_BRANCH_DIM", "16", "MODEL.INSTANCE_FCN.OBJECTNESS_DIM", "16",
         "MODEL.INSTANCE_FCN.REDUCE_DIM", "0", "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "20",
         "TEST.AUG.ENABLED", "False"],
    ),
}


def tiny_checkpoint_cfg(name, *opts):
    """The config of one of :data:`TINY_CHECKPOINT_MODELS` (``"fcis"``, ``"biseg"``, ``"instance_fcn"``),
    whose saved weights are ``tests/modeling/checkpoints/<name>_model.pth``."""
    from instfcn_d2.config import get_instfcn_cfg

    path, model_opts = TINY_CHECKPOINT_MODELS[name]
    return get_instfcn_cfg(str(REPO_ROOT / path), TINY_TRUNK + model_opts + list(opts))


TINY_CHECKPOINTS = REPO_ROOT / "tests" / "modeling" / "checkpoints"


def tiny_checkpoint_image():
    """The fixed 128 x 160 test image the tiny checkpoints were saved with: ``(3, H, W)`` uint8 (BGR,
    the configs' input format), smooth colour gradients and two shapes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :160]
    img = 80 + 40 * np.sin(xx / 9.0)[..., None] + 30 * np.cos(yy / 7.0)[..., None] + rng.normal(0, 5, (128, 160, 3))
    img[20:70, 30:90] = (200, 60, 40)
    img[((yy - 90) ** 2 + (xx - 110) ** 2) < 25**2] = (40, 180, 220)
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1)
