"""Cityscapes on detectron2's own loader and evaluator: a tiny tree in the Cityscapes layout (two
cities, three 64 x 128 images, car / person / rider polygons and the id maps cityscapesscripts
draws from them), loaded with detectron2's ``load_cityscapes_instances`` and evaluated with
``CityscapesInstanceEvaluator`` (cityscapesscripts' AP): perfect predictions give AP 100, tiny
untrained models of the configs/cityscapes files run through ``Trainer.test``, and a tiny BiSeg
trains on the records with semantic labels derived from their instances.

On detectron2's main branch this also exercises the ``cityscapesscripts`` import alias
(instfcn_d2.data.cityscapes): main's loader and evaluator import the package under an internal
name, v0.6's under its own."""
import json
import math
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import cityscapesscripts  # noqa: E402,F401  (dev/requirements.txt: the evaluator and loader need them)
import shapely  # noqa: E402,F401

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.cityscapes import load_cityscapes_instances  # noqa: E402
from detectron2.evaluation import CityscapesInstanceEvaluator as D2CityscapesInstanceEvaluator  # noqa: E402
from detectron2.structures import Instances  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from tiny_models import FCIS_HEADS, TINY_CHECKPOINT_MODELS, TINY_TRUNK  # noqa: E402

from instfcn_d2.config import get_instfcn_cfg  # noqa: E402
from instfcn_d2.engine.trainer import build_evaluators  # noqa: E402
from instfcn_d2.evaluation import SegmentProposalEvaluator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 64, 128
THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# Per image: Cityscapes polygons in drawing order (a later one covers an earlier one). Every thing
# has >= 100 pixels, cityscapesscripts' smallest evaluated region.
IMAGES = {
    ("aachen", "000000_000019"): [
        ("road", _rect(0, 44, 127, 63)),
        ("car", _rect(8, 30, 47, 53)),
        ("person", _rect(70, 14, 83, 49)),
    ],
    ("aachen", "000001_000019"): [
        ("sky", _rect(0, 0, 127, 15)),
        ("car", _rect(60, 28, 109, 55)),
        ("person", [[20, 10], [34, 10], [36, 50], [18, 50]]),
        ("car", _rect(90, 40, 120, 60)),  # covers the first car's lower right corner
    ],
    ("bochum", "000000_000019"): [
        ("road", _rect(0, 40, 127, 63)),
        ("rider", _rect(40, 8, 55, 45)),
        ("car", _rect(75, 25, 120, 50)),
    ],
}  # fmt: skip


def write_cityscapes_tree(root):
    """``root/leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` (random pixels) and
    ``root/gtFine/val/<city>/..._gtFine_{polygons.json,instanceIds.png,labelIds.png}``, the PNGs
    drawn from the polygons by cityscapesscripts itself, as the released ones were."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    rng = np.random.default_rng(0)
    for (city, frame), objects in IMAGES.items():
        stem = f"{city}_{frame}"
        img_dir, gt_dir = root / "leftImg8bit" / "val" / city, root / "gtFine" / "val" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
        polygons = gt_dir / f"{stem}_gtFine_polygons.json"
        polygons.write_text(json.dumps({
            "imgHeight": H, "imgWidth": W,
            "objects": [{"label": label, "polygon": poly} for label, poly in objects],
        }))  # fmt: skip
        annotation = Annotation()
        annotation.fromJsonFile(str(polygons))
        # cityscapesscripts draws the ids into a 32-bit image; the released files are 16-bit PNGs
        # (Pillow no longer writes 32-bit ones)
        ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.int64)
        assert ids.max() < 2**16
        Image.fromarray(ids.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
        createLabelImage(annotation, "ids").save(gt_dir / f"{stem}_gtFine_labelIds.png")
    return root / "leftImg8bit" / "val", root / "gtFine" / "val"


def instance_ids(record):
    """The record's ``gtFine_instanceIds.png`` as an int array (class id * 1000 + k for things)."""
    path = record["file_name"].replace("leftImg8bit", "gtFine", 1)
    path = path.replace("_leftImg8bit.png", "_gtFine_instanceIds.png")
    return np.asarray(Image.open(path)).astype(np.int64)


