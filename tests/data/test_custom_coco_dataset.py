"""A user's COCO JSON (polygons and RLE, 2 categories numbered 3 and 7, a crowd region, an image
without annotations) trains and evaluates each model through tools/train_net.py with config keys
only (DATASETS.COCO_JSON_*, no Python; docs/custom_dataset.md): InstanceFCN (segment-proposal AR,
with its crop after the scale jitter over polygons and an annotation-free image), FCIS (COCO AP)
and BiSeg (COCO AP and the mean IU against labels derived from the instances), and FCIS / BiSeg
with the configs for custom data (configs/custom/)."""
import json
import re

import numpy as np
import pytest

from conftest import REPO_ROOT, load_tool
from tiny_coco import write_tiny_coco
from tiny_models import TINY_TRUNK

pytestmark = pytest.mark.usefixtures("one_thread")

# the tests' tiny trunk (8-wide R18 with BatchNorm), smaller images, a 3-iteration schedule
TINY = TINY_TRUNK + [
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "160",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.001",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "100",
    "DATALOADER.NUM_WORKERS", "0",
]
FCIS_HEADS = [
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.FCIS.CONV_NEW_DIM", "16",
    "MODEL.FCIS.GROUP_SIZE", "3",
    "MODEL.FCIS.MASK_SIZE", "7",
    "MODEL.FCIS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.FCIS.SCORE_THRESH_TEST", "0.0",
    "MODEL.FCIS.DETECTIONS_PER_IMAGE", "10",
]
MODELS = {
    "instance_fcn": (
        "configs/shapes/instance_fcn_R18_cpu.yaml",
        ["MODEL.INSTANCE_FCN.MASK_BRANCH_DIM", "16", "MODEL.INSTANCE_FCN.OBJECTNESS_DIM", "16",
         "MODEL.INSTANCE_FCN.WINDOWS_PER_IMAGE", "32", "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "20",
         "TEST.AUG.ENABLED", "False",
         # the crop after the scale jitter, over polygons (detectron2 alone needs shapely), and an
         # image without annotations kept (detectron2 alone: "Cannot find field 'gt_masks'")
         "INPUT.MIN_SIZE_TRAIN", "(128,)", "INSTFCN.TRAIN_CROP_SIZE", "80", "MODEL.INSTANCE_FCN.WINDOW_SIZE", "7",
         "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"],
    ),
    "fcis": ("configs/shapes/fcis_R18_cpu.yaml", FCIS_HEADS),
    "biseg": (
        "configs/shapes/biseg_fused_7_9_R18_cpu.yaml",
        FCIS_HEADS + ["MODEL.BISEG.GROUP_SIZE_FINE", "5", "MODEL.BISEG.SEM_SEG_CONV_DIM", "16",
                      "MODEL.BISEG.FINE_CONV_NEW_DIM", "8", "MODEL.BISEG.MASK_SIZE", "0"],
    ),
}
# configs/custom/ (FPN trunk, maps on p2) with the same tiny heads
MODELS["fcis_custom"] = ("configs/custom/fcis_R18_FPN_cpu.yaml", MODELS["fcis"][1])
MODELS["biseg_custom"] = ("configs/custom/biseg_R18_FPN_cpu.yaml", MODELS["biseg"][1])


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_data")
    train = write_tiny_coco(root / "train", num_images=6, crowd_images=(2,), empty_images=(5,))
    val = write_tiny_coco(root / "val", num_images=3, seed=1, crowd_images=(1,))
    return train, val


def _train_and_evaluate(name, coco_files, out):
    (train_json, train_images), (val_json, val_images) = coco_files
    config, opts = MODELS[name]
    argv = [
        "--config-file", str(REPO_ROOT / config),
        *TINY,
        "DATASETS.COCO_JSON_TRAIN", train_json, "DATASETS.COCO_IMAGE_ROOT_TRAIN", train_images,
        "DATASETS.COCO_JSON_TEST", val_json, "DATASETS.COCO_IMAGE_ROOT_TEST", val_images,
        *opts,
        "OUTPUT_DIR", str(out),
    ]
    return load_tool("train_net").run(argv)


def _check_run(out, results):
    assert (out / "model_final.pth").is_file()
    log = (out / "log.txt").read_text()
    assert "DATASETS.COCO_JSON_TRAIN: registered 'annotations_" in log
    assert re.search(r"MODEL.ROI_HEADS.NUM_CLASSES \d+ -> 2 \(the JSON's categories: square, disc\)", log)
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 2
    assert all(np.isfinite(r["total_loss"]) for r in rows if "total_loss" in r)


@pytest.mark.slow
def test_instance_fcn_on_a_coco_json(coco_files, tmp_path):
    results = _train_and_evaluate("instance_fcn", coco_files, tmp_path)
    _check_run(tmp_path, results)
    proposals = results["proposals"]
    assert {"AR@10", "AR@100"} <= set(proposals) and 0.0 <= proposals["AR@100"] <= 100.0


@pytest.mark.slow
def test_fcis_on_a_coco_json(coco_files, tmp_path):
    results = _train_and_evaluate("fcis", coco_files, tmp_path)
    _check_run(tmp_path, results)
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP-square", "AP-disc"} <= set(results[task])
    assert "sem_seg" not in results


@pytest.mark.slow
def test_biseg_on_a_coco_json_trains_and_scores_the_derived_labels(coco_files, tmp_path):
    results = _train_and_evaluate("biseg", coco_files, tmp_path)
    _check_run(tmp_path, results)
    assert {"AP", "AP50"} <= set(results["segm"])
    sem = results["sem_seg"]
    assert 0.0 <= sem["mIoU"] <= 100.0 and {"IoU-background", "IoU-square", "IoU-disc"} <= set(sem)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    sem_losses = [r["loss_sem_seg"] for r in rows if "loss_sem_seg" in r]
    assert sem_losses and all(np.isfinite(sem_losses))
    # the saved config registers the same datasets again: --eval-only needs no Python either
    evaluated = load_tool("train_net").run([
        "--config-file", str(tmp_path / "config.yaml"), "--eval-only",
        "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"),
    ])
    assert evaluated["sem_seg"]["mIoU"] == pytest.approx(sem["mIoU"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcis_custom", "biseg_custom"])
def test_custom_data_configs_on_a_coco_json(name, coco_files, tmp_path):
    results = _train_and_evaluate(name, coco_files, tmp_path)
    _check_run(tmp_path, results)
    assert {"AP", "AP50", "AP-square", "AP-disc"} <= set(results["segm"])
    assert ("sem_seg" in results) == (name == "biseg_custom")
