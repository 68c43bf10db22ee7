"""instfcn_d2.deploy.mask_rcnn's ports of detectron2's Mask R-CNN test time against detectron2 itself:
the RoI pooler (FPN levels and a single C4 level), the box predictor's inference, the class channel
of the mask logits, and the whole pipeline after the graphs. Bit-equal (``torch.equal``) on the CPU."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image as d2_fast_rcnn_inference
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference as d2_mask_rcnn_inference
from detectron2.structures import Boxes, Instances

from instfcn_d2.deploy.mask_rcnn import (
    BoxPredictorParams,
    fast_rcnn_inference_single_image,
    mask_rcnn_inference,
    predict_boxes_and_probs,
    roi_pool,
)
from instfcn_d2.export.settings import pooler_params_from_detectron2

pytestmark = pytest.mark.usefixtures("one_thread")


def _boxes(n, height, width, generator, max_side=120.0):
    """``(n, 4)`` float32 boxes in a ``height x width`` image, sides from under a pixel to ``max_side``."""
    x0 = torch.rand(n, generator=generator) * width
    y0 = torch.rand(n, generator=generator) * height
    side = torch.rand(n, 2, generator=generator) ** 2 * max_side + 0.1
    return torch.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], dim=1)


@pytest.mark.parametrize(
    "scales, pooler_type, sampling_ratio, output_size",
    [((1 / 4, 1 / 8, 1 / 16, 1 / 32), "ROIAlignV2", 0, 7), ((1 / 4, 1 / 8, 1 / 16, 1 / 32), "ROIAlignV2", 2, 14),
     ((1 / 16,), "ROIAlignV2", 0, 14), ((1 / 8, 1 / 16), "ROIAlign", 2, 7)],
)
def test_roi_pool(scales, pooler_type, sampling_ratio, output_size):
    g = torch.Generator().manual_seed(1)
    H, W = 160, 224
    features = [torch.randn(1, 6, round(H * s), round(W * s), generator=g) for s in scales]
    boxes = _boxes(300, H, W, g, max_side=400.0)
    pooler = ROIPooler(output_size, scales, sampling_ratio, pooler_type)
    expected = pooler(features, [Boxes(boxes)])
    got = roi_pool(features, boxes, pooler_params_from_detectron2(pooler))
    assert got.shape == (300, 6, output_size, output_size)
    assert torch.equal(got, expected)


def test_pooler_params_refuse_roipool():
    with pytest.raises(ValueError, match="ROIAlign"):
        pooler_params_from_detectron2(ROIPooler(7, (1 / 16,), 0, "ROIPool"))


def _predictor(num_classes, agnostic, sigmoid=False, score_thresh=0.05, topk=100):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = agnostic
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
    cfg.TEST.DETECTIONS_PER_IMAGE = topk
    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = sigmoid
    predictor = FastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    params = BoxPredictorParams(
        box_weights=tuple(predictor.box2box_transform.weights),
        scale_clamp=predictor.box2box_transform.scale_clamp,
        use_sigmoid_ce=predictor.use_sigmoid_ce,
        score_thresh=predictor.test_score_thresh,
        nms_thresh=predictor.test_nms_thresh,
        topk_per_image=predictor.test_topk_per_image,
    )
    return predictor, params


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("topk", [100, 5, -1])
def test_box_predictor_inference(agnostic, sigmoid, topk):
    g = torch.Generator().manual_seed(2)
    K, R, image_size = 4, 200, (150, 190)
    predictor, params = _predictor(K, agnostic, sigmoid, topk=topk)
    proposals = _boxes(R, *image_size, g)
    logits = torch.randn(R, K + 1, generator=g) * 3
    deltas = torch.randn(R, 4 if agnostic else 4 * K, generator=g)
    deltas[::11, 2::4] = 30.0  # past the scale clamp
    logits[7] = float("inf")  # a non-finite score: that proposal is dropped
    inst = Instances(image_size)
    inst.proposal_boxes = Boxes(proposals)
    (expected,), (expected_inds,) = predictor.inference((logits, deltas), [inst])

    boxes, probs = predict_boxes_and_probs(logits, deltas, proposals, params)
    # the infinite logit makes NaN probabilities (softmax): equal with NaN == NaN
    bit_equal = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(boxes, predictor.predict_boxes((logits, deltas), [inst])[0], **bit_equal)
    torch.testing.assert_close(probs, predictor.predict_probs((logits, deltas), [inst])[0], **bit_equal)
    got = fast_rcnn_inference_single_image(boxes, probs, image_size, params.score_thresh, params.nms_thresh, params.topk_per_image)
    assert len(expected) > 0
    assert torch.equal(got[0], expected.pred_boxes.tensor)
    assert torch.equal(got[1], expected.scores)
    assert torch.equal(got[2], expected.pred_classes)
    assert torch.equal(got[3], expected_inds)


def test_fast_rcnn_inference_nothing_above_the_threshold():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0] * 2])
    scores = torch.tensor([[0.1, 0.2, 0.7]])
    expected, _ = d2_fast_rcnn_inference(boxes, scores, (20, 20), 0.5, 0.5, 100)
    got = fast_rcnn_inference_single_image(boxes, scores, (20, 20), 0.5, 0.5, 100)
    assert len(expected) == len(got[0]) == 0 and got[0].shape == (0, 4)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_mask_rcnn_inference(num_classes):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(9, num_classes, 28, 28, generator=g)
    classes = torch.randint(0, 3, (9,), generator=g)
    inst = Instances((50, 50))
    inst.pred_classes = classes
    d2_mask_rcnn_inference(logits, [inst])
    got = mask_rcnn_inference(logits, classes)
    assert got.shape == (9, 1, 28, 28)
    assert torch.equal(got, inst.pred_masks)
