"""FCIS meta-architecture and FCISROIHeads: inside/outside math, losses, inference, bad input, overfit.

Models are tiny (R18 GN with res5 dilated to stride 16, 32-channel conv_new_1, k = 7, M = 21,
2 classes) and images are <= 128 px, so every test but the overfit one runs in seconds.
"""
import dataclasses

import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

from conftest import REPO_ROOT
from reader_spy import spy_inside_outside
from tiny_models import R18_GN_FROM_SCRATCH, square_disc_sample
from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.core.fcis import CLASS_LOGITS_ROIS_PER_CHUNK, FCISMaps, FCISReader
from instfcn_d2.modeling.fcis.heads import FCISROIHeads
from instfcn_d2.modeling.instances import detections_to_instances
from instfcn_d2.core.fcis.reading import clip_finite
from instfcn_d2.core.fcis.inference import fcis_inference_single_image
from instfcn_d2.modeling.fcis.losses import ohem_select, per_roi_losses
from instfcn_d2.modeling.fcis.meta_arch import FCIS, fcis_postprocess
from instfcn_d2.core.fcis.layout import (
    inside_outside_channel,
    inside_outside_class_logits,
    inside_outside_mask_probs,
)

BASE = str(REPO_ROOT / "configs" / "Base-FCIS.yaml")
C = 2  # classes: 0 = square, 1 = disc
TINY = [
    *R18_GN_FROM_SCRATCH,
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[24, 48, 96]]",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "300",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.NUM_CLASSES", str(C),
    "MODEL.FCIS.CONV_NEW_DIM", "32",
    "MODEL.FCIS.CONV_NEW_INIT", "msra",  # from scratch (see fcis_config.py)
    "MODEL.FCIS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.FCIS.DETECTIONS_PER_IMAGE", "20",
    "INPUT.MIN_SIZE_TEST", "96",
    "INPUT.MAX_SIZE_TEST", "160",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: the mask loss of the CPU configs that train from scratch (configs/shapes/fcis_R18_cpu.yaml)
FROM_SCRATCH_RECIPE = ["MODEL.FCIS.MASK_LOSS_NORMALIZATION", "pixel_mean", "MODEL.FCIS.MASK_LOSS_WEIGHT", "1.0"]


def _cfg(*opts):
    return get_instfcn_cfg(BASE, TINY + list(opts))


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(_cfg(*opts))


def _sample(seed, size=(96, 96), sides=(36, 32), polygons=False):
    """A square (class 0) then a disc (class 1) on a textured image (tests/tiny_models.py)."""
    return square_disc_sample(seed, size, sides, polygons, file_name=f"sample_{seed}.png")


def _empty_sample(seed=0, size=(96, 96)):
    d = _sample(seed, size)
    d["instances"] = Instances(size, gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    return d


def _test_input(d):
    return {k: d[k] for k in ("image", "height", "width")}


def _train_step(model, batch):
    model.train()
    with EventStorage(0) as storage:
        losses = model(batch)
        stats = {k: v[0] for k, v in storage.latest().items() if k.startswith("fcis/")}
    return losses, stats


def _tensor_reader(inside_outside):
    """The mask-logits callable of a ``(P, 2, C+1, M, M)`` tensor of every candidate's logits."""
    return lambda indices, classes: inside_outside[indices, :, classes]


def _detect(heads, boxes, scores, inside_outside, image_size=(128, 128)):
    """fcis_inference_single_image with the heads' test settings; ``inside_outside`` a tensor or a callable."""
    reader = inside_outside if callable(inside_outside) else _tensor_reader(inside_outside)
    return detections_to_instances(fcis_inference_single_image(boxes, scores, reader, image_size, heads.reader.test_params))


def _with_test_params(heads, **changes):
    heads.reader = heads.reader.replace(test_params=dataclasses.replace(heads.reader.test_params, **changes))
    return heads


def _per_roi(heads, proposals, io, logits, deltas):
    return per_roi_losses(proposals, io, logits, deltas, heads.num_classes, heads.box_regression)


def _make_constant(model, inside=None, outside=None, value=4.0):
    """Hand-made score maps: zero weights, and bias ``value`` on every cell of the inside (or
    outside) channels of the given class, 0 elsewhere; box maps all zero (deltas 0)."""
    heads = model.roi_heads
    k2 = heads.reader.group_size ** 2
    with torch.no_grad():
        for layer in (heads.inside_outside_maps.conv, heads.box_maps.conv):
            layer.weight.zero_()
            layer.bias.zero_()
        for cls, is_outside in ((inside, False), (outside, True)):
            if cls is not None:
                o = inside_outside_channel(cls, is_outside, heads.num_classes)
                heads.inside_outside_maps.conv.bias[o * k2 : (o + 1) * k2] = value


# ---- inside/outside math -----------------------------------------------------------------------------
def test_class_logits_are_the_roi_mean_of_max_inside_outside():
    torch.manual_seed(0)
    io = torch.randn(3, 2, C + 1, 5, 5)
    expected = torch.maximum(io[:, 0], io[:, 1]).mean(dim=(2, 3))
    torch.testing.assert_close(inside_outside_class_logits(io), expected)
    probs = inside_outside_mask_probs(io[:, :, 1])
    torch.testing.assert_close(probs, torch.sigmoid(io[:, 0, 1] - io[:, 1, 1]))


@pytest.mark.parametrize("cls", [0, 1])
def test_all_inside_maps_of_class_c_give_a_full_mask_and_class_c(cls):
    model = _model()
    _make_constant(model, inside=cls)
    rois = torch.tensor([[0, 4.0, 8.0, 60.0, 50.0], [0, 30.0, 20.0, 90.0, 90.0]])
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 96, 96))
        io = model.roi_heads.reader.roi_inside_outside(model.roi_heads.score_maps(features), rois)
    assert io.shape == (2, 2, C + 1, 21, 21)
    scores = torch.softmax(inside_outside_class_logits(io), dim=1)
    assert scores.argmax(dim=1).tolist() == [cls, cls]
    torch.testing.assert_close(scores[:, cls], torch.full((2,), np.exp(4.0) / (np.exp(4.0) + C)).float())
    masks = inside_outside_mask_probs(io[:, :, cls])
    assert masks.min() > 0.98  # sigmoid(4): every pixel inside
    assert inside_outside_mask_probs(io[:, :, 1 - cls]).sub(0.5).abs().max() < 1e-6  # no evidence


