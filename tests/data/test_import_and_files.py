"""Importing instfcn_d2 registers the datasets without touching the file system, and the atomic
writers the converters share (instfcn_d2.data.files)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT

from instfcn_d2.data import files

_REPORT_REGISTRATION = """
import json
import instfcn_d2
from detectron2.data import DatasetCatalog, MetadataCatalog
names = ["instfcn_shapes_train", "instfcn_shapes_val", "coco128_train", "coco128_val", "sbd_train", "sbd_val"]
print(json.dumps({
    "registered": [n for n in names if n in DatasetCatalog.list()],
    "coco128_sem_seg_root": MetadataCatalog.get("coco128_val").sem_seg_root,
    "sbd_image_root": MetadataCatalog.get("sbd_val").image_root,
}))
"""


def test_import_registers_datasets_and_creates_nothing(tmp_path):
    cache, data, cwd = tmp_path / "no" / "cache", tmp_path / "no" / "data", tmp_path / "cwd"
    cwd.mkdir()
    env = dict(
        os.environ,
        INSTFCN_D2_CACHE=str(cache),
        DETECTRON2_DATASETS=str(data),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONWARNINGS="ignore",
        # from the checkout, whatever the cwd (an installed copy could be another version)
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    run = subprocess.run(
        [sys.executable, "-c", _REPORT_REGISTRATION], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]  # neither the cache nor the data root
    assert list(cwd.iterdir()) == []  # nothing relative to the working folder either
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["registered"] == [
        "instfcn_shapes_train", "instfcn_shapes_val", "coco128_train", "coco128_val", "sbd_train", "sbd_val"
    ]
    # The paths come from the environment, though neither folder exists.
    assert report["coco128_sem_seg_root"] == str(cache / "coco128" / "sem_val2017")
    assert report["sbd_image_root"] == str(data / "benchmark_RELEASE" / "dataset" / "img")


def test_writers_create_the_folder_and_replace_atomically(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    files.write_json(target, {"k": [1, 2]})
    assert json.loads(target.read_text()) == {"k": [1, 2]}
    assert (target.stat().st_mode & 0o777) == 0o644
    label = np.array([[0, 1], [255, 80]], np.uint8)
    files.write_label_png(tmp_path / "sem" / "l.png", label)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sem" / "l.png")), label)

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        files.atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"k": [1, 2]}  # the old content stays
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]  # no temp file left
