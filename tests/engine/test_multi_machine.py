"""tools/train_net.py across machines, simulated on localhost: every "machine" is one
``train_net.py`` process (``--num-machines 2 --machine-rank 0|1 --dist-url tcp://127.0.0.1:PORT``,
gloo on the CPU) with its own OUTPUT_DIR unless a test shares one.

* a tiny InstanceFCN trains on the built-in synthetic shapes; only rank 0 writes checkpoints;
* every evaluator kind gives the same numbers for the same weights with one process and with two
  machines (``--eval-only``, ``OUTPUT_DIR/inference/results.json``): segment-proposal AR
  (InstanceFCN), region mAP and COCO AP and the mean IU against labels from the instances (BiSeg
  on an SBD-layout ``sbd_val``), Cityscapes AP (FCIS on a tiny Cityscapes tree, detectron2's own
  ``cityscapes_fine_instance_seg_val``); the datasets are found through ``DETECTRON2_DATASETS``
  and ``INSTFCN_D2_CACHE``, as on real machines;
* a machine killed mid-run (SIGKILL of its process group) stops the other within
  ``--dist-timeout-minutes`` with a message naming the lost peer, and ``--resume`` on both
  continues from the last checkpoint; a hung machine (SIGSTOP) stops the other after the timeout;
  a ``--resume`` where the machines find different checkpoints stops both with a message;
* under torchrun, one process per node, with ``--dist-url env://``.

Each subprocess runs on one thread (OMP_NUM_THREADS=1): the same for the 1- and 2-process runs,
and no oversubscription of a 2-core machine. Every wait is bounded; leftover processes are killed.
"""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, load_script
from tiny_models import FCIS_HEADS, TINY_CHECKPOINT_MODELS, TINY_TRUNK

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TRAIN_NET = REPO_ROOT / "tools" / "train_net.py"
RUN_TIMEOUT = 420  # seconds one run (its processes together) may take before the test fails