def test_all_outside_maps_of_class_c_give_class_c_with_an_empty_mask():
    """max(inside, outside) makes "outside of a c-instance" evidence for class c as well."""
    model = _model()
    _make_constant(model, outside=1)
    rois = torch.tensor([[0, 10.0, 10.0, 70.0, 60.0]])
    with torch.no_grad():
        maps = model.roi_heads.score_maps(model.backbone(torch.zeros(1, 3, 96, 96)))
        io = model.roi_heads.reader.roi_inside_outside(maps, rois)
    assert inside_outside_class_logits(io).argmax(dim=1).tolist() == [1]
    assert inside_outside_mask_probs(io[:, :, 1]).max() < 0.02


@pytest.mark.parametrize("voting", [False, True])
def test_hand_made_maps_end_to_end_give_box_filling_masks_of_class_c(voting):
    """Every RoI scores class 1 (e^4 / (e^4 + 2)) with a full mask: after NMS the detections above
    the other classes' score are class 1. Without voting every binary mask is exactly its box
    (up to the half-cell blur of bilinear pasting) at output resolution; with voting it stays in the box and
    holds the pixels that voters of >= 40% of the vote weight cover (at least the box centre)."""
    model = _model("MODEL.FCIS.MASK_VOTING", str(voting))
    _make_constant(model, inside=1)
    model.eval()
    with torch.no_grad():
        out = model([_test_input(_sample(3))])[0]["instances"]
    p1 = float(np.exp(4.0) / (np.exp(4.0) + C))
    confident = out[out.scores > 0.5]
    assert len(confident) > 0 and set(confident.pred_classes.tolist()) == {1}
    torch.testing.assert_close(confident.scores, torch.full((len(confident),), p1))
    # the other class passes SCORE_THRESH_TEST 0.001 with (1 - p1) / 2, ranked below
    torch.testing.assert_close(out[out.scores < 0.5].scores, torch.full((len(out) - len(confident),), (1 - p1) / 2))
    assert out.pred_masks.dtype == torch.bool and out.pred_masks.shape[1:] == (96, 96)
    yy, xx = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    for box, mask in zip(confident.pred_boxes.tensor, confident.pred_masks):
        x0, y0, x1, y1 = box.tolist()
        # bilinear pasting blends the last mask cell with the zeros outside the box: allow one cell
        cw, ch = (x1 - x0) / 21, (y1 - y0) / 21
        near = (xx >= x0 - cw) & (xx <= x1 + cw) & (yy >= y0 - ch) & (yy <= y1 + ch)
        strict = (xx > x0 + 1) & (xx < x1 - 1) & (yy > y0 + 1) & (yy < y1 - 1)
        assert not mask[~near].any()
        if voting:
            assert mask[int((y0 + y1) / 2), int((x0 + x1) / 2)]
        else:
            assert mask[strict].all()


