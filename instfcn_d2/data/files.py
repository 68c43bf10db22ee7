"""File writers shared by the dataset converters (:mod:`.convert_coco128`, :mod:`.convert_sbd`).

Every file goes through a temp file in its target folder and is renamed into place, so a reader
(or a second process doing the same conversion) never sees a half-written file. The target
folder is created when missing.
"""
import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["atomic_write", "write_json", "write_label_png"]


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Create ``path``'s folder if needed, call ``write`` on a binary temp file in it, and rename
    that file to ``path``. On any error the temp file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible under its name
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared cache should stay readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON (``json.dumps`` defaults), atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(obj).encode("utf-8")))


def write_label_png(path: Path, label: np.ndarray) -> None:
    """Write a ``(H, W)`` uint8 label map as a single-channel PNG, atomically."""
    assert label.dtype == np.uint8 and label.ndim == 2, (label.dtype, label.shape)
    atomic_write(path, lambda f: Image.fromarray(label).save(f, format="PNG"))
