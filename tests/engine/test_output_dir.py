"""instfcn_d2.engine.output_dir and train_net.py's OUTPUT_DIR handling: one live run per folder
(a lock released with its process), a previous run refused / moved aside / trained over
(``--output-exists``) unless ``--resume``, the temporary files of interrupted saves removed, and
``--eval-only`` leaving a training run's config.yaml and metrics.json as they are."""
import datetime
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, load_tool

from instfcn_d2.engine.output_dir import (
    LOCK_FILE,
    OutputDirExistsError,
    OutputDirInUseError,
    keep_training_config,
    lock_output_dir,
    prepare_output_dir,
    used_output_contents,
)

CONFIG = str(REPO_ROOT / "configs" / "shapes" / "mask_rcnn_R18_FPN_GN_cpu.yaml")
TINY = [
    "DATASETS.TRAIN", "('outdir_shapes_train',)",
    "DATASETS.TEST", "('outdir_shapes_val',)",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.CHECKPOINT_PERIOD", "1",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()",
    "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MIN_SIZE_TEST", "96",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.DETECTIONS_PER_IMAGE", "10",
]  # fmt: skip


@pytest.fixture(scope="module")
def train_net():
    import instfcn_d2  # noqa: F401
    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("outdir_shapes", num_train=4, num_val=2, image_size=96)
    return load_tool("train_net")


def _args(train_net, *flags, opts=(), output_dir):
    """train_net's own parser: ``flags`` (with their values), then TINY and the KEY VALUE ``opts``."""
    return train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY, *opts, "OUTPUT_DIR", str(output_dir)]
    )


def _previous_run(folder):
    """What a finished training leaves (its checkpoints a few bytes here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "last_checkpoint").write_text("model_final.pth")
    for name in ("model_0000001.pth", "model_final.pth"):
        (folder / name).write_bytes(b"checkpoint")
    (folder / "metrics.json").write_text('{"iteration": 0}\n{"iteration": 1}\n')
    (folder / "config.yaml").write_text("# the previous run's\n")
    return sorted(os.listdir(folder))


# ---- one live run per folder -----------------------------------------------------------------------
_HOLDER = """
import sys
from instfcn_d2.engine.output_dir import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_run_into_a_live_runs_folder_stops_at_once_naming_it(train_net, tmp_path):
    """Two runs started into one OUTPUT_DIR used to both train (and exit 0), their checkpoints,
    config.yaml and metrics.json mixed. The second now stops before writing anything, naming the
    first's pid, host and start; the lock goes with the first run's process, however it ends."""
    import socket

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        with pytest.raises(OutputDirInUseError) as error:
            lock_output_dir(str(out))
        msg = str(error.value)
        assert msg.startswith(f"OUTPUT_DIR {out} is in use by another training run (pid {holder.pid} on "
                              f"{socket.gethostname()}, started {info['started']}"), msg
        for flags in ((), ("--resume",), ("--output-exists", "overwrite")):
            with pytest.raises(OutputDirInUseError, match=f"pid {holder.pid}"):
                train_net.main(_args(train_net, *flags, output_dir=out))
        assert sorted(os.listdir(out)) == [LOCK_FILE]  # no config.yaml, log.txt, metrics.json
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without any clean-up
        holder.wait(timeout=60)
    lock = lock_output_dir(str(out))  # no stale lock
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert lock_output_dir(str(out)) is lock  # this process holds it: taken again freely


# ---- a folder a previous run used ---------------------------------------------------------------------
def test_a_used_folder_is_refused_without_resume_naming_what_is_in_it(train_net, tmp_path):
    """Training again into a used folder without --resume used to overwrite its checkpoints and
    append to its metrics.json."""
    out = tmp_path / "out"
    before = _previous_run(out)
    with pytest.raises(OutputDirExistsError) as error:
        train_net.main(_args(train_net, output_dir=out))
    msg = str(error.value)
    assert msg.startswith(f"OUTPUT_DIR {out} already holds a training run (last_checkpoint, model_0000001.pth, "
                          "model_final.pth, metrics.json (2 lines))"), msg
    for way in ("--resume", "--output-exists move", "--output-exists overwrite"):
        assert way in msg
    assert sorted(os.listdir(out)) == sorted(before + [LOCK_FILE])
    assert (out / "config.yaml").read_text() == "# the previous run's\n"  # default_setup not reached