# ---- training ------------------------------------------------------------------------------------------
def test_losses_are_finite_and_backprop_into_maps_trunk_and_rpn():
    model = _model()
    losses, stats = _train_step(model, [_sample(0), _sample(1, polygons=True)])
    assert set(losses) == {"loss_cls", "loss_mask", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    # an untrained model: uniform classes and 50/50 masks; the official mask loss: log 2 per
    # pixel, summed over the positives' M*M pixels, divided by the RoI count, times 10
    assert abs(losses["loss_cls"].item() - np.log(C + 1)) < 0.05
    assert stats["fcis/num_fg_rois"] > 0 and stats["fcis/num_rois"] == 32
    official = 10 * np.log(2) * 21 * 21 * stats["fcis/num_fg_rois"] / stats["fcis/num_rois"]
    assert abs(losses["loss_mask"].item() - official) < 0.05 * official
    sum(losses.values()).backward()
    for name, param in [
        ("inside/outside maps", model.roi_heads.inside_outside_maps.conv.weight),
        ("box maps", model.roi_heads.box_maps.conv.weight),
        ("conv_new_1", model.roi_heads.conv_new.weight),
        ("rpn", model.proposal_generator.rpn_head.conv.weight),
        ("trunk", model.backbone.stem.conv1.weight),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_mask_loss_normalizations_differ_by_pixels_times_positive_share_and_weight():
    batch = [_sample(0), _sample(1)]
    mean, mean_stats = _train_step(
        _model("MODEL.FCIS.MASK_LOSS_NORMALIZATION", "pixel_mean", "MODEL.FCIS.MASK_LOSS_WEIGHT", "1.0"), batch
    )
    assert abs(mean["loss_mask"].item() - np.log(2)) < 0.05
    summed, stats = _train_step(_model(), batch)  # the same seed: the same sampled RoIs
    assert stats == mean_stats
    ratio = 10 * 21 * 21 * stats["fcis/num_fg_rois"] / stats["fcis/num_rois"]
    assert summed["loss_mask"].item() == pytest.approx(mean["loss_mask"].item() * ratio, rel=1e-4)
    assert summed["loss_cls"].item() == pytest.approx(mean["loss_cls"].item(), rel=1e-6)


def test_bad_recipe_values_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="MASK_LOSS_NORMALIZATION"):
        _model("MODEL.FCIS.MASK_LOSS_NORMALIZATION", "sum")
    with pytest.raises(ValueError, match="MASK_TARGET_THRESH"):
        _model("MODEL.FCIS.MASK_TARGET_THRESH", "0.0")
    with pytest.raises(ValueError, match="multiplier"):
        _model("MODEL.FCIS.CONV_NEW_LR_MULTIPLIER", "0.0")


def test_mask_targets_at_half_are_detectron2s_and_lower_thresholds_keep_thin_parts():
    from detectron2.structures import BitMasks, PolygonMasks

    from instfcn_d2.modeling.fcis.losses import mask_targets

    bit = torch.zeros(1, 64, 64, dtype=torch.bool)
    bit[0, 10:50, 10:50] = True
    bit[0, 54:56, 10:58] = True  # a 2-px line: resized by 21/52 it covers at most 0.81 of a cell
    masks = BitMasks(bit)
    box = torch.tensor([[8.0, 8.0, 60.0, 60.0]])
    half = mask_targets(masks, box, 21, 0.5, (64, 64))
    assert torch.equal(half, masks.crop_and_resize(box, 21))
    low = mask_targets(masks, box, 21, 0.4, (64, 64))
    assert (low | ~half).all()  # a superset of the 0.5 targets ...
    assert half.sum() == 256 and low.sum() == 294  # ... with the thin line, lost at 0.5
    # polygons: rasterised in the image, then the same resizing
    square = PolygonMasks([[np.array([10, 10, 50, 10, 50, 50, 10, 50], dtype=np.float64)]])
    poly = mask_targets(square, box, 21, 0.4, (64, 64))
    ref = mask_targets(BitMasks.from_polygon_masks(square, 64, 64), box, 21, 0.4, (64, 64))
    assert torch.equal(poly, ref) and poly.any()


def test_official_conv_new_trains_at_three_times_the_rate():
    from instfcn_d2.engine.optimizer import build_optimizer

    cfg = _cfg()
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rate[id(model.roi_heads.conv_new.weight)] == pytest.approx(3 * cfg.SOLVER.BASE_LR)
    assert rate[id(model.roi_heads.inside_outside_maps.conv.weight)] == pytest.approx(cfg.SOLVER.BASE_LR)
    assert rate[id(model.backbone.stem.conv1.weight)] == pytest.approx(cfg.SOLVER.BASE_LR)
    assert len(rate) == len(list(model.parameters()))  # every parameter once
    plain_cfg = _cfg("MODEL.FCIS.CONV_NEW_LR_MULTIPLIER", "1.0")
    plain = build_optimizer(plain_cfg, build_model(plain_cfg))
    assert {g["lr"] for g in plain.param_groups} == {cfg.SOLVER.BASE_LR}


def test_candidates_under_the_official_min_size_are_dropped():
    heads = _with_test_params(_model().roi_heads, min_size=16.0, mask_voting=False)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [60.0, 60.0, 70.0, 100.0], [60.0, 0.0, 100.0, 16.0]])
    scores = torch.tensor([[0.9, 0.0, 0.1], [0.0, 0.9, 0.1], [0.9, 0.0, 0.1]])  # one class each
    io = torch.zeros(3, 2, C + 1, 21, 21)
    kept = _detect(heads, boxes, scores, io)
    # the 10-px-wide box goes; the 16-px-high one stays (>= the size)
    assert sorted(kept.pred_boxes.tensor[:, 0].tolist()) == [0.0, 60.0]
    assert kept.pred_classes.tolist().count(1) == 0
    all_kept = _detect(_with_test_params(heads, min_size=0.0), boxes, scores, io)
    assert len(all_kept) == 3


def _labelled_proposals(sample, boxes):
    """One image's proposals labelled as ``label_and_sample_proposals`` does, by hand."""
    gt = sample["instances"]
    p = Instances(gt.image_size)
    p.proposal_boxes = Boxes(boxes)
    idx = torch.arange(len(boxes)) % len(gt)
    p.gt_classes = gt.gt_classes[idx]
    p.gt_boxes = gt.gt_boxes[idx]
    p.gt_masks = gt.gt_masks[idx]
    return p


def test_mask_loss_targets_inside_on_the_gt_mask_of_the_gt_class():
    """Logits built from the cropped gt mask (inside high on the mask, outside high elsewhere, at
    the gt class) give ~0 mask loss; swapping inside and outside, or using the other class's
    channels, gives a large one. Exact box deltas give 0 box loss."""
    model = _model()
    heads = model.roi_heads
    sample = _sample(5)
    boxes = sample["instances"].gt_boxes.tensor + torch.tensor([[-3.0, -2.0, 4.0, 3.0]])
    proposals = [_labelled_proposals(sample, boxes)]
    M = heads.reader.mask_size
    target = sample["instances"].gt_masks.crop_and_resize(boxes, M).float()  # (2, M, M)
    io = torch.zeros(2, 2, C + 1, M, M)
    cls = proposals[0].gt_classes
    io[torch.arange(2), 0, cls] = 10 * target
    io[torch.arange(2), 1, cls] = 10 * (1 - target)
    gt_deltas = heads.box_regression.transform.get_deltas(boxes, proposals[0].gt_boxes.tensor)
    logits = inside_outside_class_logits(io)

    good = _per_roi(heads, proposals, io, logits, gt_deltas)
    assert good["loss_mask"].max() < 1e-3 and good["loss_box_reg"].max() < 1e-6
    swapped = _per_roi(heads, proposals, io.flip(1), logits, gt_deltas + 0.5)
    assert swapped["loss_mask"].min() > 3 and swapped["loss_box_reg"].min() > 0.1
    other = io[:, :, [1, 0, 2]]  # the correct maps put at the other foreground class
    assert _per_roi(heads, proposals, other, logits, gt_deltas)["loss_mask"].min() > 0.5


