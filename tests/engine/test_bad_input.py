"""Bad input gets an error that names what is at fault: config keys, image files."""
import numpy as np
import pytest

from conftest import REPO_ROOT

CONFIG = str(REPO_ROOT / "configs" / "shapes" / "mask_rcnn_R18_FPN_GN_cpu.yaml")


def test_config_file_key_typo_names_file_and_key(tmp_path):
    from instfcn_d2.config import ConfigKeyError, get_instfcn_cfg

    bad = tmp_path / "typo.yaml"
    bad.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  ROI_HEADS:\n    NUM_CLASSESS: 3\n')
    with pytest.raises(ConfigKeyError) as info:
        get_instfcn_cfg(str(bad))
    msg = str(info.value)
    assert str(bad) in msg
    assert "MODEL.ROI_HEADS.NUM_CLASSESS" in msg
    assert "did you mean MODEL.ROI_HEADS.NUM_CLASSES" in msg


def test_override_key_typo_names_key():
    from instfcn_d2.config import ConfigKeyError, get_instfcn_cfg

    with pytest.raises(ConfigKeyError, match=r"command-line override: unknown config key 'SOLVER.MAX_ITERS'.*SOLVER.MAX_ITER"):
        get_instfcn_cfg(CONFIG, ["SOLVER.MAX_ITERS", "10"])


def test_valid_overrides_apply_and_odd_count_is_rejected():
    from instfcn_d2.config import get_instfcn_cfg

    cfg = get_instfcn_cfg(CONFIG, ["SOLVER.MAX_ITER", "7", "INSTFCN.TRAIN_CROP_SIZE", "64"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.INSTFCN.TRAIN_CROP_SIZE == 64
    assert cfg.MODEL.RESNETS.NORM == "GN"  # from the file
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        get_instfcn_cfg(CONFIG, ["SOLVER.MAX_ITER"])
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        get_instfcn_cfg("no_such.yaml")


def test_a_flag_after_the_overrides_is_named():
    """``train_net.py ... SOLVER.MAX_ITER 7 --eval-only``: argparse hands the flag to the overrides."""
    from instfcn_d2.config import get_instfcn_cfg

    with pytest.raises(ValueError, match=r"--eval-only stands among the KEY VALUE overrides.*flags go before"):
        get_instfcn_cfg(CONFIG, ["SOLVER.MAX_ITER", "7", "--eval-only"])


def _record(path, h=32, w=32):
    return {
        "file_name": str(path), "image_id": 0, "height": h, "width": w,
        "annotations": [{"bbox": [2, 2, 10, 10], "bbox_mode": 1, "category_id": 0,
                         "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]], "iscrowd": 0}],
    }


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "missing"])
def test_corrupt_image_error_names_the_file(tmp_path, corruption):
    from PIL import Image

    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.data import DatasetRecordError, InstFCNDatasetMapper

    path = tmp_path / "img.jpg"
    if corruption == "garbage":
        path.write_bytes(b"this is not an image")
    elif corruption == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    cfg = get_instfcn_cfg(CONFIG, ["INPUT.MASK_FORMAT", "polygon"])
    mapper = InstFCNDatasetMapper(cfg, is_train=True)
    with pytest.raises(DatasetRecordError, match=str(path)):
        mapper(_record(path))


def test_good_image_maps_to_instances(tmp_path):
    from PIL import Image

    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.data import InstFCNDatasetMapper

    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    cfg = get_instfcn_cfg(CONFIG, ["INPUT.MASK_FORMAT", "polygon", "INPUT.MIN_SIZE_TRAIN", "(32,)"])
    out = InstFCNDatasetMapper(cfg, is_train=True)(_record(path))
    assert out["image"].shape == (3, 32, 32)
    assert len(out["instances"]) == 1 and out["instances"].gt_classes.tolist() == [0]


def test_corrupt_image_through_the_train_loader_names_the_file(tmp_path):
    """The same error surfaces from detectron2's data loader (worker process included)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from instfcn_d2.config import get_instfcn_cfg
    from instfcn_d2.data import DatasetRecordError
    from instfcn_d2.engine import Trainer

    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    name = "test_corrupt_dataset"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [_record(path)])
    MetadataCatalog.get(name).set(thing_classes=["a"])
    cfg = get_instfcn_cfg(CONFIG, ["DATASETS.TRAIN", f"('{name}',)", "INPUT.MASK_FORMAT", "polygon",
                                   "DATALOADER.NUM_WORKERS", "1", "SOLVER.IMS_PER_BATCH", "1"])
    loader = Trainer.build_train_loader(cfg)
    with pytest.raises(Exception) as info:
        next(iter(loader))
    assert "broken.png" in str(info.value)
    assert isinstance(info.value, DatasetRecordError) or "DatasetRecordError" in str(info.value)
