"""InstanceFCN meta-architecture: training losses, inference output, post-processing, ~DeepMask.

Models are tiny (R18 up to res3 = stride 8, 32-channel branches, m = 7 windows of 56 px, k = 3)
and images are <= 160 px, so every test but the overfit one runs in seconds.
"""
import dataclasses
import numpy as np
import pytest
import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO_ROOT
from tiny_models import R18_GN_FROM_SCRATCH, square_disc_sample
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.layers.reference import window_assemble_reference
from instfcn_d2.modeling.instance_fcn.heads import (
    DeepMaskHead,
    DeepMaskObjectnessHead,
    InstanceSensitiveMaskHead,
    ObjectnessHead,
)
from instfcn_d2.core.instance_fcn.inference import resize_shortest_edge_shape
from instfcn_d2.modeling.instances import detections_to_instances
from instfcn_d2.core.instance_fcn.postprocessing import (
    mask_box_nms,
    mask_tight_boxes,
    paste_window_masks,
    paste_window_masks_with_boxes,
    pasted_mask_boxes,
    window_mask_boxes,
    window_masks_to_proposals,
)
from instfcn_d2.modeling.instance_fcn.window_labels import window_boxes

BASE = str(REPO_ROOT / "configs" / "Base-InstanceFCN.yaml")
TINY = [
    *R18_GN_FROM_SCRATCH,
    "MODEL.BACKBONE.NAME", "build_resnet_backbone",
    "MODEL.RESNETS.OUT_FEATURES", "['res3']",
    "MODEL.INSTANCE_FCN.IN_FEATURE", "res3",
    "MODEL.INSTANCE_FCN.WINDOW_SIZE", "7",  # 56 px windows; positive objects ~32 px
    "MODEL.INSTANCE_FCN.GROUP_SIZE", "3",
    "MODEL.INSTANCE_FCN.MASK_BRANCH_DIM", "32",
    "MODEL.INSTANCE_FCN.OBJECTNESS_DIM", "32",
    "MODEL.INSTANCE_FCN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "20",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "160",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg(*opts):
    return get_instfcn_cfg(BASE, TINY + list(opts))


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(_cfg(*opts))


def _sample(seed, size=(96, 96), sizes=(32, 30), polygons=False):
    """One square and one disc of about the positive size (32 px for 56-px windows), both class 0,
    on a textured image (tests/tiny_models.py)."""
    return square_disc_sample(seed, size, sizes, polygons, classes_alternate=False)


def _test_input(d):
    return {k: d[k] for k in ("image", "height", "width")}


def _train_step(model, batch):
    model.train()
    with EventStorage(0) as storage:
        losses = model(batch)
        stats = {k: storage.latest()[k][0] for k in ("instance_fcn/num_pos_windows", "instance_fcn/num_neg_windows")}
    return losses, stats


# ---- training ---------------------------------------------------------------------------------------
def test_loss_is_finite_and_backprops_into_both_branches_and_trunk():
    model = _model()
    losses, stats = _train_step(model, [_sample(0), _sample(1)])
    assert set(losses) == {"loss_objectness", "loss_mask"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert stats["instance_fcn/num_pos_windows"] > 0  # objects of the positive size give positives
    sum(losses.values()).backward()
    for name, param in [
        ("mask layer", model.mask_head.mask_layer.weight),
        ("mask 1x1", model.mask_head.reduce.weight),
        ("objectness", model.objectness_head.logits.weight),
        ("trunk", model.backbone.stem.conv1.weight),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_the_papers_summed_mask_loss_is_the_pixel_mean_times_window_pixels_and_positive_share():
    batch = [_sample(0), _sample(1)]
    mean, stats = _train_step(_model("MODEL.INSTANCE_FCN.MASK_LOSS_REDUCTION", "pixel_mean"), batch)
    summed, summed_stats = _train_step(_model(), batch)  # the default: the paper's Eq. 1
    assert summed_stats == stats  # the same seed, the same windows
    pos, neg = stats["instance_fcn/num_pos_windows"], stats["instance_fcn/num_neg_windows"]
    m = _cfg().MODEL.INSTANCE_FCN.WINDOW_SIZE
    share = pos / (pos + neg)
    assert summed["loss_mask"].item() == pytest.approx(mean["loss_mask"].item() * m * m * share, rel=1e-4)
    assert summed["loss_objectness"].item() == pytest.approx(mean["loss_objectness"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="MASK_LOSS_REDUCTION = 'sum'"):
        _model("MODEL.INSTANCE_FCN.MASK_LOSS_REDUCTION", "sum")


def test_256_windows_per_image_at_most_half_positive():
    model = _model()
    _, stats = _train_step(model, [_sample(0, size=(160, 160)), _sample(1, size=(160, 160))])
    # 20 x 20 = 400 windows per image: 256 sampled, few positives, filled with negatives
    pos, neg = stats["instance_fcn/num_pos_windows"], stats["instance_fcn/num_neg_windows"]
    assert pos + neg == 256 and 0 < pos < 128

    # with more positives than half the budget the sample is exactly 1:1
    loose = ["MODEL.INSTANCE_FCN.WINDOWS_PER_IMAGE", "8", "MODEL.INSTANCE_FCN.POSITIVE_CENTER_TOL", "0.3",
             "MODEL.INSTANCE_FCN.NEGATIVE_CENTER_TOL", "0.45", "MODEL.INSTANCE_FCN.POSITIVE_SCALE_TOL", "1.5"]
    _, stats = _train_step(_model(*loose), [_sample(0, size=(160, 160))])
    assert stats == {"instance_fcn/num_pos_windows": 4.0, "instance_fcn/num_neg_windows": 4.0}


def test_image_without_instances_trains_on_negatives_only():
    model = _model()
    empty = Instances((96, 96))
    empty.gt_boxes = Boxes(torch.zeros((0, 4)))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)  # detectron2 adds no gt_masks field here
    sample = _sample(0)
    losses, stats = _train_step(model, [{"image": sample["image"], "instances": empty}])
    assert stats == {"instance_fcn/num_pos_windows": 0.0, "instance_fcn/num_neg_windows": 144.0}  # 12 x 12
    assert losses["loss_mask"].item() == 0.0 and torch.isfinite(losses["loss_objectness"])
    sum(losses.values()).backward()
    assert model.objectness_head.logits.weight.grad.abs().sum() > 0
    assert model.mask_head.mask_layer.weight.grad is not None  # reached (zero), as DDP needs


def test_polygon_masks_give_the_same_windows():
    model = _model()
    bit_losses, bit_stats = _train_step(model, [_sample(3)])
    torch.manual_seed(0)
    model = _model()
    poly_losses, poly_stats = _train_step(model, [_sample(3, polygons=True)])
    assert poly_stats == bit_stats and bit_stats["instance_fcn/num_pos_windows"] > 0
    assert torch.isfinite(poly_losses["loss_mask"])
    assert poly_losses["loss_objectness"].item() == pytest.approx(bit_losses["loss_objectness"].item(), rel=1e-5)


def test_instances_without_masks_raise_a_clear_error():
    model = _model()
    sample = _sample(0)
    inst = Instances((96, 96))
    inst.gt_boxes = sample["instances"].gt_boxes
    inst.gt_classes = sample["instances"].gt_classes
    with pytest.raises(ValueError, match="MASK_ON"):
        _train_step(model, [{"image": sample["image"], "instances": inst}])


# ---- inference --------------------------------------------------------------------------------------
def _check_proposals(inst, height, width, max_dets):
    assert inst.image_size == (height, width)
    assert set(inst.get_fields()) == {"pred_masks", "pred_boxes", "scores", "pred_classes"}
    n = len(inst)
    assert n <= max_dets
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape == (n, height, width)
    assert inst.pred_classes.dtype == torch.int64 and (inst.pred_classes == 0).all()
    assert inst.scores.dtype == torch.float32 and (inst.scores[:-1] >= inst.scores[1:]).all()
    assert isinstance(inst.pred_boxes, Boxes)
    assert torch.equal(inst.pred_boxes.tensor, mask_tight_boxes(inst.pred_masks))
    assert inst.pred_masks.flatten(1).any(dim=1).all()  # no empty proposal


@pytest.mark.smoke
def test_default_predictor_output_format_and_visualizer():
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    torch.manual_seed(0)
    cfg = _cfg()
    predictor = DefaultPredictor(cfg)
    image = np.ascontiguousarray(_sample(5, size=(100, 130))["image"].permute(1, 2, 0).numpy()[:, :, ::-1])
    inst = predictor(image)["instances"]
    # the network ran at 96 x 125; the output is at the original 100 x 130
    _check_proposals(inst, 100, 130, 20)
    assert len(inst) == 20  # an untrained model scores every window ~0.5: plenty survive NMS
    vis = Visualizer(image[:, :, ::-1]).draw_instance_predictions(inst.to("cpu"))
    assert vis.get_image().shape == (100, 130, 3)


def test_topk_before_assembling_equals_assembling_every_window():
    model = _model("MODEL.INSTANCE_FCN.PRE_NMS_TOPK_TEST", "30", "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "200")
    model.eval()
    sample = _test_input(_sample(2, size=(80, 104)))
    calls = []
    assemble = model.mask_head.assemble
    model.mask_head.assemble = lambda maps, rows: calls.append(len(rows)) or assemble(maps, rows)

    with torch.no_grad():
        images = model.preprocess_image([sample["image"]])
        mask_maps, objectness = model.compute_maps(images)
        m, k = model.window_size, model.mask_head.group_size
        # every window at once, by the pure-PyTorch reference: the window centred at (y, x)
        centres = model.proposer.window_centres(images.image_sizes[0], objectness.shape[-2:])
        assert len(centres) == 10 * 13
        corners = torch.cat([torch.zeros_like(centres[:, :1]), centres - m // 2], dim=1)
        all_probs = window_assemble_reference(mask_maps, corners, m, k).sigmoid()
        all_scores = objectness[0, centres[:, 0], centres[:, 1]].sigmoid()
        assert len(torch.unique(all_scores)) == len(all_scores)  # no ties: the order is unambiguous
        all_boxes = window_boxes(centres, m, model.stride)

        def reference(topk):
            order = all_scores.argsort(descending=True)[:topk]
            return window_masks_to_proposals(
                all_probs[order], all_boxes[order], all_scores[order], (80, 104),
                mask_threshold=model.proposer.test_params.mask_thresh, nms_threshold=model.proposer.test_params.nms_thresh, max_detections=200,
            )

        for topk, expected_calls in [(30, [30]), (1000, [130])]:
            model.proposer = dataclasses.replace(model.proposer, test_params=dataclasses.replace(model.proposer.test_params, pre_nms_topk=topk))
            calls.clear()
            out = model([sample])[0]["instances"]
            assert calls == expected_calls  # only the top windows are assembled
            ref = reference(topk)
            assert len(out) == len(ref) > 0
            assert torch.equal(out.pred_masks, ref.masks)
            assert torch.equal(out.scores, ref.scores)
            assert torch.equal(out.pred_boxes.tensor, ref.boxes)


def test_image_smaller_than_one_window():
    model = _model()
    small = _sample(4, size=(24, 30), sizes=(12,))
    losses, _ = _train_step(model, [small])  # 3 x 4 windows of 56 px, all hanging off
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        inst = model([_test_input(small)])[0]["instances"]
    _check_proposals(inst, 24, 30, 20)
    assert len(inst) > 0


def test_images_smaller_than_a_window_without_positives_warn_once(caplog):
    """Images smaller than one window (56 px here) whose objects are too small to be positive: the
    batch trains no mask; a warning names the image size, the window in pixels and the keys, once
    (not at every iteration). Batches with positives, or images of a window or more, do not warn."""
    import logging

    model = _model()
    small = [_sample(4, size=(24, 30), sizes=(12,)), _sample(5, size=(40, 36), sizes=(10,))]
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.modeling.instance_fcn.meta_arch"):
        _, stats = _train_step(model, small)
        assert stats["instance_fcn/num_pos_windows"] == 0.0
        _train_step(model, small)
        _train_step(_model(), [_sample(0)])  # 96 px images with objects of the positive size
        _train_step(_model(), [_sample(4, size=(60, 60), sizes=(12,))])  # no positive, but not smaller than a window
    warnings = [r.getMessage() for r in caplog.records if "no positive window" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "24x30, 40x36 px" in warnings[0] and "window of 56 px" in warnings[0]
    assert "MODEL.INSTANCE_FCN.WINDOW_SIZE 7 x stride 8" in warnings[0] and "INPUT.MIN_SIZE_TRAIN" in warnings[0]


def test_no_surviving_window_gives_empty_instances_with_all_fields():
    model = _model("MODEL.INSTANCE_FCN.SCORE_THRESH_TEST", "1.0")
    model.eval()
    with torch.no_grad():
        inst = model([_test_input(_sample(0))])[0]["instances"]
    assert len(inst) == 0
    _check_proposals(inst, 96, 96, 20)
    assert inst.pred_masks.shape == (0, 96, 96)


def test_test_scale_sizes_equal_detectron2_resize_shortest_edge():
    from detectron2.data.transforms import ResizeShortestEdge

    rng = np.random.default_rng(0)
    cases = [(96, 96, 64, 400), (100, 130, 543, 1000), (130, 100, 68, 1000), (480, 640, 800, 1333), (37, 1001, 600, 1000)]
    cases += [tuple(int(v) for v in rng.integers(10, 2000, 4)) for _ in range(500)]
    for h, w, short, max_size in cases:
        expected = ResizeShortestEdge.get_output_shape(h, w, short, max_size)
        assert resize_shortest_edge_shape(h, w, short, max_size) == expected, (h, w, short, max_size)


def test_multi_scale_test_merges_the_scales_at_original_resolution():
    model = _model("TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(64, 128)", "TEST.AUG.MAX_SIZE", "400")
    model.eval()
    calls = []
    assemble = model.mask_head.assemble
    model.mask_head.assemble = lambda maps, rows: calls.append(maps.shape[-2:]) or assemble(maps, rows)
    with torch.no_grad():
        outs = model([_test_input(_sample(0)), _test_input(_sample(1, size=(96, 120)))])
    assert [tuple(c) for c in calls] == [(8, 10), (8, 10), (16, 20), (16, 20)]  # per scale, per image
    _check_proposals(outs[0]["instances"], 96, 96, 20)
    _check_proposals(outs[1]["instances"], 96, 120, 20)


def test_multi_scale_proposals_merge_every_scale_before_the_nms():
    """WindowProposer.multi_scale_proposals on stub maps: two test scales of an image whose output
    (original) size is twice the largest scale. Each window's box goes from its scale to the
    output size; the candidates of both scales meet in one NMS: a window found only at the small
    scale survives, one found only at the large scale too, and the same object found at both
    is kept once (the higher objectness, here the small scale's window)."""
    import math

    from instfcn_d2.core.instance_fcn.inference import ProposalTest, WindowProposer

    stride, m, M = 8, 4, 8  # 32-px windows at the network input, masks of 8 x 8 cells
    proposer = WindowProposer(window_size=m, stride=stride, test_params=ProposalTest(
        pre_nms_topk=1000, mask_thresh=0.5, nms_thresh=0.8, detections_per_image=100,
        test_min_sizes=(64, 128), test_max_size=1000))
    full = torch.full((M, M), 10.0)
    centre_half = torch.full((M, M), -10.0)
    centre_half[2:6, 2:6] = 10.0  # cells 2..5 of 8: the middle half of the window
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    # (map height, centre y, centre x) -> (objectness probability, mask logits). Output = 256 px:
    # the 64 scale's windows are 128 output px (x4), the 128 scale's 64 px (x2).
    objects = {
        (8, 3, 3): (0.95, full),  # A, small scale only: top-left 8 px at 64 -> [32, 32, 160, 160]
        (8, 6, 6): (0.9, centre_half),  # B at 64: window [128, 256], middle half [160, 224]
        (16, 12, 12): (0.8, full),  # B at 128: top-left 80 px -> [160, 160, 224, 224], a duplicate
        (16, 3, 12): (0.7, full),  # C, large scale only: y 8 -> 16, x 80 -> 160: [160, 16, 224, 80]
    }
    seen_sizes = []

    def maps_of(images):
        sizes = [tuple(x.shape[-2:]) for x in images]
        seen_sizes.append(sizes)
        H, W = (math.ceil(v / stride) for v in sizes[0])
        objectness = torch.full((len(images), H, W), -10.0)  # other windows: candidates with empty masks
        for (h, y, x), (p, _) in objects.items():
            if h == H:
                objectness[0, y, x] = logit(p)
        return torch.zeros(len(images), 1, H, W), objectness, sizes

    def assemble_windows(mask_maps, rows):
        H = mask_maps.shape[-2]
        out = torch.full((len(rows), M, M), -10.0)
        for i, (_, y0, x0) in enumerate(rows.tolist()):  # rows hold the windows' top-left pixels
            key = (H, y0 + m // 2, x0 + m // 2)
            if key in objects:
                out[i] = objects[key][1]
        return out

    image = torch.rand(3, 128, 128) * 255  # the largest test scale of a 256 x 256 original
    (det,) = proposer.multi_scale_proposals([image], [(256, 256)], maps_of, assemble_windows)
    assert seen_sizes == [[(64, 64)], [(128, 128)]]  # each scale's maps, smallest first
    torch.testing.assert_close(det.scores, torch.tensor([0.95, 0.9, 0.7]))  # B at 128 suppressed
    expected = torch.tensor([[32, 32, 160, 160], [160, 160, 224, 224], [160, 16, 224, 80]], dtype=torch.float32)
    torch.testing.assert_close(det.boxes, expected, atol=1.0, rtol=0)
    assert det.masks.shape == (3, 256, 256) and det.masks.dtype == torch.bool
    for mask, (x0, y0, x1, y1) in zip(det.masks, expected.int().tolist()):
        inside = int(mask[y0:y1, x0:x1].sum())  # the box filled but for the corners bilinear rounds off
        assert inside >= 0.97 * (x1 - x0) * (y1 - y0) and inside == int(mask.sum())
    assert (det.classes == 0).all()

    # one scale only: only that scale's objects
    one = dataclasses.replace(proposer, test_params=dataclasses.replace(proposer.test_params, test_min_sizes=(64,)))
    (det,) = one.multi_scale_proposals([image], [(256, 256)], maps_of, assemble_windows)
    torch.testing.assert_close(det.scores, torch.tensor([0.95, 0.9]))


# ---- post-processing --------------------------------------------------------------------------------
def test_mask_box_nms_on_hand_made_masks():
    masks = torch.zeros(5, 40, 40, dtype=torch.bool)
    masks[0, 5:25, 5:25] = True  # A
    masks[1, 5:25, 6:25] = True  # A shifted: tight-box IoU 19/20 = 0.95 > 0.8 -> suppressed
    masks[2, 5:25, 5:25] = True
    masks[2, 10:15, 10:15] = False  # same tight box as A with a hole: box IoU 1 -> suppressed
    masks[3, 5:25, 10:25] = True  # IoU 15/20 = 0.75 <= 0.8 -> kept
    # mask 4 empty -> dropped
    scores = torch.tensor([0.9, 0.95, 0.5, 0.4, 0.99])
    boxes = mask_tight_boxes(masks)
    assert boxes[4].tolist() == [0, 0, 0, 0] and boxes[1].tolist() == [6, 5, 25, 25]
    assert mask_box_nms(boxes, scores, 0.8).tolist() == [1, 3]  # 1 outscores 0, which it suppresses
    assert mask_box_nms(boxes, scores, 0.96).tolist() == [1, 0, 3]


def test_window_masks_to_proposals_binarises_clips_and_suppresses():
    probs = torch.zeros(3, 4, 4)
    probs[0, 1:3, 1:3] = 0.9  # centre blob of a window hanging off the image
    probs[1, 1:3, 1:3] = 0.9  # the same, 1 px to the right: box IoU 15/16 -> suppressed
    probs[2] = 0.3  # below the mask threshold everywhere: empty, dropped
    boxes = torch.tensor([[-8.0, -8.0, 24.0, 24.0], [-7.0, -8.0, 25.0, 24.0], [0.0, 0.0, 32.0, 32.0]])
    props = window_masks_to_proposals(probs, boxes, torch.tensor([0.7, 0.6, 0.9]), (20, 30), max_detections=10)
    assert props.image_size == (20, 30) and len(props) == 1
    inst = detections_to_instances(props)  # as the meta-architecture returns them
    _check_proposals(inst, 20, 30, 10)
    assert len(inst) == 1 and inst.scores.tolist() == [pytest.approx(0.7)]
    # window pixels 8..23 (blocks 1..2) -> image pixels 0..15, up to the bilinear edge
    assert inst.pred_boxes.tensor.tolist() == [[0.0, 0.0, 16.0, 16.0]]


def test_window_pasting_equals_detectron2_paste_masks_in_image():
    torch.manual_seed(0)
    for _ in range(10):
        n, m = 23, int(torch.randint(3, 25, (1,)))
        probs = torch.rand(n, m, m)
        side = float(torch.rand(1)) * 80 + 25
        xy = torch.rand(n, 2) * 40 - 20  # some windows hang off the top / left
        boxes = torch.cat([xy, xy + side], dim=1)
        H, W = (int(v) for v in torch.randint(20, 120, (2,)))
        expected = paste_masks_in_image(probs, boxes, (H, W), threshold=0.5)
        assert torch.equal(paste_window_masks(probs, boxes, (H, W), 0.5), expected)
        assert torch.equal(pasted_mask_boxes(probs, boxes, (H, W), 0.5), mask_tight_boxes(expected))


def test_pasted_masks_come_with_their_tight_boxes():
    torch.manual_seed(1)
    probs = torch.rand(30, 9, 9)
    xy = torch.rand(30, 2) * 60 - 20
    boxes = torch.cat([xy, xy + 45.5], dim=1)
    masks, tight = paste_window_masks_with_boxes(probs, boxes, (70, 90), 0.6)
    assert torch.equal(masks, paste_window_masks(probs, boxes, (70, 90), 0.6))
    assert torch.equal(tight, mask_tight_boxes(masks))


def test_window_mask_boxes_are_the_cells_boxes_clipped_to_the_image():
    probs = torch.zeros(3, 4, 4)
    probs[0, 1:3, 2] = 0.9  # rows 1-2, column 2 of a window of 4 cells of 8 px at (10, 20)
    probs[1, 0, 0] = 0.9  # top-left cell of a window hanging off the top-left corner
    probs[2] = 0.4  # nothing on
    boxes = torch.tensor([[10.0, 20.0, 42.0, 52.0], [-16.0, -16.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
    got = window_mask_boxes(probs, boxes, (40, 60), 0.5)
    assert got[0].tolist() == [26.0, 28.0, 34.0, 40.0]  # x 10 + 2*8 .. 10 + 3*8; y 20 + 8 .. min(20 + 24, 40)
    assert got[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # its only cell (-16..-8) is off the image: empty
    assert got[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_window_and_image_nms_boxes_agree_on_blocky_masks():
    """Masks that are constant per cell paste to (almost) their cell boxes: both NMS box resolutions
    suppress the same windows; the returned boxes are always those of the pasted masks."""
    probs = torch.zeros(4, 6, 6)
    probs[0, 1:5, 1:5] = 1.0
    probs[1, 1:5, 1:5] = 1.0  # same window one pixel lower: box IoU > 0.8 -> suppressed
    probs[2, 0:2, 0:2] = 1.0  # a small object in a corner: kept
    probs[3, 2:4, 2:4] = 1.0  # small object inside 0's box: IoU 1/4 -> kept
    boxes = torch.tensor([[0.0, 0.0, 48.0, 48.0], [0.0, 1.0, 48.0, 49.0], [0.0, 0.0, 48.0, 48.0], [0.0, 0.0, 48.0, 48.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    results = [
        window_masks_to_proposals(probs, boxes, scores, (60, 60), nms_box_resolution=r) for r in ("window", "image")
    ]
    for props in results:
        assert props.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
        assert torch.equal(props.boxes, mask_tight_boxes(props.masks))
    assert torch.equal(results[0].masks, results[1].masks)
    with pytest.raises(ValueError, match="nms_box_resolution.*'pixel'"):
        window_masks_to_proposals(probs, boxes, scores, (60, 60), nms_box_resolution="pixel")


def test_reduce_dim_puts_a_1x1_conv_before_both_branches():
    model = _model("MODEL.INSTANCE_FCN.REDUCE_DIM", "16")
    conv = model.feature_reduce[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (128, 16, (1, 1))
    assert model.mask_head.reduce.in_channels == 16
    with pytest.raises(ValueError, match="REDUCE_DIM must be >= 0"):
        _model("MODEL.INSTANCE_FCN.REDUCE_DIM", "-1")
    with pytest.raises(ValueError, match="NMS_BOX_RESOLUTION.*'cells'"):
        _model("MODEL.INSTANCE_FCN.NMS_BOX_RESOLUTION", "cells")


# ---- ~DeepMask head ------------------------------------------------------------------------------------
def test_mask_layer_parameters_instance_sensitive_vs_deepmask():
    """The paper: InstanceFCN's mask layer 512*3*3*25 = 0.1M vs ~DeepMask's fc 512*14*14*512 + 512*56^2 = 53M."""
    with torch.device("meta"):  # the paper's sizes without allocating 200 MB
        ifcn = InstanceSensitiveMaskHead(512, conv_dim=512, group_size=5, window_size=21)
        deepmask = DeepMaskHead(512, conv_dim=512, window_size=21, pooler_resolution=14, fc_dim=512, mask_size=56)
    ifcn_params = sum(p.numel() for p in ifcn.mask_layer.parameters())
    deepmask_params = sum(p.numel() for p in deepmask.mask_layers.parameters())
    assert ifcn_params == 512 * 3 * 3 * 25 + 25 and round(ifcn_params / 1e6, 1) == 0.1
    assert deepmask_params == 512 * 14 * 14 * 512 + 512 + 512 * 56 * 56 + 56 * 56
    assert round(deepmask_params / 1e6) == 53
    assert deepmask_params / ifcn_params > 450  # "only 1/500 of parameters"


@pytest.mark.parametrize("score_branch", ["DeepMask", "InstanceFCN"])
def test_deepmask_head_trains_and_predicts(score_branch):
    opts = ["MODEL.INSTANCE_FCN.MASK_HEAD", "DeepMask", "MODEL.INSTANCE_FCN.DEEPMASK.POOLER_RESOLUTION", "4",
            "MODEL.INSTANCE_FCN.DEEPMASK.FC_DIM", "32", "MODEL.INSTANCE_FCN.DEEPMASK.MASK_SIZE", "14",
            "MODEL.INSTANCE_FCN.DEEPMASK.SCORE_FC_DIMS", "(16, 24)", "MODEL.INSTANCE_FCN.DEEPMASK.SCORE_BRANCH", score_branch]
    model = _model(*opts)
    assert isinstance(model.mask_head, DeepMaskHead) and model.mask_head.mask_size == 14
    head_type = DeepMaskObjectnessHead if score_branch == "DeepMask" else ObjectnessHead
    assert type(model.objectness_head) is head_type
    losses, stats = _train_step(model, [_sample(0), _sample(1)])
    assert stats["instance_fcn/num_pos_windows"] > 0 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.mask_head.mask_fc.weight.grad.abs().sum() > 0
    last = model.objectness_head.fc[-1] if score_branch == "DeepMask" else model.objectness_head.logits
    assert last.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        inst = model([_test_input(_sample(2, size=(40, 50)))])[0]["instances"]  # smaller than a window
    _check_proposals(inst, 40, 50, 20)


def test_deepmask_windows_read_zero_off_the_map():
    head = DeepMaskHead(2, conv_dim=2, window_size=4, pooler_resolution=4, fc_dim=3, mask_size=2)
    maps = torch.arange(1.0, 33.0).view(1, 2, 4, 4)
    captured = []
    head.fc.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    head.assemble(maps, torch.tensor([[0, 0, 0], [0, -2, 1]]))
    pooled = captured[0].view(2, 2, 4, 4)
    assert torch.allclose(pooled[0], maps[0])  # window == the map: pooling 4 -> 4 is the identity
    expected = torch.zeros(2, 4, 4)
    expected[:, 2:, :3] = maps[0, :, :2, 1:]  # rows -2, -1 are off the map; column 4 too
    assert torch.allclose(pooled[1], expected)


def test_deepmask_mask_fcs_are_a_linear_pair_unless_asked():
    """DeepMask's low-rank pair: the mask logits are affine in the pooled features."""
    torch.manual_seed(0)
    head = DeepMaskHead(2, conv_dim=2, window_size=4, pooler_resolution=4, fc_dim=3, mask_size=2)
    maps = torch.randn(1, 2, 4, 4)
    window = torch.tensor([[0, 0, 0]])
    def odd_part_is_zero():  # affine f: f(x) + f(-x) == 2 f(0)
        plus, minus, zero = (head.assemble(x, window) for x in (maps, -maps, torch.zeros_like(maps)))
        return torch.allclose(plus + minus, 2 * zero, atol=1e-5)

    assert odd_part_is_zero()
    head.fc_relu = True  # the former head: a unit on for x is off for -x
    assert not odd_part_is_zero()


def test_deepmask_objectness_scores_each_window_as_deepmask():
    """DeepMask's score branch: the window's pooled features, 2x2 max pooling, fc + ReLU, fc + ReLU,
    fc 1; the dense map is every centred window's score, those hanging off the map reading 0."""
    torch.manual_seed(0)
    head = DeepMaskObjectnessHead(3, conv_dim=2, window_size=4, pooler_resolution=4, fc_dims=(5, 6)).eval()
    features = torch.randn(2, 3, 5, 6)
    dense = head(features)
    assert dense.shape == (2, 5, 6)
    centres = torch.tensor([[0, 2, 2], [1, 0, 5], [1, 4, 0]])
    torch.testing.assert_close(head.score_windows(features, centres), dense[centres[:, 0], centres[:, 1], centres[:, 2]])
    # by hand: window centred at (2, 2) starts at (0, 0) and is 4 x 4 = its 4 x 4 pooling
    reduced = torch.relu(head.reduce(features))
    x = torch.nn.functional.max_pool2d(reduced[:1, :, 0:4, 0:4], 2).flatten(1)
    fc = [m for m in head.fc if isinstance(m, torch.nn.Linear)]
    by_hand = fc[2](torch.relu(fc[1](torch.relu(fc[0](x)))))[0, 0]
    torch.testing.assert_close(dense[0, 2, 2], by_hand)
    # centred at (0, 5) of image 1: rows -2, -1 and columns 6, 7 are off the map and read 0
    window = torch.zeros(1, 2, 4, 4)
    window[:, :, 2:, :3] = reduced[1:, :, 0:2, 3:6]
    by_hand = fc[2](torch.relu(fc[1](torch.relu(fc[0](torch.nn.functional.max_pool2d(window, 2).flatten(1))))))[0, 0]
    torch.testing.assert_close(dense[1, 0, 5], by_hand)
    assert head.score_windows(features, centres[:0]).shape == (0,)


def test_deepmask_objectness_uses_dropout_in_training_only():
    torch.manual_seed(0)
    head = DeepMaskObjectnessHead(3, conv_dim=2, window_size=4, pooler_resolution=4, fc_dims=(64, 64))
    features = torch.randn(1, 3, 5, 6)
    head.eval()
    torch.testing.assert_close(head(features), head(features))
    head.train()
    assert not torch.allclose(head(features), head(features))


# ---- configuration ------------------------------------------------------------------------------------
def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="IN_FEATURE = 'res5'.*res3"):
        _model("MODEL.INSTANCE_FCN.IN_FEATURE", "res5")
    with pytest.raises(ValueError, match="MASK_HEAD = 'Nope'.*DeepMask.*InstanceSensitive"):
        _model("MODEL.INSTANCE_FCN.MASK_HEAD", "Nope")
    with pytest.raises(ValueError, match="GROUP_SIZE"):
        _model("MODEL.INSTANCE_FCN.GROUP_SIZE", "9")
    with pytest.raises(ValueError, match="DEEPMASK.SCORE_BRANCH = 'fc'; expected one of"):
        _model("MODEL.INSTANCE_FCN.DEEPMASK.SCORE_BRANCH", "fc")


@pytest.mark.parametrize(
    "path", ["shapes/instance_fcn_R18_cpu.yaml", "coco128/instance_fcn_R18_cpu.yaml",
             "voc/instance_fcn_VGG16_k5.yaml", "coco/instance_fcn_VGG16_k5.yaml",
             "coco/instance_fcn_R50_dilated_k5.yaml"],
)
def test_configs_load_and_build(path):
    cfg = get_instfcn_cfg(str(REPO_ROOT / "configs" / path), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.META_ARCHITECTURE == "InstanceFCN"
    if "VGG16" in path:  # the paper's settings
        c = cfg.MODEL.INSTANCE_FCN
        assert (c.GROUP_SIZE, c.WINDOW_SIZE, c.WINDOWS_PER_IMAGE, c.NMS_THRESH_TEST) == (5, 21, 256, 0.8)
        assert tuple(cfg.TEST.AUG.MIN_SIZES) == tuple(round(600 * 1.5 ** e) for e in range(-4, 2))
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == (0.001, (32000,), 40000)
    model = build_model(cfg)
    assert model.stride == 8 and model.mask_head.mask_size == cfg.MODEL.INSTANCE_FCN.WINDOW_SIZE


# ---- overfit ----------------------------------------------------------------------------------------------
def _recall_at_05(model, samples):
    import pycocotools.mask as mask_util

    from instfcn_d2.evaluation import match_proposals

    model.eval()
    with torch.no_grad():
        outs = model([_test_input(s) for s in samples])
    hits = total = 0
    for sample, out in zip(samples, outs):
        pred = out["instances"].pred_masks.numpy().astype(np.uint8)
        gt = sample["instances"].gt_masks.tensor.numpy().astype(np.uint8)
        dt_rle = [mask_util.encode(np.asfortranarray(x)) for x in pred]
        gt_rle = [mask_util.encode(np.asfortranarray(x)) for x in gt]
        ious = np.asarray(mask_util.iou(dt_rle, gt_rle, [0] * len(gt_rle))).reshape(len(dt_rle), len(gt_rle))
        hits += int((match_proposals(ious, [0.5]) >= 0).sum())
        total += len(gt_rle)
    return hits / total


@pytest.mark.slow
def test_overfit_a_few_images_raises_proposal_recall():
    samples = [_sample(10 + i, size=(128, 128), sizes=(40, 38)) for i in range(3)]
    opts = ["MODEL.INSTANCE_FCN.WINDOW_SIZE", "9",  # 72 px windows: ~41 px objects are positive
            "MODEL.INSTANCE_FCN.MASK_BRANCH_DIM", "64", "MODEL.INSTANCE_FCN.OBJECTNESS_DIM", "64",
            "MODEL.INSTANCE_FCN.POSITIVE_CENTER_TOL", "0.12", "MODEL.INSTANCE_FCN.NEGATIVE_CENTER_TOL", "0.25",
            "MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE", "10"]
    model = _model(*opts)
    before = _recall_at_05(model, samples)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    with EventStorage(0):  # the losses log their statistics, as under detectron2's trainer
        for _ in range(80):
            losses = model(samples)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    after = _recall_at_05(model, samples)
    assert losses["loss_mask"].item() < 0.3 and losses["loss_objectness"].item() < 0.1
    print(f"recall@0.5 of the top-10 proposals: {before:.2f} -> {after:.2f}")
    assert after >= 2 / 3 and after - before >= 0.5, (before, after)


@pytest.mark.smoke
@pytest.mark.slow
def test_train_net_trains_and_evaluates_the_shapes_config(tmp_path):
    """tools/train_net.py with the CPU config: a few iterations, a checkpoint, proposal AR."""
    from conftest import load_tool

    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("test_shapes", num_train=8, num_val=3, image_size=128)
    train_net = load_tool("train_net")
    argv = ["--config-file", str(REPO_ROOT / "configs" / "shapes" / "instance_fcn_R18_cpu.yaml"),
            "DATASETS.TRAIN", "('test_shapes_train',)", "DATASETS.TEST", "('test_shapes_val',)",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "TEST.AUG.MIN_SIZES", "(96, 128)", "INPUT.MIN_SIZE_TEST", "128", "OUTPUT_DIR", str(tmp_path)]
    results = train_net.main(train_net.default_argument_parser().parse_args(argv))
    assert (tmp_path / "model_final.pth").is_file()
    ar = results["proposals"]
    assert {"AR@10", "AR@100"} <= set(ar) and all(0.0 <= ar[k] <= 100.0 for k in ("AR@10", "AR@100"))
