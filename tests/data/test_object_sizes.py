"""instfcn_d2.data.object_sizes: scales, anchors and stride from a training set's object sizes."""
import json

import pytest

from instfcn_d2.data.object_sizes import config_overrides, suggest_sizes


def _json(tmp_path, sides, short=256, crowd=()):
    images = [{"id": 1, "file_name": "a.png", "height": short, "width": short + 64}]
    anns = [{"id": i, "image_id": 1, "category_id": 1, "area": float(s * s), "bbox": [0, 0, s, s],
             "iscrowd": int(i in crowd)} for i, s in enumerate(sides)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return str(path)


def test_large_objects_keep_the_scale_and_the_paper_stride(tmp_path):
    s = suggest_sizes(_json(tmp_path, [40, 60, 80, 100, 120, 150] * 5))
    assert s.scale == 1.0 and s.min_size_test == 256 and s.min_size_train == (224, 256)
    assert s.anchor_sizes == (32, 64, 128, 256) and s.stride == 16
    assert config_overrides(s, "FCIS")[-4:] == [
        "MODEL.DILATED_RESNET.RES4_DILATION", "1", "MODEL.DILATED_RESNET.RES5_DILATION", "2"]


def test_small_objects_are_upscaled_get_small_anchors_and_a_stride_8_map(tmp_path):
    sides = [8] * 20 + [14] * 70 + [40] * 10
    s = suggest_sizes(_json(tmp_path, sides, short=256))
    assert s.object_side_percentiles[10] == pytest.approx(8.0, abs=0.5)
    assert s.scale == pytest.approx(1.5)  # 10th percentile 8 px -> 12 px
    assert s.min_size_test == 384 and s.min_size_train == (320, 352, 384)
    assert s.anchor_sizes == (8, 16, 32, 64) and s.stride == 8  # median 21 px < 2 cells of 16 px
    over = dict(zip(*[iter(config_overrides(s, "GeneralizedRCNN"))] * 2))
    assert over["MODEL.ANCHOR_GENERATOR.SIZES"] == "[[8],[16],[32],[64],[128]]"
    assert "scale 1.50" in s.describe() and "stride 8" in s.describe()


def test_crowd_regions_are_not_objects_and_an_empty_set_is_an_error(tmp_path):
    s = suggest_sizes(_json(tmp_path, [50] * 10 + [400], crowd=(10,)))
    assert s.num_objects == 10 and s.anchor_sizes == (32, 64)
    with pytest.raises(ValueError, match=r"train.json: no non-crowd annotation"):
        suggest_sizes(_json(tmp_path, [50], crowd=(0,)))
    with pytest.raises(ValueError, match="unknown meta-architecture 'Retina'"):
        config_overrides(s, "Retina")
    with pytest.raises(ValueError, match=r"unknown parts \['scales'\]"):
        config_overrides(s, "FCIS", ("scales",))


def test_parts_apply_separately(tmp_path):
    s = suggest_sizes(_json(tmp_path, [8] * 20 + [14] * 70 + [40] * 10))
    assert config_overrides(s, "FCIS", ("anchors",)) == ["MODEL.ANCHOR_GENERATOR.SIZES", "[[8,16,32,64]]"]
    assert config_overrides(s, "GeneralizedRCNN", ("stride",)) == []  # FPN's strides are its own
    assert config_overrides(s, "InstanceFCN", ("scale",))[:2] == ["INPUT.MIN_SIZE_TRAIN", "(320,352,384,)"]


@pytest.mark.parametrize("classes, width", [(1, 256), (2, 128), (3, 128), (4, 64), (10, 64), (80, 64)])
def test_map_width_keeps_the_one_class_cost(tmp_path, classes, width):
    path = _json(tmp_path, [20] * 10)
    data = json.loads(open(path).read())
    data["categories"] = [{"id": c, "name": str(c)} for c in range(1, classes + 1)]
    open(path, "w").write(json.dumps(data))
    s = suggest_sizes(path)
    assert s.num_classes == classes and s.conv_new_dim == width
    assert width * 2 * (classes + 1) <= 256 * 2 * 2 or width == 64  # the maps' conv costs at most the C = 1 one


def test_map_levels_span_the_objects_by_the_roi_level_rule(tmp_path):
    small = suggest_sizes(_json(tmp_path, [10] * 50 + [40] * 50, short=512))
    assert small.pyramid_levels == (2,)  # under 112 px: p2 only
    spread = suggest_sizes(_json(tmp_path, [10] * 50 + [40] * 50 + [460], short=512))
    assert spread.pyramid_levels == (2, 3, 4, 5)  # one 460-px object: up to p5 (>= 448 px)
    fcis = dict(zip(*[iter(config_overrides(spread, "FCIS", fpn=True))] * 2))
    biseg = dict(zip(*[iter(config_overrides(spread, "BiSeg", fpn=True))] * 2))
    assert fcis["MODEL.ROI_HEADS.IN_FEATURES"] == '["p2","p3","p4","p5"]'
    assert "MODEL.DILATED_RESNET.RES4_DILATION" not in fcis  # an FPN trunk has no dilation to set
    assert biseg["MODEL.ROI_HEADS.IN_FEATURES"] == '["p2"]' and biseg["MODEL.BISEG.FINE_IN_FEATURE"] == "p2"
    assert fcis["MODEL.ANCHOR_GENERATOR.SIZES"] == "[[8],[16],[32],[64],[128]]"
    assert "p2 ... p5" in spread.describe()
