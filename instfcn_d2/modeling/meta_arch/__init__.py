"""Meta-architectures, registered in detectron2's ``META_ARCH_REGISTRY`` on import:

- ``InstanceFCN``: instance-sensitive score maps + objectness -> class-agnostic segment proposals.
"""
from .instance_fcn import InstanceFCN

__all__ = ["InstanceFCN"]