def test_background_rois_have_only_a_classification_loss():
    model = _model()
    sample = _sample(6)
    p = _labelled_proposals(sample, torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 90.0, 90.0]]))
    p.gt_classes = torch.tensor([C, C])  # background
    io = torch.randn(2, 2, C + 1, 21, 21)
    losses = _per_roi(model.roi_heads, [p], io, inside_outside_class_logits(io), torch.randn(2, 4))
    assert losses["loss_mask"].abs().sum() == 0 and losses["loss_box_reg"].abs().sum() == 0
    assert (losses["loss_cls"] > 0).all()


def test_ohem_keeps_the_hardest_rois_of_each_image():
    model = _model("MODEL.FCIS.OHEM", "True", "MODEL.FCIS.OHEM_BATCH_SIZE", "2")
    per_roi = {
        "loss_cls": torch.tensor([0.1, 0.9, 0.2, 0.0, 0.3, 0.1, 0.1]),
        "loss_mask": torch.tensor([0.0, 0.0, 0.9, 0.0, 0.0, 0.5, 0.0]),
        "loss_box_reg": torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05]),
    }
    selected = ohem_select(per_roi, [4, 3], model.roi_heads.ohem_batch_size)
    assert sorted(selected.tolist()) == [1, 2, 4, 5]  # image 0: 0.9, 1.1; image 1: 0.3, 0.6
    # the official ranking weighs the (pixel-mean) mask loss by its weight, 10 by default
    weighted = ohem_select(per_roi, [4, 3], 1, {"loss_mask": 10.0})
    unweighted = ohem_select(per_roi, [4, 3], 1, {"loss_mask": 0.1})
    assert weighted.tolist() == [2, 5] and unweighted.tolist() == [1, 4]

    losses, stats = _train_step(model, [_sample(0), _sample(1)])
    assert stats["fcis/num_rois"] == 2 and all(torch.isfinite(v) for v in losses.values())


def test_ohem_sees_every_labelled_proposal():
    model = _model("MODEL.FCIS.OHEM", "True", "MODEL.FCIS.OHEM_BATCH_SIZE", "1000")
    losses, stats = _train_step(model, [_sample(0)])
    # every RPN proposal (100) + the 2 gt boxes, none ignored with IOU_LABELS [0, 1]
    assert stats["fcis/num_rois"] == 102


# ---- inference -------------------------------------------------------------------------------------------
def test_inference_scores_the_rois_and_their_regressed_boxes(monkeypatch):
    model = _model()
    model.eval()
    seen = []
    original = FCISReader.roi_class_logits

    def spy(self, maps, rois):
        seen.append(rois.clone())
        return original(self, maps, rois)

    monkeypatch.setattr(FCISReader, "roi_class_logits", spy)
    with torch.no_grad():
        model([_test_input(_sample(0)), _test_input(_sample(1))])
    # one pass over all candidates (the class scores; masks are assembled per class)
    assert len(seen) == 1
    rois = torch.cat(seen)
    assert len(rois) == 2 * 2 * 50  # 2 images x (50 RoIs + 50 regressed)
    assert set(rois[:, 0].tolist()) == {0.0, 1.0}

    seen.clear()
    model.roi_heads.reader = model.roi_heads.reader.replace(test_candidates="regressed")
    with torch.no_grad():
        model([_test_input(_sample(0))])
    assert len(torch.cat(seen)) == 50


@pytest.mark.smoke
def test_output_format_default_predictor_and_visualizer():
    cfg = _cfg()
    torch.manual_seed(0)
    predictor = DefaultPredictor(cfg)
    image = _sample(2, size=(80, 120))["image"].permute(1, 2, 0).numpy()  # HWC "BGR"
    out = predictor(image)["instances"]
    assert set(out.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert out.image_size == (80, 120) and out.pred_masks.shape[1:] == (80, 120)
    assert out.pred_masks.dtype == torch.bool
    assert 0 < len(out) <= 20 and out.pred_classes.max() < C
    assert (out.scores[:-1] >= out.scores[1:]).all()
    vis = Visualizer(image[:, :, ::-1]).draw_instance_predictions(out)
    assert vis.get_image().shape == (80, 120, 3)


def test_masks_are_binarised_at_0_4_when_pasted():
    """detector_postprocess with FCIS's threshold: 0.45 is foreground, 0.35 is not."""
    r = Instances((20, 20))
    r.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0]]))
    r.scores = torch.tensor([0.9, 0.8])
    r.pred_classes = torch.tensor([0, 1])
    r.pred_masks = torch.stack([torch.full((1, 4, 4), 0.45), torch.full((1, 4, 4), 0.35)])
    (out,) = fcis_postprocess([r], [{"height": 40, "width": 40}], [(20, 20)], mask_threshold=0.4)
    masks = out["instances"].pred_masks
    assert masks.shape == (2, 40, 40) and masks.dtype == torch.bool
    # (the outermost pixels blend with the zeros outside the box, as in detectron2's pasting)
    assert masks[0, 5:-5, 5:-5].all() and not masks[1].any()


# ---- bad input -------------------------------------------------------------------------------------------
def test_no_rois_gives_empty_instances_with_all_fields():
    model = _model()
    model.eval()
    features = model.backbone(torch.zeros(1, 3, 64, 64))
    empty = Instances((64, 64), proposal_boxes=Boxes(torch.zeros(0, 4)), objectness_logits=torch.zeros(0))
    with torch.no_grad():
        (result,) = model.roi_heads.inference(model.roi_heads.score_maps(features), [empty])
    assert len(result) == 0 and result.pred_masks.shape == (0, 1, 21, 21)
    (out,) = fcis_postprocess([result], [{"height": 32, "width": 48}], [(64, 64)])
    inst = out["instances"]
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert inst.pred_masks.shape == (0, 32, 48) and inst.pred_masks.dtype == torch.bool


