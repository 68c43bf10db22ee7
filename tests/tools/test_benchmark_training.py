"""tools/benchmark_training.py at its smallest: every model trains one timed iteration on a
multi-class dataset of nested objects, the table has a row per model with its ratio to Mask R-CNN
and the target lines, the plot is written; a wrong flag names the value at fault."""
import os

import pytest

from conftest import load_tool
from data.tiny_coco import write_nested_coco  # tests/data/tiny_coco.py

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("nested")
    json_path, _, _ = write_nested_coco(root, num_images=4)
    os.rename(json_path, root / "train.json")  # the layout the tool reads: train.json + images/
    return root


def test_every_model_trains_and_the_table_has_the_ratios(dataset, tmp_path, capsys):
    tool = load_tool("benchmark_training")
    out = tmp_path / "training.png"
    assert tool.main(["--dataset-dir", str(dataset), "--iterations", "1", "--warmup", "0",
                      "--models", "fcis_levels_width,biseg", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "s / it" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| Mask R-CNN R18-FPN, half width", "| FCIS, maps on p2 ... p5, CONV_NEW_DIM 64",
                                                 "| BiSeg, both sets on p2"]
    assert rows[0].split(" | ")[2] == "1.00"  # the baseline's own ratio
    assert "(target <= 1.2x)" in text and "(target <= 1.5x)" in text
    assert "4 classes" in text and out.stat().st_size > 1000


def test_wrong_flags_are_named(dataset, tmp_path):
    tool = load_tool("benchmark_training")
    with pytest.raises(SystemExit):
        tool.main(["--dataset-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        tool.main(["--dataset-dir", str(dataset), "--models", "fcis,unet"])
