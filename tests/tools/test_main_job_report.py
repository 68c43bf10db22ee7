"""tools/main_job_report.py and the semantic panels of tools/visualize_predictions.py."""
import json

import cv2
import pytest

from conftest import REPO_ROOT, load_tool
from tiny_models import TINY_CHECKPOINT_MODELS, TINY_CHECKPOINTS, TINY_TRUNK


def _fake_run(path, segm_ap, iterations, clock="0:08:01"):
    path.mkdir()
    rows = [{"iteration": i, "total_loss": 1.0 / (i + 1)} for i in range(iterations)]
    rows.append({"iteration": iterations - 1, "segm/AP": segm_ap, "segm/AP50": segm_ap + 10, "bbox/AP": segm_ap - 1,
                 "sem_seg/mIoU": 50.5})
    (path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (path / "log.txt").write_text(f"[x] Overall training speed: {iterations} iterations in {clock} (0.5 s / it)\n")
    return path


def test_report_compares_the_run_with_the_baseline_trained_next_to_it(tmp_path, monkeypatch):
    """Both runs of this machine, each with its iteration count, and a sentence comparing them; a
    run recorded elsewhere only as a labelled reference row."""
    tool = load_tool("main_job_report")
    monkeypatch.setattr(tool, "BASELINES", str(tmp_path / "baselines.json"))
    mask_rcnn, biseg = "configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml", "configs/shapes/biseg_fused_7_9_R18_cpu.yaml"
    run = _fake_run(tmp_path / "run", 45.5, 1000)
    here = _fake_run(tmp_path / "here", 30.25, 900)
    text = tool.report(str(run), biseg, 8.0, str(here), mask_rcnn, threads=1)
    lines = text.splitlines()
    ours = next(line for line in lines if line.startswith(f"| {biseg}"))
    theirs = next(line for line in lines if line.startswith(f"| {mask_rcnn}"))
    assert "(trained here)" in ours and "| 1000 | 0:08:01 | 45.5 | 55.5 | 44.5 | 50.5 |" in ours
    assert "(trained here, same budget)" in theirs and "| 900 | 0:08:01 | 30.2 |" in theirs
    assert ("Both were trained here, on this machine, for the same 8-minute budget, side by side with 1 thread "
            "each: BiSeg ran 1000 iterations, Mask R-CNN 900. Their training took 0:08:01 and 0:08:01 of the "
            "budget's 0:08:00. BiSeg reaches the higher mask AP, 45.5 against 30.2 for Mask R-CNN.") in text
    assert "recorded" not in text  # nothing recorded in this baselines file
    # the other way round, and equal
    assert "Mask R-CNN reaches the higher mask AP, 45.5 against 30.2 for BiSeg" in tool.report(
        str(here), biseg, 8.0, str(run), mask_rcnn)
    assert "BiSeg and Mask R-CNN reach the same mask AP (45.5)" in tool.report(str(run), biseg, 8.0, str(run), mask_rcnn)

    # a schedule the time-budget hook cut short is named
    short = _fake_run(tmp_path / "short", 30.25, 500, clock="0:04:11")
    assert ("Their training took 0:08:01 and 0:04:11 of the budget's 0:08:00; Mask R-CNN's schedule, fitted to the "
            "speed measured at its start and shortened when the machine ran slower, ended early") in tool.report(
        str(run), biseg, 8.0, str(short), mask_rcnn)

    # a run recorded on another day: a labelled reference row after both, never in the sentence
    recorded = _fake_run(tmp_path / "recorded", 14.75, 381)
    tool.main([str(recorded), "--config-file", mask_rcnn, "--budget-minutes", "8", "--record"])
    stored = json.loads((tmp_path / "baselines.json").read_text())
    assert len(stored) == 1 and stored[0]["iterations"] == 381 and stored[0]["metrics"]["segm/AP"] == 14.75
    lines = tool.report(str(run), biseg, 8.0, str(here), mask_rcnn, threads=1).splitlines()
    table = [line for line in lines if line.startswith("| configs/")]
    assert len(table) == 3 and "(reference only: recorded " in table[2] and "| 381 |" in table[2]
    assert "Mask R-CNN 900." in "\n".join(lines) and "a reference, not a comparison with this run" in lines[-1]
    assert "recorded" not in tool.report(str(run), biseg, 20.0, str(here), mask_rcnn)  # another budget

    # no baseline trained next to it: said so
    alone = tool.report(str(run), biseg, 20.0)
    assert "No baseline was trained next to" in alone and len([x for x in alone.splitlines() if x.startswith("| configs/")]) == 1
    with pytest.raises(FileNotFoundError, match="finished run"):
        tool.read_run(str(tmp_path))


def test_report_command_line(tmp_path, monkeypatch, capsys):
    tool = load_tool("main_job_report")
    monkeypatch.setattr(tool, "BASELINES", str(tmp_path / "none.json"))
    run, here = _fake_run(tmp_path / "run", 40.0, 500), _fake_run(tmp_path / "here", 20.0, 450)
    assert tool.main([str(run), "--config-file", "configs/shapes/biseg_fused_7_9_R18_cpu.yaml", "--budget-minutes", "5",
                      "--baseline", str(here), "--baseline-config", "configs/shapes/mask_rcnn_R18_FPN_GN_cpu.yaml",
                      "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "after 5 minutes of training" in out and "side by side with 2 threads each" in out
    assert "BiSeg ran 500 iterations, Mask R-CNN 450" in out and f"baseline run:    {here}" in out
    with pytest.raises(SystemExit):
        tool.main([str(run), "--config-file", "c.yaml", "--budget-minutes", "5", "--baseline", str(here)])
    assert "--baseline needs --baseline-config" in capsys.readouterr().err


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