def test_training_with_no_rois_gives_zero_losses_that_still_backprop():
    model = _model("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False")
    model.train()
    features = model.backbone(torch.zeros(1, 3, 64, 64))
    empty = Instances((64, 64), proposal_boxes=Boxes(torch.zeros(0, 4)), objectness_logits=torch.zeros(0))
    targets = [_empty_sample(size=(64, 64))["instances"]]
    with EventStorage(0):
        _, losses = model.roi_heads(None, features, [empty], targets)
    assert all(v.item() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.inside_outside_maps.conv.weight.grad is not None


def test_image_without_instances_trains_on_background_rois():
    model = _model()
    losses, stats = _train_step(model, [_empty_sample(0)])
    assert stats["fcis/num_fg_rois"] == 0 and stats["fcis/num_rois"] > 0
    assert losses["loss_mask"].item() == 0 and losses["loss_box_reg"].item() == 0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    # mixed with an annotated image
    losses, stats = _train_step(model, [_empty_sample(0), _sample(1)])
    assert losses["loss_mask"] > 0 and stats["fcis/num_fg_rois"] > 0


def test_class_id_out_of_range_names_the_value():
    model = _model()
    sample = _sample(0)
    sample["instances"].gt_classes = torch.tensor([0, 7])
    with pytest.raises(ValueError, match=r"class id 7 of sample_0.png is out of range \[0, 2\).*NUM_CLASSES = 2"):
        _train_step(model, [sample])
    sample["instances"].gt_classes = torch.tensor([-1, 0])
    with pytest.raises(ValueError, match="class id -1"):
        _train_step(model, [sample])


def test_instances_without_masks_or_inputs_without_instances_raise():
    model = _model()
    sample = _sample(0)
    sample["instances"].remove("gt_masks")
    with pytest.raises(ValueError, match="needs instance masks.*sample_0.png"):
        _train_step(model, [sample])
    with pytest.raises(ValueError, match="needs 'instances'.*sample_1.png"):
        _train_step(model, [_test_input(_sample(1)) | {"file_name": "sample_1.png"}])


def test_tensor_masks_are_accepted_as_bitmasks():
    model = _model()
    sample = _sample(0)
    sample["instances"].gt_masks = sample["instances"].gt_masks.tensor
    losses, _ = _train_step(model, [sample])
    assert losses["loss_mask"] > 0


# ---- configuration and the BiSeg hooks -------------------------------------------------------------------
def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"GROUP_SIZE \(k = 9\) must be <= MODEL.FCIS.MASK_SIZE \(M = 7\)"):
        _model("MODEL.FCIS.GROUP_SIZE", "9", "MODEL.FCIS.MASK_SIZE", "7")
    with pytest.raises(ValueError, match=r"IN_FEATURES = \['res3'\].*\['res4', 'res5'\]"):
        _model("MODEL.ROI_HEADS.IN_FEATURES", "['res3']")
    with pytest.raises(ValueError, match="MASK_ON True"):
        _model("MODEL.MASK_ON", "False")
    with pytest.raises(ValueError, match="TEST_CANDIDATES = 'all'"):
        _model("MODEL.FCIS.TEST_CANDIDATES", "all")
    with pytest.raises(ValueError, match="CONV_NEW_INIT = 'xavier'"):
        _model("MODEL.FCIS.CONV_NEW_INIT", "xavier")
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE = 'l2'"):
        _model("MODEL.FCIS.BBOX_REG_LOSS_TYPE", "l2")
    m = _model()
    with pytest.raises(ValueError, match="needs FCISROIHeads.*got Identity.*ROI_HEADS.NAME"):
        FCIS(backbone=m.backbone, proposal_generator=m.proposal_generator, roi_heads=torch.nn.Identity(),
             pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])


def test_giou_box_loss_trains():
    model = _model("MODEL.FCIS.BBOX_REG_LOSS_TYPE", "giou")
    losses, _ = _train_step(model, [_sample(0)])
    assert 0 < losses["loss_box_reg"].item() < 2  # giou loss of a positive is in [0, 2)


def test_subclass_hooks_reach_the_roi_heads_losses_and_outputs():
    """What BiSeg does: maps that score_maps adds reach an overriding roi_inside_outside and
    roi_inside_outside_of_classes, extra_losses join the losses and extra_outputs edits the results."""

    @dataclasses.dataclass
    class ProbeMaps(FCISMaps):
        probe: torch.Tensor

    class Probe(FCIS):
        def score_maps(self, images, features):
            maps = self.roi_heads.score_maps(features)
            return ProbeMaps(maps.inside_outside, maps.box, probe=torch.full((len(images), 1, 1, 1), 3.0))

        def extra_losses(self, batched_inputs, images, maps):
            return {"loss_probe": maps.probe.sum()}

        def extra_outputs(self, batched_inputs, images, maps, results):
            for r in results:
                r["probe"] = float(maps.probe[0])

    calls = []

    @dataclasses.dataclass(frozen=True)
    class ProbeReader(FCISReader):
        def roi_inside_outside(self, maps, rois):
            calls.append(("all", float(maps.probe[0])))
            return super().roi_inside_outside(maps, rois)

        def roi_inside_outside_of_classes(self, maps, rois, classes):
            calls.append(("class", float(maps.probe[0])))
            return super().roi_inside_outside_of_classes(maps, rois, classes)

    cfg = _cfg()
    torch.manual_seed(0)
    backbone_model = build_model(cfg)
    heads = FCISROIHeads(cfg, backbone_model.backbone.output_shape())
    heads.reader = ProbeReader(**dataclasses.asdict(heads.reader) | {"test_params": heads.reader.test_params})
    model = Probe(
        backbone=backbone_model.backbone,
        proposal_generator=backbone_model.proposal_generator,
        roi_heads=heads,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
    )
    losses, _ = _train_step(model, [_sample(0)])
    assert losses["loss_probe"].item() == 3.0 and "loss_mask" in losses
    assert calls == [("all", 3.0)]
    model.eval()
    with torch.no_grad():
        (out,) = model([_test_input(_sample(1))])
    assert out["probe"] == 3.0 and len(out["instances"]) > 0
    # inference: the class scores (in chunks), then the masks one class at a time
    assert {kind for kind, _ in calls} == {"all", "class"} and {v for _, v in calls} == {3.0}


