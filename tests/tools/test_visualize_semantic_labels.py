"""tools/visualize_semantic_labels.py: the check of the derived labels on nested instances (the smaller
wins), its independent rule, and the pictures."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_tool


def _dataset(tmp_path):
    """One 40 x 60 image: a facade (class 1) holding two windows (class 2), one of them holding a
    smaller sign (class 3) listed before it, and a crowd region in a corner."""
    Image.fromarray(np.full((40, 60, 3), 128, dtype=np.uint8)).save(tmp_path / "a.png")

    def box(x0, y0, x1, y1):
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": box(2, 2, 50, 38), "bbox": [2, 2, 48, 36], "area": 1, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": box(8, 8, 12, 12), "bbox": [8, 8, 4, 4], "area": 1, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "segmentation": box(5, 5, 20, 20), "bbox": [5, 5, 15, 15], "area": 1, "iscrowd": 0},
        {"id": 4, "image_id": 1, "category_id": 2, "segmentation": box(30, 5, 45, 20), "bbox": [30, 5, 15, 15], "area": 1, "iscrowd": 0},
        {"id": 5, "image_id": 1, "category_id": 1, "segmentation": box(52, 30, 59, 39), "bbox": [52, 30, 7, 9], "area": 1, "iscrowd": 1},
    ]
    cats = [{"id": 1, "name": "facade"}, {"id": 2, "name": "window"}, {"id": 3, "name": "sign"}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}],
                                "annotations": anns, "categories": cats}))
    return path


def test_checks_nested_labels_and_draws_them(tmp_path, capsys):
    tool = load_tool("visualize_semantic_labels")
    path = _dataset(tmp_path)
    assert tool.main(["--json", str(path), "--image-root", str(tmp_path), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 images, 5 instances" in out and "differ from the rule at 0 pixels" in out
    png = tmp_path / "out" / "a_labels.png"
    assert png.exists() and Image.open(png).size == (120, 40)


def test_expected_labels_follow_the_rule_without_painting():
    tool = load_tool("visualize_semantic_labels")
    big = np.zeros((6, 6), bool)
    big[:, :] = True
    small = np.zeros((6, 6), bool)
    small[1:3, 1:3] = True
    tie_a = np.zeros((6, 6), bool)
    tie_a[4:6, 4:6] = True
    tie_b = tie_a.copy()
    crowd = np.zeros((6, 6), bool)
    crowd[0, 5] = True
    labels, nested = tool.expected_labels([small, big, tie_a, tie_b, crowd], [2, 0, 3, 4, 1],
                                          [False, False, False, False, True], (6, 6), 255)
    assert labels[1, 1] == 3 and labels[0, 0] == 1  # the smaller wins; listed order does not matter
    assert labels[5, 5] == 5  # equal areas: the later annotation
    assert labels[0, 5] == 1  # crowd under a non-crowd instance: that instance's class
    assert nested[1, 1] and nested[5, 5] and not nested[0, 0]


def test_a_missing_file_is_named(tmp_path):
    tool = load_tool("visualize_semantic_labels")
    with pytest.raises(SystemExit, match="nope.json does not exist"):
        tool.main(["--json", str(tmp_path / "nope.json"), "--image-root", str(tmp_path), "--output", str(tmp_path)])
