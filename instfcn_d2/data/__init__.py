"""Datasets of the project, registered in detectron2's catalogs on import.

Importing only registers: nothing is generated, converted or created on disk until a dataset is
loaded (``DatasetCatalog.get``), and the loaders follow the environment variables read then.

- ``instfcn_shapes_train`` / ``instfcn_shapes_val``: the built-in synthetic set, generated on first
  use under ``$INSTFCN_D2_CACHE`` (no download).
- ``coco128_train`` / ``coco128_val``: real COCO images under ``$DETECTRON2_DATASETS/coco128``;
  the val instance annotations and the semantic labels are derived on first use.
- ``sbd_train`` / ``sbd_val``: SBD's VOC 2012 instance masks, converted by
  ``datasets/prepare_sbd.py``; loading before the conversion raises an error naming the command.
- ``cityscapes_fine_instance_seg_train`` / ``_val``: registered by detectron2 itself (images and
  ``gtFine`` under ``$DETECTRON2_DATASETS/cityscapes``); :mod:`.cityscapes` lets detectron2's main
  branch find ``cityscapesscripts`` (an import alias, installed here, inert until used).

Modules:

- :mod:`.paths`: the dataset root (``$DETECTRON2_DATASETS``) and the cache root
  (``$INSTFCN_D2_CACHE``), pure path computations; :func:`~.paths.sync_metadata_paths`, which
  re-points a registration's metadata at the paths its loader uses.
- :mod:`.files`: atomic writers (file, JSON, label PNG) shared by the converters.
- :mod:`.synthetic`: the synthetic shapes: drawing, generation into the cache, registration.
- :mod:`.coco128`: coco128 registration and loading.
- :mod:`.convert_coco128`: coco128 conversion (panoptic -> instances JSON, semantic label PNGs,
  stamps, ``prepare_coco128``); run by the loader on first use and by
  ``datasets/prepare_coco128.py``.
- :mod:`.sbd`: SBD class list, file layout, registration and loading.
- :mod:`.convert_sbd`: SBD conversion (MATLAB files -> instances JSON and semantic label PNGs,
  ``prepare_sbd``); run by ``datasets/prepare_sbd.py``.
- :mod:`.cityscapes`: the ``cityscapesscripts`` import alias detectron2's main branch needs.
- :mod:`.dataset_mapper`: :class:`InstFCNDatasetMapper`, dataset dict -> model input.
- :mod:`.semantic_from_instances`: semantic labels derived from instance masks (BiSeg on a dataset
  without label files, ``MODEL.BISEG.SEM_SEG_SOURCE``) and the rasterisation of annotations.
- :mod:`.coco_json`: a user's COCO JSON from config keys (``DATASETS.COCO_JSON_TRAIN`` / ``_TEST``,
  registered by ``tools/train_net.py``), and the check of a COCO JSON's annotations and images.
- :mod:`.image_files`: image files checked from their headers (present, a mode the loader reads as
  the image means, the record's size).
"""
from .cityscapes import install_cityscapesscripts_alias
from .coco128 import register_coco128
from .dataset_mapper import DatasetRecordError, InstFCNDatasetMapper
from .sbd import register_sbd
from .synthetic import register_synthetic_shapes

register_synthetic_shapes()
register_coco128()
register_sbd()
install_cityscapesscripts_alias()

__all__ = ["InstFCNDatasetMapper", "DatasetRecordError", "register_synthetic_shapes", "register_coco128", "register_sbd"]
