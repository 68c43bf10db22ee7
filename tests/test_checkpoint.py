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
