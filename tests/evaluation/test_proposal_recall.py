"""SegmentProposalEvaluator: hand-computed recalls, agreement with pycocotools' class-agnostic
COCOeval, edge cases (no proposals, no ground truth) and the Fig. 6 plot."""
import contextlib
import io
import json
import logging
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Instances

from instfcn_d2.evaluation import IOU_THRESHOLDS, SegmentProposalEvaluator, match_proposals
from instfcn_d2.evaluation.proposal_recall import JSON_FILE, PLOT_FILE

# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def register():
    """Register throw-away datasets (records, 2 classes with dataset ids 1, 2); removed after."""
    names = []

    def _register(records):
        name = f"instfcn_test_proposals_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(thing_classes=["a", "b"], thing_dataset_id_to_contiguous_id={1: 0, 2: 1})
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def box_mask(h, w, y0, y1, x0, x1):
    """(h, w) bool mask of rows y0..y1-1, columns x0..x1-1."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle_of(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ann(mask, category=0, crowd=0, polygon=None):
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {
        "bbox": box,
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": category,
        "iscrowd": crowd,
        "segmentation": polygon if polygon is not None else rle_of(mask),
    }


def record(image_id, h, w, anns):
    return {"image_id": image_id, "file_name": f"img{image_id}.png", "height": h, "width": w, "annotations": anns}


def run_evaluator(evaluator, preds):
    """preds: list of (image_id, masks (R, H, W) bool, scores (R,))."""
    evaluator.reset()
    for image_id, masks, scores in preds:
        h, w = masks.shape[1:]
        inst = Instances((h, w))
        inst.pred_masks = torch.from_numpy(masks)
        inst.scores = torch.as_tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        evaluator.process([{"image_id": image_id, "height": h, "width": w}], [{"instances": inst}])
    return evaluator.evaluate()


def coco_reference(dataset_name, preds, max_dets):
    """pycocotools' class-agnostic mask recall (useCats=0) on the dataset converted by detectron2."""
    from detectron2.data.datasets.coco import convert_to_coco_dict
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = convert_to_coco_dict(dataset_name)
        coco_gt.createIndex()
        results = [
            {"image_id": image_id, "category_id": 1, "segmentation": rle_of(m), "score": float(s)}
            for image_id, masks, scores in preds
            for m, s in zip(masks, np.asarray(scores, dtype=np.float32))
        ]
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.params.imgIds = sorted(p[0] for p in preds)
        coco_eval.evaluate()
        coco_eval.accumulate()
    recall = coco_eval.eval["recall"]  # (T, K=1, A=[all, small, medium, large], M)
    out = {f"AR@{n}": recall[:, 0, 0, i].mean() * 100 for i, n in enumerate(max_dets)}
    for a, key in ((1, "s"), (2, "m"), (3, "l")):
        out[f"AR_{key}@{max_dets[-1]}"] = recall[:, 0, a, -1].mean() * 100  # -100 when no gt
    return out


# ---------------------------------------------------------------------------------------------
# the matching rule


def test_match_takes_last_of_equal_ious_and_each_gt_once():
    ious = np.array([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])  # row 2 duplicates row 1
    ranks = match_proposals(ious)
    assert ranks.shape == (10, 2)
    assert ranks[0].tolist() == [1, 0]  # t=0.5: tie -> last gt; gt 0 then to proposal 1
    assert (ranks[1:, 0] == 1).all() and (ranks[1:, 1] == -1).all()  # IoU 1 still matches at 0.95
    assert match_proposals(np.zeros((0, 3))).tolist() == [[-1] * 3] * 10
    assert match_proposals(np.zeros((4, 0))).shape == (10, 0)


def test_match_prefers_highest_iou_among_free_gts():
    ious = np.array([[0.6, 0.9], [0.0, 0.95]])
    ranks = match_proposals(ious, [0.5, 0.7])
    assert ranks.tolist() == [[-1, 0], [-1, 0]]  # proposal 0 takes its best gt (1); proposal 1 then has none
    ranks = match_proposals(np.array([[0.9, 0.6], [0.0, 0.95]]), [0.5, 0.7])
    assert ranks.tolist() == [[0, 1], [0, 1]]


