"""detectron2's ``DatasetMapper`` with errors that name the record's image file, and what the
project's models need from the annotations.

Why not plain ``DatasetMapper``: a truncated JPEG raises ``OSError: image file is truncated`` and
a bad annotation raises deep inside ``annotations_to_instances``; neither says which of thousands
of files is at fault. Errors of a record name its files; a missing Python module is not the
record's fault and propagates unchanged.

Additions for training:

* ``INSTFCN.TRAIN_CROP_SIZE`` crops a random square of at most that size *after* the scale jitter
  (DeepMask trains on 224-px crops). detectron2's own ``INPUT.CROP`` crops *before* resizing, so a
  large training scale still costs the whole upscaled image. With ``INPUT.MASK_FORMAT "bitmask"``
  polygons under a crop are rasterised here (:func:`.semantic_from_instances.polygons_to_mask`:
  the same pixels as drawing and then cropping) instead of being cut by detectron2's polygon crop,
  which needs shapely.
* Semantic labels for BiSeg (``MODEL.BISEG.SEM_SEG_SOURCE``): a record's label file, or labels
  derived from its instance masks after the augmentations
  (:func:`.semantic_from_instances.semantic_from_instances`), crowd regions included.
* An image without annotations still gets ``gt_masks`` (empty) when the model uses masks, so the
  crop's box recomputation and the models see the same fields on every image.
* An instance whose box is empty (``w`` or ``h`` = 0 in a COCO JSON) but whose mask is not keeps
  the tight box of its mask (logged, at most once a minute), where detectron2 would drop it
  silently as empty.
"""
import logging
from typing import Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, PolygonMasks
from detectron2.utils.logger import log_every_n_seconds

from .semantic_from_instances import polygons_to_mask, segmentation_to_mask, semantic_from_instances

logger = logging.getLogger(__name__)

SEM_SEG_SOURCES = ("auto", "files", "instances")


class DatasetRecordError(RuntimeError):
    """Mapping one dataset record failed; the message names its image (and semantic label) file."""


def _shapely_available() -> bool:
    try:
        import shapely  # noqa: F401
    except ImportError:
        return False
    return True


def sem_seg_source_of(cfg) -> Optional[str]:
    """Where the training mapper takes semantic labels from for this config's model: BiSeg's
    ``MODEL.BISEG.SEM_SEG_SOURCE`` (checked), ``None`` for models that use none."""
    if cfg.MODEL.META_ARCHITECTURE != "BiSeg":
        return None
    source = cfg.MODEL.BISEG.SEM_SEG_SOURCE
    if source not in SEM_SEG_SOURCES:
        raise ValueError(f"MODEL.BISEG.SEM_SEG_SOURCE must be one of {', '.join(SEM_SEG_SOURCES)}; got {source!r}")
    return source


