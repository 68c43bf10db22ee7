"""tools/main_job_report.py and the semantic panels of tools/visualize_predictions.py."""
import json

import cv2
import pytest

from conftest import REPO_ROOT, load_tool
from tiny_models import TINY_CHECKPOINT_MODELS, TINY_CHECKPOINTS, TINY_TRUNK


def _fake_run(path, segm_ap, iterations):
    path.mkdir()
    rows = [{"iteration": i, "total_loss": 1.0 / (i + 1)} for i in range(iterations)]
    rows.append({"iteration": iterations - 1, "segm/AP": segm_ap, "segm/AP50": segm_ap + 10, "bbox/AP": segm_ap - 1,
                 "sem_seg/mIoU": 50.5})
    (path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (path / "log.txt").write_text(f"[x] Overall training speed: {iterations} iterations in 0:08:01 (0.5 s / it)\n")
    return path


def test_report_puts_the_run_next_to_the_recorded_baseline(tmp_path, monkeypatch):
    tool = load_tool("main_job_report")
    monkeypatch.setattr(tool, "BASELINES", str(tmp_path / "baselines.json"))
    baseline = _fake_run(tmp_path / "baseline", 30.25, 700)
    tool.main([str(baseline), "--config-file", "configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml", "--budget-minutes", "8",
               "--record"])
    recorded = json.loads((tmp_path / "baselines.json").read_text())
    assert len(recorded) == 1 and recorded[0]["iterations"] == 700 and recorded[0]["metrics"]["segm/AP"] == 30.25
    run = _fake_run(tmp_path / "run", 45.5, 1000)
    text = tool.report(str(run), "configs/shapes/biseg_fused_7_9_R18_cpu.yaml", 8.0)
    lines = text.splitlines()
    ours = next(line for line in lines if "(this run)" in line)
    theirs = next(line for line in lines if "mask_rcnn" in line)
    assert "| 1000 | 0:08:01 | 45.5 | 55.5 | 44.5 | 50.5 |" in ours
    assert "| 700 | 0:08:01 | 30.2 |" in theirs and "recorded" in theirs
    assert "no recorded baseline" in tool.report(str(run), "configs/x.yaml", 20.0)
    with pytest.raises(FileNotFoundError, match="finished run"):
        tool.read_run(str(tmp_path))


@pytest.mark.slow
def test_visualize_predictions_draws_the_semantic_map_of_biseg(tmp_path):
    import instfcn_d2  # noqa: F401
    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("vis_sem_shapes", num_train=2, num_val=2, image_size=96)
    tool = load_tool("visualize_predictions")
    config, opts = TINY_CHECKPOINT_MODELS["biseg"]
    written = tool.main(["--config-file", str(REPO_ROOT / config), "--output", str(tmp_path), "--num-images", "2",
                         "--score-thresh", "0.0", *TINY_TRUNK, *opts, "DATASETS.TEST", "('vis_sem_shapes_val',)",
                         "MODEL.WEIGHTS", str(TINY_CHECKPOINTS / "biseg_model.pth")])
    sem = sorted(p for p in written if p.endswith("_sem_seg.png"))
    assert len(sem) == 2 and len(written) == 4
    image = cv2.imread(sem[0])
    assert image.shape[:2] == (96 * 2, 2 * 96 * 2 + 8)  # prediction | gap | label file, 96-px images at scale 2