# ---------------------------------------------------------------------------------------------
# hand-computed recalls

H = W = 40
A = box_mask(H, W, 0, 10, 0, 10)
B = box_mask(H, W, 0, 10, 10, 20)
C = box_mask(H, W, 20, 30, 0, 10)
D = box_mask(H, W, 20, 30, 20, 30)
X = box_mask(H, W, 30, 40, 30, 40)  # crowd


def hand_case():
    # Annotation order B, A, C with categories b, a, a: COCOeval (useCats=0) orders gts by
    # category, i.e. A, C, B, so the A-vs-B tie of proposal "A|B" goes to B (the last).
    records = [
        record(1, H, W, [ann(B, category=1), ann(A), ann(C), ann(X, crowd=1)]),
        record(2, H, W, [ann(D)]),  # no proposals
        record(3, H, W, []),  # no gt
    ]
    proposals_1 = [
        (X, 0.95),  # on the crowd region: takes a slot, recalls nothing
        (A | B, 0.9),  # IoU 0.5 with A and with B -> B at t = 0.5 only
        (A, 0.8),  # A at every threshold
        (box_mask(H, W, 20, 30, 2, 12), 0.7),  # C shifted 2 px: IoU 80/120 -> t <= 0.65
        (A, 0.6),  # duplicate: A is taken
        (box_mask(H, W, 0, 10, 11, 21), 0.5),  # B shifted 1 px: IoU 90/110 -> 0.55 <= t <= 0.8
    ]
    preds = [
        (1, np.stack([m for m, _ in proposals_1]), np.array([s for _, s in proposals_1])),
        (2, np.zeros((0, H, W), dtype=bool), np.zeros(0)),
        (3, np.stack([A, D]), np.array([0.3, 0.2])),
    ]
    return records, preds


# matched gts per threshold (of 4) for the top 10: t=.5: B,A,C; .55-.65: A,C,B; .7-.8: A,B; .85-.95: A
HAND_RECALL_10 = np.array([3, 3, 3, 3, 2, 2, 2, 1, 1, 1]) / 4
HAND_AR = {"AR@1": 0.0, "AR@2": 100 * 1 / 40, "AR@3": 100 * 11 / 40, "AR@10": 100 * 21 / 40, "AR_s@10": 100 * 21 / 40}


@pytest.mark.parametrize("distributed", [False, True])
def test_hand_computed_recalls(register, tmp_path, distributed):
    records, preds = hand_case()
    name = register(records)
    ev = SegmentProposalEvaluator(name, max_dets=(1, 2, 3, 10), output_dir=str(tmp_path), distributed=distributed)
    res = run_evaluator(ev, preds)["proposals"]
    assert list(res) == ["AR@1", "AR@2", "AR@3", "AR@10", "AR_s@10", "AR_m@10", "AR_l@10"]
    for key, value in HAND_AR.items():
        assert res[key] == pytest.approx(value, abs=1e-12), key
    assert np.isnan(res["AR_m@10"]) and np.isnan(res["AR_l@10"])  # every gt is 100 px: no medium/large

    stats = json.loads((tmp_path / JSON_FILE).read_text())
    assert stats["num_images"] == 3 and stats["num_crowd_gt_excluded"] == 1
    assert stats["num_gt"] == {"all": 4, "small": 4, "medium": 0, "large": 0}
    np.testing.assert_allclose(stats["recall"]["all"]["10"], HAND_RECALL_10, atol=1e-12)
    assert stats["recall"]["medium"]["10"] == [None] * 10
    np.testing.assert_allclose(stats["iou_thresholds"], IOU_THRESHOLDS)

    png = (tmp_path / PLOT_FILE).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_hand_case_agrees_with_pycocotools(register):
    records, preds = hand_case()
    name = register(records)
    res = run_evaluator(SegmentProposalEvaluator(name, max_dets=(1, 2, 3, 10), distributed=False), preds)
    ref = coco_reference(name, preds, (1, 2, 3, 10))
    for key in HAND_AR:
        assert res["proposals"][key] == pytest.approx(ref[key], abs=1e-6), key


