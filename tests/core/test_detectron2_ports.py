"""instfcn_d2.core's ports of detectron2's post-processing against detectron2 itself: box decoding,
clipping, pyramid level assignment, RPN proposals, mask pasting, detector_postprocess, sem_seg_postprocess. Bit-equal
(``torch.equal``) everywhere on the CPU; the modules must import without detectron2."""
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.layers import mask_ops as d2_mask_ops
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import assign_boxes_to_levels as d2_assign_boxes_to_levels
from detectron2.modeling.postprocessing import detector_postprocess as d2_detector_postprocess
from detectron2.modeling.postprocessing import sem_seg_postprocess as d2_sem_seg_postprocess
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.structures import Boxes, ImageList, Instances

from instfcn_d2.core import postprocess as deploy_postprocess
from instfcn_d2.core.boxes import apply_deltas, assign_boxes_to_levels, clip_boxes, nonempty
from instfcn_d2.core.postprocess import detector_postprocess, paste_masks_in_image, sem_seg_postprocess
from instfcn_d2.core.rpn import RPNParams, rpn_proposals
from instfcn_d2.export.settings import rpn_params_from_detectron2

pytestmark = pytest.mark.usefixtures("one_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _random_boxes(n, height, width, generator, max_side=80.0, outside=20.0):
    """``(n, 4)`` float32 boxes, some partly or wholly outside ``height x width``, some under a pixel."""
    cx = torch.rand(n, generator=generator) * (width + 2 * outside) - outside
    cy = torch.rand(n, generator=generator) * (height + 2 * outside) - outside
    side = torch.rand(n, 2, generator=generator) * max_side
    side[: max(1, n // 6)] *= 0.01  # tiny
    return torch.stack([cx - side[:, 0] / 2, cy - side[:, 1] / 2, cx + side[:, 0] / 2, cy + side[:, 1] / 2], dim=1)


def test_core_and_deploy_run_without_detectron2():
    """The core and deployment import with detectron2 and fvcore unimportable, and load neither."""
    code = textwrap.dedent(
        """
        import importlib, sys
        for name in ("detectron2", "fvcore"):
            sys.modules[name] = None  # importing them now raises ImportError
        for name in ("core", "core.fcis", "core.biseg", "core.instance_fcn", "core.rpn", "core.postprocess",
                     "deploy", "deploy.fcis", "deploy.instance_fcn", "deploy.mask_rcnn"):
            importlib.import_module("instfcn_d2." + name)
        print(sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in ("detectron2", "fvcore")))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO_ROOT))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize(
    "weights, scale_clamp", [((1.0, 1.0, 1.0, 1.0), math.log(1000.0 / 16)), ((10.0, 10.0, 5.0, 5.0), 2.5)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_apply_deltas(weights, scale_clamp, dtype):
    g = torch.Generator().manual_seed(0)
    boxes = _random_boxes(500, 120, 150, g)
    deltas = torch.randn(500, 4, generator=g) * 2
    deltas[::7, 2:] = torch.rand(len(deltas[::7]), 2, generator=g) * 40 + 10  # past scale_clamp
    deltas = deltas.to(dtype)
    assert (deltas[:, 2:].float() / torch.tensor(weights[2:]) > scale_clamp).any()
    expected = Box2BoxTransform(weights, scale_clamp=scale_clamp).apply_deltas(deltas, boxes)
    got = apply_deltas(deltas, boxes, weights, scale_clamp)
    assert got.dtype == expected.dtype == torch.float32
    assert torch.equal(got, expected)


def test_clip_and_nonempty():
    g = torch.Generator().manual_seed(1)
    boxes = _random_boxes(300, 57, 83, g)
    ref = Boxes(boxes.clone())
    ref.clip((57, 83))
    clipped = clip_boxes(boxes, (57, 83))
    assert torch.equal(clipped, ref.tensor)
    assert not torch.equal(clipped, boxes)  # some were clipped; the input is unchanged
    for threshold in (0.0, 0.5, 4.0):
        assert torch.equal(nonempty(clipped, threshold), ref.nonempty(threshold))
    assert not nonempty(clipped).all()
    boxes[3, 2] = float("inf")
    with pytest.raises(ValueError, match="infinite or NaN"):
        clip_boxes(boxes, (57, 83))


class _ExtremeHead(nn.Module):
    """The RPN head with some outputs pushed to extremes: deltas scaled up 1000x (dw, dh past
    scale_clamp, centres far outside: clipped, then empty), a few infinite or NaN deltas and
    logits (dropped as non-finite). Deterministic, as the RPN runs it again."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, features):
        logits, deltas = self.head(features)
        out_logits, out_deltas = [], []
        for level, (lg, dl) in enumerate(zip(logits, deltas)):
            g = torch.Generator().manual_seed(level)
            lg, dl = lg.clone(), dl.clone()
            dl[torch.rand(dl.shape, generator=g) < 0.05] *= 1000.0
            dl.view(-1)[::101] = float("inf")
            dl.view(-1)[50::211] = float("nan")
            lg.view(-1)[::53] = float("nan")
            lg.view(-1)[7::59] = float("inf")
            out_logits.append(lg)
            out_deltas.append(dl)
        return out_logits, out_deltas


def _rpn(fpn, channels=8, offset=0.0, min_size=0.0, pre_topk=None, post_topk=None, weights=(1.0, 1.0, 1.0, 1.0)):
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = offset
    cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = min_size
    cfg.MODEL.RPN.BBOX_REG_WEIGHTS = weights
    if fpn:  # detectron2's Base-RCNN-FPN.yaml
        names, strides = ["p2", "p3", "p4", "p5", "p6"], [4, 8, 16, 32, 64]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000 if pre_topk is None else pre_topk
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000 if post_topk is None else post_topk
    else:  # C4
        names, strides = ["res4"], [16]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 2000 if pre_topk is None else pre_topk
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 300 if post_topk is None else post_topk
    cfg.MODEL.RPN.IN_FEATURES = names
    torch.manual_seed(0)
    rpn = build_proposal_generator(cfg, {n: ShapeSpec(channels=channels, stride=s) for n, s in zip(names, strides)})
    with torch.no_grad():  # spread logits and deltas well beyond detectron2's std 0.01 init
        for p in rpn.rpn_head.parameters():
            p.normal_(0.0, 0.15)
    return rpn.eval(), names, strides


RPN_CASES = {
    "c4": dict(fpn=False),
    "c4-offset-minsize-weights": dict(fpn=False, offset=0.5, min_size=12.0, weights=(10.0, 10.0, 5.0, 5.0)),
    "fpn": dict(fpn=True),
    "fpn-small-topk": dict(fpn=True, pre_topk=150, post_topk=90, offset=0.5),
}


@pytest.mark.parametrize("case", list(RPN_CASES))
@pytest.mark.parametrize("image_size", [(200, 264), (96, 160)])
@pytest.mark.parametrize("extreme", [False, True], ids=["plain", "extreme"])
def test_rpn_proposals(case, image_size, extreme):
    rpn, names, strides = _rpn(**RPN_CASES[case])
    if extreme:
        rpn.rpn_head = _ExtremeHead(rpn.rpn_head)
    h, w = image_size
    g = torch.Generator().manual_seed(h * w)
    # odd map sizes (13 x 17 at stride 16 for 200 x 264); the RPN reads only image_sizes of images
    features = {n: torch.randn(1, 8, math.ceil(h / s), math.ceil(w / s), generator=g) for n, s in zip(names, strides)}
    images = ImageList(torch.zeros(1, 3, h, w), [image_size])
    with torch.no_grad():
        proposals, _ = rpn(images, features)
        logits, deltas = rpn.rpn_head([features[n] for n in names])
        params = RPNParams.from_dict(json.loads(json.dumps(rpn_params_from_detectron2(rpn).to_dict())))
        boxes, scores = rpn_proposals(logits, deltas, image_size, params)
    expected_boxes, expected_scores = proposals[0].proposal_boxes.tensor, proposals[0].objectness_logits
    assert len(expected_boxes) > 10
    assert torch.equal(boxes, expected_boxes)
    assert torch.equal(scores, expected_scores)
    # the selection was exercised: boxes on the image border (clipped), fewer than the candidates
    assert ((boxes[:, 2] == w) | (boxes[:, 3] == h) | (boxes[:, :2] == 0).any(dim=1)).any()
    assert len(boxes) <= params.post_nms_topk


def test_rpn_params():
    rpn, _, _ = _rpn(fpn=True, offset=0.5, min_size=3.0)
    params = rpn_params_from_detectron2(rpn)
    assert params.strides == (4, 8, 16, 32, 64)
    assert params.pre_nms_topk == 1000 and params.post_nms_topk == 1000
    assert params.offset == 0.5 and params.min_box_size == 3.0 and params.nms_thresh == 0.7
    for cell, buf in zip(params.cell_anchors, rpn.anchor_generator.cell_anchors):
        assert torch.equal(torch.tensor(cell, dtype=torch.float32), buf)
    assert RPNParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params


@pytest.mark.parametrize("threshold", [0.5, 0.0, -1.0])
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
def test_paste_masks_in_image(threshold, mask_dtype):
    g = torch.Generator().manual_seed(2)
    n, height, width = 14, 57, 83
    masks = torch.rand(n, 28, 28, generator=g)
    masks = masks > 0.5 if mask_dtype == torch.bool else masks
    # centres inside the image: detectron2's CPU path fails on a box wholly outside (callers clip first)
    boxes = _random_boxes(n, height, width, g, outside=0.0)
    expected = d2_mask_ops.paste_masks_in_image(masks, boxes, (height, width), threshold=threshold)
    got = paste_masks_in_image(masks, boxes, (height, width), threshold=threshold)
    assert got.dtype == expected.dtype == (torch.bool if threshold >= 0 else torch.uint8)
    assert torch.equal(got, expected)
    assert got.any()
    empty = paste_masks_in_image(masks[:0], boxes[:0], (height, width), threshold)
    assert empty.dtype == torch.uint8 and empty.shape == (0, height, width)


def _detections(g, k, input_size, m=28):
    boxes = _random_boxes(k, *input_size, g)
    boxes[0] = torch.tensor([input_size[1] + 2.0, 5.0, input_size[1] + 9.0, 20.0])  # outside: empty after clipping
    boxes[1] = torch.tensor([-9.0, -7.0, -1.0, 30.0])
    return boxes, torch.rand(k, generator=g), torch.randint(0, 5, (k,), generator=g), torch.rand(k, 1, m, m, generator=g)


@pytest.mark.parametrize("output_size", [(200, 267), (50, 61), (96, 128)])
@pytest.mark.parametrize("mask_threshold", [0.5, 0.3, -1.0])
@pytest.mark.parametrize("with_masks", [True, False], ids=["masks", "boxes-only"])
def test_detector_postprocess(output_size, mask_threshold, with_masks):
    g = torch.Generator().manual_seed(3)
    input_size = (96, 128)
    boxes, scores, classes, mask_probs = _detections(g, 12, input_size)
    inputs = [t.clone() for t in (boxes, scores, classes, mask_probs)]
    ref = Instances(input_size, pred_boxes=Boxes(boxes.clone()), scores=scores, pred_classes=classes)
    if with_masks:
        ref.pred_masks = mask_probs
    ref = d2_detector_postprocess(ref, *output_size, mask_threshold=mask_threshold)
    got = detector_postprocess(boxes, scores, classes, mask_probs if with_masks else None, input_size, output_size, mask_threshold)
    assert len(ref) < 12  # the boxes outside the image were dropped
    assert torch.equal(got[0], ref.pred_boxes.tensor)
    assert torch.equal(got[1], ref.scores)
    assert torch.equal(got[2], ref.pred_classes)
    if with_masks:
        assert got[3].dtype == ref.pred_masks.dtype == torch.bool
        assert torch.equal(got[3], ref.pred_masks)
    else:
        assert got[3] is None and not ref.has("pred_masks")
    assert all(torch.equal(a, b) for a, b in zip(inputs, (boxes, scores, classes, mask_probs)))


def test_detector_postprocess_all_dropped():
    g = torch.Generator().manual_seed(4)
    boxes, scores, classes, mask_probs = _detections(g, 2, (96, 128))
    ref = Instances((96, 128), pred_boxes=Boxes(boxes.clone()), scores=scores, pred_classes=classes, pred_masks=mask_probs)
    ref = d2_detector_postprocess(ref, 150, 200)
    got = detector_postprocess(boxes, scores, classes, mask_probs, (96, 128), (150, 200), 0.5)
    assert len(ref) == 0 and got[0].shape == (0, 4)
    assert got[3].dtype == ref.pred_masks.dtype == torch.bool
    assert got[3].shape == ref.pred_masks.shape == (0, 150, 200)


@pytest.mark.parametrize("output_size", [(120, 181), (30, 45), (60, 90)])
def test_sem_seg_postprocess(output_size):
    g = torch.Generator().manual_seed(5)
    result = torch.randn(5, 64, 96, generator=g)
    expected = d2_sem_seg_postprocess(result, (60, 90), *output_size)
    assert torch.equal(sem_seg_postprocess(result, (60, 90), *output_size), expected)


@needs_cuda
@pytest.mark.parametrize("threshold", [0.5, -1.0])
def test_paste_masks_in_image_cuda_chunks(monkeypatch, threshold):
    """The GPU path (whole-image grids, in chunks): a small memory budget makes 3 chunks."""
    g = torch.Generator().manual_seed(6)
    n, height, width = 10, 157, 203
    masks = torch.rand(n, 28, 28, generator=g).cuda()
    boxes = _random_boxes(n, height, width, g, outside=0.0).cuda()
    limit = math.ceil(n * height * width * 4 / 3)
    monkeypatch.setattr(d2_mask_ops, "GPU_MEM_LIMIT", limit)
    monkeypatch.setattr(deploy_postprocess, "GPU_MEM_LIMIT", limit)
    expected = d2_mask_ops.paste_masks_in_image(masks, boxes, (height, width), threshold=threshold)
    got = paste_masks_in_image(masks, boxes, (height, width), threshold=threshold)
    assert torch.equal(got, expected)


@needs_cuda
@pytest.mark.parametrize("case", ["c4", "fpn"])
def test_rpn_proposals_cuda(case):
    rpn, names, strides = _rpn(**RPN_CASES[case])
    rpn = rpn.cuda()
    h, w = 200, 264
    g = torch.Generator().manual_seed(7)
    features = {n: torch.randn(1, 8, math.ceil(h / s), math.ceil(w / s), generator=g).cuda() for n, s in zip(names, strides)}
    images = ImageList(torch.zeros(1, 3, h, w, device="cuda"), [(h, w)])
    with torch.no_grad():
        for _ in range(3):  # past TorchScript's profiling runs, so its optimised graph is the one compared
            proposals, _ = rpn(images, features)
        logits, deltas = rpn.rpn_head([features[n] for n in names])
        boxes, scores = rpn_proposals(logits, deltas, (h, w), rpn_params_from_detectron2(rpn))
    # detectron2's Box2BoxTransform is TorchScript: on a GPU its fuser may compile the decoding into
    # one kernel with fused multiply-adds, a rounding away from eager PyTorch; the selection is the same
    assert torch.equal(scores, proposals[0].objectness_logits)
    torch.testing.assert_close(boxes, proposals[0].proposal_boxes.tensor, rtol=1e-6, atol=1e-4)


def test_assign_boxes_to_levels():
    g = torch.Generator().manual_seed(0)
    x0, y0 = torch.rand(400, generator=g) * 300, torch.rand(400, generator=g) * 200
    side = torch.rand(400, 2, generator=g) ** 2 * 900.0 + 0.1  # under a pixel to 900 px
    boxes = torch.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], dim=1)
    expected = d2_assign_boxes_to_levels([Boxes(boxes[:150]), Boxes(boxes[150:])], 2, 5, 224, 4)
    assert len(expected.unique()) == 4  # every level used
    assert torch.equal(assign_boxes_to_levels(boxes, 2, 5, 224, 4), expected)
