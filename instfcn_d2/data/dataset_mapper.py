"""detectron2's ``DatasetMapper`` with errors that name the record's image file.

Why not plain ``DatasetMapper``: a truncated JPEG raises ``OSError: image file is truncated`` and
a bad annotation raises deep inside ``annotations_to_instances``; neither says which of thousands
of files is at fault. Only the error message changes; no record is dropped silently.
"""
from detectron2.data import DatasetMapper


class DatasetRecordError(RuntimeError):
    """Mapping one dataset record failed; the message names its image (and semantic label) file."""


class InstFCNDatasetMapper(DatasetMapper):
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
