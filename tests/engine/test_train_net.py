"""The detectron2 path end to end with the baseline config: train -> checkpoint -> resume,
eval-only reproducing the predictions, DefaultPredictor, visualisation, multi-process launch."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_tool

CONFIG = str(REPO_ROOT / "configs" / "shapes" / "mask_rcnn_R18_FPN_GN_cpu.yaml")
# A toy schedule on a toy split: these tests check the plumbing, not accuracy.
TINY = [
    "DATASETS.TRAIN", "('test_shapes_train',)",
    "DATASETS.TEST", "('test_shapes_val',)",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "()",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MIN_SIZE_TEST", "128",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "10",
]


@pytest.fixture(scope="module")
def train_net():
    import instfcn_d2  # noqa: F401
    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("test_shapes", num_train=8, num_val=3, image_size=128)
    return load_tool("train_net")


def _args(train_net, *extra, output_dir):
    """train_net's parsed arguments: ``--flags`` from ``extra`` first, then TINY and the rest of
    ``extra`` as KEY VALUE overrides (later ones win)."""
    from detectron2.engine import default_argument_parser

    flags = [e for e in extra if e.startswith("--")]
    opts = [e for e in extra if not e.startswith("--")]
    argv = ["--config-file", CONFIG, *flags, *TINY, *opts, "OUTPUT_DIR", str(output_dir)]
    return default_argument_parser().parse_args(argv)


def _predictions(output_dir):
    path = os.path.join(output_dir, "inference", "test_shapes_val", "instances_predictions.pth")
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def trained(train_net, tmp_path_factory):
    """Train 4 iterations with a checkpoint every 2; returns (output_dir, eval results)."""
    out = tmp_path_factory.mktemp("train")
    results = train_net.main(_args(train_net, output_dir=out))
    return out, results


@pytest.mark.smoke
@pytest.mark.slow
def test_train_writes_checkpoints_and_coco_metrics(trained):
    out, results = trained
    assert (out / "model_0000001.pth").is_file() and (out / "model_0000003.pth").is_file()
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    for task in ("bbox", "segm"):
        assert set(results[task]) >= {"AP", "AP50", "AP75"}
        assert all(np.isfinite(v) or np.isnan(v) for v in results[task].values())
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 3
    assert any("segm/AP" in r for r in rows), "the final evaluation is logged to metrics.json"


@pytest.mark.smoke
@pytest.mark.slow
def test_resume_continues_from_saved_iteration(train_net, trained, tmp_path):
    out, _ = trained
    # Resume in a copy so other tests keep the 4-iteration model.
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    os.remove(resumed / "model_final.pth")
    (resumed / "last_checkpoint").write_text("model_0000001.pth")  # saved after iteration 1
    train_net.main(_args(train_net, "--resume", "SOLVER.MAX_ITER", "5", output_dir=resumed))
    log = (resumed / "log.txt").read_text()
    assert "Starting training from iteration 2" in log
    rows = [json.loads(line) for line in open(resumed / "metrics.json")]
    first_run_rows = len(open(out / "metrics.json").readlines())
    second_run = [r["iteration"] for r in rows[first_run_rows:] if "total_loss" in r]
    assert second_run and min(second_run) >= 2 and max(second_run) == 4
    assert (resumed / "model_final.pth").is_file()


@pytest.mark.smoke
@pytest.mark.slow
def test_resume_from_a_checkpoint_without_optimizer_state(train_net, trained, tmp_path, caplog):
    """A checkpoint written by detectron2 v0.6 holds no optimizer state (no ``_trainer`` key in the
    trainer's state); detectron2 main alone fails on it with a KeyError. Training resumes."""
    import logging
    import shutil

    out, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    os.remove(resumed / "model_final.pth")
    ckpt = torch.load(resumed / "model_0000001.pth", weights_only=False)
    ckpt["trainer"].pop("_trainer", None)
    torch.save(ckpt, resumed / "model_0000001.pth")
    (resumed / "last_checkpoint").write_text("model_0000001.pth")
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.engine.trainer"):
        train_net.main(_args(train_net, "--resume", "SOLVER.MAX_ITER", "4", output_dir=resumed))
    assert "Starting training from iteration 2" in (resumed / "log.txt").read_text()
    assert (resumed / "model_final.pth").is_file()
    from instfcn_d2.supported import detectron2_version

    if detectron2_version() == "main":  # the version that saves optimizer state says what it did
        assert "fresh optimizer state" in caplog.text


@pytest.mark.smoke
@pytest.mark.slow
def test_eval_only_reproduces_metrics_and_predictions(train_net, trained, tmp_path):
    out, train_results = trained
    pred_train = _predictions(out)
    eval_dir = tmp_path / "eval"
    results = train_net.main(
        _args(train_net, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"), output_dir=eval_dir)
    )
    for task in ("bbox", "segm"):
        for key, value in train_results[task].items():
            assert results[task][key] == pytest.approx(value, nan_ok=True, abs=1e-9), (task, key)
    pred_eval = _predictions(eval_dir)
    assert len(pred_eval) == len(pred_train) == 3
    n = sum(len(p["instances"]) for p in pred_eval)
    assert n > 0, "an untrained model with SCORE_THRESH_TEST=0 still predicts boxes"
    for a, b in zip(pred_train, pred_eval):
        assert a["image_id"] == b["image_id"]
        assert [i["score"] for i in a["instances"]] == pytest.approx([i["score"] for i in b["instances"]], abs=1e-5)
        assert [i["segmentation"]["counts"] for i in a["instances"]] == [i["segmentation"]["counts"] for i in b["instances"]]


@pytest.mark.slow
def test_eval_only_rejects_checkpoint_of_wrong_shape(train_net, trained, tmp_path):
    from instfcn_d2.checkpoint import CheckpointMismatchError

    out, _ = trained
    with pytest.raises(CheckpointMismatchError, match=r"model_final\.pth.*\n.*roi_heads\.box_predictor"):
        train_net.main(
            _args(
                train_net, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
                "MODEL.ROI_HEADS.NUM_CLASSES", "3", output_dir=tmp_path,
            )
        )


def _tool_args(train_net, *extra, output_dir):
    """As :func:`_args`, parsed by train_net's own parser (which knows its extra flags)."""
    flags = [e for e in extra if e.startswith("--")]
    opts = [e for e in extra if not e.startswith("--")]
    argv = ["--config-file", CONFIG, *flags, *TINY, *opts, "OUTPUT_DIR", str(output_dir)]
    return train_net.argument_parser().parse_args(argv)


@pytest.mark.slow
def test_eval_only_without_weights_exits_with_a_message_unless_allowed(train_net, trained, tmp_path):
    """An empty MODEL.WEIGHTS would evaluate a random model: refused (non-zero exit, the flags to
    use named); --allow-random-weights does it on purpose; --resume with a checkpoint in
    OUTPUT_DIR needs no MODEL.WEIGHTS."""
    import shutil

    with pytest.raises(SystemExit) as info:
        train_net.main(_tool_args(train_net, "--eval-only", "MODEL.WEIGHTS", "", output_dir=tmp_path / "refused"))
    message = info.value.code
    assert isinstance(message, str)  # sys.exit(str): printed, exit status 1
    assert "--eval-only: MODEL.WEIGHTS is empty" in message and "--allow-random-weights" in message
    assert "MODEL.WEIGHTS OUTPUT_DIR/model_final.pth" in message
    assert not (tmp_path / "refused" / "inference").exists()

    results = train_net.main(
        _tool_args(train_net, "--eval-only", "--allow-random-weights", output_dir=tmp_path / "random")
    )
    assert "segm" in results

    out, train_results = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    results = train_net.main(_tool_args(train_net, "--eval-only", "--resume", output_dir=resumed))
    assert results["segm"]["AP"] == pytest.approx(train_results["segm"]["AP"], nan_ok=True, abs=1e-9)


@pytest.mark.slow
def test_eval_only_checks_num_classes_against_the_test_dataset(train_net, tmp_path):
    from instfcn_d2.engine.checks import NumClassesMismatchError

    with pytest.raises(NumClassesMismatchError) as info:
        train_net.main(
            _tool_args(train_net, "--eval-only", "--allow-random-weights", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                       output_dir=tmp_path)
        )
    msg = str(info.value)
    assert "MODEL.ROI_HEADS.NUM_CLASSES = 3" in msg and "'test_shapes_val' (DATASETS.TEST) has 4 classes" in msg
    assert not (tmp_path / "inference").exists()


@pytest.mark.slow
@pytest.mark.parametrize("content", ["text", "garbage"])
def test_weights_that_are_not_a_checkpoint_name_the_file(train_net, tmp_path, content):
    """Training (the trainer's checkpointer) and --eval-only (the strict one) both say the file is
    not a checkpoint, naming it, instead of torch's weights_only advice."""
    from instfcn_d2.checkpoint import NotACheckpointError

    weights = tmp_path / "weights.pth"
    if content == "text":
        weights.write_text("model weights: see the README\n")
    else:
        weights.write_bytes(bytes(range(256)) * 8)
    for flags in ((), ("--eval-only",)):
        with pytest.raises(NotACheckpointError, match=f"^{weights} is not a checkpoint") as info:
            train_net.main(_args(train_net, *flags, "MODEL.WEIGHTS", str(weights), output_dir=tmp_path / "out"))
        assert "weights_only" not in str(info.value)
    assert not (tmp_path / "out" / "model_final.pth").exists()


@pytest.mark.slow
def test_trainer_uses_the_projects_checkpointer_in_its_periodic_hook(train_net, tmp_path):
    from detectron2.engine import hooks

    from instfcn_d2.checkpoint import InstFCNCheckpointer
    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.engine import Trainer

    trainer = Trainer(get_instfcn_cfg(CONFIG, [*TINY, "OUTPUT_DIR", str(tmp_path)]))
    assert isinstance(trainer.checkpointer, InstFCNCheckpointer)
    assert set(trainer.checkpointer.checkpointables) == {"trainer"}  # as detectron2's
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert len(periodic) == 1 and periodic[0].checkpointer is trainer.checkpointer


@pytest.mark.slow
def test_resume_skips_an_empty_last_checkpoint_and_a_truncated_newest_checkpoint(train_net, trained, tmp_path, caplog):
    """last_checkpoint empty (a run killed while tagging) and the newest model_*.pth truncated: the
    resume warns about both and continues from the previous good checkpoint; the run's own saves
    leave no temporary file behind."""
    import logging
    import shutil

    out, _ = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    os.remove(resumed / "model_final.pth")
    newest = resumed / "model_0000003.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    (resumed / "last_checkpoint").write_text("")
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.checkpoint"):
        train_net.main(_args(train_net, "--resume", "SOLVER.MAX_ITER", "4", output_dir=resumed))
    assert "Starting training from iteration 2" in (resumed / "log.txt").read_text()
    assert "last_checkpoint is empty" in caplog.text
    assert f"skipping damaged checkpoint {newest}" in caplog.text
    assert (resumed / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(newest, weights_only=False)["iteration"] == 3  # rewritten whole
    assert not [f for f in os.listdir(resumed) if f.endswith(".tmp")]


@pytest.mark.smoke
@pytest.mark.slow
def test_default_predictor_returns_instances_with_masks(trained):
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from instfcn_d2.config import get_instfcn_cfg

    out, _ = trained
    cfg = get_instfcn_cfg(CONFIG, TINY + ["MODEL.WEIGHTS", str(out / "model_final.pth")])
    record = DatasetCatalog.get("test_shapes_val")[0]
    image = read_image(record["file_name"], format="BGR")
    instances = DefaultPredictor(cfg)(image)["instances"]
    assert len(instances) > 0
    assert instances.image_size == image.shape[:2]
    assert instances.pred_masks.shape == (len(instances), *image.shape[:2])
    assert instances.pred_masks.dtype == torch.bool
    assert instances.scores.shape == instances.pred_classes.shape == (len(instances),)
    assert int(instances.pred_classes.max()) < 4
    assert torch.all(instances.scores[:-1] >= instances.scores[1:])


@pytest.mark.slow
def test_visualisation_and_curves_write_pngs(trained, tmp_path):
    from PIL import Image

    out, _ = trained
    vis = load_tool("visualize_predictions")
    vis.main(["--config-file", CONFIG, "--output", str(tmp_path / "vis"), "--num-images", "2",
              "--score-thresh", "0.0", *TINY, "MODEL.WEIGHTS", str(out / "model_final.pth")])
    pngs = sorted((tmp_path / "vis").glob("*_pred_vs_gt.png"))
    assert len(pngs) == 2
    w, h = Image.open(pngs[0]).size
    assert (w, h) == (2 * 128 * 2 + 8, 128 * 2)  # prediction | gap | ground truth, drawn at scale 2
    curves = load_tool("plot_training_curves")
    curves.main([str(out), "--out", str(tmp_path / "curves.png")])
    assert Image.open(tmp_path / "curves.png").size[0] > 500


@pytest.mark.smoke
@pytest.mark.slow
def test_launch_two_processes_on_cpu(tmp_path):
    """tools/train_net.py --num-gpus 2 on a CPU machine: detectron2's launch spawns 2 processes
    (GLOO), both train and the main process logs and checkpoints."""
    import subprocess
    import sys

    overrides = [o for o in TINY]
    overrides[overrides.index("DATASETS.TRAIN") + 1] = "('instfcn_shapes_train',)"
    overrides[overrides.index("DATASETS.TEST") + 1] = "()"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file", CONFIG,
           "--num-gpus", "2", "--dist-url", "auto", *overrides, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    log = (tmp_path / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert [r["iteration"] for r in rows if "total_loss" in r][-1] == 1