def test_size_ranges_are_matched_on_their_own_as_cocoeval(register):
    """A small (1000 px) and a medium (1100 px) object overlap; one proposal reaches IoU 0.5 with
    both, more with the medium one. In the "small" range COCOeval ignores the medium object, so
    the proposal recalls the small one there; a single all-sizes matching would give it to the
    medium object and report AR_s = 0."""
    h, w = 100, 120
    small = box_mask(h, w, 10, 35, 10, 50)  # 25 x 40 = 1000 px
    medium = box_mask(h, w, 10, 32, 10, 60)  # 22 x 50 = 1100 px
    proposal = box_mask(h, w, 10, 33, 10, 55)
    records = [record(1, h, w, [ann(small), ann(medium)])]
    preds = [(1, proposal[None], [0.9])]
    name = register(records)
    res = run_evaluator(SegmentProposalEvaluator(name, max_dets=(1, 10), distributed=False), preds)["proposals"]
    ref = coco_reference(name, preds, (1, 10))
    assert ref["AR_s@10"] > 0 and ref["AR_m@10"] > 0 and ref["AR_l@10"] == -100  # no large object
    assert np.isnan(res["AR_l@10"])
    for key in ("AR@1", "AR@10", "AR_s@10", "AR_m@10"):
        assert res[key] == pytest.approx(ref[key], abs=1e-6), key


# ---------------------------------------------------------------------------------------------
# agreement with pycocotools on random data


def random_case(seed):
    """10 images of different sizes; gts are boxes as polygons or RLEs (some crowd, two classes,
    one image without gt); proposals are jittered gts, exact duplicates and random boxes."""
    rng = np.random.default_rng(seed)
    records, preds = [], []
    for image_id in range(1, 11):
        h, w = int(rng.integers(60, 160)), int(rng.integers(60, 160))

        def rand_box(min_side=3):
            bh, bw = int(rng.integers(min_side, h)), int(rng.integers(min_side, w))
            y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            return y0, y0 + bh, x0, x0 + bw

        anns, gt_boxes = [], []
        for _ in range(0 if image_id == 3 else int(rng.integers(1, 9))):
            y0, y1, x0, x1 = rand_box()
            gt_boxes.append((y0, y1, x0, x1))
            polygon = [[x0, y0, x1, y0, x1, y1, x0, y1]] if rng.random() < 0.5 else None
            anns.append(
                ann(box_mask(h, w, y0, y1, x0, x1), category=int(rng.integers(0, 2)),
                    crowd=int(rng.random() < 0.15), polygon=polygon)
            )
        records.append(record(image_id, h, w, anns))

        masks = []
        for y0, y1, x0, x1 in gt_boxes:
            for _ in range(int(rng.integers(0, 6))):
                dy, dx = rng.integers(-4, 5, size=2)
                sy, sx = rng.integers(-3, 4, size=2)
                yy0, yy1 = np.clip([y0 + dy, y1 + dy + sy], 0, h)
                xx0, xx1 = np.clip([x0 + dx, x1 + dx + sx], 0, w)
                masks.append(box_mask(h, w, yy0, max(yy1, yy0 + 1), xx0, max(xx1, xx0 + 1)))
        masks += [box_mask(h, w, *rand_box()) for _ in range(int(rng.integers(0, 15)))]
        masks += [masks[i] for i in rng.integers(0, len(masks), size=3)] if masks else []  # duplicates
        masks = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        preds.append((image_id, masks, rng.random(len(masks)).astype(np.float32)))
    return records, preds


