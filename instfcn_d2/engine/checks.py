"""Config-against-dataset checks made before the first training iteration or evaluation."""
from typing import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["NumClassesMismatchError", "check_num_classes"]

# The config key giving the number of classes of each class-aware meta-architecture. InstanceFCN
# (class-agnostic segment proposals) is not listed: it accepts a dataset of any classes.
NUM_CLASSES_KEYS = {
    "GeneralizedRCNN": ("MODEL", "ROI_HEADS", "NUM_CLASSES"),  # Mask R-CNN, Faster R-CNN
    "FCIS": ("MODEL", "ROI_HEADS", "NUM_CLASSES"),
    "BiSeg": ("MODEL", "ROI_HEADS", "NUM_CLASSES"),
}


class NumClassesMismatchError(ValueError):
    """The model's number of classes differs from a dataset's ``thing_classes``."""


def check_num_classes(cfg, dataset_names: Iterable[str], datasets_key: str, *, load: bool = False) -> None:
    """Raise :class:`NumClassesMismatchError` when the model built from ``cfg`` has another number of
    classes than a dataset of ``dataset_names`` (``MetadataCatalog.get(name).thing_classes``).

    ``datasets_key`` (e.g. ``"DATASETS.TRAIN"``) names where the datasets come from, for the message.
    A dataset whose metadata has no ``thing_classes`` yet is skipped, unless ``load``: then it is
    loaded first (``DatasetCatalog.get``; some loaders set the metadata when run). Nothing is
    checked for meta-architectures outside :data:`NUM_CLASSES_KEYS` (InstanceFCN is class-agnostic).
    """
    path = NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE)
    if path is None:
        return
    node = cfg
    for part in path:
        node = node[part]
    num_classes, key = int(node), ".".join(path)
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None and load and name in DatasetCatalog.list():
            DatasetCatalog.get(name)
            classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is None or len(classes) == num_classes:
            continue
        shown = ", ".join(map(str, classes[:8])) + (", ..." if len(classes) > 8 else "")
        raise NumClassesMismatchError(
            f"{key} = {num_classes} (META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE}) but dataset '{name}' "
            f"({datasets_key}) has {len(classes)} classes (MetadataCatalog.get('{name}').thing_classes: {shown}); "
            f"set {key} {len(classes)}, or use a dataset with {num_classes} classes"
            + (
                " (to evaluate on your own data: DATASETS.COCO_JSON_TEST, or DATASETS.TEST naming a registered dataset)"
                if datasets_key == "DATASETS.TEST"
                else ""
            )
        )
