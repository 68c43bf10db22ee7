"""InstanceFCN (Dai, He, Li, Ren, Sun, ECCV 2016): class-agnostic segment proposals from
instance-sensitive score maps, assembled by sliding windows.

Read top to bottom:

- :mod:`.config`: the ``MODEL.INSTANCE_FCN`` keys (defaults = the paper's settings);
- :mod:`.heads`: the mask branch (``k*k`` instance-sensitive maps, or the ~DeepMask baseline) and
  the objectness branch;
- :mod:`.window_labels`: DeepMask's positive / negative windows and their mask targets (training);
- :mod:`.meta_arch`: the ``InstanceFCN`` meta-architecture: trunk -> maps -> windows -> losses
  or proposals. Test time after the maps (the windows' geometry, the top windows by objectness
  over the test scales, the mask-box NMS) is :mod:`instfcn_d2.core.instance_fcn`, which the model
  owns as a :class:`~instfcn_d2.core.instance_fcn.WindowProposer` and exported models run too.
"""
from .config import add_instance_fcn_config
from .heads import (
    INSTANCE_FCN_MASK_HEAD_REGISTRY,
    DeepMaskHead,
    DeepMaskObjectnessHead,
    InstanceSensitiveMaskHead,
    ObjectnessHead,
)
from .meta_arch import InstanceFCN, WindowTraining

__all__ = [
    "add_instance_fcn_config",
    "INSTANCE_FCN_MASK_HEAD_REGISTRY",
    "InstanceSensitiveMaskHead",
    "DeepMaskHead",
    "ObjectnessHead",
    "DeepMaskObjectnessHead",
    "InstanceFCN",
    "WindowTraining",
]
