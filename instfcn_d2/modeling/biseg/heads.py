"""BiSeg's per-RoI part: ``BiSegROIHeads`` (``ROI_HEADS_REGISTRY``), FCIS's heads with BiSeg's
inside/outside likelihoods.

Only the per-image maps (:meth:`BiSegROIHeads.score_maps` adds the stride-8 set and the semantic
prior: :class:`BiSegMaps`) and the reader the heads own (an
:class:`instfcn_d2.core.biseg.BiSegReader`, whose ``roi_inside_outside`` and one-class form
``roi_inside_outside_of_class``, which inference uses for the masks, return BiSeg's likelihoods)
change;
FCIS's class scores (max + mean + softmax), masks (softmax of inside vs outside), box regression,
losses and inference (NMS, mask voting) run unchanged on what they return::

    FCIS's set  (k1 = MODEL.FCIS.GROUP_SIZE, on conv_new_1 of res5, stride 16) -> assemble at M/2 --+
    fine set    (k2 = MODEL.BISEG.GROUP_SIZE_FINE, 1x1 conv(s) on res3, stride 8) -> assemble at M --+
        -> fuse (x2 upsample + sum)  -> L (R, 2, C+1, M, M)
    BiSegMaps.prior (N, C+1, H, W), background last -> crop per RoI (R, C+1, M, M)
        -> combine with L's inside maps (MODEL.BISEG.PRIOR_MODE), outside maps unchanged

``MODEL.BISEG.FUSE False``: FCIS's set only, assembled at M. ``PRIOR_MODE "none"``: no prior.
"""
import logging
from dataclasses import fields
from typing import Dict, Optional

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from torch import Tensor, nn

from ...core.biseg import BiSegMaps, BiSegReader
from ...core.fcis import FCISReader
from ..common import init_new_layers, require_config_node, set_lr_multiplier
from ..fcis.heads import FCISROIHeads
from ..fcis.score_maps import PSScoreMaps

__all__ = ["BiSegROIHeads"]

logger = logging.getLogger(__name__)


