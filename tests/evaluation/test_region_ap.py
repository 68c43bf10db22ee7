"""RegionAPEvaluator: VOC / SBD region AP on hand-computed cases (duplicates, a detection under
the threshold, a crowd region, a class without detections, a class without ground truth), both
AP interpolations, the VOC matching rule, the output files and the error paths."""
import json
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Instances

from instfcn_d2.evaluation import RegionAPEvaluator, match_detections
from instfcn_d2.evaluation.region_ap import FP, IGNORED, JSON_FILE, PLOT_FILE, TP

# pycocotools' mask.decode / encode under numpy 2: noise, not a problem of this code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

H = W = 20


@pytest.fixture
def register():
    """Register a throw-away dataset (``records``, ``classes``); removed after the test."""
    names = []

    def _register(records, classes=("cat", "dog")):
        name = f"instfcn_test_region_ap_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(thing_classes=list(classes))
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def rect(y0, y1, x0, x1):
    """(H, W) bool mask of rows y0..y1-1, columns x0..x1-1."""
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def ann(mask, category, crowd=0, **extra):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": category, "iscrowd": crowd,
            "segmentation": rle, **extra}


def record(image_id, anns):
    return {"image_id": image_id, "file_name": f"img{image_id}.jpg", "height": H, "width": W, "annotations": anns}


def run(evaluator, dets):
    """dets: {image_id: [(mask, class, score), ...]}; one process() call per image."""
    evaluator.reset()
    for image_id, items in dets.items():
        inst = Instances((H, W))
        inst.pred_masks = torch.from_numpy(np.stack([m for m, _, _ in items]) if items else np.zeros((0, H, W), bool))
        inst.pred_classes = torch.tensor([c for _, c, _ in items], dtype=torch.int64)
        inst.scores = torch.tensor([s for _, _, s in items], dtype=torch.float32)
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()["segm_voc"]


# ---------------------------------------------------------------------------------------------
# The main hand-computed case
#
# class 0 "cat": 3 counted instances, one crowd region
#   image 1: A1 = rows 0:10 x cols 0:10 (100 px), A2 = rows 10:20 x cols 10:18 (80 px)
#   image 2: A3 = rows 0:10 x cols 0:10 (100 px), crowd = rows 10:20 x cols 0:20 (200 px)
# class 1 "dog": 1 instance (image 3, rows 5:15 x cols 5:15) and no detection at all -> AP 0.
#
# cat detections, by score:           IoU with its best gt       @0.5      @0.7
#   d1 0.9 img1  = A1                  A1: 1.0                    TP        TP
#   d2 0.8 img1  rows 0:10 x cols 0:8  A1: 80/100 = 0.8           FP (dup)  FP (dup)
#   d3 0.7 img2  rows 0:10 x cols 0:6  A3: 60/100 = 0.6           TP        FP (under 0.7)
#   d4 0.6 img2  rows 12:20 x cols 0:10  A3: 0; crowd: 80/80 = 1  ignored   ignored
#   d5 0.5 img1  rows 10:20 x cols 10:16 A2: 60/80 = 0.75         TP        TP
#
# @0.5, ignored dropped: TP FP TP TP -> recall 1/3 1/3 2/3 1, precision 1 1/2 2/3 3/4
#   all-point: envelope 1 (to recall 1/3), 3/4 (to 2/3), 3/4 (to 1)
#              AP = (1 + 3/4 + 3/4) / 3 = 5/6
#   11-point:  r = 0, .1, .2, .3 (<= 1/3): 1; r = .4, .5, .6 (<= 2/3): 3/4; r = .7 .. 1: 3/4
#              AP = (4 * 1 + 7 * 3/4) / 11 = 9.25 / 11
# @0.7: TP FP FP TP -> recall 1/3 1/3 1/3 2/3, precision 1 1/2 1/3 1/2
#   all-point: 1/3 * 1 + 1/3 * 1/2 + 1/3 * 0 = 1/2
#   11-point:  (4 * 1 + 3 * 1/2 + 4 * 0) / 11 = 5.5 / 11 = 1/2
# mAPr = mean over the 2 classes (dog's AP is 0).
# Had d4 been counted (no crowd rule), @0.5 would be TP FP TP FP TP: all-point AP
# (1 + 2/3 + 3/5) / 3 = 34/45, not 5/6.