def test_heads_called_without_maps_compute_their_own():
    """detectron2's ROIHeads call, (images, features, proposals): the heads compute the maps."""
    model = _model().eval()
    features, proposals = _features_and_proposals(model, [_sample(0)])
    heads = model.roi_heads
    with torch.no_grad():
        (own,), _ = heads(None, features, proposals)
        (given,), _ = heads(None, features, proposals, maps=heads.score_maps(features))
    _assert_same_detections(own, given)


@pytest.mark.parametrize("path", ["shapes/fcis_R18_cpu.yaml", "coco128/fcis_R18_cpu.yaml", "voc/fcis_R101.yaml"])
def test_configs_load_and_build(path):
    cfg = get_instfcn_cfg(str(REPO_ROOT / "configs" / path), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.META_ARCHITECTURE == "FCIS"
    c = cfg.MODEL.FCIS
    if "R101" in path:  # the paper's settings
        assert (c.GROUP_SIZE, c.MASK_SIZE, c.CONV_NEW_DIM, c.NMS_THRESH_TEST, c.MASK_BINARIZE_THRESH) == (
            7, 21, 1024, 0.3, 0.4
        )
        assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RPN.POST_NMS_TOPK_TEST, c.MASK_VOTING_IOU) == (101, 300, 0.5)
    model = build_model(cfg)
    assert isinstance(model, FCIS) and model.roi_heads.reader.spatial_scale == 1 / 16
    assert model.backbone.output_shape()["res4"].stride == 16
    assert model.roi_heads.reader.mask_size == c.MASK_SIZE and model.roi_heads.num_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES


def test_rois_rows_and_clipping_of_regressed_boxes():
    heads = _model().roi_heads
    proposals = [
        Instances((50, 60), proposal_boxes=Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))),
        Instances((50, 60), proposal_boxes=Boxes(torch.zeros(0, 4))),
        Instances((50, 60), proposal_boxes=Boxes(torch.ones(2, 4))),
    ]
    rois = heads._rois(proposals)
    assert rois[:, 0].tolist() == [0.0, 2.0, 2.0] and rois[0, 1:].tolist() == [1.0, 2.0, 3.0, 4.0]
    boxes = torch.tensor([[-5.0, -1.0, 70.0, 20.0], [float("nan"), 0.0, 1.0, 1.0]])
    clipped = clip_finite(boxes, (50, 60))
    assert clipped[0].tolist() == [0.0, 0.0, 60.0, 20.0] and torch.isnan(clipped[1, 0])


# ---- overfit ----------------------------------------------------------------------------------------------
def _correct_fraction(model, samples, score_thresh=0.5):
    """Fraction of gt instances matched by a detection of the right class with score >= thresh and
    mask IoU >= 0.5."""
    model.eval()
    with torch.no_grad():
        outs = model([_test_input(s) for s in samples])
    hits = total = 0
    for sample, out in zip(samples, outs):
        inst = out["instances"]
        inst = inst[inst.scores >= score_thresh]
        gt = sample["instances"]
        for mask, cls in zip(gt.gt_masks.tensor, gt.gt_classes):
            same = inst.pred_classes == cls
            pred = inst.pred_masks[same]
            inter = (pred & mask).flatten(1).sum(1).float()
            union = (pred | mask).flatten(1).sum(1).float()
            hits += int(((inter / union.clamp(min=1)) >= 0.5).any())
            total += 1
    return hits / total


@pytest.mark.slow
def test_overfit_a_few_images_learns_masks_and_classes():
    samples = [_sample(20 + i, size=(112, 112), sides=(44, 40)) for i in range(3)]
    # from scratch at this rate: the mean mask loss (the official summed one needs the official,
    # lower rate; docs/results.md, "The training recipe")
    model = _model("MODEL.FCIS.CONV_NEW_DIM", "64", *FROM_SCRATCH_RECIPE, seed=1)
    before = _correct_fraction(model, samples)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    first = None
    with EventStorage(0):
        for it in range(80):
            for group in optimizer.param_groups:  # short linear warm-up: GN from scratch
                group["lr"] = 0.01 * min(1.0, (it + 1) / 20)
            losses = model(samples)
            if first is None:
                first = {k: v.item() for k, v in losses.items()}
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    last = {k: v.item() for k, v in losses.items()}
    after = _correct_fraction(model, samples)
    print(f"losses {first} -> {last}; correct instances {before:.2f} -> {after:.2f}")
    assert last["loss_cls"] < 0.5 * first["loss_cls"] and last["loss_mask"] < 0.5 * first["loss_mask"]
    assert before == 0 and after >= 5 / 6, (before, after)


@pytest.mark.smoke
@pytest.mark.slow
def test_train_net_trains_and_evaluates_the_shapes_config(tmp_path):
    """tools/train_net.py with the CPU config: a few iterations, a checkpoint, COCO bbox + segm AP."""
    from conftest import load_tool

    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("fcis_test_shapes", num_train=8, num_val=3, image_size=128)
    train_net = load_tool("train_net")
    argv = ["--config-file", str(REPO_ROOT / "configs" / "shapes" / "fcis_R18_cpu.yaml"),
            "DATASETS.TRAIN", "('fcis_test_shapes_train',)", "DATASETS.TEST", "('fcis_test_shapes_val',)",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128",
            "OUTPUT_DIR", str(tmp_path)]
    results = train_net.main(train_net.default_argument_parser().parse_args(argv))
    assert (tmp_path / "model_final.pth").is_file()
    assert {"bbox", "segm"} <= set(results)
    assert all(0.0 <= results[t]["AP"] <= 100.0 or np.isnan(results[t]["AP"]) for t in ("bbox", "segm"))