@ROI_HEADS_REGISTRY.register()
class BiSegROIHeads(FCISROIHeads):
    """FCIS's heads whose inside/outside logits are BiSeg's fused, prior-weighted likelihoods.

    ``reader`` is a :class:`BiSegReader` (``fuse``, ``prior_mode``, ``fine_group_size`` k2,
    ``fine_spatial_scale``; ``mask_size`` is BiSeg's M). Layers added to :class:`FCISROIHeads`':
    ``fine_conv_new`` (the optional 1x1 conv + ReLU on res3, or ``None``) and ``fine_maps`` (the
    stride-8 :class:`PSScoreMaps`, only with ``fuse``), read from ``fine_in_feature``.
    """

    @configurable
    def __init__(
        self,
        *,
        reader: BiSegReader,
        fine_in_feature: str = "res3",
        fine_in_channels: int = 0,
        fine_conv_new_dim: int = 0,
        **kwargs,
    ):
        """
        Args:
            reader: BiSeg's per-RoI reading and its settings.
            fine_in_feature, fine_in_channels: the stride-8 map (res3) of the second set and its
                channels (used only with ``reader.fuse``).
            fine_conv_new_dim: channels of a 1x1 conv + ReLU on res3 before the fine maps, as
                FCIS's ``conv_new_1`` before its maps (initialised as ``conv_new_init``); 0: the
                maps read res3 directly.
            kwargs: :class:`FCISROIHeads` arguments.
        """
        if not isinstance(reader, BiSegReader):
            raise TypeError(f"BiSegROIHeads: reader must be a BiSegReader, got {type(reader).__name__}")
        super().__init__(reader=reader, **kwargs)
        self.fine_in_feature = fine_in_feature
        if not reader.fuse:
            return
        M, k1, k2 = reader.mask_size, reader.group_size, reader.fine_group_size
        if M % 2 or k1 > M // 2 or k2 > M:
            raise ValueError(
                f"MODEL.BISEG.MASK_SIZE: with FUSE the likelihood side M = {M} must be even with M/2 >= k1 = {k1} "
                f"(MODEL.FCIS.GROUP_SIZE, assembled at M/2) and M >= k2 = {k2} (MODEL.BISEG.GROUP_SIZE_FINE)"
            )
        if fine_in_channels < 1:
            raise ValueError(f"BiSegROIHeads: fine_in_channels must be >= 1 with fuse, got {fine_in_channels}")
        if fine_conv_new_dim < 0:
            raise ValueError(f"MODEL.BISEG.FINE_CONV_NEW_DIM must be >= 0 (0: none), got {fine_conv_new_dim}")
        self.fine_conv_new = None
        if fine_conv_new_dim:
            self.fine_conv_new = nn.Conv2d(fine_in_channels, fine_conv_new_dim, kernel_size=1)
            init_new_layers(self.fine_conv_new, self.conv_new_init)
            set_lr_multiplier(self.fine_conv_new, self.conv_new_lr_multiplier)
        self.fine_maps = PSScoreMaps(fine_conv_new_dim or fine_in_channels, k2, 2 * (self.num_classes + 1))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        require_config_node(cfg, "BISEG")
        b = cfg.MODEL.BISEG
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1:
            # the prior, the fused stride-8 set and the native read-out take one coarse map set
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES = {in_features}: BiSeg reads one map level (its prior and "
                "fused set are defined on one); maps on several levels are FCIS's option"
            )
        if cfg.MODEL.FCIS.ASSEMBLE_FROM_FEATURES:
            raise ValueError(
                "MODEL.FCIS.ASSEMBLE_FROM_FEATURES True: BiSeg reads its maps themselves (its prior and fused set "
                "combine maps); set it False"
            )
        ret = super().from_config(cfg, input_shape)
        mask_size = b.MASK_SIZE or (2 * cfg.MODEL.FCIS.MASK_SIZE if b.FUSE else cfg.MODEL.FCIS.MASK_SIZE)
        fine_stride = 8
        ret.update(fine_in_feature=b.FINE_IN_FEATURE, fine_conv_new_dim=b.FINE_CONV_NEW_DIM)
        if b.FUSE:
            if b.FINE_IN_FEATURE not in input_shape:
                raise ValueError(
                    f"MODEL.BISEG.FINE_IN_FEATURE = {b.FINE_IN_FEATURE!r} is not a backbone output (it returns "
                    f"{sorted(input_shape)}): add it to MODEL.RESNETS.OUT_FEATURES, or set MODEL.BISEG.FUSE False"
                )
            shape = input_shape[b.FINE_IN_FEATURE]
            if shape.stride != 8:  # a choice (an FPN level for small objects), not a mistake
                logger.info(
                    "BiSeg: fine set on %s at stride %s (the paper: conv3 at stride 8)", b.FINE_IN_FEATURE, shape.stride
                )
            ret.update(fine_in_channels=shape.channels)
            fine_stride = shape.stride
        # FCIS's reading settings, with BiSeg's M and its own
        settings = {f.name: getattr(ret["reader"], f.name) for f in fields(FCISReader)}
        settings["mask_size"] = mask_size
        ret["reader"] = BiSegReader(
            **settings,
            fuse=b.FUSE,
            prior_mode=b.PRIOR_MODE,
            fine_group_size=b.GROUP_SIZE_FINE,
            fine_spatial_scale=1.0 / fine_stride,
        )
        return ret

    # ---- per-image maps ----------------------------------------------------------------------------
    def score_maps(
        self, features: Dict[str, Tensor], sem_seg_logits: Optional[Tensor] = None, prior: Optional[Tensor] = None
    ) -> BiSegMaps:
        """FCIS's maps, the stride-8 set (``fuse``) and the semantic branch's logits and prior
        (:meth:`.meta_arch.BiSeg.score_maps` passes them; ``prior`` in FCIS's class order)."""
        if self.reader.prior_mode != "none" and prior is None:
            raise ValueError(
                "BiSegROIHeads: the semantic prior is missing: run the heads under MODEL.META_ARCHITECTURE "
                '"BiSeg" (its score_maps computes it), or set MODEL.BISEG.PRIOR_MODE "none"'
            )
        fcis = super().score_maps(features)
        fine = None
        if self.reader.fuse:  # from_config checked that the backbone returns FINE_IN_FEATURE
            res3 = features[self.fine_in_feature]
            if self.fine_conv_new is not None:
                res3 = F.relu(self.fine_conv_new(res3))
            fine = self.fine_maps(res3)
        return BiSegMaps(inside_outside=fcis.inside_outside, box=fcis.box, fine=fine, sem_seg_logits=sem_seg_logits, prior=prior)
