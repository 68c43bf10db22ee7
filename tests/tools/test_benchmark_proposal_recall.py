"""tools/benchmark_proposal_recall.py: on tiny problems the project's hand-written recall, pycocotools'
COCOeval and detectron2's COCOeval_opt give the same recall at every IoU threshold, size range and N."""
import json

import numpy as np
import pytest

from conftest import load_tool


@pytest.fixture(scope="module")
def bench():
    return load_tool("benchmark_proposal_recall")


@pytest.mark.parametrize("seed", [0, 1])
def test_three_methods_agree_on_a_tiny_problem(bench, seed):
    problem = bench.make_problem(num_images=3, gts=4, proposals=20, height=96, width=128, seed=seed, copy_fraction=0.5)
    assert problem.sizes["proposals"] == 60 and len(problem.predictions) == 3
    res = bench.run_benchmark(problem, max_dets=(1, 5, 20), with_iou_reference=False)
    assert res["methods"][:2] == [bench.HAND, bench.COCO]
    if bench.COCO_OPT not in res["methods"]:
        pytest.skip(f"COCOeval_opt not compared: {res['skipped'][bench.COCO_OPT]}")
    for method, bad in res["mismatches_vs_pycocotools"].items():
        assert bad == [], method
    rec = res["recall"][bench.HAND]
    assert rec.shape == (10, 4, 3)
    np.testing.assert_allclose(rec, res["recall"][bench.COCO], atol=1e-9)  # NaN where COCOeval has -1
    np.testing.assert_allclose(res["recall"][bench.COCO_OPT], res["recall"][bench.COCO], atol=1e-9)
    assert 0 < res["ar"][bench.HAND]["AR@20"] < 100  # a non-trivial case
    for method in res["methods"]:
        for key, value in res["ar"][bench.HAND].items():
            assert res["ar"][method][key] == pytest.approx(value, abs=1e-9, nan_ok=True), (method, key)


def test_compare_names_every_difference(bench):
    a = np.full((10, 4, 2), 0.5)
    a[:, 3, :] = np.nan  # no large gt
    b = a.copy()
    assert bench.compare(a, b, [1, 2]) == []
    b[2, 1, 0], b[0, 3, 1] = 0.25, 0.0
    bad = bench.compare(a, b, [1, 2])
    assert len(bad) == 2
    assert bad[0].startswith("IoU 0.50, area large, N=2") and bad[1].startswith("IoU 0.60, area small, N=1")


def test_cli_writes_table_plot_and_json(bench, tmp_path, capsys):
    plot, out = tmp_path / "bench.png", tmp_path / "bench.json"
    argv = ["--images", "2", "--gts", "3", "--proposals", "10", "--height", "64", "--width", "80",
            "--max-dets", "1", "10", "--plot", str(plot), "--json", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "| method | timed | seconds | x hand-written time |" in text and "equals pycocotools" in text
    assert plot.read_bytes().startswith(b"\x89PNG")
    data = json.loads(out.read_text())
    assert data["sizes"]["images"] == 2 and data["max_dets"] == [1, 10]
    assert set(data["seconds"]) == set(data["methods"])
    assert all(v == [] for v in data["mismatches_vs_pycocotools"].values())