@pytest.mark.parametrize("binarize_voters", [True, False])
def test_voting_reads_only_the_voters_masks_and_equals_voting_over_every_candidate(binarize_voters):
    """fcis_inference_single_image softmaxes the masks of the candidates that vote for some kept box only;
    the voted masks must equal mask_voting over all candidates (non-voters weigh nothing), with
    each voter binarised at MASK_BINARIZE_THRESH first (MASK_VOTING_BINARIZE_VOTERS, default) or not."""
    from instfcn_d2.core.fcis.mask_voting import mask_voting

    heads = _model("MODEL.FCIS.MASK_VOTING_BINARIZE_VOTERS", str(binarize_voters)).roi_heads
    assert heads.reader.test_params.mask_voting_binarize_voters == binarize_voters
    _with_test_params(heads, mask_voting_frame="kept_box")
    boxes, scores, inside_outside = _random_candidates(heads)
    result = _detect(heads, boxes, scores, inside_outside)
    assert len(result) > 1
    for k in range(len(result)):
        c = int(result.pred_classes[k])
        expected = mask_voting(
            result.pred_boxes.tensor[k : k + 1], boxes, inside_outside_mask_probs(inside_outside[:, :, c]),
            scores[:, c], iou_threshold=heads.reader.test_params.mask_voting_iou,
            voter_threshold=heads.reader.test_params.mask_binarize_thresh if binarize_voters else None,
        )  # fmt: skip
        torch.testing.assert_close(result.pred_masks[k], expected, rtol=1e-5, atol=1e-6)


def _random_candidates(heads, P=40, seed=3):
    torch.manual_seed(seed)
    C, M = heads.num_classes, heads.reader.mask_size
    xy = torch.rand(P, 2) * 60
    boxes = torch.cat([xy, xy + 20 + torch.rand(P, 2) * 40], dim=1)
    scores = torch.softmax(torch.randn(P, C + 1) * 3, dim=1)
    return boxes, scores, torch.randn(P, 2, C + 1, M, M)


def test_union_frame_voting_is_the_official_mask_aggregation():
    """MASK_VOTING_FRAME "union" (default): the voters (binarised) averaged over the union of their boxes; the
    output box is the box of the voted mask binarised at MASK_BINARIZE_THRESH, the mask resampled
    into it. Same detections (NMS) as "kept_box"."""
    from instfcn_d2.core.fcis.mask_voting import mask_voting, resample_masks_into_boxes, tight_mask_boxes, voter_union_boxes

    heads = _model().roi_heads
    assert heads.reader.test_params.mask_voting_frame == "union" and heads.reader.test_params.mask_binarize_thresh == 0.4
    boxes, scores, inside_outside = _random_candidates(heads)
    union = _detect(heads, boxes, scores, inside_outside)
    kept = _detect(_with_test_params(heads, mask_voting_frame="kept_box"), boxes, scores, inside_outside)
    assert torch.equal(union.pred_classes, kept.pred_classes) and torch.equal(union.scores, kept.scores)
    for k in range(len(kept)):
        c = int(kept.pred_classes[k])
        kept_box = kept.pred_boxes.tensor[k : k + 1]
        frame = voter_union_boxes(kept_box, boxes, heads.reader.test_params.mask_voting_iou)
        voted = mask_voting(kept_box, boxes, inside_outside_mask_probs(inside_outside[:, :, c]), scores[:, c],
                            iou_threshold=heads.reader.test_params.mask_voting_iou, frames=frame, voter_threshold=0.4)  # fmt: skip
        tight = tight_mask_boxes(voted, frame, 0.4)
        torch.testing.assert_close(union.pred_boxes.tensor[k : k + 1], tight)
        torch.testing.assert_close(union.pred_masks[k], resample_masks_into_boxes(voted, frame, tight), rtol=1e-5, atol=1e-6)
        # the union frame holds the kept box
        assert (frame[0, :2] <= kept_box[0, :2]).all() and (frame[0, 2:] >= kept_box[0, 2:]).all()
    with pytest.raises(ValueError, match="MASK_VOTING_FRAME = 'image'"):
        _model("MODEL.FCIS.MASK_VOTING_FRAME", "image")


# ---- inference without the (P, 2, C+1, M, M) tensor ------------------------------------------------------
def _features_and_proposals(model, samples):
    """The backbone maps and the RPN proposals of ``samples``, as the heads get them at test time."""
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image([_test_input(s) for s in samples])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
    return features, proposals


def _reference_inference(heads, maps, proposals):
    """Inference without roi_class_logits / roi_inside_outside_of_class: one
    ``(P, 2, C+1, M, M)`` tensor for all candidates, read by fcis_inference_single_image."""
    candidates = heads.inference_candidates(maps, proposals)
    inside_outside = heads.reader.roi_inside_outside(maps, candidates)
    scores = torch.softmax(inside_outside_class_logits(inside_outside), dim=1)
    results = []
    for i, p in enumerate(proposals):
        rows = (candidates[:, 0] == i).nonzero().squeeze(1)
        results.append(_detect(heads, candidates[rows, 1:], scores[rows], inside_outside[rows], p.image_size))
    return results


def _assert_same_detections(a, b):
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)
    torch.testing.assert_close(a.pred_masks, b.pred_masks, rtol=1e-5, atol=1e-6)