def main_case():
    records = [
        record(1, [ann(rect(0, 10, 0, 10), 0), ann(rect(10, 20, 10, 18), 0)]),
        record(2, [ann(rect(0, 10, 0, 10), 0), ann(rect(10, 20, 0, 20), 0, crowd=1)]),
        record(3, [ann(rect(5, 15, 5, 15), 1)]),
    ]
    dets = {
        1: [(rect(0, 10, 0, 10), 0, 0.9), (rect(0, 10, 0, 8), 0, 0.8), (rect(10, 20, 10, 16), 0, 0.5)],
        2: [(rect(0, 10, 0, 6), 0, 0.7), (rect(12, 20, 0, 10), 0, 0.6)],
        3: [],
    }
    return records, dets


def test_hand_computed_all_point(register):
    records, dets = main_case()
    res = run(RegionAPEvaluator(register(records), use_07_metric=False, distributed=False), dets)
    assert res["AP50-cat"] == pytest.approx(100 * 5 / 6)
    assert res["AP70-cat"] == pytest.approx(100 * 1 / 2)
    assert res["AP50-dog"] == 0.0 and res["AP70-dog"] == 0.0
    assert res["mAPr@0.5"] == pytest.approx(100 * 5 / 12)
    assert res["mAPr@0.7"] == pytest.approx(100 * 1 / 4)
    assert list(res)[:2] == ["mAPr@0.5", "mAPr@0.7"]


def test_hand_computed_11_point_is_the_default(register):
    records, dets = main_case()
    res = run(RegionAPEvaluator(register(records), distributed=False), dets)
    assert res["AP50-cat"] == pytest.approx(100 * 9.25 / 11)
    assert res["AP70-cat"] == pytest.approx(100 * 0.5)
    assert res["mAPr@0.5"] == pytest.approx(100 * 9.25 / 22)
    assert res["mAPr@0.7"] == pytest.approx(100 * 0.25)


def test_voc_rule_duplicate_is_fp_even_with_a_free_gt(register):
    # G1 = rows 0:10 x cols 0:10, G2 = rows 0:10 x cols 2:12 (they overlap: IoU 80/120).
    # e1 0.9 = G1: IoU 1 with G1 -> TP (G1).
    # e2 0.8 = rows 0:10 x cols 1:10 (90 px): IoU G1 = 90/100 = 0.9, G2 = 80/110 = 0.73.
    #   Its best gt G1 is taken -> FP under VOC, although G2 (>= 0.5) is free (COCO would match it).
    # recall 1/2 1/2, precision 1 1/2: all-point AP = 1/2; 11-point = 6/11 (r = 0 .. 0.5 reach 1).
    records = [record(1, [ann(rect(0, 10, 0, 10), 0), ann(rect(0, 10, 2, 12), 0)])]
    dets = {1: [(rect(0, 10, 0, 10), 0, 0.9), (rect(0, 10, 1, 10), 0, 0.8)]}
    name = register(records, classes=("cat",))
    res = run(RegionAPEvaluator(name, iou_thresholds=(0.5,), use_07_metric=False, distributed=False), dets)
    assert res == {"mAPr@0.5": pytest.approx(50.0), "AP50-cat": pytest.approx(50.0)}
    res = run(RegionAPEvaluator(name, iou_thresholds=(0.5,), distributed=False), dets)
    assert res["mAPr@0.5"] == pytest.approx(100 * 6 / 11)


def test_class_without_gt_is_nan_and_left_out_of_the_mean(register):
    # "bird" has a detection but no ground truth: AP undefined (NaN), not in the mean;
    # cat: one perfect detection -> AP 1.
    records = [record(1, [ann(rect(0, 10, 0, 10), 0)])]
    dets = {1: [(rect(0, 10, 0, 10), 0, 0.9), (rect(10, 20, 10, 20), 1, 0.95)]}
    res = run(RegionAPEvaluator(register(records, classes=("cat", "bird")), distributed=False), dets)
    assert np.isnan(res["AP50-bird"]) and np.isnan(res["AP70-bird"])
    assert res["AP50-cat"] == pytest.approx(100.0)
    assert res["mAPr@0.5"] == pytest.approx(100.0) and res["mAPr@0.7"] == pytest.approx(100.0)


