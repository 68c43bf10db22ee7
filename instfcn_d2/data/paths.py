"""Where datasets are read from and where generated / derived files are written.

Both are resolved on every call, not at import, so that a process (or a test) can change the
environment variables after ``import instfcn_d2``.
"""
import os
from pathlib import Path


def datasets_root() -> Path:
    """Root holding real datasets, detectron2's convention: ``$DETECTRON2_DATASETS``, default ``./datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()


def cache_root() -> Path:
    """Writable folder for generated datasets and derived annotations: ``$INSTFCN_D2_CACHE``,
    default ``~/.cache/instfcn_d2``. Kept apart from :func:`datasets_root` because that one may be
    read-only (e.g. a shared mount)."""
    path = Path(os.environ.get("INSTFCN_D2_CACHE", "~/.cache/instfcn_d2")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
