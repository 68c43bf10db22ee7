"""instfcn-d2: InstanceFCN, FCIS and BiSeg for detectron2.

Importing the package registers its datasets, backbones and meta-architectures in detectron2's
catalogs and registries, as detectron2 projects do (PointRend, TensorMask). Where detectron2 is
not installed (a machine that serves exported models), only :mod:`instfcn_d2.deploy` and
:mod:`instfcn_d2.layers` are available.
"""
__version__ = "0.1.0"

from ._detectron2 import DETECTRON2_IMPORT_ERROR, missing_detectron2  # noqa: E402

if DETECTRON2_IMPORT_ERROR is None:
    from .config import add_instfcn_config  # noqa: E402
    from . import data  # noqa: E402,F401  (registers the built-in datasets)
    from . import modeling  # noqa: E402,F401  (registers backbones / meta-architectures)
else:  # a deployment machine: instfcn_d2.deploy and instfcn_d2.layers only

    def __getattr__(name):
        if name == "add_instfcn_config":
            raise missing_detectron2("instfcn_d2.add_instfcn_config")
        raise AttributeError(f"module 'instfcn_d2' has no attribute {name!r}")

__all__ = ["add_instfcn_config", "__version__"]