def test_a_folder_without_a_previous_training_is_not_refused(tmp_path):
    """A folder with a config.yaml, a log and an empty metrics.json (a run that stopped before its
    first iteration, e.g. on bad weights) is not a previous run; neither is a missing folder."""
    (tmp_path / "config.yaml").write_text("x")
    (tmp_path / "log.txt").write_text("x")
    (tmp_path / "metrics.json").write_text("")
    assert used_output_contents(str(tmp_path)) == []
    assert prepare_output_dir(str(tmp_path), resume=False) == []
    assert prepare_output_dir(str(tmp_path / "new"), resume=False) == [] and (tmp_path / "new").is_dir()


def test_resume_continues_in_a_used_folder(tmp_path):
    before = _previous_run(tmp_path)
    assert prepare_output_dir(str(tmp_path), resume=True) == []
    assert sorted(os.listdir(tmp_path)) == sorted(before + [LOCK_FILE])


def test_move_renames_the_previous_run_and_starts_in_an_empty_folder(tmp_path):
    out = tmp_path / "out"
    before = _previous_run(out)
    now = datetime.datetime(2026, 12, 7, 10, 15, 30)
    notes = prepare_output_dir(str(out) + "/", resume=False, output_exists="move", now=now)
    moved = tmp_path / "out.20261207-101530"
    assert sorted(os.listdir(moved)) == before  # its lock file removed
    assert sorted(os.listdir(out)) == [LOCK_FILE]
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and notes[0].startswith(f"--output-exists move: moved the previous run in {out}/ (")
    assert str(moved) in notes[0]
    _previous_run(out)  # a second move in the same second gets its own name
    prepare_output_dir(str(out), resume=False, output_exists="move", now=now)
    assert sorted(os.listdir(tmp_path / "out.20261207-101530-2")) == before
    assert lock_output_dir(str(out)) is not None


def test_overwrite_trains_over_the_previous_run_and_says_so(tmp_path):
    before = _previous_run(tmp_path)
    notes = prepare_output_dir(str(tmp_path), resume=False, output_exists="overwrite")
    assert sorted(os.listdir(tmp_path)) == sorted(before + [LOCK_FILE])
    assert len(notes) == 1 and "--output-exists overwrite: training over the previous run" in notes[0]


def test_the_flag_and_its_choices(train_net):
    parse = train_net.argument_parser().parse_args
    assert parse(["--config-file", CONFIG]).output_exists == "refuse"
    assert parse(["--config-file", CONFIG, "--output-exists", "move"]).output_exists == "move"
    with pytest.raises(SystemExit):
        parse(["--config-file", CONFIG, "--output-exists", "delete"])
    with pytest.raises(ValueError, match="output_exists must be one of"):
        prepare_output_dir("unused", resume=False, output_exists="delete")


# ---- temporary files of interrupted saves --------------------------------------------------------------
def test_taking_the_folder_removes_the_temporary_files_of_interrupted_saves(tmp_path, caplog):
    """A save killed outright (SIGKILL) leaves its ~25 MB temporary file: removed, and said, when
    the next run takes the folder (train_net.py: logged to log.txt; the Trainer: logged)."""
    (tmp_path / ".model_0000199.pth.ab12cd_x.tmp").write_bytes(b"\0" * 2**20)
    (tmp_path / ".last_checkpoint.zz99yy00.tmp").write_text("model_0000199.pth")
    (tmp_path / "model_0000099.pth").write_bytes(b"checkpoint")
    notes = prepare_output_dir(str(tmp_path), resume=True)
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, "model_0000099.pth"]
    assert notes == [f"removed 2 temporary file(s) left in {tmp_path} by an interrupted checkpoint save: "
                     ".last_checkpoint.zz99yy00.tmp (0.0 MB), .model_0000199.pth.ab12cd_x.tmp (1.0 MB)"]

    other = tmp_path / "other"  # the trainer's way (lock_output_dir): logged at once
    other.mkdir()
    (other / ".model_final.pth.qwerty12.tmp").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.checkpoint"):
        lock_output_dir(str(other))
    assert ".model_final.pth.qwerty12.tmp" in caplog.text and sorted(os.listdir(other)) == [LOCK_FILE]


