"""instfcn-d2: InstanceFCN, FCIS and BiSeg for detectron2.

Importing the package registers its datasets, backbones and meta-architectures in detectron2's
catalogs and registries, as detectron2 projects do (PointRend, TensorMask).
"""
__version__ = "0.1.0"

from .config import add_instfcn_config  # noqa: E402
from . import data  # noqa: E402,F401  (registers the built-in datasets)
from . import modeling  # noqa: E402,F401  (registers backbones / meta-architectures)

__all__ = ["add_instfcn_config", "__version__"]
