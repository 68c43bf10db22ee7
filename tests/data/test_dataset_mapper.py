"""InstFCNDatasetMapper's crop after the scale jitter (INSTFCN.TRAIN_CROP_SIZE)."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T

from conftest import REPO_ROOT
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data import InstFCNDatasetMapper, register_synthetic_shapes
from instfcn_d2.core.boxes import mask_tight_boxes

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


# ---- records of a COCO JSON (polygons and RLE), as register_coco_instances loads them ----------
import logging  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402

from instfcn_d2.data import DatasetRecordError  # noqa: E402
from instfcn_d2.data.semantic_from_instances import semantic_from_instances  # noqa: E402
from tiny_coco import write_tiny_coco  # noqa: E402

BISEG = str(REPO_ROOT / "configs" / "shapes" / "biseg_fused_7_9_R18_cpu.yaml")


def _coco_records(tmp_path_factory, **kwargs):
    json_file, images = write_tiny_coco(tmp_path_factory.mktemp("coco"), **kwargs)
    name = f"mapper_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, json_file, images)
    return DatasetCatalog.get(name), name


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    records, name = _coco_records(tmp_path_factory, num_images=4, crowd_images=(1,), empty_images=(3,))
    yield records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _find_window(full, crop):
    """(y0, x0) of ``crop`` (C, h, w) inside ``full`` (C, H, W), by exact pixel match."""
    h, w = crop.shape[1:]
    for y0 in range(full.shape[1] - h + 1):
        for x0 in range(full.shape[2] - w + 1):
            if torch.equal(full[:, y0, x0], crop[:, 0, 0]) and torch.equal(full[:, y0 : y0 + h, x0 : x0 + w], crop):
                return y0, x0
    raise AssertionError("crop not found in the uncropped image")


def _without_shapely(monkeypatch):
    """Imports of shapely fail, as where it is not installed."""
    for name in ("shapely", "shapely.geometry"):
        monkeypatch.setitem(sys.modules, name, None)


def test_polygons_under_the_crop_need_no_shapely_and_match_the_uncropped_masks(coco, monkeypatch):
    """The InstanceFCN shapes config crops after the scale jitter; detectron2 would cut the
    polygons with shapely (where it is not installed: ModuleNotFoundError, blamed on the image)."""
    _without_shapely(monkeypatch)
    full_mapper = _mapper("INPUT.MIN_SIZE_TRAIN", "(192,)", "INSTFCN.TRAIN_CROP_SIZE", "0")
    crop_mapper = _mapper("INPUT.MIN_SIZE_TRAIN", "(192,)", "INSTFCN.TRAIN_CROP_SIZE", "64")
    assert crop_mapper.instance_mask_format == "bitmask"
    record = coco[0]
    assert isinstance(record["annotations"][0]["segmentation"], list)  # the square is a polygon
    full = full_mapper(dict(record))
    np.random.seed(1)
    for _ in range(4):
        out = crop_mapper(dict(record))
        y0, x0 = _find_window(full["image"], out["image"])
        inst, ref = out["instances"], full["instances"]
        for cls in inst.gt_classes.tolist():
            got = inst.gt_masks.tensor[inst.gt_classes == cls][0]
            expected = ref.gt_masks.tensor[ref.gt_classes == cls][0][y0 : y0 + 64, x0 : x0 + 64]
            assert torch.equal(got, expected)


def test_a_missing_module_is_not_blamed_on_the_record(coco, monkeypatch):
    from detectron2.data import detection_utils

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'somedependency'")

    monkeypatch.setattr(detection_utils, "transform_instance_annotations", missing)
    with pytest.raises(ModuleNotFoundError, match="somedependency") as info:
        _mapper("INSTFCN.TRAIN_CROP_SIZE", "64")(dict(coco[0]))
    assert not isinstance(info.value, DatasetRecordError)


def test_polygon_mask_format_with_a_crop_and_no_shapely_fails_when_built(monkeypatch):
    _without_shapely(monkeypatch)
    with pytest.raises(ValueError, match="need shapely.*INPUT.MASK_FORMAT 'bitmask'"):
        _mapper("INSTFCN.TRAIN_CROP_SIZE", "64", "INPUT.MASK_FORMAT", "polygon")
    _mapper("INSTFCN.TRAIN_CROP_SIZE", "64", "INPUT.MASK_FORMAT", "polygon", is_train=False)  # no crop at test


def test_an_image_without_annotations_gets_empty_masks_under_the_crop(coco):
    record = coco[3]
    assert record["annotations"] == []
    out = _mapper("INPUT.MIN_SIZE_TRAIN", "(96,)", "INSTFCN.TRAIN_CROP_SIZE", "64")(dict(record))
    inst = out["instances"]
    assert len(inst) == 0 and inst.has("gt_masks") and tuple(inst.gt_masks.tensor.shape) == (0, 64, 64)
    assert tuple(inst.gt_boxes.tensor.shape) == (0, 4)
    # without the crop as well
    out = _mapper("INPUT.MIN_SIZE_TRAIN", "(96,)")(dict(record))
    assert out["instances"].has("gt_masks") and len(out["instances"]) == 0


def test_a_zero_size_box_with_a_valid_mask_gets_the_mask_box(coco, caplog):
    record = dict(coco[0])
    record["annotations"] = [dict(a) for a in record["annotations"]]
    x, y, w, h = record["annotations"][0]["bbox"]
    record["annotations"][0]["bbox"] = [x, y, 0.0, h]  # w = 0 in the JSON; the polygon is fine
    mapper = _mapper("INPUT.MIN_SIZE_TRAIN", "(96,)", "INSTFCN.TRAIN_CROP_SIZE", "0")  # no crop: boxes kept
    assert not mapper.recompute_boxes
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.data.dataset_mapper"):
        out = mapper(record)
    inst = out["instances"]
    assert len(inst) == 2, "the instance with the empty box must not be dropped"
    assert torch.allclose(inst.gt_boxes.tensor, mask_tight_boxes(inst.gt_masks.tensor))
    assert "empty bbox but a non-empty mask" in caplog.text and record["file_name"] in caplog.text


# ---- BiSeg's semantic labels (MODEL.BISEG.SEM_SEG_SOURCE) ---------------------------------------
def _biseg_mapper(*opts):
    cfg = get_instfcn_cfg(BISEG, ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "400", *opts])
    return InstFCNDatasetMapper(cfg, is_train=True)


def test_biseg_labels_derived_after_the_augmentation_follow_the_instances(coco):
    mapper = _biseg_mapper("INPUT.RANDOM_FLIP", "horizontal")
    assert mapper.sem_seg_source == "auto"
    np.random.seed(0)
    for record in coco[:1] * 4:  # flipped and not
        out = mapper(dict(record))
        sem, inst = out["sem_seg"], out["instances"]
        assert sem.dtype == torch.int64 and tuple(sem.shape) == tuple(out["image"].shape[1:]) == (128, 128)
        expected = semantic_from_instances(inst.gt_masks.tensor.numpy(), inst.gt_classes.tolist(), image_size=(128, 128))
        assert np.array_equal(sem.numpy(), expected)
        # square: category id 3 -> class 0 -> label 1; disc: id 7 -> class 1 -> label 2
        assert set(np.unique(sem.numpy()).tolist()) == {0, 1, 2}


def test_biseg_crowd_regions_are_ignored_and_empty_images_are_background(coco):
    mapper = _biseg_mapper("INPUT.RANDOM_FLIP", "none", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "200")
    out = mapper(dict(coco[1]))  # its disc is a crowd region
    inst, sem = out["instances"], out["sem_seg"]
    assert inst.gt_classes.tolist() == [0]  # the crowd disc is no instance
    square = inst.gt_masks.tensor[0]
    assert (sem[square] == 1).all()
    assert int((sem == 200).sum()) > 0 and not bool(((sem == 200) & square).any())
    empty = mapper(dict(coco[3]))
    assert not empty["sem_seg"].any() and len(empty["instances"]) == 0


def test_biseg_label_files_auto_files_and_instances(coco, tmp_path):
    from PIL import Image

    label_file = tmp_path / "labels.png"
    Image.fromarray(np.full((96, 96), 2, np.uint8)).save(label_file)
    with_file = dict(coco[0], sem_seg_file_name=str(label_file))
    auto = _biseg_mapper("INPUT.RANDOM_FLIP", "none")
    assert (auto(dict(with_file))["sem_seg"] == 2).all()  # the file, as detectron2 reads it
    derived = _biseg_mapper("INPUT.RANDOM_FLIP", "none", "MODEL.BISEG.SEM_SEG_SOURCE", "instances")(dict(with_file))["sem_seg"]
    assert set(np.unique(derived.numpy()).tolist()) == {0, 1, 2}
    files = _biseg_mapper("MODEL.BISEG.SEM_SEG_SOURCE", "files")
    assert (files(dict(with_file))["sem_seg"] == 2).all()
    with pytest.raises(DatasetRecordError, match=r"img_00.png.*SEM_SEG_SOURCE is 'files' but the record has no 'sem_seg_file_name'"):
        files(dict(coco[0]))
    with pytest.raises(ValueError, match="SEM_SEG_SOURCE must be one of auto, files, instances; got 'file'"):
        _biseg_mapper("MODEL.BISEG.SEM_SEG_SOURCE", "file")
    # models without a semantic branch get no labels derived
    assert "sem_seg" not in _mapper("INPUT.MIN_SIZE_TRAIN", "(96,)")(dict(coco[0]))
