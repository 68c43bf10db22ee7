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
    assert capsys.readouterr().out.split() == [
        "INPUT.MIN_SIZE_TRAIN", "(256,288,320,)", "INPUT.MIN_SIZE_TEST", "320", "MODEL.ANCHOR_GENERATOR.SIZES",
        "[[8,16]]", "MODEL.DILATED_RESNET.RES4_DILATION", "2", "MODEL.DILATED_RESNET.RES5_DILATION", "4"]
    path.write_text(json.dumps({"images": images, "annotations": []}))
    with pytest.raises(SystemExit):
        tool.main([str(path)])
    assert f"{path}: no non-crowd annotation" in capsys.readouterr().err