# ---- --eval-only -------------------------------------------------------------------------------------
def test_an_evaluation_keeps_the_training_runs_config(tmp_path):
    _previous_run(tmp_path)
    with keep_training_config(str(tmp_path), enabled=True) as notes:
        (tmp_path / "config.yaml").write_text("# the evaluation's\n")  # what default_setup does
    assert (tmp_path / "config.yaml").read_text() == "# the previous run's\n"
    assert (tmp_path / "config_eval.yaml").read_text() == "# the evaluation's\n"
    assert len(notes) == 1 and "config_eval.yaml" in notes[0]
    fresh = tmp_path / "fresh"  # not a training run's folder: config.yaml is the evaluation's
    fresh.mkdir()
    (fresh / "config.yaml").write_text("old")
    with keep_training_config(str(fresh), enabled=True) as notes:
        (fresh / "config.yaml").write_text("new")
    assert (fresh / "config.yaml").read_text() == "new" and not notes


@pytest.mark.slow
def test_train_evaluate_retrain_in_one_folder(train_net, tmp_path):
    """A tiny training; --eval-only --resume into its folder (no refusal, its metrics.json and
    config.yaml unchanged); training again refused, then --output-exists move; --resume allowed."""
    out = tmp_path / "out"
    train_net.main(_args(train_net, output_dir=out))
    metrics, config = (out / "metrics.json").read_bytes(), (out / "config.yaml").read_bytes()
    results = train_net.main(_args(train_net, "--eval-only", "--resume", opts=["TEST.DETECTIONS_PER_IMAGE", "5"], output_dir=out))
    assert "segm" in results
    assert (out / "metrics.json").read_bytes() == metrics  # detectron2's evaluation writes no metrics
    assert (out / "config.yaml").read_bytes() == config
    assert "DETECTIONS_PER_IMAGE: 5" in (out / "config_eval.yaml").read_text()

    with pytest.raises(OutputDirExistsError, match="metrics.json"):
        train_net.main(_args(train_net, output_dir=out))
    assert (out / "metrics.json").read_bytes() == metrics
    train_net.main(_args(train_net, "--output-exists", "move", output_dir=out))
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("out.")]
    assert (moved / "metrics.json").read_bytes() == metrics and (moved / "model_final.pth").is_file()
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert len(rows) == len(metrics.splitlines())  # this run's alone, not appended to the previous one's

    def log():  # in one process detectron2 keeps writing to the log.txt it opened first (now moved)
        return "".join(p.read_text() for p in (out / "log.txt", moved / "log.txt") if p.is_file())

    assert "--output-exists move: moved the previous run" in log()
    train_net.main(_args(train_net, "--resume", opts=["SOLVER.MAX_ITER", "3"], output_dir=out))
    assert "Starting training from iteration 2" in log()


@pytest.mark.slow
def test_two_processes_into_a_used_folder_both_stop(tmp_path):
    """--num-gpus 2: rank 0 checks the folder, and both processes stop with its message (the other
    one does not wait for a rank 0 that has stopped)."""
    _previous_run(tmp_path)
    overrides = list(TINY)
    overrides[overrides.index("DATASETS.TRAIN") + 1] = "('instfcn_shapes_train',)"
    overrides[overrides.index("DATASETS.TEST") + 1] = "()"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), "--config-file", CONFIG, "--num-gpus", "2",
           "--dist-url", "auto", *overrides, "OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode != 0
    assert f"OutputDirExistsError: OUTPUT_DIR {tmp_path} already holds a training run" in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "config.yaml").read_text() == "# the previous run's\n"
