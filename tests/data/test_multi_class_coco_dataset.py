"""Several classes in one image, nested as on a street photo (a facade holding two windows, a window
holding a sign, a car in front of the facade), from a user's COCO JSON with config keys only: BiSeg's
derived semantic labels let the smaller instance win wherever instances nest, whatever the order of
the annotations; every model trains on it through tools/train_net.py; and the detectors can predict
every class, reported under the JSON's own category ids."""
import copy
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import REPO_ROOT, load_tool
from test_custom_coco_dataset import FCIS_HEADS, TINY
from tiny_coco import NESTED_CATEGORIES, write_nested_coco

from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.data.coco_json import apply_coco_json_config
from instfcn_d2.data.dataset_mapper import InstFCNDatasetMapper

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [c["name"] for c in NESTED_CATEGORIES]  # facade, window, sign, car: contiguous 0..3 by id
LABEL = {name: i + 1 for i, name in enumerate(NAMES)}
#: enough detections that every class of every candidate can stay (per-class NMS, no score threshold)
ALL_CLASSES = ["MODEL.FCIS.DETECTIONS_PER_IMAGE", "300", "TEST.DETECTIONS_PER_IMAGE", "300"]
MODELS = {
    "fcis_custom": ("configs/custom/fcis_R18_FPN_cpu.yaml", FCIS_HEADS + ALL_CLASSES),
    "biseg_custom": (
        "configs/custom/biseg_R18_FPN_cpu.yaml",
        FCIS_HEADS + ALL_CLASSES + ["MODEL.BISEG.GROUP_SIZE_FINE", "5", "MODEL.BISEG.SEM_SEG_CONV_DIM", "16",
                                    "MODEL.BISEG.FINE_CONV_NEW_DIM", "8", "MODEL.BISEG.MASK_SIZE", "0"],
    ),
    "mask_rcnn_custom": (
        "configs/custom/mask_rcnn_R18_FPN_cpu.yaml",
        ALL_CLASSES + ["MODEL.RPN.POST_NMS_TOPK_TEST", "30", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
                       "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"],
    ),
    "instance_fcn": (
        "configs/shapes/instance_fcn_R18_cpu.yaml",
        ["MODEL.INSTANCE_FCN.MASK_BRANCH_DIM", "16", "MODEL.INSTANCE_FCN.OBJECTNESS_DIM", "16",
         "MODEL.INSTANCE_FCN.WINDOWS_PER_IMAGE", "32", "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "20",
         "MODEL.INSTANCE_FCN.WINDOW_SIZE", "7", "TEST.AUG.ENABLED", "False"],
    ),
}


@pytest.fixture(scope="module")
def nested_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("nested")
    train = write_nested_coco(root / "train", num_images=4)
    val = write_nested_coco(root / "val", num_images=2, seed=1)
    return train, val


def _dataset_keys(nested_files):
    (train_json, train_images, _), (val_json, val_images, _) = nested_files
    return ["DATASETS.COCO_JSON_TRAIN", train_json, "DATASETS.COCO_IMAGE_ROOT_TRAIN", train_images,
            "DATASETS.COCO_JSON_TEST", val_json, "DATASETS.COCO_IMAGE_ROOT_TEST", val_images]


def test_derived_labels_let_the_smaller_instance_win_where_instances_nest(nested_files):
    """BiSeg's training mapper on the JSON (no label files): at the sign, listed before the window
    that holds it, the sign's label; in that window elsewhere the window's; on the facade between
    the windows the facade's; on the car in front of the facade the car's; outside, background."""
    (_, _, layout), _ = nested_files
    cfg = get_instfcn_cfg(str(REPO_ROOT / "configs/custom/biseg_R18_FPN_cpu.yaml"), _dataset_keys(nested_files) + [
        "INPUT.RANDOM_FLIP", "none", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128"])
    apply_coco_json_config(cfg)
    assert MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes == NAMES
    mapper = InstFCNDatasetMapper(cfg, is_train=True)
    records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    assert len(records) == len(layout)
    for record, boxes in zip(records, layout):
        sem = mapper(copy.deepcopy(record))["sem_seg"].numpy()
        assert sem.shape == (128, 128)

        def at(name, dx=0, dy=0):
            x0, y0, x1, y1 = boxes[name]
            return int(sem[(y0 + y1) // 2 + dy, (x0 + x1) // 2 + dx])

        assert at("sign") == LABEL["sign"]
        assert at("window", dy=10) == LABEL["window"] and at("window2") == LABEL["window"]
        fx0, _, _, _ = boxes["facade"]
        assert int(sem[66, fx0 + 50]) == LABEL["facade"]
        assert at("car") == LABEL["car"] and at("car", dy=-8) == LABEL["car"]  # the car's top half is on the facade
        assert int(sem[120, 2]) == 0
        assert set(np.unique(sem).tolist()) == {0, *LABEL.values()}


def _train(name, nested_files, out):
    config, opts = MODELS[name]
    argv = ["--config-file", str(REPO_ROOT / config), *TINY, *_dataset_keys(nested_files), *opts, "OUTPUT_DIR", str(out)]
    return load_tool("train_net").run(argv)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcis_custom", "biseg_custom", "mask_rcnn_custom"])
def test_detectors_train_and_can_predict_every_class(name, nested_files, tmp_path):
    results = _train(name, nested_files, tmp_path)
    assert "MODEL.ROI_HEADS.NUM_CLASSES" in (tmp_path / "log.txt").read_text()
    assert {f"AP-{c}" for c in NAMES} <= set(results["segm"])
    if name == "biseg_custom":  # the semantic branch is scored on every class's derived labels
        assert {f"IoU-{c}" for c in NAMES} <= set(results["sem_seg"])
    (val_dir,) = list((tmp_path / "inference").iterdir())
    # the model's classes (contiguous), then what the evaluation scored: the JSON's own ids
    predictions = torch.load(val_dir / "instances_predictions.pth", weights_only=False)
    assert {p["category_id"] for image in predictions for p in image["instances"]} == set(range(len(NAMES)))
    scored = json.loads((val_dir / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in scored} == {c["id"] for c in NESTED_CATEGORIES}


@pytest.mark.slow
def test_instance_fcn_trains_on_several_classes_as_proposals(nested_files, tmp_path):
    results = _train("instance_fcn", nested_files, tmp_path)
    assert 0.0 <= results["proposals"]["AR@10"] <= 100.0
