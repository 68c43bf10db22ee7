"""instfcn_d2.checkpoint: files that are not checkpoints get a clear error naming them; checkpoints
are written atomically; a resume skips damaged checkpoints for the previous good one."""
import logging
import os

import pytest
import torch
from torch import nn

from instfcn_d2.checkpoint import InstFCNCheckpointer, NotACheckpointError, StrictDetectionCheckpointer


class _Counter:
    """A checkpointable (as the trainer is): its state is one number."""

    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def _checkpointer(folder, counter=None, seed=0):
    return InstFCNCheckpointer(_model(seed), str(folder), save_to_disk=True, counter=counter or _Counter())


def _files(folder, kind):
    """A file of ``kind`` that is not a loadable checkpoint."""
    path = folder / f"{kind}.pth"
    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "garbage":
        path.write_bytes(bytes(range(7, 256)) * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": _model().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:300])
    return path


# ---- not a checkpoint ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,why", [
    ("text", "it is a text file"),
    ("garbage", "it is neither a zip archive nor torch's legacy format"),
    ("empty", "the file is empty"),
    ("truncated", "the zip archive is truncated or damaged"),
])
@pytest.mark.parametrize("cls", [InstFCNCheckpointer, StrictDetectionCheckpointer])
def test_a_file_that_is_not_a_checkpoint_is_named_in_a_clear_error(tmp_path, kind, why, cls):
    path = _files(tmp_path, kind)
    with pytest.raises(NotACheckpointError) as info:
        cls(_model()).load(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path} is not a checkpoint: {why}"), msg
    assert "weights_only" not in msg  # torch's advice does not apply to such a file
    assert "MODEL.WEIGHTS" in msg


def test_a_real_checkpoint_still_loads_and_a_failed_load_does_not_block_the_next(tmp_path):
    source = _checkpointer(tmp_path, seed=1)
    source.save("model_0000001")
    target = StrictDetectionCheckpointer(_model(seed=2))
    with pytest.raises(NotACheckpointError):
        target.load(str(_files(tmp_path, "text")))
    target.load(str(tmp_path / "model_0000001.pth"))
    assert torch.equal(target.model.weight, source.model.weight)


# ---- atomic writes -----------------------------------------------------------------------------------
def test_save_writes_through_a_temporary_file_and_a_killed_save_leaves_nothing_named_like_a_checkpoint(
    tmp_path, monkeypatch
):
    ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000001")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def killed_midway(obj, f, *args, **kwargs):  # half the bytes, then the process "dies"
        f.write(good[: len(good) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    for name in ("model_0000003", "model_0000001"):  # a new file, and overwriting a good one
        with pytest.raises(KeyboardInterrupt):
            ckpt.save(name)
    assert not (tmp_path / "model_0000003.pth").exists()
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no temporary left


# ---- resume ------------------------------------------------------------------------------------------
def _three_checkpoints(folder):
    """model_0000001 / 3 / 5 (counter 1, 3, 5), oldest first; last_checkpoint names model_0000005."""
    counter = _Counter()
    ckpt = _checkpointer(folder, counter)
    for i, name in enumerate(("model_0000001", "model_0000003", "model_0000005")):
        counter.value = 2 * i + 1
        ckpt.save(name)
        os.utime(folder / f"{name}.pth", (1000 + i, 1000 + i))  # distinct modification times
    return ckpt


def _resume(folder):
    counter = _Counter(-1)
    _checkpointer(folder, counter, seed=5).resume_or_load("", resume=True)
    return counter.value


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_resume_skips_a_damaged_newest_checkpoint_for_the_previous_good_one(tmp_path, caplog, damage):
    _three_checkpoints(tmp_path)
    newest = tmp_path / "model_0000005.pth"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:500])
    else:
        newest.write_bytes(os.urandom(2000))
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.checkpoint"):
        assert _resume(tmp_path) == 3
    assert f"skipping damaged checkpoint {newest}" in caplog.text
    assert "resumed from" in caplog.text and "model_0000003.pth" in caplog.text


