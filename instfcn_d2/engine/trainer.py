"""The project's ``DefaultTrainer``: detectron2's trainer with this project's data mapper and the
evaluators its datasets declare. Shared by ``tools/train_net.py`` and the tests.

It also irons out two differences between the detectron2 versions the project supports (v0.6
and the main branch), so that neither needs a patch for them:

* multi-process training of a model on the CPU: both versions pass ``device_ids`` to
  ``DistributedDataParallel``, which rejects them for CPU modules;
* resuming from a checkpoint written by the other version: main saves the optimizer under the
  trainer's ``_trainer`` key, v0.6 saved no optimizer state at all.
"""
import contextlib
import logging
import os

import detectron2.engine.defaults as d2_defaults
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, verify_results
from detectron2.utils import comm

from ..checkpoint import NUM_CLASSES_ENTRY, InstFCNCheckpointer
from ..data.coco_json import check_coco_json_datasets
from ..data.dataset_mapper import InstFCNDatasetMapper, sem_seg_source_of
from ..evaluation import InstanceSemSegEvaluator, LabelCheckedSemSegEvaluator, RegionAPEvaluator, SegmentProposalEvaluator
from .checks import NUM_CLASSES_KEYS, check_num_classes
from .optimizer import build_optimizer
from .output_dir import lock_output_dir


