"""BiSeg's per-RoI likelihoods, over FCIS's reading (:mod:`..fcis.reading`).

Only the inside/outside logits of a RoI change (:meth:`BiSegReader.roi_inside_outside` and
its one-class-per-RoI form); FCIS's class scores, masks, box regression and test-time pipeline run
unchanged on what they return::

    FCIS's set  (k1 = MODEL.FCIS.GROUP_SIZE, on conv_new_1 of res5, stride 16) -> assemble at M/2 --+
    fine set    (k2 = MODEL.BISEG.GROUP_SIZE_FINE, 1x1 conv(s) on res3, stride 8) -> assemble at M --+
        -> fuse (x2 upsample + sum)  -> L (R, 2, C+1, M, M)
    BiSegMaps.prior (N, C+1, H, W), background last -> crop per RoI (R, C+1, M, M)
        -> combine with L's inside maps (MODEL.BISEG.PRIOR_MODE), outside maps unchanged

``fuse False``: FCIS's set only, assembled at M. ``prior_mode "none"``: no prior. A part, like
FCIS's reader: BiSeg's heads own one, exported models load it back from ``deploy.json``.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ...layers import biseg_roi_class_logits, ps_roi_assemble
from ..fcis.layout import split_inside_outside
from ..fcis.reading import FCISMaps, FCISReader
from .prior import PRIOR_MODES, combine_prior, crop_roi_prior, fuse_likelihoods

__all__ = ["BiSegMaps", "BiSegReader", "BISEG_PRIOR_MODES", "labels_to_fcis_order"]

#: ``MODEL.BISEG.PRIOR_MODE`` values: :data:`.prior.PRIOR_MODES` or "none".
BISEG_PRIOR_MODES = PRIOR_MODES + ("none",)


@dataclass
class BiSegMaps(FCISMaps):
    """FCIS's maps plus BiSeg's: the stride-8 inside/outside set and the semantic branch's output."""

    fine: Optional[Tensor]  # (N, k2*k2*2*(C+1), H8, W8) with FUSE, else None
    sem_seg_logits: Optional[Tensor]  # (N, C+1, H, W) semantic logits, label order (background 0)
    prior: Optional[Tensor]  # (N, C+1, H, W) their softmax in FCIS's class order (background last)


def labels_to_fcis_order(sem: Tensor) -> Tensor:
    """``(N, C+1, H, W)`` maps in semantic-label order (background 0, class ``c`` at ``c + 1``)
    -> FCIS's class order (class ``c`` at ``c``, background at ``C``)."""
    return torch.roll(sem, shifts=-1, dims=1)


