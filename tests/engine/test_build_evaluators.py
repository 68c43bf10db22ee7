"""build_evaluators: which evaluators each (evaluator_type, META_ARCHITECTURE) pair gets. Configs
only: no model is built."""
import uuid

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.structures import BoxMode

from instfcn_d2.config import get_instfcn_cfg
from instfcn_d2.engine.trainer import build_evaluators
from instfcn_d2.evaluation import InstanceSemSegEvaluator, RegionAPEvaluator, SegmentProposalEvaluator

# COCOEvaluator converts these throw-away datasets to a COCO json (pycocotools' polygon encode).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture
def dataset():
    """Register a one-image dataset with the given ``evaluator_type`` (and ``sem_seg_root`` when
    asked); removed after the test."""
    names = []

    def _dataset(kind, sem_seg_root=False):
        name = f"instfcn_test_build_eval_{uuid.uuid4().hex[:8]}"
        record = {
            "file_name": "img0.jpg", "image_id": 0, "height": 16, "width": 16, "sem_seg_file_name": "img0.png",
            "annotations": [{"bbox": [2, 2, 8, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
                             "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]}],
        }
        DatasetCatalog.register(name, lambda: [record])
        meta = {"thing_classes": ["a"], "stuff_classes": ["background", "a"], "ignore_label": 255, "evaluator_type": kind}
        if sem_seg_root:
            meta["sem_seg_root"] = "/nonexistent/sem"  # only its presence matters here
        MetadataCatalog.get(name).set(**meta)
        names.append(name)
        return name

    yield _dataset
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def build(tmp_path, dataset_name, arch, *opts):
    cfg = get_instfcn_cfg(opts=["MODEL.META_ARCHITECTURE", arch, "OUTPUT_DIR", str(tmp_path), *opts])
    return build_evaluators(cfg, dataset_name, output_folder=str(tmp_path / "eval"))


def kinds(evaluator):
    """``[(class name, COCO tasks or None)]`` of an evaluator or of a DatasetEvaluators' parts."""
    parts = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
    return [(type(e).__name__, tuple(e._tasks) if isinstance(e, COCOEvaluator) else None) for e in parts]


def test_fcis_and_biseg_on_coco_get_bbox_and_segm(tmp_path, dataset):
    # MODEL.MASK_ON stays False (detectron2's default): FCIS and BiSeg predict masks regardless.
    ev = build(tmp_path, dataset("coco"), "FCIS")
    assert kinds(ev) == [("COCOEvaluator", ("bbox", "segm"))]
    # BiSeg without label files (no sem_seg_root): mean IU against labels derived from the
    # instances, unless MODEL.BISEG.SEM_SEG_SOURCE "files" asks for files
    ev = build(tmp_path, dataset("coco"), "BiSeg")
    assert kinds(ev) == [("COCOEvaluator", ("bbox", "segm")), ("InstanceSemSegEvaluator", None)]
    assert isinstance(ev._evaluators[1], InstanceSemSegEvaluator) and ev._evaluators[1]._use_files
    ev = build(tmp_path, dataset("coco"), "BiSeg", "MODEL.BISEG.SEM_SEG_SOURCE", "files")
    assert kinds(ev) == [("COCOEvaluator", ("bbox", "segm"))]


def test_biseg_with_semantic_labels_adds_mean_iu(tmp_path, dataset):
    ev = build(tmp_path, dataset("coco", sem_seg_root=True), "BiSeg")
    assert isinstance(ev, DatasetEvaluators)
    assert kinds(ev) == [("COCOEvaluator", ("bbox", "segm")), ("LabelCheckedSemSegEvaluator", None)]
    # SEM_SEG_SOURCE "instances": trained on derived labels, scored against them too
    ev = build(tmp_path, dataset("coco", sem_seg_root=True), "BiSeg", "MODEL.BISEG.SEM_SEG_SOURCE", "instances")
    assert kinds(ev) == [("COCOEvaluator", ("bbox", "segm")), ("InstanceSemSegEvaluator", None)]
    assert not ev._evaluators[1]._use_files
    # FCIS predicts no sem_seg: no SemSegEvaluator even where labels exist
    assert kinds(build(tmp_path, dataset("coco", sem_seg_root=True), "FCIS")) == [("COCOEvaluator", ("bbox", "segm"))]


def test_mask_rcnn_follows_mask_on(tmp_path, dataset):
    name = dataset("coco", sem_seg_root=True)
    assert kinds(build(tmp_path, name, "GeneralizedRCNN")) == [("COCOEvaluator", ("bbox",))]
    assert kinds(build(tmp_path, name, "GeneralizedRCNN", "MODEL.MASK_ON", "True")) == [
        ("COCOEvaluator", ("bbox", "segm"))
    ]


@pytest.mark.parametrize("arch", ["FCIS", "BiSeg"])
def test_sbd_gets_region_ap_and_coco(tmp_path, dataset, arch):
    ev = build(tmp_path, dataset("sbd"), arch)
    derived = [("InstanceSemSegEvaluator", None)] if arch == "BiSeg" else []  # no sem_seg_root
    assert kinds(ev) == [("RegionAPEvaluator", None), ("COCOEvaluator", ("bbox", "segm"))] + derived
    region = ev._evaluators[0]
    assert isinstance(region, RegionAPEvaluator)
    assert region._thresholds == (0.5, 0.7) and region._use_07_metric
    assert region._output_dir == str(tmp_path / "eval")


def test_sbd_with_semantic_labels(tmp_path, dataset):
    name = dataset("sbd", sem_seg_root=True)
    assert kinds(build(tmp_path, name, "BiSeg")) == [
        ("RegionAPEvaluator", None), ("COCOEvaluator", ("bbox", "segm")), ("LabelCheckedSemSegEvaluator", None)
    ]
    assert kinds(build(tmp_path, name, "GeneralizedRCNN", "MODEL.MASK_ON", "True")) == [
        ("RegionAPEvaluator", None), ("COCOEvaluator", ("bbox", "segm"))
    ]
    # a box-only model gets no region AP (it has no masks to score)
    assert kinds(build(tmp_path, name, "GeneralizedRCNN")) == [("COCOEvaluator", ("bbox",))]


@pytest.mark.parametrize("kind", ["coco", "sbd"])
def test_instance_fcn_gets_proposal_recall(tmp_path, dataset, kind):
    ev = build(tmp_path, dataset(kind, sem_seg_root=True), "InstanceFCN")
    assert isinstance(ev, SegmentProposalEvaluator)


def test_sem_seg_dataset_gets_one_sem_seg_evaluator(tmp_path, dataset):
    ev = build(tmp_path, dataset("sem_seg", sem_seg_root=True), "BiSeg")
    assert isinstance(ev, SemSegEvaluator)


def test_unknown_evaluator_type_names_dataset(tmp_path, dataset):
    name = dataset("cityscapes_panoptic")
    with pytest.raises(ValueError, match=f"dataset '{name}' has evaluator_type='cityscapes_panoptic'"):
        build(tmp_path, name, "FCIS")


def test_unconverted_sbd_fails_naming_the_prepare_command(tmp_path):
    # COCOEvaluator finds no json_file in sbd_val's metadata (nothing converted), converts the
    # dataset dicts itself, and the loader's error names the missing file and the command.
    from instfcn_d2.data.sbd import register_sbd

    out = tmp_path / "sbd_not_converted"
    register_sbd(root=tmp_path, output=out)
    try:
        assert MetadataCatalog.get("sbd_val").evaluator_type == "sbd"
        with pytest.raises(FileNotFoundError, match=r"sbd_val\.json.*datasets/prepare_sbd\.py --root"):
            build(tmp_path, "sbd_val", "FCIS")
    finally:
        register_sbd()  # back to the import-time registration
