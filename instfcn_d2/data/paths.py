"""Where datasets are read from and where generated / derived files are written, and how the
registered metadata follows those places.

Both roots are resolved on every call, not at import, so that a process (or a test) can change
the environment variables after ``import instfcn_d2``. They are pure path computations: nothing
is created here; the code that writes a file creates its folder.
"""
import logging
import os
from pathlib import Path

__all__ = ["datasets_root", "cache_root", "sync_metadata_paths"]

logger = logging.getLogger(__name__)


def datasets_root() -> Path:
    """Root holding real datasets, detectron2's convention: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()


def cache_root() -> Path:
    """Folder for generated datasets and derived annotations: ``$INSTFCN_D2_CACHE``, default
    ``~/.cache/instfcn_d2``. Kept apart from :func:`datasets_root` because that one may be
    read-only (e.g. a shared mount). Not created here: it may not exist yet."""
    return Path(os.environ.get("INSTFCN_D2_CACHE", "~/.cache/instfcn_d2")).expanduser()


def sync_metadata_paths(dataset_name: str, **paths: str) -> None:
    """Point the metadata's paths at what the loader uses now. A registration sets them from the
    environment when it runs (often at import, before a test or script sets
    ``$DETECTRON2_DATASETS`` / ``$INSTFCN_D2_CACHE``); detectron2's ``DefaultTrainer.test`` builds
    the loader before ``COCOEvaluator``, so the evaluator then reads the right ``json_file``."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    for key, value in paths.items():
        old = meta.get(key)
        if old == value:
            continue
        if old is not None:
            logger.info(
                "%s: metadata %s %s -> %s (environment changed since registration)",
                dataset_name,
                key,
                old,
                value,
            )
            delattr(meta, key)  # Metadata refuses to overwrite a value in place
        setattr(meta, key, value)