def test_only_processed_images_count(register):
    # The dog instance of image 3 is not evaluated when image 3 is not processed: dog has no gt.
    records, dets = main_case()
    del dets[3]
    res = run(RegionAPEvaluator(register(records), use_07_metric=False, distributed=False), dets)
    assert np.isnan(res["AP50-dog"])
    assert res["mAPr@0.5"] == pytest.approx(100 * 5 / 6)


def test_match_detections_outcomes():
    best_iou = np.array([0.9, 0.8, 0.55, -np.inf, 0.4])
    best_gt = np.array([7, 7, 3, -1, 3])
    ignore = np.array([-np.inf, -np.inf, -np.inf, 0.6, 0.45])
    assert match_detections(best_iou, best_gt, ignore, 0.5).tolist() == [TP, FP, TP, IGNORED, FP]
    assert match_detections(best_iou, best_gt, ignore, 0.7).tolist() == [TP, FP, FP, FP, FP]
    # >= at the threshold, as voc_eval_sds
    assert match_detections(np.array([0.5]), np.array([0]), np.array([-np.inf]), 0.5).tolist() == [TP]


def test_polygon_ground_truth_and_float_masks(register):
    # gt as a polygon (the square rows/cols 0:10 as pycocotools rasterises it), predictions as
    # float probabilities binarised at > 0.5: one hit -> AP 1.
    poly = [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]]
    gt_mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(poly, H, W))).astype(bool)
    a = ann(gt_mask, 0)
    a["segmentation"] = poly
    name = register([record(1, [a])], classes=("cat",))
    evaluator = RegionAPEvaluator(name, iou_thresholds=(0.7,), distributed=False)
    inst = Instances((H, W))
    inst.pred_masks = torch.from_numpy(gt_mask[None].astype(np.float32) * 0.9)
    inst.pred_classes = torch.tensor([0])
    inst.scores = torch.tensor([0.5])
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    assert evaluator.evaluate()["segm_voc"]["AP70-cat"] == pytest.approx(100.0)


def test_output_files(register, tmp_path):
    records, dets = main_case()
    out = tmp_path / "eval"
    run(RegionAPEvaluator(register(records), use_07_metric=False, output_dir=str(out), distributed=False), dets)
    stats = json.loads((out / JSON_FILE).read_text())
    assert stats["num_positives"] == [3, 1]  # the crowd region is not a positive
    assert stats["num_detections"] == [5, 0]
    assert stats["num_ignored_gt"] == 1
    assert stats["ap"]["0.5"][0] == pytest.approx(5 / 6)
    assert stats["use_07_metric"] is False
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_images_processed_gives_empty_result(register):
    records, _ = main_case()
    assert RegionAPEvaluator(register(records), distributed=False).evaluate() == {}


def test_bad_inputs(register):
    records, _ = main_case()
    name = register(records)
    with pytest.raises(ValueError, match="iou_thresholds"):
        RegionAPEvaluator(name, iou_thresholds=(0.0,))
    evaluator = RegionAPEvaluator(name, distributed=False)
    # a class index beyond the 2 thing_classes
    with pytest.raises(ValueError, match=r"pred_classes \[5\]"):
        run(evaluator, {1: [(rect(0, 5, 0, 5), 5, 0.9)]})
    # masks not at the image resolution
    evaluator.reset()
    inst = Instances((10, 10))
    inst.pred_masks = torch.zeros((1, 10, 10), dtype=torch.bool)
    inst.pred_classes = torch.tensor([0])
    inst.scores = torch.tensor([0.5])
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    with pytest.raises(ValueError, match=r"image_id 1 .* is 20x20 but its predicted masks are 10x10"):
        evaluator.evaluate()
    # an image the dataset does not have
    with pytest.raises(KeyError, match="image_id 99 is not in dataset"):
        run(evaluator, {99: [(rect(0, 5, 0, 5), 0, 0.9)]})
    # a dataset without class names
    bare = f"instfcn_test_region_ap_bare_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(bare)
    try:
        with pytest.raises(KeyError, match="thing_classes"):
            RegionAPEvaluator(bare)
    finally:
        MetadataCatalog.remove(bare)
