"""COCO JSON datasets without Python (DATASETS.COCO_JSON_* keys, instfcn_d2.data.coco_json): the
registration and what it sets, errors naming a missing file or folder, and annotations that COCO's
evaluation cannot read rejected up front, naming the file and the annotation id."""
import logging

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from conftest import REPO_ROOT
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data.coco_json import CocoAnnotationError, apply_coco_json_config, check_coco_json, coco_json_dataset_name
from tiny_coco import write_tiny_coco

FCIS = str(REPO_ROOT / "configs" / "shapes" / "fcis_R18_cpu.yaml")


def _cfg(*opts):
    return get_instfcn_cfg(FCIS, list(opts))


def test_keys_register_the_json_and_set_datasets_and_num_classes(tmp_path):
    train_json, train_images = write_tiny_coco(tmp_path / "train", num_images=3)
    val_json, val_images = write_tiny_coco(tmp_path / "val", num_images=2, seed=1)
    cfg = _cfg("DATASETS.COCO_JSON_TRAIN", train_json, "DATASETS.COCO_IMAGE_ROOT_TRAIN", train_images,
               "DATASETS.COCO_JSON_TEST", val_json, "DATASETS.COCO_IMAGE_ROOT_TEST", val_images)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 4  # the shapes config's
    notes = apply_coco_json_config(cfg)
    train, val = coco_json_dataset_name(train_json, train_images), coco_json_dataset_name(val_json, val_images)
    assert train != val and train.startswith("annotations_")
    assert cfg.DATASETS.TRAIN == (train,) and cfg.DATASETS.TEST == (val,)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2
    text = "\n".join(notes)
    assert f"DATASETS.TRAIN ('instfcn_shapes_train',) -> ('{train}',)" in text
    assert "3 images, 6 annotations, 2 categories" in text and train_json in text
    assert "MODEL.ROI_HEADS.NUM_CLASSES 4 -> 2 (the JSON's categories: square, disc)" in text
    meta = MetadataCatalog.get(train)
    assert meta.evaluator_type == "coco" and meta.json_file == train_json and meta.thing_classes == ["square", "disc"]
    records = DatasetCatalog.get(train)
    assert len(records) == 3 and records[0]["file_name"].startswith(train_images)
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0, 1}
    # a second application (e.g. of OUTPUT_DIR/config.yaml) registers nothing new
    assert apply_coco_json_config(cfg) and cfg.DATASETS.TRAIN == (train,)
    assert apply_coco_json_config(_cfg()) == []  # keys unset: nothing happens


def test_missing_files_and_folders_are_named(tmp_path):
    json_file, images = write_tiny_coco(tmp_path / "d", num_images=1)
    cases = [
        (("DATASETS.COCO_JSON_TRAIN", str(tmp_path / "nope.json"), "DATASETS.COCO_IMAGE_ROOT_TRAIN", images),
         FileNotFoundError, r"DATASETS.COCO_JSON_TRAIN: no such file: .*nope.json"),
        (("DATASETS.COCO_JSON_TEST", json_file, "DATASETS.COCO_IMAGE_ROOT_TEST", str(tmp_path / "imgs")),
         FileNotFoundError, r"DATASETS.COCO_IMAGE_ROOT_TEST: no such folder: .*imgs \(the images of .*annotations.json\)"),
        (("DATASETS.COCO_JSON_TRAIN", json_file),
         ValueError, r"DATASETS.COCO_IMAGE_ROOT_TRAIN is empty: set it to the folder holding the images"),
        (("DATASETS.COCO_IMAGE_ROOT_TRAIN", images), ValueError, r"DATASETS.COCO_JSON_TRAIN is empty"),
        (("DATASETS.COCO_JSON_TRAIN", json_file, "DATASETS.COCO_IMAGE_ROOT_TRAIN", str(tmp_path)),
         FileNotFoundError, r"does not hold the first image of .*img_00.png not found"),
    ]
    for opts, error, message in cases:
        with pytest.raises(error, match=message):
            apply_coco_json_config(_cfg(*opts))


def test_train_and_test_categories_must_agree(tmp_path):
    train_json, train_images = write_tiny_coco(tmp_path / "a", num_images=1)
    val_json, val_images = write_tiny_coco(
        tmp_path / "b", num_images=1, edit=lambda d: d["categories"][0].update(name="circle")
    )
    cfg = _cfg("DATASETS.COCO_JSON_TRAIN", train_json, "DATASETS.COCO_IMAGE_ROOT_TRAIN", train_images,
               "DATASETS.COCO_JSON_TEST", val_json, "DATASETS.COCO_IMAGE_ROOT_TEST", val_images)
    with pytest.raises(ValueError, match="categories of DATASETS.COCO_JSON_TRAIN .* differ"):
        apply_coco_json_config(cfg)


def _set_segmentation(ann_id, segmentation):
    def edit(data):
        next(a for a in data["annotations"] if a["id"] == ann_id)["segmentation"] = segmentation

    return edit


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ([[]], r"first polygon has 0 coordinates"),
        ([], r"empty segmentation list"),
        ([[1, 2, 3, 4], [10, 10, 20, 10, 20, 20]], r"first polygon has 4 coordinates"),
        ({"size": [50, 96], "counts": [0, 10, 4790]}, r"RLE segmentation of size \[50, 96\] on an image of height x width 96 x 96"),
    ],
)
def test_annotations_the_evaluation_cannot_read_are_rejected_naming_file_and_id(tmp_path, segmentation, message):
    json_file, images = write_tiny_coco(tmp_path, num_images=3, edit=_set_segmentation(3, segmentation))
    with pytest.raises(CocoAnnotationError, match=rf"(?s)annotations.json: 1 problem.*annotation id 3 \(image id 101, img_01.png\): {message}"):
        check_coco_json(json_file)
    with pytest.raises(CocoAnnotationError, match="annotation id 3"):
        apply_coco_json_config(_cfg("DATASETS.COCO_JSON_TEST", json_file, "DATASETS.COCO_IMAGE_ROOT_TEST", images))


def test_the_trainer_and_the_evaluators_check_a_registered_json(tmp_path):
    """An empty polygon in a JSON registered with register_coco_instances: detectron2's loader
    drops it from training, then COCO's evaluation of the JSON fails at the very end with
    pycocotools' 'input type is not supported'. It is reported before training or evaluating."""
    from instfcn_d2.engine.trainer import Trainer, build_evaluators

    json_file, images = write_tiny_coco(tmp_path, num_images=2, edit=_set_segmentation(2, [[]]))
    name = "test_coco_json_bad_polygon"
    register_coco_instances(name, {}, json_file, images)
    try:
        cfg = _cfg("DATASETS.TEST", f"('{name}',)", "OUTPUT_DIR", str(tmp_path / "out"))
        with pytest.raises(CocoAnnotationError, match=r"annotation id 2 \(image id 100, img_00.png\)"):
            build_evaluators(cfg, name)  # --eval-only: before the inference
        with pytest.raises(CocoAnnotationError, match=r"annotation id 2 \(image id 100, img_00.png\)"):
            Trainer(cfg)  # training: before the first iteration (before the model is even built)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_zero_size_boxes_with_a_mask_are_a_warning(tmp_path, caplog):
    def edit(data):
        data["annotations"][0]["bbox"][2] = 0

    json_file, _ = write_tiny_coco(tmp_path, num_images=1, edit=edit)
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.data.coco_json"):
        summary = check_coco_json(json_file)
    assert summary == {"images": 1, "annotations": 2, "categories": 2}
    assert "1 annotation(s) with a valid mask have a bbox of zero width or height (ids 1)" in caplog.text