def _spread_maps(heads, std=0.2):
    """Larger random map weights than the N(0, 0.01) init: logits that differ clearly between
    classes, cells and RoIs, so that a wrong channel or RoI cannot pass a float tolerance."""
    torch.manual_seed(1)
    with torch.no_grad():
        for maps in (heads.inside_outside_maps, heads.box_maps):
            torch.nn.init.normal_(maps.conv.weight, std=std)
            torch.nn.init.normal_(maps.conv.bias, std=std)


def _random_rois(n, image_size=96, num_images=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * image_size * 0.7
    wh = 8 + torch.rand(n, 2, generator=g) * image_size * 0.5
    batch = torch.randint(0, num_images, (n, 1), generator=g).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


@pytest.mark.parametrize("voting", [True, False])
def test_inference_equals_the_full_tensor_reference(voting):
    model = _model("MODEL.FCIS.MASK_VOTING", str(voting))
    _spread_maps(model.roi_heads)
    features, proposals = _features_and_proposals(model, [_sample(0), _sample(1)])
    heads = model.roi_heads
    with torch.no_grad():
        maps = heads.score_maps(features)
        ours = heads.inference(maps, proposals)
        reference = _reference_inference(heads, maps, proposals)
        assert len(heads.inference_candidates(maps, proposals)) > CLASS_LOGITS_ROIS_PER_CHUNK
    for a, b in zip(ours, reference):
        _assert_same_detections(a, b)


def test_roi_inside_outside_of_class_is_the_full_assembly_sliced():
    model = _model().eval()
    heads = model.roi_heads
    _spread_maps(heads)
    rois = _random_rois(9)
    with torch.no_grad():
        maps = heads.score_maps(model.backbone(torch.randn(2, 3, 96, 96) * 50))
        full = heads.reader.roi_inside_outside(maps, rois)
        for c in range(C + 1):
            one = heads.reader.roi_inside_outside_of_class(maps, rois, c)
            assert one.shape == (9, 2, 21, 21)
            torch.testing.assert_close(one, full[:, :, c], rtol=1e-6, atol=1e-6)
        assert heads.reader.roi_inside_outside_of_class(maps, rois[:0], 1).shape == (0, 2, 21, 21)
        with pytest.raises(ValueError, match=r"class_index must be in \[0, 2\]"):
            heads.reader.roi_inside_outside_of_class(maps, rois, C + 1)
        # one class per RoI, every RoI in one call: bit-equal to the full assembly's slices
        classes = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1])
        mixed = heads.reader.roi_inside_outside_of_classes(maps, rois, classes)
        assert torch.equal(mixed, full[torch.arange(9), :, classes])
        with pytest.raises(ValueError, match=r"classes must be \(R,\)"):
            heads.reader.roi_inside_outside_of_classes(maps, rois, classes[:3])
    assert (full[:, :, 0] - full[:, :, 1]).abs().max() > 0.1  # the classes do differ


def test_roi_class_logits_chunked_equal_the_unchunked_ones(monkeypatch):
    model = _model().eval()
    heads = model.roi_heads
    _spread_maps(heads)
    n = 2 * CLASS_LOGITS_ROIS_PER_CHUNK + 5
    rois = _random_rois(n)
    with torch.no_grad():
        maps = heads.score_maps(model.backbone(torch.randn(2, 3, 96, 96) * 50))
        expected = inside_outside_class_logits(heads.reader.roi_inside_outside(maps, rois))
        sizes = spy_inside_outside(monkeypatch, FCISReader)
        logits = heads.reader.roi_class_logits_chunked(maps, rois)
        assert sizes == [CLASS_LOGITS_ROIS_PER_CHUNK, CLASS_LOGITS_ROIS_PER_CHUNK, 5]
        torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
        empty = heads.reader.roi_class_logits_chunked(maps, rois[:0])
        assert empty.shape == (0, C + 1)
        # FCIS's own roi_class_logits reads them natively, in one call and without assembling
        sizes.clear()
        torch.testing.assert_close(heads.reader.roi_class_logits(maps, rois), expected, rtol=1e-6, atol=1e-6)
        assert heads.reader.roi_class_logits(maps, rois[:0]).shape == (0, C + 1)
        assert sizes == []


@pytest.mark.parametrize("voting", [True, False])
def test_inference_reads_only_the_valid_detected_candidates_masks(voting):
    """A mask_logits callable gets indices into all P candidates given (not into the valid ones)
    and only for classes detected; the result equals that of the full tensor."""
    heads = _model("MODEL.FCIS.MASK_VOTING", str(voting)).roi_heads
    torch.manual_seed(4)
    P, M = 40, heads.reader.mask_size
    xy = torch.rand(P, 2) * 60
    boxes = torch.cat([xy, xy + 20 + torch.rand(P, 2) * 40], dim=1)
    boxes[3, 2] = boxes[3, 0]  # empty, as a regressed box clipped away
    boxes[7] = float("nan")
    scores = torch.softmax(torch.randn(P, C + 1) * 3, dim=1)
    scores[11] = float("nan")
    inside_outside = torch.randn(P, 2, C + 1, M, M)
    reads = []

    def mask_logits(indices, classes):
        reads.append((indices.clone(), classes.clone()))
        return inside_outside[indices, :, classes]

    ours = _detect(heads, boxes, scores, mask_logits)
    expected = _detect(heads, boxes, scores, _tensor_reader(inside_outside))
    _assert_same_detections(ours, expected)
    assert len(reads) == 1  # every class at once
    read, read_classes = reads[0]
    assert not ({3, 7, 11} & set(read.tolist()))
    assert set(read_classes.tolist()) == set(ours.pred_classes.tolist())
    assert len(set(zip(read.tolist(), read_classes.tolist()))) == len(read)  # each pair once
    if not voting:  # exactly the detections' masks
        assert len(read) == len(ours)