@pytest.mark.parametrize("content", ["", "   \n", "model_0000009.pth"])
def test_resume_with_an_empty_or_dangling_last_checkpoint_takes_the_newest_good_one(tmp_path, caplog, content):
    _three_checkpoints(tmp_path)
    (tmp_path / "model_0000005.pth").write_bytes(b"")  # and the newest is damaged too
    (tmp_path / "last_checkpoint").write_text(content)
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.checkpoint"):
        assert _resume(tmp_path) == 3
    assert ("is empty" if not content.strip() else "names model_0000009.pth, which does not exist") in caplog.text
    assert "model_0000005.pth" in caplog.text


def test_resume_fails_clearly_when_no_checkpoint_loads(tmp_path):
    _three_checkpoints(tmp_path)
    for name in ("model_0000001", "model_0000003", "model_0000005"):
        (tmp_path / f"{name}.pth").write_text("gone")
    with pytest.raises(NotACheckpointError, match=r"none of its checkpoints loads \(.*model_0000005.pth, .*model_0000003.pth"):
        _resume(tmp_path)


def test_a_good_last_checkpoint_resumes_as_before_and_no_resume_loads_the_weights(tmp_path, caplog):
    ckpt = _three_checkpoints(tmp_path)
    assert ckpt.has_checkpoint() and ckpt.get_checkpoint_file() == str(tmp_path / "model_0000005.pth")
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.checkpoint"):
        assert _resume(tmp_path) == 5
    # Other tests may leave fvcore's INFO lines reaching caplog; only warnings matter here.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    counter = _Counter(-1)
    _checkpointer(tmp_path, counter).resume_or_load(str(tmp_path / "model_0000001.pth"), resume=False)
    assert counter.value == -1  # weights only, as detectron2


# ---- files that unpickle to something other than a checkpoint -------------------------------------
def _lightning_like():
    return {"state_dict": _model().state_dict(), "epoch": 3}


@pytest.mark.parametrize("name,content,what", [
    ("list", lambda: [torch.zeros(2)], "a list"),
    ("tensor", lambda: torch.zeros(3, 4), "a tensor of shape (3, 4)"),
    ("module", lambda: _model(), "a whole pickled model (torch.nn.modules.linear.Linear)"),
    ("strings", lambda: {"weights": "see the README", "author": "me"}, "a dict of strings ('weights': 'see the README', 'author': 'me')"),
    ("not_tensors", lambda: {"weights": [1.0, 2.0], "epoch": 3}, "a dict without 'model' whose values are not tensors ('weights': a list, 'epoch': an int)"),
    ("nested", _lightning_like, "a dict without 'model' whose values are not tensors ('state_dict': a dict, 'epoch': an int)"),
    ("model_list", lambda: {"model": [1, 2]}, "a dict whose 'model' entry is a list"),
    ("model_strings", lambda: {"model": {"weight": "w"}}, "a dict whose 'model' entry holds values that are not tensors ('weight': 'w')"),
    ("empty", lambda: {}, "an empty dict"),
])
def test_a_file_holding_something_else_than_a_checkpoint_names_it_and_what_it_holds(tmp_path, name, content, what):
    """Each used to fail differently (AttributeError 'keys', Tensor.__contains__, torch's weights_only
    advice, 'Unsupported type found in checkpoint', or, for an empty dict, a silent non-load)."""
    from instfcn_d2.checkpoint import load_trained_weights

    path = tmp_path / f"{name}.pth"
    torch.save(content(), path)
    loaders = {
        "InstFCNCheckpointer": lambda: InstFCNCheckpointer(_model()).load(str(path)),
        "StrictDetectionCheckpointer": lambda: StrictDetectionCheckpointer(_model()).load(str(path)),
        "load_trained_weights": lambda: load_trained_weights(_model(), str(path)),
    }
    for loader, load in loaders.items():
        with pytest.raises(NotACheckpointError) as info:
            load()
        msg = str(info.value)
        assert msg.startswith(f"{path} holds {what}, not a checkpoint: a dict of tensors or {{'model': {{...}}}}"), (loader, msg)
        assert "weights_only" not in msg, loader
    if name == "module":
        assert "save model.state_dict() instead" in msg
    if name == "nested":
        assert "its 'state_dict' entry holds tensors: save that entry alone" in msg


