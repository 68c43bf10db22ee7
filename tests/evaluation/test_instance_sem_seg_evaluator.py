"""InstanceSemSegEvaluator: BiSeg's mean IU on a dataset without label files, against labels
derived from the instance annotations at the record's resolution."""
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # tiny_coco
from tiny_coco import write_tiny_coco  # noqa: E402

from instfcn_d2.data.semantic_from_instances import semantic_from_annotations  # noqa: E402
from instfcn_d2.evaluation import InstanceSemSegEvaluator  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    json_file, images = write_tiny_coco(tmp_path_factory.mktemp("coco"), num_images=3, crowd_images=(1,), empty_images=(2,))
    name = f"test_sem_from_inst_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, json_file, images)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _scores(labels, num_classes=3):
    """``(C+1, H, W)`` scores whose argmax is ``labels`` (ignored pixels: background)."""
    one_hot = torch.zeros((num_classes, *labels.shape))
    for c in range(num_classes):
        one_hot[c][torch.from_numpy(labels == c)] = 1.0
    return one_hot


def _run(evaluator, records, predict):
    evaluator.reset()
    for r in records:
        evaluator.process([{"file_name": r["file_name"], "height": r["height"], "width": r["width"]}], [{"sem_seg": predict(r)}])
    return evaluator.evaluate()["sem_seg"]


def test_perfect_and_background_predictions(dataset, tmp_path):
    records = DatasetCatalog.get(dataset)
    ev = InstanceSemSegEvaluator(dataset, ignore_label=255, distributed=False, output_dir=str(tmp_path))
    assert ev._class_names == ["background", "square", "disc"]
    truth = {r["file_name"]: semantic_from_annotations(r["annotations"], (r["height"], r["width"])) for r in records}
    assert (truth[records[1]["file_name"]] == 255).any()  # the crowd disc is ignored
    perfect = _run(ev, records, lambda r: _scores(truth[r["file_name"]]))
    assert perfect["mIoU"] == pytest.approx(100.0) and perfect["IoU-disc"] == pytest.approx(100.0)
    assert (tmp_path / "sem_seg_evaluation.pth").is_file()
    # all background: IoU(background) = background pixels / all labelled pixels, the classes 0
    background = _run(ev, records, lambda r: _scores(np.zeros((r["height"], r["width"]), np.int64)))
    labelled = np.concatenate([t[t != 255] for t in truth.values()])
    assert background["IoU-background"] == pytest.approx(100.0 * (labelled == 0).mean())
    assert background["IoU-square"] == 0.0 and background["IoU-disc"] == 0.0


def test_label_files_are_used_when_allowed(dataset, tmp_path):
    from PIL import Image

    records = DatasetCatalog.get(dataset)
    label_file = tmp_path / "all_square.png"
    Image.fromarray(np.full((96, 96), 1, np.uint8)).save(label_file)
    ev = InstanceSemSegEvaluator(dataset, use_files=True, distributed=False)
    ev._records[records[0]["file_name"]] = dict(records[0], sem_seg_file_name=str(label_file))
    assert (ev.ground_truth(records[0]["file_name"]) == 1).all()
    ev._use_files = False
    assert not (ev.ground_truth(records[0]["file_name"]) == 1).all()
    with pytest.raises(KeyError, match="not an image of dataset"):
        ev.ground_truth("elsewhere.png")


def test_label_files_out_of_range_are_refused_naming_the_file(dataset, tmp_path):
    """A label 7 with 3 classes (background, square, disc) was counted in another class's row and
    gave mean IU 100; now both evaluators name the file and the values."""
    from detectron2.data import DatasetCatalog as Catalog
    from detectron2.data import MetadataCatalog as Metadata
    from PIL import Image

    from instfcn_d2.evaluation import LabelCheckedSemSegEvaluator

    records = DatasetCatalog.get(dataset)
    labels = np.full((96, 96), 1, np.uint8)
    labels[:5, :5] = 7
    label_file = tmp_path / "bad_labels.png"
    Image.fromarray(labels).save(label_file)
    ev = InstanceSemSegEvaluator(dataset, use_files=True, distributed=False)
    ev._records[records[0]["file_name"]] = dict(records[0], sem_seg_file_name=str(label_file))
    with pytest.raises(ValueError, match=r"out of range in .*bad_labels.png.*values \[7\] in 25 pixel"):
        ev.ground_truth(records[0]["file_name"])

    name = f"test_sem_files_{uuid.uuid4().hex[:8]}"
    record = {"file_name": records[0]["file_name"], "sem_seg_file_name": str(label_file), "height": 96, "width": 96}
    Catalog.register(name, lambda: [record])
    Metadata.get(name).set(stuff_classes=["background", "square", "disc"], ignore_label=255)
    try:
        checked = LabelCheckedSemSegEvaluator(name, distributed=False)
        checked.reset()
        with pytest.raises(ValueError, match=r"bad_labels.png.*labels must be in \[0, 2\]"):
            checked.process([{"file_name": record["file_name"]}], [{"sem_seg": _scores(np.ones((96, 96), np.int64))}])
        Image.fromarray(np.full((96, 96), 255, np.uint8)).save(label_file)  # the ignore value passes
        checked.process([{"file_name": record["file_name"]}], [{"sem_seg": _scores(np.ones((96, 96), np.int64))}])
    finally:
        Catalog.remove(name)
        Metadata.remove(name)