def gt_instances(record):
    """``[(contiguous class, bool mask)]`` of the thing instances of the id map."""
    from cityscapesscripts.helpers.labels import id2label

    ids = instance_ids(record)
    out = []
    for value in np.unique(ids[ids >= 1000]):
        name = id2label[int(value) // 1000].name
        if name in THING_CLASSES:
            out.append((THING_CLASSES.index(name), ids == value))
    return out


@pytest.fixture(scope="module")
def cityscapes_val(tmp_path_factory):
    """The tiny tree, registered like detectron2 registers ``cityscapes_fine_instance_seg_val``
    (same loader arguments and metadata) under a throw-away name."""
    image_dir, gt_dir = write_cityscapes_tree(tmp_path_factory.mktemp("cityscapes"))
    name = f"instfcn_test_cityscapes_val_{uuid.uuid4().hex[:8]}"
    builtin = MetadataCatalog.get("cityscapes_fine_instance_seg_val")
    DatasetCatalog.register(
        name, lambda: load_cityscapes_instances(str(image_dir), str(gt_dir), from_json=True, to_polygons=True)
    )
    MetadataCatalog.get(name).set(
        image_dir=str(image_dir), gt_dir=str(gt_dir), evaluator_type="cityscapes_instance",
        thing_classes=list(builtin.thing_classes), stuff_classes=list(builtin.stuff_classes),
    )  # fmt: skip
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_detectron2_registers_cityscapes_with_the_8_thing_classes():
    from cityscapesscripts.helpers.labels import labels

    for split in ("train", "val", "test"):
        meta = MetadataCatalog.get(f"cityscapes_fine_instance_seg_{split}")
        assert f"cityscapes_fine_instance_seg_{split}" in DatasetCatalog.list()
        assert meta.evaluator_type == "cityscapes_instance"
        assert meta.gt_dir.rstrip("/").endswith(f"cityscapes/gtFine/{split}")
        assert list(meta.thing_classes) == THING_CLASSES
    assert THING_CLASSES == [lb.name for lb in labels if lb.hasInstances and not lb.ignoreInEval]


def test_internal_cityscapesscripts_name_resolves_to_the_installed_package():
    """detectron2's main branch imports this name; it must give the very modules of the installed
    package (the evaluation sets the script's globals through it)."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as real_eval
    import cityscapesscripts.helpers.labels as real_labels

    import deeplearning.projects.cityscapesApi.cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as alias_eval  # noqa: E501
    from deeplearning.projects.cityscapesApi.cityscapesscripts.helpers import labels as alias_labels

    assert alias_eval is real_eval and alias_labels is real_labels
    # no module of the package was executed a second time under the internal name
    loaded_twice = [
        k for k, m in sys.modules.items() if k.startswith("deeplearning.") and getattr(m, "__file__", None) and m.__name__ == k
    ]
    assert loaded_twice == []


def test_import_installs_the_alias_without_importing_cityscapesscripts():
    code = (
        "import sys, instfcn_d2\n"
        "from instfcn_d2.data.cityscapes import CityscapesScriptsAlias\n"
        "assert isinstance(sys.meta_path[-1], CityscapesScriptsAlias), sys.meta_path\n"
        "assert not any(m.startswith(('cityscapesscripts', 'deeplearning')) for m in sys.modules)\n"
        "from deeplearning.projects.cityscapesApi.cityscapesscripts.helpers.labels import name2label\n"
        "print(name2label['car'].id)\n"
    )
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["26"]


def test_loader_records_match_the_id_maps(cityscapes_val):
    from detectron2.structures import BoxMode
    from detectron2.structures.masks import polygons_to_bitmask

    records = DatasetCatalog.get(cityscapes_val)
    assert len(records) == len(IMAGES)
    for record in records:
        assert (record["height"], record["width"]) == (H, W)
        gt = gt_instances(record)
        anns = [a for a in record["annotations"] if not a["iscrowd"]]
        assert sorted(a["category_id"] for a in anns) == sorted(c for c, _ in gt)
        for ann in anns:
            assert ann["bbox_mode"] == BoxMode.XYXY_ABS
            mask = polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in ann["segmentation"]], H, W)
            # the polygons are the id map's instance of that class, dilated by half a pixel
            ious = [(m & mask).sum() / (m | mask).sum() for c, m in gt if c == ann["category_id"]]
            assert max(ious) > 0.85, (record["file_name"], ann["category_id"], ious)
    # the later car covers the earlier one: both stay, the earlier one without the overlap
    second = next(r for r in records if "aachen_000001" in r["file_name"])
    assert sorted(a["category_id"] for a in second["annotations"]) == [0, 2, 2]


def _evaluate(dataset_name, predictions, output_dir):
    """Run build_evaluators' evaluator for an FCIS config on ``{file_name: Instances}``."""
    cfg = get_instfcn_cfg(opts=["MODEL.META_ARCHITECTURE", "FCIS", "OUTPUT_DIR", str(output_dir)])
    evaluator = build_evaluators(cfg, dataset_name, output_folder=str(output_dir / "eval"))
    assert isinstance(evaluator, D2CityscapesInstanceEvaluator)
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        inputs = [{"file_name": record["file_name"], "image_id": record["image_id"]}]
        evaluator.process(inputs, [{"instances": predictions[record["file_name"]]}])
    return evaluator.evaluate()


def _predictions(dataset_name, drop_last=False):
    preds = {}
    for record in DatasetCatalog.get(dataset_name):
        gt = gt_instances(record)[: -1 if drop_last else None]
        inst = Instances((H, W))
        inst.pred_classes = torch.tensor([c for c, _ in gt], dtype=torch.int64)
        inst.scores = torch.linspace(0.9, 0.5, len(gt))
        inst.pred_masks = torch.from_numpy(np.stack([m for _, m in gt]))
        preds[record["file_name"]] = inst
    return preds


def test_cityscapes_evaluator_gives_100_for_the_ground_truth(cityscapes_val, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cityscapesscripts writes into the working directory
    result = _evaluate(cityscapes_val, _predictions(cityscapes_val), tmp_path)
    assert set(result) == {"segm"}
    assert result["segm"]["AP"] == pytest.approx(100.0, abs=0.1)
    assert result["segm"]["AP50"] == pytest.approx(100.0, abs=0.1)
    # ... its side file went to the evaluator's output folder, not to the working directory
    assert (tmp_path / "eval" / "matches.json").is_file()
    assert not (tmp_path / "matches.json").exists()

    missed = _evaluate(cityscapes_val, _predictions(cityscapes_val, drop_last=True), tmp_path)
    assert 0 < missed["segm"]["AP"] < 99


def test_build_evaluators_on_cityscapes(cityscapes_val, tmp_path):
    def build(arch, *opts):
        cfg = get_instfcn_cfg(opts=["MODEL.META_ARCHITECTURE", arch, "OUTPUT_DIR", str(tmp_path), *opts])
        return build_evaluators(cfg, cityscapes_val)

    assert isinstance(build("FCIS"), D2CityscapesInstanceEvaluator)
    # BiSeg: the instances, and its mean IU against labels derived from them (no label files)
    biseg = build("BiSeg")
    kinds = [type(e).__name__ for e in biseg._evaluators]
    assert isinstance(biseg._evaluators[0], D2CityscapesInstanceEvaluator) and kinds[1] == "InstanceSemSegEvaluator"
    assert isinstance(build("GeneralizedRCNN", "MODEL.MASK_ON", "True"), D2CityscapesInstanceEvaluator)
    assert isinstance(build("InstanceFCN"), SegmentProposalEvaluator)
    with pytest.raises(ValueError, match="MASK_ON"):
        build("GeneralizedRCNN")


CONFIGS = ["fcis_R50", "biseg_R50", "instance_fcn_R50", "mask_rcnn_R50_FPN"]


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_build(name):
    cfg = get_instfcn_cfg(str(REPO_ROOT / "configs" / "cityscapes" / f"{name}.yaml"))
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_instance_seg_train",)
    assert cfg.DATASETS.TEST == ("cityscapes_fine_instance_seg_val",)
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    if name != "instance_fcn_R50":
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1024, 2048)
    if name == "biseg_R50":
        assert cfg.MODEL.BISEG.SEM_SEG_SOURCE == "instances"


# Tiny untrained models of the configs: the tests' 8-wide R18 trunk (tiny_models.TINY_TRUNK) and
# the tiny heads of tests/modeling/checkpoints, on the configs' own data and evaluation settings.
TINY = {
    "fcis_R50": FCIS_HEADS + ["MODEL.ROI_HEADS.NUM_CLASSES", "8", "MODEL.FCIS.OHEM", "False"],
    "biseg_R50": TINY_CHECKPOINT_MODELS["biseg"][1] + ["MODEL.ROI_HEADS.NUM_CLASSES", "8"],
    # res4 dilated (stride 8, res5 not built), 56-px windows for the 96 x 192 test input
    "instance_fcn_R50": TINY_CHECKPOINT_MODELS["instance_fcn"][1] + [
        "MODEL.RESNETS.OUT_FEATURES", "['res4']", "MODEL.INSTANCE_FCN.IN_FEATURE", "res4",
        "MODEL.INSTANCE_FCN.WINDOW_SIZE", "7", "MODEL.INSTANCE_FCN.PRE_NMS_TOPK_TEST", "300",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_untrained_model_through_trainer_test(name, cityscapes_val, tmp_path, monkeypatch):
    from detectron2.modeling import build_model

    from instfcn_d2.engine import Trainer

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    cfg = get_instfcn_cfg(
        str(REPO_ROOT / "configs" / "cityscapes" / f"{name}.yaml"),
        TINY_TRUNK + TINY[name] + [
            "DATASETS.TEST", f"('{cityscapes_val}',)", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    predicted = []  # instances per image, as the evaluator receives them
    from instfcn_d2.evaluation.cityscapes import CityscapesInstanceEvaluator  # keeps its predictions itself

    evaluator_class = SegmentProposalEvaluator if name == "instance_fcn_R50" else CityscapesInstanceEvaluator
    process = evaluator_class.process

    def counting_process(self, inputs, outputs):
        predicted.extend(len(o["instances"]) for o in outputs)
        return process(self, inputs, outputs)

    monkeypatch.setattr(evaluator_class, "process", counting_process)
    results = Trainer.test(cfg, model)
    assert len(predicted) == len(IMAGES) and sum(predicted) > 0, predicted
    if name == "instance_fcn_R50":  # class-agnostic proposals: AR@N
        ar = results["proposals"]
        assert all(math.isfinite(ar[k]) and 0 <= ar[k] <= 100 for k in ("AR@10", "AR@100", "AR@1000")), ar
    else:
        # BiSeg: also its mean IU against the labels derived from the instances
        assert set(results) == ({"segm", "sem_seg"} if name == "biseg_R50" else {"segm"})
        assert all(math.isfinite(results["segm"][k]) and 0 <= results["segm"][k] <= 100 for k in ("AP", "AP50"))
        assert (out / "inference" / cityscapes_val / "matches.json").is_file()
    assert not (tmp_path / "matches.json").exists()


@pytest.mark.slow
def test_tiny_biseg_trains_on_the_records_with_semantic_labels_from_the_instances(cityscapes_val, tmp_path):
    """detectron2's Cityscapes records have no label files: biseg_R50.yaml's semantic targets come
    from the instance masks (MODEL.BISEG.SEM_SEG_SOURCE "instances") and reach the loss."""
    from instfcn_d2.engine import Trainer

    cfg = get_instfcn_cfg(
        str(REPO_ROOT / "configs" / "cityscapes" / "biseg_R50.yaml"),
        TINY_TRUNK + TINY["biseg_R50"] + [
            "DATASETS.TRAIN", f"('{cityscapes_val}',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "SOLVER.IMS_PER_BATCH", "1",
            "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
            "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path),
        ],
    )  # fmt: skip
    from instfcn_d2.data import InstFCNDatasetMapper

    mapper = InstFCNDatasetMapper(cfg, is_train=True)
    labels = set()
    for record in DatasetCatalog.get(cityscapes_val):
        labels |= set(torch.unique(mapper(record)["sem_seg"]).tolist())
    assert labels == {0, 1, 2, 3}  # background, person, rider, car (class + 1)

    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("loss_sem_seg").values()]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses), losses