class InstFCNDatasetMapper(DatasetMapper):
    @configurable
    def __init__(self, is_train: bool = True, *, sem_seg_source: Optional[str] = None, sem_seg_ignore_value: int = 255, **kwargs):
        """
        Args:
            is_train, kwargs: detectron2's ``DatasetMapper`` arguments.
            sem_seg_source: in training, where semantic labels (``"sem_seg"``) come from:
                ``None``: the record's ``sem_seg_file_name`` when it has one (detectron2's
                behaviour), ``"files"``: that file, required; ``"instances"``: derived from the
                instance annotations, any file ignored; ``"auto"``: the file when the record has
                one, else derived.
            sem_seg_ignore_value: label of crowd regions in derived labels.
        """
        super().__init__(is_train, **kwargs)
        if sem_seg_source not in (None,) + SEM_SEG_SOURCES:
            raise ValueError(f"sem_seg_source must be None or one of {SEM_SEG_SOURCES}, got {sem_seg_source!r}")
        self.sem_seg_source = sem_seg_source
        self.sem_seg_ignore_value = sem_seg_ignore_value
        self._boxes_from_masks = 0  # instances whose empty box was replaced by their mask's box

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        crop = cfg.INSTFCN.TRAIN_CROP_SIZE
        if crop < 0:
            raise ValueError(f"INSTFCN.TRAIN_CROP_SIZE must be >= 0 (0 = no crop), got {crop}")
        if is_train and crop > 0:
            augs = list(ret["augmentations"])
            resize = [i for i, a in enumerate(augs) if isinstance(a, T.ResizeShortestEdge)]
            augs.insert(resize[-1] + 1 if resize else 0, T.RandomCrop("absolute", (crop, crop)))
            ret["augmentations"] = augs
            # boxes of cut objects must shrink to their visible mask
            ret["recompute_boxes"] = bool(cfg.MODEL.MASK_ON)
        crops = is_train and (crop > 0 or cfg.INPUT.CROP.ENABLED)
        if crops and cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "polygon" and not _shapely_available():
            raise ValueError(
                "training crops (INSTFCN.TRAIN_CROP_SIZE or INPUT.CROP) with INPUT.MASK_FORMAT 'polygon' need "
                "shapely, which detectron2 cuts polygons with and which is not installed: set INPUT.MASK_FORMAT "
                "'bitmask' (the crop then needs nothing more) or install shapely"
            )
        if is_train:
            ret["sem_seg_source"] = sem_seg_source_of(cfg)
            ret["sem_seg_ignore_value"] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return ret

    def __call__(self, dataset_dict):
        if self.is_train and self.sem_seg_source == "instances" and "sem_seg_file_name" in dataset_dict:
            dataset_dict = {k: v for k, v in dataset_dict.items() if k != "sem_seg_file_name"}
        try:
            if self.is_train and self.sem_seg_source == "files" and not dataset_dict.get("sem_seg_file_name"):
                raise ValueError(
                    "MODEL.BISEG.SEM_SEG_SOURCE is 'files' but the record has no 'sem_seg_file_name' "
                    "(SEM_SEG_SOURCE 'auto' derives the labels from its instance annotations)"
                )
            out = super().__call__(dataset_dict)
            if self.is_train and self.sem_seg_source is not None and "sem_seg" not in out:
                raise ValueError("the record has no 'annotations' to derive semantic labels from")
            return out
        except ImportError:
            raise  # a missing module: no fault of this record
        except Exception as e:
            files = [dataset_dict.get("file_name", "<no file_name>")]
            if dataset_dict.get("sem_seg_file_name"):
                files.append(dataset_dict["sem_seg_file_name"])
            raise DatasetRecordError(
                f"cannot load dataset record of {' / '.join(map(str, files))}: "
                f"{type(e).__name__}: {e}"
            ) from e

    # detectron2's DatasetMapper._transform_annotations (the same in v0.6 and main), extended as
    # the module docstring says
    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        derive = self.sem_seg_source in ("auto", "instances") and "sem_seg" not in dataset_dict
        needs_masks = self.use_instance_mask or derive
        # detectron2 cuts polygons with shapely under a crop; rasterise them here instead
        crops = any(isinstance(t, T.CropTransform) for t in transforms.transforms)
        annos = []
        for i, obj in enumerate(dataset_dict.pop("annotations")):
            crowd = bool(obj.get("iscrowd", 0))
            if crowd and not derive:
                continue  # as detectron2: crowd regions are no instances
            if not needs_masks:
                obj.pop("segmentation", None)
            elif "segmentation" not in obj:
                raise ValueError(
                    f"annotation {i} (category_id {obj.get('category_id')}) has no 'segmentation', which "
                    + ("the semantic labels are derived from" if derive else "the model needs (MODEL.MASK_ON)")
                )
            if not self.use_keypoint:
                obj.pop("keypoints", None)
            polygons = None
            if crops and isinstance(obj.get("segmentation"), list) and (self.instance_mask_format == "bitmask" or crowd):
                polygons = obj.pop("segmentation")
            obj = utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            if polygons is not None:
                obj["segmentation"] = _transformed_polygon_mask(polygons, transforms, image_shape)
            annos.append(obj)

        if derive:
            masks = []
            for i, obj in enumerate(annos):
                try:
                    masks.append(segmentation_to_mask(obj["segmentation"], *image_shape))
                except ValueError as e:
                    raise ValueError(f"annotation {i} (category_id {obj.get('category_id')}): {e}") from None
            crowd = [bool(obj.get("iscrowd", 0)) for obj in annos]
            labels = semantic_from_instances(
                masks, [obj["category_id"] for obj in annos], crowd, image_size=image_shape, ignore_value=self.sem_seg_ignore_value
            )
            dataset_dict["sem_seg"] = torch.as_tensor(labels)
            if self.instance_mask_format == "bitmask":  # rasterised once
                for obj, mask in zip(annos, masks):
                    obj["segmentation"] = mask
            annos = [obj for obj, c in zip(annos, crowd) if not c]
            if not self.use_instance_mask:
                for obj in annos:
                    obj.pop("segmentation", None)

        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        if self.use_instance_mask and not instances.has("gt_masks"):  # an image without annotations
            if self.instance_mask_format == "bitmask":
                instances.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
            else:
                instances.gt_masks = PolygonMasks([])

        # After transforms such as cropping are applied, the bounding box may no longer
        # tightly bound the object (detectron2's comment; its example: a triangle cut by a crop).
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        elif instances.has("gt_masks") and len(instances):
            self._boxes_from_nonempty_masks(instances, dataset_dict.get("file_name", "<no file_name>"))
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def _boxes_from_nonempty_masks(self, instances, file_name):
        """Give instances with an empty box but a non-empty mask the tight box of their mask
        (``filter_empty_instances`` would drop them); logged at most once a minute."""
        empty = ~instances.gt_boxes.nonempty()
        if not bool(empty.any()):
            return
        idx = torch.nonzero(empty).flatten()
        has_mask = instances.gt_masks[idx].nonempty()
        idx = idx[has_mask]
        if not len(idx):
            return
        instances.gt_boxes.tensor[idx] = instances.gt_masks[idx].get_bounding_boxes().tensor.to(instances.gt_boxes.tensor)
        self._boxes_from_masks += len(idx)
        log_every_n_seconds(
            logging.WARNING,
            f"{len(idx)} instance(s) of {file_name} have an empty bbox but a non-empty mask: box taken from the mask "
            f"({self._boxes_from_masks} so far in this process; fix the bbox of the annotation in the dataset)",
            n=60,
            name=__name__,
        )


def _transformed_polygon_mask(polygons, transforms, image_shape) -> np.ndarray:
    """The bool mask of ``polygons`` after ``transforms``, a crop moving the polygons only (the
    rasterisation at the cropped size cuts them, exactly; :func:`polygons_to_mask`)."""
    pts = [np.array(p, dtype=np.float64).reshape(-1, 2) for p in polygons if len(p) >= 6 and len(p) % 2 == 0]
    for t in transforms.transforms:
        if isinstance(t, T.CropTransform):
            pts = [t.apply_coords(p) for p in pts]  # a shift
        else:
            pts = t.apply_polygons(pts)
    return polygons_to_mask([p.reshape(-1) for p in pts], *image_shape)
