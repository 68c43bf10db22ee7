"""detectron2's ``DatasetMapper`` with errors that name the record's image file.

Why not plain ``DatasetMapper``: a truncated JPEG raises ``OSError: image file is truncated`` and
a bad annotation raises deep inside ``annotations_to_instances``; neither says which of thousands
of files is at fault. Only the error message changes; no record is dropped silently.

One addition for training: ``INSTFCN.TRAIN_CROP_SIZE`` crops a random square of at most that size
*after* the scale jitter (DeepMask trains on 224-px crops). detectron2's own ``INPUT.CROP`` crops
*before* resizing, so a large training scale still costs the whole upscaled image.
"""
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T


class DatasetRecordError(RuntimeError):
    """Mapping one dataset record failed; the message names its image (and semantic label) file."""


class InstFCNDatasetMapper(DatasetMapper):
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
        return ret

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as e:
            files = [dataset_dict.get("file_name", "<no file_name>")]
            if dataset_dict.get("sem_seg_file_name"):
                files.append(dataset_dict["sem_seg_file_name"])
            raise DatasetRecordError(
                f"cannot load dataset record of {' / '.join(map(str, files))}: "
                f"{type(e).__name__}: {e}"
            ) from e
