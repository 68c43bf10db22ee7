"""InstFCNDatasetMapper's crop after the scale jitter (INSTFCN.TRAIN_CROP_SIZE)."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T

from conftest import REPO_ROOT
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data import InstFCNDatasetMapper, register_synthetic_shapes
from instfcn_d2.modeling.common import mask_tight_boxes

CONFIG = str(REPO_ROOT / "configs" / "shapes" / "instance_fcn_R18_cpu.yaml")


@pytest.fixture(scope="module")
def records():
    register_synthetic_shapes("mapper_shapes", num_train=6, num_val=1, image_size=96)
    return DatasetCatalog.get("mapper_shapes_train")


def _mapper(*opts, is_train=True):
    cfg = get_instfcn_cfg(CONFIG, ["INPUT.RANDOM_FLIP", "none", *opts])
    return InstFCNDatasetMapper(cfg, is_train=is_train)


def test_crop_comes_after_the_resize_and_boxes_follow_the_cut_masks(records):
    mapper = _mapper("INPUT.MIN_SIZE_TRAIN", "(288,)", "INSTFCN.TRAIN_CROP_SIZE", "64")
    kinds = [type(a) for a in mapper.augmentations.augs]
    assert kinds.index(T.RandomCrop) == kinds.index(T.ResizeShortestEdge) + 1
    np.random.seed(0)
    seen = 0
    for record in records:
        out = mapper(dict(record))
        assert tuple(out["image"].shape[1:]) == (64, 64)  # 96 px -> 288 px -> a 64 px crop
        inst = out["instances"]
        if len(inst):
            seen += len(inst)
            masks = inst.gt_masks.tensor
            assert masks.shape[1:] == (64, 64) and bool(masks.flatten(1).any(1).all())
            # boxes recomputed from the cut masks, not the uncut boxes shifted by the crop
            assert torch.allclose(inst.gt_boxes.tensor, mask_tight_boxes(masks))
    assert seen > 0


def test_images_smaller_than_the_crop_stay_whole_and_test_time_never_crops(records):
    small = _mapper("INPUT.MIN_SIZE_TRAIN", "(48,)", "INSTFCN.TRAIN_CROP_SIZE", "64")(dict(records[0]))
    assert tuple(small["image"].shape[1:]) == (48, 48)
    test = _mapper("INPUT.MIN_SIZE_TEST", "192", "INSTFCN.TRAIN_CROP_SIZE", "64", is_train=False)
    assert tuple(test(dict(records[0]))["image"].shape[1:]) == (192, 192)


def test_negative_crop_size_is_a_clear_error():
    with pytest.raises(ValueError, match="INSTFCN.TRAIN_CROP_SIZE must be >= 0.*-5"):
        _mapper("INSTFCN.TRAIN_CROP_SIZE", "-5")
