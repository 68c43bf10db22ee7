"""configs/custom/: the starting points for a user's own data. FCIS, BiSeg and the Mask R-CNN
baseline share one trunk (half-width R18-GN with FPN, the same RPN on p2 ... p6), FCIS's maps and
both BiSeg sets are read on p2 (stride 4), and each config builds a model that runs."""
import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO_ROOT, cfg_get
from instfcn_d2.config import get_instfcn_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

CUSTOM = REPO_ROOT / "configs" / "custom"
SHARED_KEYS = [
    "MODEL.BACKBONE.NAME", "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.RESNETS.NORM", "MODEL.RESNETS.OUT_FEATURES", "MODEL.FPN.IN_FEATURES", "MODEL.FPN.OUT_CHANNELS",
    "MODEL.FPN.NORM", "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.RPN.IN_FEATURES", "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR",
]  # fmt: skip


def _cfg(name, *opts):
    return get_instfcn_cfg(str(CUSTOM / f"{name}.yaml"), ["MODEL.ROI_HEADS.NUM_CLASSES", "2", *opts])


def test_fcis_biseg_and_mask_rcnn_share_the_trunk_and_the_rpn():
    fcis, biseg, mask_rcnn = (_cfg(n) for n in ("fcis_R18_FPN_cpu", "biseg_R18_FPN_cpu", "mask_rcnn_R18_FPN_cpu"))
    for key in SHARED_KEYS:
        assert cfg_get(fcis, key) == cfg_get(biseg, key) == cfg_get(mask_rcnn, key), key
    assert fcis.MODEL.RESNETS.RES2_OUT_CHANNELS == 32 and fcis.MODEL.BACKBONE.NAME == "build_resnet_dilated_fpn_backbone"
    assert list(fcis.MODEL.ROI_HEADS.IN_FEATURES) == list(biseg.MODEL.ROI_HEADS.IN_FEATURES) == ["p2"]
    assert biseg.MODEL.BISEG.FINE_IN_FEATURE == "p2"


@pytest.mark.parametrize("name", ["fcis_R18_FPN_cpu", "biseg_R18_FPN_cpu"])
def test_fcis_and_biseg_read_their_maps_at_stride_4_and_detect(name):
    torch.manual_seed(0)
    cfg = _cfg(name, "MODEL.FCIS.SCORE_THRESH_TEST", "0.0", "MODEL.FCIS.DETECTIONS_PER_IMAGE", "5")
    model = build_model(cfg).eval()
    heads = model.roi_heads
    assert heads.reader.spatial_scale == 0.25
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        maps = model.score_maps(images, model.backbone(images.tensor))
        (result,) = model([{"image": image, "height": 96, "width": 128}])
    k, C = cfg.MODEL.FCIS.GROUP_SIZE, 2
    assert maps.inside_outside.shape == (1, k * k * 2 * (C + 1), 24, 32)  # 96 x 128 at stride 4
    assert maps.box.shape == (1, k * k * 4, 24, 32)
    if name.startswith("biseg"):
        assert heads.reader.fine_spatial_scale == 0.25
    instances = result["instances"]
    assert len(instances) == 5 and instances.pred_masks.shape == (5, 96, 128)
    assert torch.isfinite(instances.scores).all()


def test_mask_rcnn_baseline_builds_on_the_same_narrow_trunk():
    model = build_model(_cfg("mask_rcnn_R18_FPN_cpu"))
    assert model.backbone.bottom_up.stem.conv1.weight.shape[0] == 32
    assert type(model.roi_heads).__name__ == "StandardROIHeads"


def test_instance_fcn_keeps_room_for_crowded_images():
    cfg = _cfg("instance_fcn_R18_cpu")
    assert cfg.MODEL.INSTANCE_FCN.DETECTIONS_PER_IMAGE == 300 and cfg.MODEL.INSTANCE_FCN.PRE_NMS_TOPK_TEST >= 600