def test_a_pickle_file_holding_a_list_names_it(tmp_path):
    import pickle

    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(NotACheckpointError, match=rf"^{path} holds a list, not a checkpoint"):
        StrictDetectionCheckpointer(_model()).load(str(path))


@pytest.mark.parametrize("wrap", [False, True])
def test_a_plain_state_dict_and_a_model_entry_still_load(tmp_path, wrap):
    source = _model(seed=3)
    path = tmp_path / "weights.pth"
    torch.save({"model": source.state_dict()} if wrap else source.state_dict(), path)
    from instfcn_d2.checkpoint import load_trained_weights

    target = _model(seed=4)
    load_trained_weights(target, str(path))
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


# ---- temporary files of interrupted saves ---------------------------------------------------------
def test_stale_temporary_files_of_interrupted_saves_are_removed_and_logged(tmp_path, caplog):
    from instfcn_d2.checkpoint import remove_stale_temporary_files

    stale = [".model_0000199.pth.k2j3h4_a.tmp", ".model_final.pth.abcdefgh.tmp", ".last_checkpoint.x1y2z3w4.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"\0" * 3000)
    kept = ["model_0000199.pth", ".notes.tmp", "metrics.json", ".config.yaml.abcdefgh.tmp"]
    for name in kept:
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="instfcn_d2.checkpoint"):
        removed = remove_stale_temporary_files(str(tmp_path))
    assert sorted(r.split(" (")[0] for r in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert f"removed 3 temporary file(s) left in {tmp_path} by an interrupted checkpoint save" in caplog.text
    assert ".model_0000199.pth.k2j3h4_a.tmp (0.0 MB)" in caplog.text


# ---- a resume for another number of classes -----------------------------------------------------------
class _Classifier(nn.Module):
    """A "model" with class-dependent parameters shaped as Mask R-CNN's: a score per class and
    background, 4 box deltas per class, and a class-agnostic trunk."""

    def __init__(self, num_classes, trunk=4):
        super().__init__()
        self.trunk = nn.Linear(3, trunk)
        self.cls_score = nn.Linear(trunk, num_classes + 1)
        self.bbox_pred = nn.Linear(trunk, 4 * num_classes)


def _classes_checkpointer(folder, num_classes, counter, record=True, trunk=4):
    torch.manual_seed(0)
    ckpt = InstFCNCheckpointer(_Classifier(num_classes, trunk), str(folder), save_to_disk=True, counter=counter)
    if record:
        ckpt.extra_data = {"num_classes": {"MODEL.ROI_HEADS.NUM_CLASSES": num_classes}}
    return ckpt


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "from_shapes"])
def test_a_resume_for_another_number_of_classes_stops_before_loading_naming_both(tmp_path, record):
    from instfcn_d2.checkpoint import CheckpointMismatchError

    _classes_checkpointer(tmp_path, 2, _Counter(7), record=record).save("model_0000001")
    if not record:  # a checkpoint written before the class count was recorded: read from the shapes
        assert "num_classes" not in torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    counter = _Counter(-1)
    resumed = _classes_checkpointer(tmp_path, 3, counter)
    before = resumed.model.cls_score.weight.clone()
    with pytest.raises(CheckpointMismatchError) as info:
        resumed.resume_or_load("", resume=True)
    msg = str(info.value)
    assert msg.startswith(f"cannot resume from {tmp_path / 'model_0000001.pth'}: the checkpoint in OUTPUT_DIR ({tmp_path}) "
                          "was trained for 2 classes, the config has MODEL.ROI_HEADS.NUM_CLASSES = 3"), msg
    assert "cls_score.weight: checkpoint (3, 4) vs model (4, 4)" in msg
    assert f"MODEL.WEIGHTS {tmp_path / 'model_0000001.pth'} (without --resume)" in msg
    assert counter.value == -1 and torch.equal(resumed.model.cls_score.weight, before)  # nothing loaded


def test_a_resume_with_the_same_classes_and_the_saved_record(tmp_path):
    _classes_checkpointer(tmp_path, 2, _Counter(7)).save("model_0000001")
    assert torch.load(tmp_path / "model_0000001.pth", weights_only=True)["num_classes"] == {"MODEL.ROI_HEADS.NUM_CLASSES": 2}
    counter = _Counter(-1)
    _classes_checkpointer(tmp_path, 2, counter).resume_or_load("", resume=True)
    assert counter.value == 7