@pytest.mark.parametrize("seed,max_dets", [(0, (10, 100, 1000)), (1, (1, 3, 10)), (2, (2, 5, 8))])
def test_agrees_with_pycocotools_on_random_data(register, seed, max_dets):
    records, preds = random_case(seed)
    name = register(records)
    res = run_evaluator(SegmentProposalEvaluator(name, max_dets=max_dets, distributed=False), preds)["proposals"]
    ref = coco_reference(name, preds, max_dets)
    assert set(res) == set(ref)
    for key, value in ref.items():
        if value < 0:  # COCOeval's "no gt in this size range"
            assert np.isnan(res[key]), key
        else:
            assert res[key] == pytest.approx(value, abs=1e-6), key
    assert 0 < res[f"AR@{max_dets[-1]}"] < 100  # a non-trivial case


# ---------------------------------------------------------------------------------------------
# edge cases


def test_no_proposals_gives_zero_recall(register, tmp_path):
    records, preds = hand_case()
    name = register(records)
    empty = [(i, np.zeros((0, H, W), dtype=bool), np.zeros(0)) for i, _, _ in preds]
    res = run_evaluator(SegmentProposalEvaluator(name, output_dir=str(tmp_path)), empty)["proposals"]
    assert res["AR@10"] == 0.0 and res["AR@100"] == 0.0 and res["AR@1000"] == 0.0 and res["AR_s@1000"] == 0.0
    assert (tmp_path / PLOT_FILE).stat().st_size > 0


def test_no_non_crowd_gt_gives_nan_and_warns(register, caplog):
    name = register([record(1, H, W, [ann(X, crowd=1)]), record(2, H, W, [])])
    preds = [(1, X[None], np.array([0.9])), (2, A[None], np.array([0.5]))]
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.evaluation.proposal_recall"):
        res = run_evaluator(SegmentProposalEvaluator(name, distributed=False), preds)["proposals"]
    assert all(np.isnan(v) for v in res.values())
    assert "no non-crowd ground truth" in caplog.text


def test_nothing_processed_returns_empty(register):
    name = register([record(1, H, W, [ann(A)])])
    assert run_evaluator(SegmentProposalEvaluator(name), []) == {}


def test_top_n_is_by_score_not_output_order(register):
    name = register([record(1, H, W, [ann(A)])])
    preds = [(1, np.stack([D, A]), np.array([0.1, 0.9]))]  # the hit comes second but scores higher
    res = run_evaluator(SegmentProposalEvaluator(name, max_dets=(1,)), preds)["proposals"]
    assert res["AR@1"] == pytest.approx(100.0)


def test_errors_name_the_fault(register):
    name = register([record(1, H, W, [ann(A)])])
    ev = SegmentProposalEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="image_id 1 .* masks must be at image resolution"):
        run_evaluator(ev, [(1, np.zeros((1, 20, 20), dtype=bool), np.array([0.5]))])
    with pytest.raises(KeyError, match="image_id 7 is not in dataset"):
        run_evaluator(ev, [(7, A[None], np.array([0.5]))])
    with pytest.raises(ValueError, match="increasing"):
        SegmentProposalEvaluator(name, max_dets=(100, 10))


def test_results_print_in_detectron2_csv_format(register, caplog):
    from detectron2.evaluation import print_csv_format

    records, preds = hand_case()
    res = run_evaluator(SegmentProposalEvaluator(register(records), distributed=False), preds)
    with caplog.at_level(logging.INFO):
        print_csv_format(res)
    assert "Task: proposals" in caplog.text


def test_trainer_uses_it_for_instancefcn(tmp_path):
    import instfcn_d2  # noqa: F401  (registers the datasets)
    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.engine.trainer import build_evaluators

    cfg = get_instfcn_cfg(opts=["MODEL.META_ARCHITECTURE", "InstanceFCN", "OUTPUT_DIR", str(tmp_path)])
    ev = build_evaluators(cfg, "instfcn_shapes_val")
    assert isinstance(ev, SegmentProposalEvaluator)
    assert ev._output_dir == os.path.join(str(tmp_path), "inference", "instfcn_shapes_val")
