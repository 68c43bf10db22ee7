"""Datasets of the project, registered in detectron2's catalogs on import.

- ``instfcn_shapes_train`` / ``instfcn_shapes_val``: the built-in synthetic set, generated on first
  use under ``$INSTFCN_D2_CACHE`` (no download).
- ``coco128_train`` / ``coco128_val``: real COCO images under ``$DETECTRON2_DATASETS/coco128``;
  the val instance annotations are derived from its panoptic PNGs on first use.
- ``sbd_train`` / ``sbd_val``: SBD's VOC 2012 instance masks, converted by
  ``datasets/prepare_sbd.py``; loading before the conversion raises an error naming the command.
"""
from .coco128 import register_coco128
from .dataset_mapper import DatasetRecordError, InstFCNDatasetMapper
from .sbd import register_sbd
from .synthetic import register_synthetic_shapes

register_synthetic_shapes()
register_coco128()
register_sbd()

__all__ = ["InstFCNDatasetMapper", "DatasetRecordError", "register_synthetic_shapes", "register_coco128", "register_sbd"]
