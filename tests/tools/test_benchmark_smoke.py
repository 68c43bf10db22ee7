"""The benchmark tools' command lines at their smallest: each runs end to end, prints its table with
one row per case or model, and writes its plot. The speeds themselves are not checked (that is
what the tools are for); the rows, the ratio / target lines and the PNG are. benchmark_proposal_recall's
command line: tests/tools/test_benchmark_proposal_recall.py."""
import re

import cv2
import numpy as np
import pytest

from conftest import load_tool

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A dataset root holding ``coco128/val2017`` with two small JPEGs (1 warm-up + 1 timed image)
    of different sizes: the tools' default image folder, without the real data."""
    root = tmp_path_factory.mktemp("bench_datasets")
    folder = root / "coco128" / "val2017"
    folder.mkdir(parents=True)
    for i, (h, w) in enumerate([(96, 128), (120, 96)]):
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[:h, :w]
        image = 90 + 50 * np.sin(xx / 7.0)[..., None] + 40 * np.cos(yy / 5.0)[..., None] + rng.normal(0, 8, (h, w, 3))
        image[h // 4 : h // 2, w // 4 : w // 2] = (200, 40, 60)
        cv2.imwrite(str(folder / f"{i:012d}.jpg"), np.clip(image, 0, 255).astype(np.uint8))
    return root


def _table_rows(text: str, header_start: str):
    """The first cells of the rows of the markdown table whose header starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _assert_png(path):
    assert path.is_file() and path.read_bytes().startswith(b"\x89PNG"), path


def test_benchmark_layers_smoke(tmp_path, capsys, monkeypatch):
    """Every case at a toy size (the CLI fixes the papers' sizes, 20 s on 2 cores: shrunk here),
    one timed run, one thread; the exit status follows the PASS / FAIL lines."""
    tool = load_tool("benchmark_layers")
    monkeypatch.setitem(tool.FCIS, "image", (160, 256))
    monkeypatch.setitem(tool.FCIS, "rois", 20)
    monkeypatch.setitem(tool.INSTFCN, "image", (200, 320))
    monkeypatch.setitem(tool.INSTFCN, "listed", 50)
    out = tmp_path / "layers.png"
    code = tool.main(["--repeat", "1", "--naive-groups", "1", "--threads", "1", "--out", str(out)])
    text = capsys.readouterr().out
    rows = [(case, impl) for case, impl, *_ in _table_rows(text, "| case | implementation |")]
    assert rows == [
        ("PSRoIAssemble m=7 k=7", "instfcn_d2"),
        ("PSRoIAssemble m=7 k=7", "reference (PyTorch)"),
        ("PSRoIAssemble m=7 k=7", "torchvision ps_roi_align"),
        ("PSRoIAssemble m=21 k=7", "instfcn_d2"),
        ("PSRoIAssemble m=21 k=7", "reference (PyTorch)"),
        ("PSRoIAssemble m=21 k=7", "naive roi_align + gather"),
        ("WindowAssemble top-50 m=21 k=5", "instfcn_d2"),
        ("WindowAssemble top-50 m=21 k=5", "reference (PyTorch)"),
        ("memcpy", "Tensor.copy_"),
    ]
    verdicts = re.findall(r"^(PASS|FAIL): ", text, flags=re.M)
    assert len(verdicts) == 3  # the three CPU targets
    assert code == (0 if verdicts == ["PASS"] * 3 else 1)
    assert len(re.findall(r"^info: .* faster than the reference", text, flags=re.M)) == 3
    _assert_png(out)


@pytest.mark.parametrize("tool_name, models, header", [
    ("benchmark_fcis", ["FCIS R50", "BiSeg R50 fused (7, 9)", "Mask R-CNN R50-C4"], "| model | s / image | trunk |"),
    ("benchmark_instance_fcn", ["InstanceFCN VGG-16 (stride 8)", "InstanceFCN R50-dilated (stride 8)", "Mask R-CNN R50-FPN"],
     "| model | s / image | preprocess |"),
], ids=["fcis", "instance_fcn"])
def test_model_benchmark_smoke(tool_name, models, header, datasets, tmp_path, capsys, monkeypatch):
    """All models on one warm-up and one timed image, shorter side 64, one thread; images from the
    default folder ($DETECTRON2_DATASETS/coco128/val2017)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets))
    tool = load_tool(tool_name)
    extra = ["--num-classes", "2"] if tool_name == "benchmark_fcis" else []
    out = tmp_path / "bench.png"
    assert tool.main(["--images", "1", "--short-side", "64", "--max-size", "96", "--threads", "1", "--out", str(out),
                      *extra]) == 0
    text = capsys.readouterr().out
    assert f"images: {datasets / 'coco128' / 'val2017'} (warm-up 000000000000.jpg, timed 000000000001.jpg)" in text
    rows = _table_rows(text, header)
    assert [r[0] for r in rows] == models
    for row in rows:
        assert float(row[1]) > 0  # seconds per image
    if tool_name == "benchmark_fcis":
        assert re.search(r"^- FCIS / Mask R-CNN R50-C4: .*: (MET|NOT MET)$", text, flags=re.M)
        assert re.search(r"^- BiSeg / FCIS: .*: (MET|NOT MET)$", text, flags=re.M)
    else:
        assert len(re.findall(r"after trunk .* target < 15%: (MET|NOT MET)$", text, flags=re.M)) == 2
    _assert_png(out)


def test_benchmark_export_smoke(datasets, tmp_path, capsys, monkeypatch):
    """FCIS R18 exported as TorchScript, run next to eager on one timed image: both tables, the
    outputs equal to eager's (no "differs" line), the plot."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets))
    tool = load_tool("benchmark_export")
    out = tmp_path / "export.png"
    assert tool.main(["--images", "1", "--short-side", "64", "--max-size", "96", "--models", "FCIS R18",
                      "--formats", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "differs from eager" not in text
    speed = _table_rows(text, "| model | eager s/img | TorchScript | eager / fastest |")
    graph = _table_rows(text, "| model | eager | TorchScript | graph share of eager |")
    assert [r[0] for r in speed] == [r[0] for r in graph] == ["FCIS R18"]
    assert float(speed[0][1]) > 0 and re.fullmatch(r"[0-9.]+ \([0-9.]+x\)", speed[0][2])
    _assert_png(out)