def test_fcis_maps_on_every_pyramid_level_train_and_detect():
    """ROI_HEADS.IN_FEATURES p2 ... p5: one map set per level from the same layers, each RoI read
    from the level detectron2's ROIPooler would pool it from; a training step reaches the maps of
    every level read, and inference detects."""
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from instfcn_d2.core.fcis import FCISLevelMaps

    torch.manual_seed(0)
    levels = ["p2", "p3", "p4", "p5"]
    cfg = _cfg(
        "fcis_R18_FPN_cpu", "MODEL.ROI_HEADS.IN_FEATURES", str(levels), "MODEL.FCIS.SCORE_THRESH_TEST", "0.0",
        "MODEL.FCIS.DETECTIONS_PER_IMAGE", "5", "MODEL.FCIS.CONV_NEW_DIM", "32",
    )
    model = build_model(cfg)
    reader = model.roi_heads.reader
    assert reader.levels.strides == (4, 8, 16, 32) and reader.spatial_scale == 0.25
    image = torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)
    instances = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 24.0, 20.0], [10.0, 4.0, 120.0, 124.0]])),
                          gt_classes=torch.tensor([0, 1]))
    masks = torch.zeros(2, 128, 128, dtype=torch.bool)
    masks[0, 8:20, 8:24] = True
    masks[1, 4:124, 10:120] = True
    instances.gt_masks = BitMasks(masks)
    model.train()
    with EventStorage():
        losses = model([{"image": image, "instances": instances}])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.conv_new.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        maps = model.score_maps(images, model.backbone(images.tensor))
        (result,) = model([{"image": image, "height": 128, "width": 128}])
    assert isinstance(maps, FCISLevelMaps)
    assert [m.inside_outside.shape[-1] for m in maps.levels] == [32, 16, 8, 4]
    assert len(result["instances"]) == 5 and result["instances"].pred_masks.shape == (5, 128, 128)


@pytest.mark.parametrize(
    "name, levels, message",
    [("fcis_R18_FPN_cpu", ["p2", "p4"], "consecutive powers of two"),
     ("fcis_R18_FPN_cpu", ["p2", "p7"], "not outputs: \\['p7'\\]"),
     ("biseg_R18_FPN_cpu", ["p2", "p3"], "BiSeg reads one map level")],
)
def test_map_levels_that_cannot_be_read_are_named(name, levels, message):
    with pytest.raises(ValueError, match=message):
        build_model(_cfg(name, "MODEL.ROI_HEADS.IN_FEATURES", str(levels)))


def test_class_scores_from_an_fc_head_train_and_detect_and_refuse_export(tmp_path):
    """MODEL.FCIS.CLASS_HEAD "fc": the class logits come from detectron2's box head on RoIAlign
    features of p2 ... p5 (one row per RoI, in the RoIs' order whatever their images), the masks
    from the maps; a training step reaches the head; the exporter refuses the model by name."""
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from instfcn_d2.export import export_model

    torch.manual_seed(0)
    cfg = _cfg("fcis_R18_FPN_cpu", "MODEL.FCIS.CLASS_HEAD", "fc", "MODEL.FCIS.CLASS_HEAD_IN_FEATURES",
               '["p2", "p3", "p4", "p5"]', "MODEL.FCIS.SCORE_THRESH_TEST", "0.0", "MODEL.FCIS.DETECTIONS_PER_IMAGE", "5",
               "MODEL.FCIS.CONV_NEW_DIM", "32", "MODEL.ROI_BOX_HEAD.NUM_FC", "2", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
               "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "7")
    model = build_model(cfg)
    head = model.roi_heads.class_head
    assert head.in_features == ("p2", "p3", "p4", "p5") and head.cls_score.out_features == 3
    images = [torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8) for _ in range(2)]
    model.eval()
    with torch.no_grad():
        batch = model.preprocess_image([{"image": im} for im in images])
        features = model.backbone(batch.tensor)
        rois = torch.tensor([[1, 10, 10, 60, 50], [0, 5, 5, 90, 90], [1, 0, 0, 127, 95], [0, 30, 20, 40, 36.0]])
        mixed = head(features, rois)
        by_image = torch.cat([head(features, rois[rois[:, 0] == i]) for i in (0, 1)])
    torch.testing.assert_close(mixed[[1, 3, 0, 2]], by_image)  # rows follow the RoIs, not the images
    instances = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 30.0]])), gt_classes=torch.tensor([1]))
    masks = torch.zeros(1, 96, 128, dtype=torch.bool)
    masks[0, 8:30, 8:40] = True
    instances.gt_masks = BitMasks(masks)
    model.train()
    with EventStorage():
        losses = model([{"image": images[0], "instances": instances}])
    sum(losses.values()).backward()
    assert head.cls_score.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": images[0], "height": 96, "width": 128}])
    assert len(result["instances"]) == 5
    with pytest.raises(ValueError, match='CLASS_HEAD "fc" is not exportable'):
        export_model(model, "torchscript", images[0].float(), str(tmp_path / "out"), input_format="BGR")
    with pytest.raises(ValueError, match="CLASS_HEAD = 'mlp'"):
        build_model(_cfg("fcis_R18_FPN_cpu", "MODEL.FCIS.CLASS_HEAD", "mlp"))