# name: (config, model overrides); all on the tests' tiny 8-wide R18 trunk (tiny_models.TINY_TRUNK)
MODELS = {
    "instance_fcn": ("configs/shapes/instance_fcn_R18_cpu.yaml", TINY_CHECKPOINT_MODELS["instance_fcn"][1]),
    "biseg_voc": (
        "configs/shapes/biseg_fused_7_9_R18_cpu.yaml",
        TINY_CHECKPOINT_MODELS["biseg"][1]
        + ["MODEL.ROI_HEADS.NUM_CLASSES", "20", "MODEL.BISEG.SEM_SEG_SOURCE", "instances"],
    ),
    "fcis_cityscapes": ("configs/shapes/fcis_R18_cpu.yaml", FCIS_HEADS + ["MODEL.ROI_HEADS.NUM_CLASSES", "8"]),
}
# A few iterations of 96-px crops on the built-in synthetic shapes (instfcn_shapes_train).
TRAIN = [
    "DATASETS.TRAIN", "('instfcn_shapes_train',)", "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160", "INSTFCN.TRAIN_CROP_SIZE", "96",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
SBD_IMAGES = 5  # odd: the inference sampler splits them 3 + 2
SHAPE_TO_VOC = {1: 15, 2: 12, 3: 8, 4: 7}  # circle, square, triangle, ring -> person, dog, cat, car
CITYSCAPES = "cityscapes_fine_instance_seg_val"


# ---------------------------------------------------------------------------------------------
# The machines


_started = []  # every Popen of this module, killed (its process group) at the end if still alive


@pytest.fixture(scope="module", autouse=True)
def _kill_leftovers():
    yield
    for proc in _started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_sbd_val(datasets, cache, scratch):
    """sbd_val as datasets/prepare_sbd.py leaves it (instfcn_d2.data.sbd): images under
    ``$DETECTRON2_DATASETS/benchmark_RELEASE/dataset/img``, the COCO-format JSON (the 20 VOC
    categories) and the semantic labels under ``$INSTFCN_D2_CACHE/sbd``; the images are synthetic
    shapes, their classes mapped to VOC classes."""
    from instfcn_d2.data.sbd import VOC_CLASSES
    from instfcn_d2.data.synthetic import generate_synthetic_shapes

    data = json.loads(generate_synthetic_shapes(scratch, "val", SBD_IMAGES, image_size=96, seed=3).read_text())
    for ann in data["annotations"]:
        ann["category_id"] = SHAPE_TO_VOC[ann["category_id"]]
    data["categories"] = [{"id": i + 1, "name": name} for i, name in enumerate(VOC_CLASSES)]
    images = datasets / "benchmark_RELEASE" / "dataset" / "img"
    images.mkdir(parents=True)
    for image in data["images"]:
        shutil.copy(scratch / "val" / image["file_name"], images / image["file_name"])
    annotations, labels = cache / "sbd" / "annotations", cache / "sbd" / "sem_seg" / "val"
    annotations.mkdir(parents=True)
    (annotations / "sbd_val.json").write_text(json.dumps(data))
    labels.mkdir(parents=True)  # semantic labels: 0 background, the VOC class ids
    lut = np.arange(256, dtype=np.uint8)
    for shape, voc in SHAPE_TO_VOC.items():
        lut[shape] = voc
    for image in data["images"]:
        name = image["file_name"]
        Image.fromarray(lut[np.asarray(Image.open(scratch / "sem_val" / name))]).save(
            labels / (Path(name).stem + ".png")
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The machines' environment: a datasets root with a tiny Cityscapes tree and SBD images, a
    cache of its own (the synthetic shapes are generated there once, the SBD JSON is there)."""
    root = tmp_path_factory.mktemp("machines")
    datasets, cache = root / "datasets", root / "cache"
    write_cityscapes_tree = load_script("tests/data/test_cityscapes.py").write_cityscapes_tree
    write_cityscapes_tree(datasets / "cityscapes")
    _write_sbd_val(datasets, cache, root / "shapes")
    env = dict(
        os.environ, INSTFCN_D2_CACHE=str(cache), DETECTRON2_DATASETS=str(datasets),
        CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
    )  # fmt: skip
    return SimpleNamespace(root=root, env=env)


def _command(model, output_dir, *opts, flags=(), rank=None, port=None):
    config, model_opts = MODELS[model]
    cmd = [sys.executable, str(TRAIN_NET), "--config-file", str(REPO_ROOT / config), *flags]
    if rank is not None:
        cmd += ["--num-machines", "2", "--machine-rank", str(rank), "--dist-url", f"tcp://127.0.0.1:{port}"]
    return cmd + [*TINY_TRUNK, *model_opts, *opts, "OUTPUT_DIR", str(output_dir)]


def _start(world, cmd, console):
    """Start one "machine": its own session (so that its process group, the spawned worker
    included, can be killed as a whole); stdout and stderr to ``console`` (outside OUTPUT_DIR)."""
    with open(console, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=world.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc.console = console
    _started.append(proc)
    return proc


def _start_machines(world, model, output_dirs, *opts, flags=()):
    """Rank 0 and rank 1 of a 2-machine run; ``output_dirs``: one per rank (or twice the same)."""
    port = _free_port()
    return [
        _start(world, _command(model, out, *opts, flags=flags, rank=rank, port=port), f"{out}.console.txt")
        for rank, out in enumerate(output_dirs)
    ]


def _tail(proc, n=4000):
    with open(proc.console, errors="replace") as f:
        return f"--- {proc.console} ---\n" + f.read()[-n:]


def _wait(procs, timeout=RUN_TIMEOUT):
    """Exit codes of ``procs``; all are killed and the test fails when they take over ``timeout`` s."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"still running after {timeout} s:\n" + "\n".join(_tail(p) for p in procs))


def _assert_ok(procs, codes):
    assert codes == [0] * len(procs), "\n".join(_tail(p) for p in procs)


# ---------------------------------------------------------------------------------------------
# Training: only rank 0 writes checkpoints


@pytest.fixture(scope="module")
def trained(world):
    """The tiny InstanceFCN trained 4 iterations on two machines, a checkpoint every 2; each rank
    with its own OUTPUT_DIR. Returns ``(rank 0's folder, rank 1's folder, processes, exit codes)``."""
    outs = [world.root / "train" / "rank0", world.root / "train" / "rank1"]
    outs[0].parent.mkdir()
    procs = _start_machines(
        world, "instance_fcn", outs, *TRAIN, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"
    )
    return outs[0], outs[1], procs, _wait(procs)


@pytest.mark.slow
def test_two_machines_train_and_only_rank_0_writes_checkpoints(trained):
    out0, out1, procs, codes = trained
    _assert_ok(procs, codes)
    assert {p.name for p in out0.glob("*.pth")} == {"model_0000001.pth", "model_0000003.pth", "model_final.pth"}
    assert (out0 / "last_checkpoint").read_text().strip() == "model_final.pth"
    # rank 1 writes its log, nothing else: no checkpoint, no last_checkpoint, no metrics, no config
    assert sorted(p.name for p in out1.iterdir()) == ["log.txt.rank1"], sorted(out1.iterdir())
    assert "Rank of current process: 0. World size: 2" in (out0 / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (out1 / "log.txt.rank1").read_text()
    rows = [json.loads(line) for line in open(out0 / "metrics.json")]
    assert [r["iteration"] for r in rows if "total_loss" in r][-1] == 3


# ---------------------------------------------------------------------------------------------
# Evaluation: the same numbers with one process and with two machines


def _box_filling_weights(world, model):
    """A checkpoint of the class-aware ``model`` (FCIS or BiSeg) whose detections can match the
    ground truth without training: the seeded initialisation, with the inside / outside score maps
    made constant (inside 3 for every foreground class, outside -3), so that every RoI scores
    every class alike and its mask fills its box, and the box deltas 0. Its AP is small, not 0
    (at an untrained initialisation every AP is 0, and 0 with one process and with two tells
    little), and its many equal scores make the evaluators' order of gathered images matter."""
    import torch

    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.engine import Trainer

    path = world.root / f"{model}_box_filling.pth"
    if path.is_file():
        return path
    config, model_opts = MODELS[model]
    cfg = get_instfcn_cfg(str(REPO_ROOT / config), TINY_TRUNK + model_opts)
    torch.manual_seed(0)
    net = Trainer.build_model(cfg)
    C = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    with torch.no_grad():
        for name, module in net.named_modules():
            # k*k channels per output channel: inside 0..C (C: background), outside C+1..2C+1
            if name.endswith(("inside_outside_maps.conv", "fine_maps.conv")):
                kk = module.bias.numel() // (2 * (C + 1))
                module.weight.zero_()
                module.bias.zero_()
                module.bias[: C * kk] = 3.0
                module.bias[(C + 1) * kk :] = -3.0
            elif name.endswith("box_maps.conv"):
                module.weight.zero_()
                module.bias.zero_()
    torch.save({"model": net.state_dict()}, path)
    return path


def _same(a, b, where="results"):
    """``a`` equals ``b`` (JSON: dicts, lists, strings, numbers): the same keys in the same order,
    the same lists, numbers within 1e-9, NaN where NaN."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(
            b
        ), f"{where}: {len(a)} items with 1 process, {len(b) if isinstance(b, list) else b!r} with 2 machines"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{where}: NaN != {b!r}"
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert b == pytest.approx(a, abs=1e-9, rel=0), f"{where}: {a!r} with 1 process, {b!r} with 2 machines"
    else:
        assert a == b, f"{where}: {a!r} with 1 process, {b!r} with 2 machines"


def _numbers(results):
    if isinstance(results, dict):
        return [x for v in results.values() for x in _numbers(v)]
    return [results] if isinstance(results, (int, float)) and not math.isnan(results) else []


# many detections per image (every class of every RoI), so that the box-filling weights find some objects
MANY_DETECTIONS = ["MODEL.RPN.POST_NMS_TOPK_TEST", "300", "MODEL.FCIS.DETECTIONS_PER_IMAGE", "1000"]
# evaluation: (model, weights, DATASETS.TEST, overrides, the result keys of each dataset)
EVALUATIONS = {
    # InstanceFCN: segment-proposal AR on both test sets, of the weights the two machines trained
    "segment_proposals": ("instance_fcn", "trained", ("sbd_val", CITYSCAPES), [], {"proposals"}),
    # BiSeg on an SBD dataset: region mAP (VOC), COCO bbox / segm, mean IU from the instances
    "region_ap_coco_semseg": (
        "biseg_voc",
        "box_filling",
        ("sbd_val",),
        MANY_DETECTIONS,
        {"segm_voc", "bbox", "segm", "sem_seg"},
    ),
    # FCIS on Cityscapes: cityscapesscripts' AP
    "cityscapes": ("fcis_cityscapes", "box_filling", (CITYSCAPES,), MANY_DETECTIONS, {"segm"}),
}


def _side_files(folder):
    """The JSON files the evaluators wrote into ``folder/inference/<dataset>/`` (predictions,
    per-class and per-image statistics), with the main process's temporary folder names removed."""
    files = {}
    for path in sorted((folder / "inference").glob("*/*.json")):
        text = re.sub(r"cityscapes_eval_[A-Za-z0-9_]+", "cityscapes_eval_", path.read_text())
        files[str(path.relative_to(folder))] = json.loads(text)
    return files


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EVALUATIONS))
def test_evaluation_gives_the_same_numbers_with_one_process_and_two_machines(name, world, trained, tmp_path):
    model, weights, datasets, extra, keys = EVALUATIONS[name]
    if weights == "trained":
        _assert_ok(trained[2], trained[3])
        weights = trained[0] / "model_final.pth"
    else:
        weights = _box_filling_weights(world, model)
    opts = [
        "DATASETS.TEST",
        repr(tuple(datasets)),
        "MODEL.WEIGHTS",
        str(weights),
        "DATALOADER.NUM_WORKERS",
        "0",
        *extra,
    ]
    single_out, outs = tmp_path / "single", [tmp_path / "rank0", tmp_path / "rank1"]
    # both runs at once: 3 single-threaded processes
    single = _start(world, _command(model, single_out, *opts, flags=("--eval-only",)), f"{single_out}.console.txt")
    pair = _start_machines(world, model, outs, *opts, flags=("--eval-only",))
    _assert_ok([single, *pair], _wait([single, *pair]))
    assert "Rank of current process: 0. World size: 2" in (outs[0] / "log.txt").read_text()

    one = json.loads((single_out / "inference" / "results.json").read_text())
    two = json.loads((outs[0] / "inference" / "results.json").read_text())
    assert not (outs[1] / "inference").exists()  # the main process evaluates and writes
    for results in [one[d] for d in datasets] if len(datasets) > 1 else [one]:
        assert set(results) == keys, results
    assert any(x > 0 for x in _numbers(one)), one  # numbers that can differ
    print(f"{name}: {json.dumps(one)}")
    _same(one, two)
    # ... from the same predictions, image for image, in the same order
    side_one, side_two = _side_files(single_out), _side_files(outs[0])
    assert side_one and list(side_one) == list(side_two)
    for path in side_one:
        _same(side_one[path], side_two[path], path)


# ---------------------------------------------------------------------------------------------
# A machine lost mid-run, and the resume


TIMEOUT_MINUTES = 0.25
BOUND = 3 * TIMEOUT_MINUTES * 60  # seconds the survivor may take to stop after losing its peer


def _wait_for(condition, procs, what, timeout=RUN_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            pytest.fail(f"{what}: not seen\n" + "\n".join(_tail(p) for p in procs))
        time.sleep(0.2)


def _survivor_stops(procs, signum):
    """Send ``signum`` to machine 1 (its process group); returns (rank 0's exit code, the seconds
    it took to exit, its console). Fails when rank 0 is still running after BOUND seconds."""
    os.killpg(procs[1].pid, signum)
    sent = time.monotonic()
    try:
        code = procs[0].wait(BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)
        pytest.fail(f"rank 0 still running {BOUND:g} s after rank 1 got signal {signum}:\n{_tail(procs[0])}")
    took = time.monotonic() - sent
    os.killpg(procs[1].pid, signal.SIGKILL)  # a stopped machine too
    procs[1].wait(30)
    print(f"rank 0 exited {took:.1f} s after rank 1 got {signal.Signals(signum).name} (exit code {code})")
    return code, took, open(procs[0].console).read()


def _last_checkpoint_iteration(out):
    name = (out / "last_checkpoint").read_text().strip()
    assert (out / name).is_file(), name
    return int(name[len("model_") : -len(".pth")])


@pytest.mark.slow
def test_lost_machine_stops_the_other_with_a_message_and_resume_continues(world, tmp_path):
    """Machine 1 killed (SIGKILL of its process group: its connections close): rank 0 stops at its
    next collective, naming the peer. Both restarted with --resume continue from the last
    checkpoint. Then machine 1 hangs (SIGSTOP: its connections stay open, nothing answers): rank 0
    stops after --dist-timeout-minutes, saying that its peer stopped answering."""
    out = tmp_path / "run"  # one OUTPUT_DIR (a shared file system): both ranks resume from it
    opts = [*TRAIN, "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_ITER", "5000"]
    flags = ("--dist-timeout-minutes", str(TIMEOUT_MINUTES))
    procs = _start_machines(world, "instance_fcn", [out, out], *opts, flags=flags)
    _wait_for(lambda: (out / "last_checkpoint").is_file(), procs, "a checkpoint")

    code, took, console = _survivor_stops(procs, signal.SIGKILL)
    assert code != 0, console[-3000:]
    message = "lost a peer of the distributed run: rank 1 at 127.0.0.1:"
    assert f"LostPeerError: {message}" in console, console[-3000:]
    assert "closed its connection" in console and "this process (rank 0 of 2) stops" in console
    assert message in (out / "log.txt").read_text()  # logged too

    # both machines again with --resume: they continue from the last checkpoint written
    saved = _last_checkpoint_iteration(out)
    start = f"Starting training from iteration {saved + 1}"
    procs = _start_machines(world, "instance_fcn", [out, out], *opts, flags=(*flags, "--resume"))
    logs = [out / "log.txt", out / "log.txt.rank1"]
    _wait_for(lambda: all(start in log.read_text() for log in logs), procs, start)
    _wait_for(lambda: _last_checkpoint_iteration(out) > saved, procs, "a checkpoint after the resume")

    code, took, console = _survivor_stops(procs, signal.SIGSTOP)
    assert code != 0, console[-3000:]
    assert took > TIMEOUT_MINUTES * 60 * 0.9, "it waited for the timeout"
    assert (
        f"LostPeerError: lost a peer of the distributed run: rank 1 stopped answering for {TIMEOUT_MINUTES:g} minute(s)"
        in console
    ), console[-3000:]


@pytest.mark.slow
def test_resume_stops_every_machine_when_they_find_different_checkpoints(world, trained, tmp_path):
    """Rank 0's OUTPUT_DIR holds the training's checkpoints, rank 1's (its own disk) none: rank 1
    would start from iteration 0 while rank 0 continues. Both stop before training, saying so."""
    out0, _, procs, codes = trained
    _assert_ok(procs, codes)
    outs = [tmp_path / "rank0", tmp_path / "rank1"]
    shutil.copytree(out0, outs[0])
    machines = _start_machines(world, "instance_fcn", outs, *TRAIN, "SOLVER.MAX_ITER", "6", flags=("--resume",))
    codes = _wait(machines)
    for proc, code in zip(machines, codes):
        console = open(proc.console).read()
        assert code != 0 and "ResumeMismatchError" in console, console[-3000:]
        assert "rank 0: model_final.pth in" in console and "rank 1: no checkpoint in" in console
    assert "Starting training" not in (outs[0] / "log.txt").read_text().split("Rank of current process")[-1]


@pytest.mark.slow
def test_torchrun_one_process_per_node(world, tmp_path):
    """Under torchrun (one process per node) train_net.py joins the process group through
    torchrun's environment: ``--dist-url env://`` and the node rank as ``--machine-rank``."""
    port = _free_port()
    outs = [tmp_path / "rank0", tmp_path / "rank1"]
    procs = []
    for rank, out in enumerate(outs):
        cmd = _command(
            "instance_fcn", out, *TRAIN, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
            flags=("--num-machines", "2", "--machine-rank", str(rank), "--dist-url", "env://"),
        )  # fmt: skip
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                    "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
        procs.append(_start(world, torchrun + cmd[1:], f"{out}.console.txt"))
    _assert_ok(procs, _wait(procs))
    assert "Rank of current process: 0. World size: 2" in (outs[0] / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (outs[1] / "log.txt.rank1").read_text()
    assert (outs[0] / "model_final.pth").is_file() and not list(outs[1].glob("*.pth"))


# ---------------------------------------------------------------------------------------------
# The pieces, in this process: instfcn_d2.engine.launch and the Cityscapes evaluator


GLOO_CLOSED = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:12482: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)
GLOO_TIMEOUT = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
    "Timed out waiting 15000ms for recv operation to complete"
)


def test_lost_peer_message_names_the_peer_and_the_checkpoint(tmp_path):
    from instfcn_d2.engine.launch import is_lost_peer_error, lost_peer_message

    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    closed = lost_peer_message(
        RuntimeError(GLOO_CLOSED), timeout_minutes=10, output_dir=str(tmp_path), rank=0, world_size=2
    )
    assert closed.startswith("lost a peer of the distributed run: rank 1 at 127.0.0.1:12482 closed its connection")
    assert "this process (rank 0 of 2) stops" in closed and "Backend error: [/__w" in closed
    assert f"--resume, which continues from OUTPUT_DIR/last_checkpoint ({tmp_path / 'model_0000009.pth'})" in closed
    hung = lost_peer_message(RuntimeError(GLOO_TIMEOUT), timeout_minutes=0.25, rank=3, world_size=8)
    assert hung.startswith("lost a peer of the distributed run: one of ranks 0-7 stopped answering for 0.25 minute(s)")
    assert "(rank 3 of 8)" in hung
    assert is_lost_peer_error(RuntimeError(GLOO_CLOSED)) and is_lost_peer_error(RuntimeError(GLOO_TIMEOUT))
    assert not is_lost_peer_error(RuntimeError("CUDA out of memory")) and not is_lost_peer_error(
        ValueError(GLOO_CLOSED)
    )


def test_report_lost_peer_raises_a_lost_peer_error_only_in_a_distributed_run(monkeypatch, caplog):
    from detectron2.utils import comm

    from instfcn_d2.engine.launch import LostPeerError, report_lost_peer

    error = RuntimeError(GLOO_CLOSED)
    with pytest.raises(RuntimeError) as info, report_lost_peer(timeout_minutes=1):
        raise error  # one process: nothing to add
    assert info.value is error
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    with pytest.raises(ValueError), report_lost_peer(timeout_minutes=1):
        raise ValueError("a bug of ours")  # not the backend's
    with pytest.raises(
        LostPeerError, match=r"^lost a peer of the distributed run: rank 0 at 127\.0\.0\.1:12482"
    ) as info:
        with report_lost_peer(timeout_minutes=1):
            raise error
    assert info.value.__cause__ is error
    assert "this process (rank 1 of 2) stops" in caplog.text


def test_dist_timeout_flag(monkeypatch):
    import sys as _sys
    from datetime import timedelta

    from instfcn_d2.engine import launch as launch_module

    train_net = load_script("tools/train_net.py")
    parser = train_net.argument_parser()
    assert parser.parse_args([]).dist_timeout_minutes == launch_module.DEFAULT_DIST_TIMEOUT_MINUTES == 10
    assert parser.parse_args(["--dist-timeout-minutes", "0.25"]).dist_timeout_minutes == 0.25
    for bad in ("0", "-1", "nan", "inf", "ten"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--dist-timeout-minutes", bad])

    # run() passes it to launch as a timedelta: detectron2's spawn for several processes per
    # machine, this process itself as the worker for one
    calls = []
    monkeypatch.setattr("detectron2.engine.launch", lambda *a, **k: calls.append(("spawn", a, k)))
    monkeypatch.setattr(
        _sys.modules["detectron2.engine.launch"], "_distributed_worker",
        lambda *a: calls.append(("worker", a)) or a[1](*a[6]),
    )  # fmt: skip
    monkeypatch.setattr(train_net, "main", lambda args: {"segm": {"AP": 1.0}})
    train_net.run(["--num-gpus", "2", "--dist-timeout-minutes", "3"])
    assert calls[-1][0] == "spawn" and calls[-1][2]["timeout"] == timedelta(minutes=3)
    result = train_net.run(["--num-machines", "2", "--machine-rank", "1", "--dist-url", "tcp://127.0.0.1:1234"])
    kind, (local_rank, _, world_size, per_machine, machine_rank, url, _, timeout) = calls[-1]
    assert (kind, local_rank, world_size, per_machine, machine_rank, url) == (
        "worker",
        0,
        2,
        1,
        1,
        "tcp://127.0.0.1:1234",
    )
    assert timeout == timedelta(minutes=10) and result == {"segm": {"AP": 1.0}}
    with pytest.raises(ValueError, match="--dist-url tcp://HOST:PORT"):
        train_net.run(["--num-machines", "2", "--machine-rank", "1", "--dist-url", "auto"])


def test_write_eval_results_keeps_every_digit_and_nan(tmp_path):
    from instfcn_d2.engine.launch import write_eval_results

    results = {
        "segm": {"AP": 1 / 3, "APl": float("nan"), "AP50": np.float32(0.1)},
        "sem_seg": {"mIoU": np.float64(2 / 7)},
    }
    path = write_eval_results(results, str(tmp_path))
    assert path == str(tmp_path / "inference" / "results.json")
    back = json.loads(Path(path).read_text())
    assert back["segm"]["AP"] == 1 / 3 and math.isnan(back["segm"]["APl"])
    assert back["segm"]["AP50"] == float(np.float32(0.1)) and back["sem_seg"]["mIoU"] == 2 / 7


def test_resume_consistency_check(monkeypatch):
    from detectron2.utils import comm

    from instfcn_d2.engine.launch import ResumeMismatchError, check_resume_consistency

    class Checkpointer:
        save_dir = "/out"

        def has_checkpoint(self):
            return True

        def get_checkpoint_file(self):
            return "/out/model_0000009.pth"

    check_resume_consistency(Checkpointer())  # one process: nothing to compare
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "all_gather", lambda data: [data, data])
    check_resume_consistency(Checkpointer())
    monkeypatch.setattr(comm, "all_gather", lambda data: [data, ("", "/local/out")])
    with pytest.raises(
        ResumeMismatchError, match=r"rank 0: model_0000009\.pth in /out; rank 1: no checkpoint in /local/out"
    ):
        check_resume_consistency(Checkpointer())


@pytest.fixture(scope="module")
def cityscapes_val(tmp_path_factory):
    """The tiny Cityscapes tree of tests/data/test_cityscapes.py, registered under a throw-away name."""
    import uuid

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    module = load_script("tests/data/test_cityscapes.py")
    image_dir, gt_dir = module.write_cityscapes_tree(tmp_path_factory.mktemp("cityscapes"))
    name = f"instfcn_test_cityscapes_val_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(
        name, lambda: load_cityscapes_instances(str(image_dir), str(gt_dir), from_json=True, to_polygons=True)
    )
    builtin = MetadataCatalog.get(CITYSCAPES)
    MetadataCatalog.get(name).set(
        image_dir=str(image_dir), gt_dir=str(gt_dir), evaluator_type="cityscapes_instance",
        thing_classes=list(builtin.thing_classes),
    )  # fmt: skip
    yield name, module
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_cityscapes_evaluator_gathers_in_memory_and_writes_detectron2s_files(cityscapes_val, tmp_path, monkeypatch):
    """detectron2's evaluator writes every process's files into one temporary folder of the main
    process, so it refuses several machines. The project's keeps the predictions in memory; the
    main process writes the very files detectron2's would (names, PNG bytes, text lines), and two
    machines' halves give the numbers of one process."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import CityscapesInstanceEvaluator as D2CityscapesInstanceEvaluator
    from detectron2.structures import Instances
    from detectron2.utils import comm

    from instfcn_d2.evaluation.cityscapes import CityscapesInstanceEvaluator

    name, module = cityscapes_val
    records = DatasetCatalog.get(name)
    rng = np.random.default_rng(0)

    def predictions(record):  # the ground truth (one instance dropped), noisy, and a random mask
        gt = module.gt_instances(record)[1:]
        masks = [m for _, m in gt] + [rng.random((module.H, module.W)) > 0.7]
        inst = Instances((module.H, module.W))
        inst.pred_classes = torch.tensor([c for c, _ in gt] + [2])
        inst.scores = torch.tensor(rng.uniform(0.1, 0.9, len(masks)), dtype=torch.float32)
        inst.pred_masks = torch.from_numpy(np.stack(masks))
        return {"instances": inst}

    inputs = [{"file_name": r["file_name"], "image_id": r["image_id"]} for r in records]
    outputs = [predictions(r) for r in records]

    d2 = D2CityscapesInstanceEvaluator(name)
    d2.reset()
    d2.process(inputs, outputs)
    ours = CityscapesInstanceEvaluator(name, output_dir=str(tmp_path / "one"))
    ours.reset()
    ours.process(inputs, outputs)
    ours._write_predictions(ours._predictions, str(tmp_path))
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert written == sorted(os.listdir(d2._temp_dir)) and len(written) == len(records) + sum(
        len(o["instances"]) for o in outputs
    )
    for file_name in written:
        assert (tmp_path / file_name).read_bytes() == (Path(d2._temp_dir) / file_name).read_bytes(), file_name
    d2._working_dir.cleanup()

    one = ours.evaluate()
    assert 0 < one["segm"]["AP"] < 100

    # two machines: reset() needs no shared folder; each evaluator processes its shard, the main
    # process's gather returns both
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_local_size", lambda: 1)
    shards = [CityscapesInstanceEvaluator(name, output_dir=str(tmp_path / "two")) for _ in range(2)]
    for evaluator, part in zip(shards, (slice(0, 2), slice(2, None))):
        evaluator.reset()
        evaluator.process(inputs[part], outputs[part])
    monkeypatch.setattr(comm, "get_world_size", lambda: 1)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [shards[0]._predictions, shards[1]._predictions])
    assert shards[0].evaluate() == one
