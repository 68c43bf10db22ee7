"""The project's ``DefaultTrainer``: detectron2's trainer with this project's data mapper and the
evaluators its datasets declare. Shared by ``tools/train_net.py`` and the tests."""
import os

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator

from ..data.dataset_mapper import InstFCNDatasetMapper
from ..evaluation import SegmentProposalEvaluator


def build_evaluators(cfg, dataset_name: str, output_folder: str = None):
    """Evaluators for ``dataset_name`` from its ``evaluator_type`` metadata: ``coco`` -> COCO
    segm (+ bbox for models that predict boxes)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    evaluators = []
    if kind == "coco" and cfg.MODEL.META_ARCHITECTURE == "InstanceFCN":  # class-agnostic segment proposals
        evaluators.append(SegmentProposalEvaluator(dataset_name, output_dir=output_folder, distributed=True))
    elif kind == "coco":
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        evaluators.append(COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder))
    elif kind == "sem_seg":
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if not evaluators:
        raise ValueError(
            f"dataset '{dataset_name}' has evaluator_type={kind!r}: no evaluator known for it "
            "(expected 'coco' or 'sem_seg' in its MetadataCatalog entry)"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=InstFCNDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=InstFCNDatasetMapper(cfg, is_train=False))