@pytest.mark.parametrize("levels", [["p2"], ["p2", "p3", "p4", "p5"]])
def test_training_from_features_gives_the_losses_and_gradients_of_the_maps(levels):
    """MODEL.FCIS.ASSEMBLE_FROM_FEATURES: training reads the sampled RoIs from conv_new's features and
    the map convs' weights; the losses and every gradient are those of reading the maps."""
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from instfcn_d2.core.fcis import FCISFeatureMaps, FCISLevelMaps

    torch.manual_seed(0)
    cfg = _cfg("fcis_R18_FPN_cpu", "MODEL.ROI_HEADS.IN_FEATURES", str(levels), "MODEL.FCIS.CONV_NEW_DIM", "32",
               "MODEL.FCIS.ASSEMBLE_FROM_FEATURES", "True")
    model = build_model(cfg).train()
    image = torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)
    gt = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 30.0], [10.0, 4.0, 120.0, 124.0]])),
                   gt_classes=torch.tensor([1, 0]))
    masks = torch.zeros(2, 128, 128, dtype=torch.bool)
    masks[0, 8:30, 8:40] = masks[1, 4:124, 10:120] = True
    gt.gt_masks = BitMasks(masks)
    heads = model.roi_heads
    results = {}
    for from_features in (True, False):
        heads.assemble_from_features = from_features
        model.zero_grad()
        with EventStorage():
            images = model.preprocess_image([{"image": image}])
            features = model.backbone(images.tensor)
            maps = model.score_maps(images, features)
            first = maps.levels[0] if isinstance(maps, FCISLevelMaps) else maps
            assert isinstance(first, FCISFeatureMaps) == from_features
            torch.manual_seed(1)  # the same RoI sampling
            proposals, _ = model.proposal_generator(images, features, [gt])
            _, losses = heads(images, features, proposals, [gt], maps=maps)
        sum(losses.values()).backward()
        results[from_features] = ({k: v.detach() for k, v in losses.items()},
                                  {n: p.grad.clone() for n, p in heads.named_parameters() if p.grad is not None})
    (lazy, lazy_grads), (dense, dense_grads) = results[True], results[False]
    for k in dense:
        torch.testing.assert_close(lazy[k], dense[k], rtol=1e-4, atol=1e-5, msg=k)
    assert lazy_grads.keys() == dense_grads.keys() and "inside_outside_maps.conv.weight" in dense_grads
    for n in dense_grads:
        torch.testing.assert_close(lazy_grads[n], dense_grads[n], rtol=1e-3, atol=1e-5, msg=n)


def test_biseg_refuses_training_from_features():
    with pytest.raises(ValueError, match="ASSEMBLE_FROM_FEATURES True: BiSeg reads its maps"):
        build_model(_cfg("biseg_R18_FPN_cpu", "MODEL.FCIS.ASSEMBLE_FROM_FEATURES", "True"))