@dataclass(frozen=True)
class BiSegReader(FCISReader):
    """FCIS's reader whose inside/outside logits are BiSeg's fused, prior-weighted likelihoods
    (``MODEL.FCIS`` + ``MODEL.BISEG``; ``mask_size`` is BiSeg's M)."""

    fuse: bool = True
    prior_mode: str = "product"  # one of BISEG_PRIOR_MODES
    fine_group_size: int = 9  # k2
    fine_spatial_scale: float = 1.0 / 8  # 1 / the stride of the fine set

    def __post_init__(self):
        super().__post_init__()
        if self.prior_mode not in BISEG_PRIOR_MODES:
            raise ValueError(f"MODEL.BISEG.PRIOR_MODE = {self.prior_mode!r}; expected one of {BISEG_PRIOR_MODES}")

    def roi_inside_outside(self, maps: BiSegMaps, rois: Tensor) -> Tensor:
        """BiSeg's likelihoods of each RoI, prior applied.

        Args:
            maps: the batch's maps.
            rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image coordinates.

        Returns:
            ``(R, 2, C+1, M, M)``: ``[:, 0]`` inside logits (prior applied), ``[:, 1]`` outside.
        """
        likelihoods = self.fused_likelihoods(maps, rois)
        if self.prior_mode == "none":
            return likelihoods
        prior = self.roi_prior(maps, rois)
        inside, outside = combine_prior(likelihoods[:, 0], likelihoods[:, 1], prior, self.prior_mode)
        return torch.stack([inside, outside], dim=1)

    def roi_inside_outside_of_classes(self, maps: BiSegMaps, rois: Tensor, classes: Tensor) -> Tensor:
        """``roi_inside_outside(maps, rois)[r, :, classes[r]]`` for every RoI, computed from the
        channels of each RoI's class only: its ``2*k1*k1`` and ``2*k2*k2`` maps assembled and
        fused, its prior channel cropped (classes folded into the batch, :meth:`maps_by_class`).

        Returns:
            ``(R, 2, M, M)``: ``[:, 0]`` inside logits (prior applied), ``[:, 1]`` outside.
        """
        by_class = self.rois_by_class(rois, classes)
        likelihoods = self._assembled_likelihoods(maps, by_class, self.maps_by_class)
        if self.prior_mode == "none":
            return likelihoods
        N, K, H, W = maps.prior.shape
        prior = crop_roi_prior(  # (R, 1, M, M): each RoI's class channel, a view of the prior
            maps.prior.reshape(N * K, 1, H, W), by_class, self.mask_size, self.spatial_scale, self.sampling_ratio
        )
        inside, outside = combine_prior(likelihoods[:, :1], likelihoods[:, 1:], prior, self.prior_mode)
        return torch.cat([inside, outside], dim=1)

    def roi_class_logits(self, maps: BiSegMaps, rois: Tensor) -> Tensor:
        """``(R, 5)`` RoIs -> ``(R, C+1)`` class logits, read by the native
        :func:`~instfcn_d2.layers.biseg_roi_class_logits` from the two map sets and the prior
        without assembling the ``(R, 2, C+1, M, M)`` likelihoods (the values of
        :meth:`roi_class_logits_chunked` to float rounding). Maps that need a gradient, or a reader
        whose likelihoods are not BiSeg's (a subclass overriding them), take the chunked reference."""
        cls = type(self)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (maps.inside_outside, maps.fine, maps.prior)
        )
        if (
            needs_grad
            or cls.roi_inside_outside is not BiSegReader.roi_inside_outside
            or cls._assembled_likelihoods is not BiSegReader._assembled_likelihoods
        ):
            return self.roi_class_logits_chunked(maps, rois)
        coarse = maps.inside_outside
        return biseg_roi_class_logits(
            coarse,
            maps.fine if self.fuse else None,
            None if self.prior_mode == "none" else maps.prior,
            rois.to(coarse.dtype),
            self.mask_size,
            self.group_size,
            self.fine_group_size,
            self.num_classes,
            self.spatial_scale,
            self.fine_spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.prior_mode,
        )

    def fused_likelihoods(self, maps: BiSegMaps, rois: Tensor) -> Tensor:
        """``(R, 2, C+1, M, M)`` likelihoods before the prior: FCIS's set at ``M/2`` upsampled x2
        plus the stride-8 set at ``M`` (``fuse``), or FCIS's set at ``M``."""
        return split_inside_outside(self._assembled_likelihoods(maps, rois, lambda m, k: m))

    def _assembled_likelihoods(self, maps: BiSegMaps, rois: Tensor, select: Callable[[Tensor, int], Tensor]) -> Tensor:
        """``(R, K, M, M)`` likelihoods before the prior of the output channels that
        ``select(maps, k)`` keeps of each map set (``(N, k*k*2*(C+1), H, W) -> (N, k*k*K, H, W)``,
        the same channels of both sets): all of them (``K = 2*(C+1)``) or one class's (``K = 2``)."""
        coarse_maps = select(maps.inside_outside, self.group_size)
        rois = rois.to(coarse_maps.dtype)
        M = self.mask_size
        coarse = ps_roi_assemble(
            coarse_maps, rois, M // 2 if self.fuse else M, self.group_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )
        if not self.fuse:
            return coarse
        fine_maps = select(maps.fine, self.fine_group_size)
        fine = ps_roi_assemble(
            fine_maps, rois, M, self.fine_group_size, self.fine_spatial_scale, self.sampling_ratio, self.aligned
        )
        return fuse_likelihoods(coarse, fine)

    def roi_prior(self, maps: BiSegMaps, rois: Tensor, class_index: Optional[int] = None) -> Tensor:
        """The semantic prior cropped to each RoI at ``M``: ``(R, C+1, M, M)``, or ``(R, 1, M, M)``
        of class ``class_index`` only. ``maps.prior`` is in FCIS's class order, so its channel
        ``c`` is the prior of the likelihoods' class ``c``."""
        probs = maps.prior
        if class_index is not None:
            probs = probs[:, class_index : class_index + 1]
        return crop_roi_prior(probs, rois, self.mask_size, self.spatial_scale, self.sampling_ratio)
