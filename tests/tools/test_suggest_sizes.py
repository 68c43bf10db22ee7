"""tools/suggest_sizes.py: the report, the overrides of one model, a clear error."""
import json

import pytest

from conftest import load_tool


def test_prints_the_choice_and_the_overrides_and_names_a_bad_file(tmp_path, capsys):
    tool = load_tool("suggest_sizes")
    images = [{"id": 1, "file_name": "a.png", "height": 256, "width": 256}]
    anns = [{"id": i, "image_id": 1, "category_id": 1, "area": 100.0, "bbox": [0, 0, 10, 10]} for i in range(20)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))
    assert tool.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "20 objects" in out and "scale 1.20" in out and "stride 8" in out
    assert "GeneralizedRCNN: INPUT.MIN_SIZE_TRAIN (256,288,320,) INPUT.MIN_SIZE_TEST 320" in out
    assert tool.main([str(path), "--model", "FCIS"]) == 0
    # words without spaces: a command substitution $(...) splits them into the overrides
    assert capsys.readouterr().out.split() == [
        "INPUT.MIN_SIZE_TRAIN", "(256,288,320,)", "INPUT.MIN_SIZE_TEST", "320", "MODEL.ANCHOR_GENERATOR.SIZES",
        "[[8,16]]", "MODEL.DILATED_RESNET.RES4_DILATION", "2", "MODEL.DILATED_RESNET.RES5_DILATION", "4"]
    assert tool.main([str(path), "--model", "FCIS-FPN"]) == 0
    over = capsys.readouterr().out.split()
    assert over[over.index("MODEL.ROI_HEADS.IN_FEATURES") + 1] == '["p2"]'  # 10-px objects: p2 only
    assert over[over.index("MODEL.FCIS.CONV_NEW_DIM") + 1] == "256"  # one class
    path.write_text(json.dumps({"images": images, "annotations": []}))
    with pytest.raises(SystemExit):
        tool.main([str(path)])
    assert f"{path}: no non-crowd annotation" in capsys.readouterr().err


def test_the_printed_overrides_build_the_custom_configs(tmp_path, capsys):
    """What --model FCIS-FPN / BiSeg-FPN prints, split as $(...) splits it, is a valid override of
    configs/custom/ (several classes, objects from 8 to 300 px)."""
    from detectron2.modeling import build_model

    from conftest import REPO_ROOT
    from instfcn_d2.config import get_instfcn_cfg

    tool = load_tool("suggest_sizes")
    images = [{"id": 1, "file_name": "a.png", "height": 512, "width": 512}]
    sides = [8] * 20 + [30] * 60 + [300] * 5
    anns = [{"id": i, "image_id": 1, "category_id": 1 + i % 5, "area": float(s * s), "bbox": [0, 0, s, s]}
            for i, s in enumerate(sides)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": c, "name": str(c)} for c in range(1, 6)]}))
    for model, config, levels in (("FCIS-FPN", "fcis_R18_FPN_cpu", ["p2", "p3", "p4", "p5"]),
                                  ("BiSeg-FPN", "biseg_R18_FPN_cpu", ["p2"])):
        assert tool.main([str(path), "--model", model]) == 0
        over = capsys.readouterr().out.split()
        cfg = get_instfcn_cfg(str(REPO_ROOT / "configs" / "custom" / f"{config}.yaml"),
                              over + ["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
        assert list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == levels
        assert cfg.MODEL.FCIS.CONV_NEW_DIM == 64  # 5 classes
        build_model(cfg)
