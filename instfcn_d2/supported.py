"""The versions of Python, torch, torchvision and detectron2 that instfcn-d2 supports.

One place for the ranges: ``setup.py`` refuses a torch outside them, ``dev/setup_env.py`` installs
the newest torch / torchvision pair inside them that the machine's pip allows, and the README's
version table lists what CI ran. This module imports nothing, so ``setup.py`` can read it before
torch or detectron2 is importable.
"""
from typing import Tuple

PYTHON_MIN = (3, 10)
PYTHON_MAX = (3, 12)  # inclusive (major, minor)

# torch and torchvision come in pairs (each torchvision wheel requires one exact torch); the
# range of one implies the other's. Inclusive (major, minor) bounds.
TORCH_MIN = (2, 11)
TORCH_MAX = (2, 15)
TORCHVISION_MIN = (0, 26)
TORCHVISION_MAX = (0, 29)

# pip requirement strings for the same ranges.
TORCH_REQUIREMENT = "torch>=2.11,<2.16"
TORCHVISION_REQUIREMENT = "torchvision>=0.26,<0.30"

# detectron2: its main branch (tested at this commit) and the v0.6 release.
DETECTRON2_MAIN_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
DETECTRON2_VERSIONS = ("main", "v0.6")

# Set to 1 to build against a torch outside the range anyway (untested).
ALLOW_UNTESTED_TORCH_ENV = "INSTFCN_D2_ALLOW_UNTESTED_TORCH"


def major_minor(version: str) -> Tuple[int, int]:
    """``"2.14.1+cu130"`` -> ``(2, 14)``."""
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def _fmt(v: Tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def torch_problem(torch_version: str) -> str:
    """Why ``torch_version`` is unsupported, or ``""`` when it is inside the range."""
    v = major_minor(torch_version)
    if TORCH_MIN <= v <= TORCH_MAX:
        return ""
    return (
        f"torch {torch_version} is outside the range instfcn-d2 supports and tests "
        f"({_fmt(TORCH_MIN)} to {_fmt(TORCH_MAX)}, i.e. {TORCH_REQUIREMENT}); install a torch in that "
        f"range (dev/setup_env.sh picks one), or set {ALLOW_UNTESTED_TORCH_ENV}=1 to build anyway"
    )


def python_problem(version: Tuple[int, int]) -> str:
    if PYTHON_MIN <= tuple(version[:2]) <= PYTHON_MAX:
        return ""
    return (
        f"Python {_fmt(tuple(version[:2]))} is outside the range instfcn-d2 supports "
        f"({_fmt(PYTHON_MIN)} to {_fmt(PYTHON_MAX)})"
    )


def detectron2_version() -> str:
    """``"main"`` or ``"v0.6"`` for the installed detectron2. Both report ``__version__`` "0.6";
    main is told apart by a feature it added (``comm.create_local_process_group``)."""
    from detectron2.utils import comm

    return "main" if hasattr(comm, "create_local_process_group") else "v0.6"


def describe_stack() -> str:
    """One line naming the versions in use, e.g. for logs and recorded results."""
    import platform

    import torch
    import torchvision

    try:
        from detectron2 import _C  # noqa: F401

        ops = "with _C"
    except ImportError:
        ops = "pure Python"
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"detectron2 {detectron2_version()} ({ops})"
    )