def build_evaluators(cfg, dataset_name: str, output_folder: str = None):
    """Evaluators for ``dataset_name``, from its metadata's ``evaluator_type`` and the model
    (``cfg.MODEL.META_ARCHITECTURE``; no model is built):

    ===============  ===================  ==================================================
    evaluator_type   META_ARCHITECTURE    evaluators
    ===============  ===================  ==================================================
    coco, sbd, cs    InstanceFCN          SegmentProposalEvaluator (class-agnostic AR@N)
    coco             FCIS, BiSeg          COCOEvaluator(bbox, segm)
    coco             others               COCOEvaluator(bbox, + segm when MODEL.MASK_ON)
    sbd              FCIS, BiSeg, or      RegionAPEvaluator (mAPr@0.5 / @0.7) +
                     MODEL.MASK_ON        COCOEvaluator(bbox, segm)
    sbd              others (no masks)    COCOEvaluator(bbox)
    cs               FCIS, BiSeg, or      CityscapesInstanceEvaluator (cityscapesscripts'
                     MODEL.MASK_ON        mask AP / AP50)
    cs               others (no masks)    an error (the evaluation needs masks)
    sem_seg          any                  SemSegEvaluator (labels checked: LabelCheckedSemSegEvaluator)
    ===============  ===================  ==================================================

    ``cs``: ``cityscapes_instance``, detectron2's own registration of Cityscapes
    (``cityscapes_fine_instance_seg_*``), evaluated by :mod:`instfcn_d2.evaluation.cityscapes`.

    BiSeg also predicts semantic segmentation (``sem_seg``): on a dataset whose metadata has
    ``sem_seg_root`` it gets detectron2's ``SemSegEvaluator`` (mean IU) besides; on a coco / sbd
    dataset without it, :class:`~instfcn_d2.evaluation.InstanceSemSegEvaluator` (the same mean IU
    against labels derived from the instance annotations, as the training mapper derives them).
    ``MODEL.BISEG.SEM_SEG_SOURCE`` "files" allows only the former, "instances" only the latter. A
    COCO JSON (metadata ``json_file``) is checked first (``check_coco_json``). Some loaders set
    ``sem_seg_root`` when first run; ``DefaultTrainer.test`` builds the test loader before the
    evaluator, so it is there by then. FCIS and BiSeg always predict masks, whatever
    ``MODEL.MASK_ON`` says (a Mask R-CNN switch). Several evaluators come as ``DatasetEvaluators``.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    arch = cfg.MODEL.META_ARCHITECTURE
    predicts_masks = cfg.MODEL.MASK_ON or arch in ("FCIS", "BiSeg")
    coco_tasks = ("bbox", "segm") if predicts_masks else ("bbox",)
    evaluators = []
    if kind in ("coco", "sbd", "cityscapes_instance") and arch == "InstanceFCN":  # class-agnostic segment proposals
        evaluators.append(SegmentProposalEvaluator(dataset_name, output_dir=output_folder, distributed=True))
    elif kind in ("coco", "sbd"):
        if kind == "sbd" and predicts_masks:
            evaluators.append(RegionAPEvaluator(dataset_name, output_dir=output_folder, distributed=True))
        check_coco_json_datasets([dataset_name])  # its JSON is what COCOEvaluator reads
        evaluators.append(COCOEvaluator(dataset_name, tasks=coco_tasks, distributed=True, output_dir=output_folder))
    elif kind == "cityscapes_instance":  # detectron2's registration of Cityscapes
        if not predicts_masks:
            raise ValueError(f"dataset '{dataset_name}' is evaluated on instance masks: set MODEL.MASK_ON True")
        from ..evaluation.cityscapes import CityscapesInstanceEvaluator

        evaluators.append(CityscapesInstanceEvaluator(dataset_name, output_dir=output_folder))
    elif kind == "sem_seg":
        evaluators.append(LabelCheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if not evaluators:
        raise ValueError(
            f"dataset '{dataset_name}' has evaluator_type={kind!r}: no evaluator known for it "
            "(expected 'coco', 'sbd', 'cityscapes_instance' or 'sem_seg' in its MetadataCatalog entry)"
        )
    if arch == "BiSeg" and kind != "sem_seg":
        source = sem_seg_source_of(cfg)  # MODEL.BISEG.SEM_SEG_SOURCE, as the training labels
        if meta.get("sem_seg_root", None) and source != "instances":
            evaluators.append(LabelCheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
        elif kind in ("coco", "sbd", "cityscapes_instance") and source != "files":  # labels derived from the instances
            evaluators.append(InstanceSemSegEvaluator(
                dataset_name, ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, use_files=source == "auto",
                distributed=True, output_dir=output_folder,
            ))
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


@contextlib.contextmanager
def _cpu_ddp_without_device_ids():
    """While the trainer is built, detectron2's ``create_ddp_model`` gives DDP no ``device_ids``
    for a model on the CPU (GLOO multi-process training); GPU models are wrapped as before."""
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with the project's mapper and evaluators.

    ``eval_results``: the results of the latest evaluation during or after training (``None``
    before any), also returned by :meth:`train`."""

    def __init__(self, cfg):
        self.eval_results = None
        # Before the first iteration: the model's classes against the training data's (metadata
        # set at registration now; metadata that the loaders set, once super() has built the loader).
        check_num_classes(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        # annotations that would make the final COCO evaluation fail, and evaluation data of other
        # classes than the model's, reported before training rather than after it
        check_coco_json_datasets(cfg.DATASETS.TRAIN)  # datasets registered by register_coco_instances
        check_coco_json_datasets(cfg.DATASETS.TEST)
        check_num_classes(cfg, cfg.DATASETS.TEST, "DATASETS.TEST", load=True)
        if not cfg.DATASETS.TEST:
            logging.getLogger(__name__).warning("DATASETS.TEST is empty: the model will not be evaluated")
        if comm.is_main_process():  # one live run per OUTPUT_DIR, before metrics.json is opened
            lock_output_dir(cfg.OUTPUT_DIR)  # (train_net.py took it already: instfcn_d2/engine/output_dir.py)
        with _cpu_ddp_without_device_ids():
            super().__init__(cfg)
        check_num_classes(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        self._use_instfcn_checkpointer()

    def _use_instfcn_checkpointer(self):
        """Replace detectron2's checkpointer by :class:`~instfcn_d2.checkpoint.InstFCNCheckpointer`
        (atomic writes, resume past damaged checkpoints, clear errors for non-checkpoints, a resume
        for another number of classes stopped before loading), with the same model, folder and
        checkpointables; the periodic-checkpoint hook follows it."""
        old = self.checkpointer
        self.checkpointer = InstFCNCheckpointer(
            old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables
        )
        # the config's class count, recorded in each checkpoint; a resume compares it (checkpoint.py)
        path = NUM_CLASSES_KEYS.get(self.cfg.MODEL.META_ARCHITECTURE)
        if path is not None:
            self.checkpointer.extra_data = {NUM_CLASSES_ENTRY: {".".join(path): int(self.cfg[path[0]][path[1]][path[2]])}}
        for hook in self._hooks:
            if getattr(hook, "checkpointer", None) is old:
                hook.checkpointer = self.checkpointer

    def build_hooks(self):
        """detectron2's hooks, its evaluation hook running :meth:`evaluate` (which keeps the results)."""
        built = super().build_hooks()
        return [hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self.evaluate) if isinstance(h, hooks.EvalHook) else h for h in built]

    def evaluate(self):
        """Evaluate the model on ``cfg.DATASETS.TEST``; keeps the results in ``eval_results``."""
        self.eval_results = self.test(self.cfg, self.model)
        return self.eval_results

    def train(self):
        """detectron2's training loop; returns the final evaluation (``None`` without one), checked
        against ``TEST.EXPECTED_RESULTS`` when set."""
        TrainerBase.train(self, self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process() and self.eval_results is not None:
            verify_results(self.cfg, self.eval_results)
        return self.eval_results

    def load_state_dict(self, state_dict):
        """Resume from a checkpoint of either detectron2 version. One written by v0.6 holds no
        optimizer state (no ``_trainer`` key): the iteration and hooks are restored and the
        optimizer starts afresh, with a warning."""
        saves_optimizer = DefaultTrainer.load_state_dict is not TrainerBase.load_state_dict  # main, not v0.6
        if "_trainer" in state_dict or not saves_optimizer:
            return super().load_state_dict(state_dict)
        logging.getLogger(__name__).warning(
            "the checkpoint holds no optimizer state (written by detectron2 v0.6): resuming at iteration %d "
            "with a fresh optimizer state (SGD momentum restarts from zero)",
            state_dict.get("iteration", -1) + 1,
        )
        TrainerBase.load_state_dict(self, state_dict)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's optimizer, with the modules' learning-rate multipliers (FCIS's conv_new)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=InstFCNDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=InstFCNDatasetMapper(cfg, is_train=False))
