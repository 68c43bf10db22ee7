"""The model's number of classes is checked against the training data before the first iteration
(FCIS, BiSeg, Mask R-CNN; InstanceFCN is class-agnostic), naming both numbers, the key and the dataset."""
import pytest

from conftest import REPO_ROOT

SHAPES = REPO_ROOT / "configs" / "shapes"
CONFIGS = {
    "GeneralizedRCNN": SHAPES / "mask_rcnn_R18_FPN_GN_cpu.yaml",
    "FCIS": SHAPES / "fcis_R18_cpu.yaml",
    "BiSeg": SHAPES / "biseg_fused_7_9_R18_cpu.yaml",
    "InstanceFCN": SHAPES / "instance_fcn_R18_cpu.yaml",
}


@pytest.fixture(scope="module")
def datasets():
    """``check_shapes_train`` (4 classes, metadata set at registration) and ``check_lazy_train``
    (5 classes, metadata set only by its loader, as detectron2's ``load_coco_json`` does)."""
    import instfcn_d2  # noqa: F401
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from instfcn_d2.data import register_synthetic_shapes

    register_synthetic_shapes("check_shapes", num_train=2, num_val=1, image_size=64)
    name = "check_lazy_train"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load():
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c", "d", "e"])
        return DatasetCatalog.get("check_shapes_train")

    DatasetCatalog.register(name, load)
    return "check_shapes_train", name


def _cfg(arch, *opts):
    from instfcn_d2.config import get_instfcn_cfg

    return get_instfcn_cfg(str(CONFIGS[arch]), ["DATALOADER.NUM_WORKERS", "0", *opts])


@pytest.mark.parametrize("arch", ["GeneralizedRCNN", "FCIS", "BiSeg"])
@pytest.mark.parametrize("num_classes", [3, 5])
def test_trainer_refuses_a_num_classes_other_than_the_training_datasets(datasets, arch, num_classes):
    from instfcn_d2.engine import Trainer
    from instfcn_d2.engine.checks import NumClassesMismatchError

    cfg = _cfg(arch, "DATASETS.TRAIN", f"('{datasets[0]}',)", "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes))
    with pytest.raises(NumClassesMismatchError) as info:
        Trainer(cfg)
    msg = str(info.value)
    assert f"MODEL.ROI_HEADS.NUM_CLASSES = {num_classes}" in msg and f"META_ARCHITECTURE {arch}" in msg
    assert "dataset 'check_shapes_train' (DATASETS.TRAIN) has 4 classes" in msg
    assert "circle" in msg and "set MODEL.ROI_HEADS.NUM_CLASSES 4" in msg


def test_trainer_checks_metadata_that_the_loader_sets_before_the_first_iteration(datasets, tmp_path):
    from instfcn_d2.engine import Trainer
    from instfcn_d2.engine.checks import NumClassesMismatchError

    cfg = _cfg("GeneralizedRCNN", "DATASETS.TRAIN", f"('{datasets[1]}',)", "OUTPUT_DIR", str(tmp_path))
    with pytest.raises(NumClassesMismatchError, match=r"= 4 .*'check_lazy_train' \(DATASETS.TRAIN\) has 5 classes"):
        Trainer(cfg)


def test_instance_fcn_accepts_any_dataset_and_matching_classes_pass(datasets):
    from detectron2.data import MetadataCatalog

    from instfcn_d2.engine.checks import check_num_classes

    check_num_classes(_cfg("InstanceFCN"), [datasets[0], datasets[1]], "DATASETS.TRAIN", load=True)
    check_num_classes(_cfg("FCIS"), [datasets[0]], "DATASETS.TRAIN")  # 4 and 4
    MetadataCatalog.remove(datasets[1])  # as before its loader first ran
    check_num_classes(_cfg("FCIS"), [datasets[1]], "DATASETS.TRAIN", load=False)  # no metadata yet: skipped


def test_check_loads_a_dataset_without_metadata_when_asked(datasets):
    from detectron2.data import MetadataCatalog

    from instfcn_d2.engine.checks import NumClassesMismatchError, check_num_classes

    MetadataCatalog.remove(datasets[1])  # as before its loader first ran
    with pytest.raises(NumClassesMismatchError, match=r"'check_lazy_train' \(DATASETS.TEST\) has 5 classes"):
        check_num_classes(_cfg("BiSeg"), [datasets[1]], "DATASETS.TEST", load=True)


def test_trainer_refuses_evaluation_data_of_other_classes_before_training(datasets, tmp_path):
    """A model trained on the user's 4-class data would have been evaluated at the end on a dataset
    of 5 classes, printing per-class AP: refused before the first iteration, naming DATASETS.TEST."""
    from instfcn_d2.engine import Trainer
    from instfcn_d2.engine.checks import NumClassesMismatchError

    cfg = _cfg("FCIS", "DATASETS.TRAIN", f"('{datasets[0]}',)", "DATASETS.TEST", f"('{datasets[1]}',)",
               "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    with pytest.raises(NumClassesMismatchError, match=r"'check_lazy_train' \(DATASETS.TEST\) has 5 classes.*COCO_JSON_TEST"):
        Trainer(cfg)


def test_eval_only_with_nothing_to_evaluate_says_so(tmp_path):
    from conftest import load_tool

    tool = load_tool("train_net")
    args = tool.argument_parser().parse_args(
        ["--config-file", str(CONFIGS["FCIS"]), "--eval-only", "--allow-random-weights", "DATASETS.TEST", "()",
         "OUTPUT_DIR", str(tmp_path)]  # fmt: skip
    )
    with pytest.raises(ValueError, match=r"--eval-only: nothing to evaluate, DATASETS.TEST is empty"):
        tool.main(args)