def test_a_resume_into_a_changed_model_of_the_same_classes_stops_too(tmp_path):
    from instfcn_d2.checkpoint import CheckpointMismatchError

    _classes_checkpointer(tmp_path, 2, _Counter(7), trunk=4).save("model_0000001")
    with pytest.raises(CheckpointMismatchError, match=r"cannot resume from .*model_0000001.pth: its parameters do not "
                       r"fit the model built from this config \(4 parameter\(s\) of other shapes: trunk.weight"):
        _classes_checkpointer(tmp_path, 2, _Counter(-1), trunk=6).resume_or_load("", resume=True)


@pytest.mark.parametrize("m,shapes,expected", [
    (3, [((3, 8), (4, 8)), ((8, 8), (12, 8)), ((2, 8, 1, 1), (3, 8, 1, 1))], 2),  # Mask R-CNN heads
    (1, [((4, 8), (2, 8)), ((12, 8), (4, 8))], 3),  # ambiguous alone, not together
    (5, [((7 * 9, 8), (6 * 9, 8))], 6),  # FCIS: (classes + 1) x k^2 score maps
    (3, [((5, 8), (7, 8))], None),  # no class count gives both
    (3, [((3, 8), (4, 8)), ((4, 6), (4, 8))], None),  # an input size differs too: not a class count
])
def test_the_number_of_classes_is_read_from_the_shapes(m, shapes, expected):
    from instfcn_d2.checkpoint import _infer_num_classes

    assert _infer_num_classes([(f"p{i}", c, d) for i, (c, d) in enumerate(shapes)], m) == expected


def _register_shapes_with_classes(k):
    """The synthetic shapes' first ``k`` classes (the others' annotations dropped), as a dataset."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from instfcn_d2.data import register_synthetic_shapes
    from instfcn_d2.data.synthetic import SHAPE_CLASSES

    source = register_synthetic_shapes("resume_shapes", num_train=6, num_val=2, image_size=96)["train"]
    name = f"resume_shapes_{k}_classes"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [
            dict(r, annotations=[a for a in r["annotations"] if a["category_id"] < k]) for r in DatasetCatalog.get(source)
        ])
        MetadataCatalog.get(name).set(thing_classes=list(SHAPE_CLASSES[:k]), evaluator_type="coco")
    return name


@pytest.mark.slow
def test_train_net_resume_after_the_number_of_classes_changed_names_both(tmp_path):
    """Train 2 iterations on 2 classes, then --resume with the dataset's 3: detectron2 skipped the
    class-dependent weights and failed in SGD's step with tensor sizes; the resume now stops
    before loading, naming the checkpoint, its 2 classes and the config's 3."""
    import instfcn_d2  # noqa: F401
    from conftest import REPO_ROOT, load_tool
    from detectron2.engine import default_argument_parser

    from instfcn_d2.checkpoint import CheckpointMismatchError

    train_net = load_tool("train_net")

    def args(k, *flags, max_iter=2):
        return default_argument_parser().parse_args([
            "--config-file", str(REPO_ROOT / "configs" / "shapes" / "mask_rcnn_R18_FPN_GN_cpu.yaml"), *flags,
            "DATASETS.TRAIN", f"('{_register_shapes_with_classes(k)}',)", "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", str(k), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path),
        ])  # fmt: skip

    train_net.main(args(2))
    final = tmp_path / "model_final.pth"
    assert torch.load(final, weights_only=True)["num_classes"] == {"MODEL.ROI_HEADS.NUM_CLASSES": 2}
    with pytest.raises(CheckpointMismatchError) as info:
        train_net.main(args(3, "--resume", max_iter=4))  # 2 more iterations
    msg = str(info.value)
    assert msg.startswith(f"cannot resume from {final}: the checkpoint in OUTPUT_DIR ({tmp_path}) was trained for 2 "
                          "classes, the config has MODEL.ROI_HEADS.NUM_CLASSES = 3"), msg
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint (3, " in msg
