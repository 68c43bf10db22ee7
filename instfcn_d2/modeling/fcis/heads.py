"""FCIS's per-RoI part as a detectron2 ``ROIHeads``: ``FCISROIHeads`` (``ROI_HEADS_REGISTRY``).

Per image (fully convolutional, computed once, :meth:`FCISROIHeads.score_maps` -> :class:`FCISMaps`):
res5 -> ``conv_new_1`` (1x1 conv 1024 + ReLU) -> inside/outside maps ``(N, k*k*2*(C+1), H, W)``
and class-agnostic box maps ``(N, k*k*4, H, W)`` (:class:`.score_maps.PSScoreMaps`; channel
layout in :mod:`.score_maps`). With several ``ROI_HEADS.IN_FEATURES`` (FPN levels) the same layers
make one such set per level (:class:`FCISLevelMaps`) and each RoI is read from the level that fits
its size, as ``ROIPooler`` reads Mask R-CNN's (:mod:`instfcn_d2.core.fcis.levels`).

Per RoI (parameter free: the reader the heads own, ``self.reader``, an
:class:`instfcn_d2.core.fcis.FCISReader`): the maps are assembled to ``(R, 2, C+1, M, M)``
inside/outside logits by ``reader.roi_inside_outside``, or to the ``(R, 2, M, M)`` logits of one
class by ``reader.roi_inside_outside_of_class`` (the two methods BiSeg's reader overrides);
everything after uses only those tensors: class logits (max of inside / outside, averaged; softmax over
``C+1``, ``C`` = background), masks (softmax of inside vs outside), box deltas (the box maps
assembled ``k x k`` and averaged, R-FCN).

Training: detectron2's ``label_and_sample_proposals`` (or every labelled RoI with OHEM), then the
losses of :mod:`.losses`. Inference: the RPN RoIs and their box-regressed versions are scored
(class logits assembled in chunks of RoIs), then :mod:`instfcn_d2.core.fcis.inference` (per-class NMS, mask voting,
the top ``DETECTIONS_PER_IMAGE``) reads the masks it needs through a callable, all in the
detectron2-free core that exported models run too. Output
``Instances`` at the network's input resolution with ``pred_masks`` ``(K, 1, M, M)`` voted
probabilities in the box frame (pasted and binarised at ``MASK_BINARIZE_THRESH`` by the
meta-architecture).
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import convert_boxes_to_pooler_format
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, ROIHeads
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...core.fcis import FCISFeatureMaps, FCISLevelMaps, FCISMaps, FCISReader, FCISTestParams, PyramidLevels
from ...core.fcis.layout import inside_outside_class_logits
from ..common import NEW_LAYER_INITS, init_new_layers, require_config_node, set_lr_multiplier
from ..instances import detections_to_instances
from .class_head import CLASS_HEADS, FCClassHead
from .losses import MASK_LOSS_NORMALIZATIONS, BoxRegression, ohem_select, per_roi_losses
from .score_maps import PSScoreMaps

__all__ = ["FCISROIHeads"]

logger = logging.getLogger(__name__)

@ROI_HEADS_REGISTRY.register()
class FCISROIHeads(ROIHeads):
    """FCIS's position-sensitive inside/outside score maps, class scores, masks and box regression.

    The layers (``conv_new``, ``inside_outside_maps``, ``box_maps``) make the maps; ``reader``
    (:class:`instfcn_d2.core.fcis.FCISReader`, no parameters) reads them per RoI, in training and
    at test time. Attributes used by subclasses (BiSeg): ``num_classes`` (C), ``reader``,
    ``conv_new_init``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_channels: int,
        reader: FCISReader,
        conv_new_dim: int = 1024,
        conv_new_init: str = "normal",
        ohem: bool = False,
        ohem_batch_size: int = 128,
        loss_weights: Dict[str, float] = None,
        mask_loss_normalization: str = "pixel_mean",
        mask_target_thresh: float = 0.5,
        conv_new_lr_multiplier: float = 1.0,
        box_regression: BoxRegression = None,
        class_head: Optional[FCClassHead] = None,
        assemble_from_features: bool = False,
        **kwargs,
    ):
        """
        Args:
            in_features: the ``features`` entries the maps are computed from: one (the paper's
                stride-16 res5), or pyramid levels finest first (the reader's ``levels``).
            in_channels: their channels.
            reader: the per-RoI reading and its settings (``k``, ``M``, the maps' scale, the
                sampling, the test candidates, NMS and voting; its ``num_classes`` is the heads').
            conv_new_dim: channels of ``conv_new_1``.
            conv_new_init: its initialisation, ``"normal"`` (official N(0, 0.01)) or ``"msra"``.
            ohem, ohem_batch_size: online hard example mining, RoIs kept per image.
            loss_weights: ``{"loss_cls", "loss_mask", "loss_box_reg"}`` -> weight.
            mask_loss_normalization: one of :data:`.losses.MASK_LOSS_NORMALIZATIONS`.
            mask_target_thresh: binarisation of the resized ground-truth masks.
            conv_new_lr_multiplier: learning-rate factor of ``conv_new`` (the official CONVNEW3: 3).
            box_regression: the class-agnostic box regression's training part (its transform's
                weights must be the reader's ``box_weights``).
            class_head: class scores from Mask R-CNN's box head instead of the assembled maps
                (``MODEL.FCIS.CLASS_HEAD "fc"``, an ablation; None: the paper's).
            assemble_from_features: in training, :meth:`score_maps` returns
                :class:`FCISFeatureMaps` (the RoIs read from conv_new's features and the map convs'
                weights) instead of the maps.
            kwargs: :class:`ROIHeads` arguments (num_classes, batch_size_per_image, ...).
        """
        super().__init__(**kwargs)
        if reader.num_classes != self.num_classes:
            raise ValueError(f"reader.num_classes = {reader.num_classes}, the heads have {self.num_classes}")
        if conv_new_init not in NEW_LAYER_INITS:
            raise ValueError(f"MODEL.FCIS.CONV_NEW_INIT = {conv_new_init!r}; expected one of {NEW_LAYER_INITS}")
        if mask_loss_normalization not in MASK_LOSS_NORMALIZATIONS:
            raise ValueError(
                f"MODEL.FCIS.MASK_LOSS_NORMALIZATION = {mask_loss_normalization!r}; expected one of {MASK_LOSS_NORMALIZATIONS}"
            )
        if not 0.0 < mask_target_thresh <= 1.0:
            raise ValueError(f"MODEL.FCIS.MASK_TARGET_THRESH must be in (0, 1], got {mask_target_thresh}")
        if ohem and ohem_batch_size < 1:
            raise ValueError(f"MODEL.FCIS.OHEM_BATCH_SIZE must be >= 1 with OHEM, got {ohem_batch_size}")
        self.box_regression = box_regression or BoxRegression(Box2BoxTransform(weights=reader.box_weights))
        weights = tuple(float(w) for w in self.box_regression.transform.weights)
        if weights != reader.box_weights:
            raise ValueError(f"box regression weights {weights} differ from the reader's {reader.box_weights}")
        in_features = tuple(in_features)
        expected_levels = 1 if reader.levels is None else len(reader.levels.strides)
        if len(in_features) != expected_levels:
            raise ValueError(f"in_features {in_features}: the reader reads {expected_levels} map level(s)")
        self.in_features = in_features
        self.reader = reader
        self.ohem = ohem
        self.ohem_batch_size = ohem_batch_size
        self.loss_weights = {"loss_cls": 1.0, "loss_mask": 1.0, "loss_box_reg": 1.0, **(loss_weights or {})}
        self.mask_loss_normalization = mask_loss_normalization
        self.mask_target_thresh = mask_target_thresh

        self.conv_new = nn.Conv2d(in_channels, conv_new_dim, kernel_size=1)
        # subclasses initialise (and speed up) their own conv_new-like layers alike
        self.conv_new_init = conv_new_init
        self.conv_new_lr_multiplier = conv_new_lr_multiplier
        init_new_layers(self.conv_new, conv_new_init)
        set_lr_multiplier(self.conv_new, conv_new_lr_multiplier)
        self.inside_outside_maps = PSScoreMaps(conv_new_dim, reader.group_size, 2 * (self.num_classes + 1))
        self.box_maps = PSScoreMaps(conv_new_dim, reader.group_size, 4)
        self.class_head = class_head
        self.assemble_from_features = assemble_from_features

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        require_config_node(cfg, "FCIS")
        c = cfg.MODEL.FCIS
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if not in_features or missing:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES = {in_features}: FCIS reads one backbone map (the stride-16 res5) "
                f"or several pyramid levels, each one of {sorted(input_shape)}; not outputs: {missing} "
                "(set MODEL.RESNETS.OUT_FEATURES)"
            )
        shapes = [input_shape[f] for f in in_features]
        shape = shapes[0]
        levels = None
        if len(shapes) > 1:
            if len({s.channels for s in shapes}) != 1:
                raise ValueError(
                    f"MODEL.ROI_HEADS.IN_FEATURES = {in_features}: the levels share FCIS's layers, so they need "
                    f"the same channels, got {[s.channels for s in shapes]} (FPN levels have MODEL.FPN.OUT_CHANNELS)"
                )
            try:
                levels = PyramidLevels(tuple(s.stride for s in shapes))
            except ValueError as e:
                raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES = {in_features}: {e}") from None
            logger.info("FCIS: maps on %s, each RoI read from the level that fits its size", in_features)
        elif shape.stride != 16:  # a choice (an FPN level for small objects), not a mistake
            logger.info("FCIS: maps on %s at stride %s (the paper: res5 at stride 16)", in_features[0], shape.stride)
        ret = super().from_config(cfg)
        ret["batch_size_per_image"] = c.BATCH_SIZE_PER_IMAGE
        if c.CLASS_HEAD not in CLASS_HEADS:
            raise ValueError(f"MODEL.FCIS.CLASS_HEAD = {c.CLASS_HEAD!r}; expected one of {CLASS_HEADS}")
        if c.CLASS_HEAD == "fc":
            ret["class_head"] = FCClassHead.from_config(cfg, input_shape, list(c.CLASS_HEAD_IN_FEATURES) or in_features)
        ret["assemble_from_features"] = c.ASSEMBLE_FROM_FEATURES
        transform = Box2BoxTransform(weights=tuple(c.BBOX_REG_WEIGHTS))
        ret.update(
            in_features=in_features,
            in_channels=shape.channels,
            reader=FCISReader(
                num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                group_size=c.GROUP_SIZE,
                mask_size=c.MASK_SIZE,
                spatial_scale=1.0 / shape.stride,
                sampling_ratio=c.POOLER_SAMPLING_RATIO,
                aligned=c.POOLER_ALIGNED,
                test_candidates=c.TEST_CANDIDATES,
                test_params=FCISTestParams(
                    num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                    score_thresh=c.SCORE_THRESH_TEST,
                    nms_thresh=c.NMS_THRESH_TEST,
                    detections_per_image=c.DETECTIONS_PER_IMAGE,
                    mask_voting=c.MASK_VOTING,
                    mask_voting_iou=c.MASK_VOTING_IOU,
                    mask_voting_frame=c.MASK_VOTING_FRAME,
                    mask_voting_binarize_voters=c.MASK_VOTING_BINARIZE_VOTERS,
                    mask_binarize_thresh=c.MASK_BINARIZE_THRESH,
                    min_size=c.MIN_SIZE_TEST,
                ),
                box_weights=tuple(float(w) for w in transform.weights),
                box_scale_clamp=float(transform.scale_clamp),
                levels=levels,
            ),
            conv_new_dim=c.CONV_NEW_DIM,
            conv_new_init=c.CONV_NEW_INIT,
            ohem=c.OHEM,
            ohem_batch_size=c.OHEM_BATCH_SIZE,
            loss_weights={
                "loss_cls": c.CLS_LOSS_WEIGHT,
                "loss_mask": c.MASK_LOSS_WEIGHT,
                "loss_box_reg": c.BOX_LOSS_WEIGHT,
            },
            mask_loss_normalization=c.MASK_LOSS_NORMALIZATION,
            mask_target_thresh=c.MASK_TARGET_THRESH,
            conv_new_lr_multiplier=c.CONV_NEW_LR_MULTIPLIER,
            box_regression=BoxRegression(transform, c.BBOX_REG_LOSS_TYPE, c.SMOOTH_L1_BETA),
        )
        return ret

    # ---- per-image maps ----------------------------------------------------------------------------
    def score_maps(self, features: Dict[str, Tensor]) -> Union[FCISMaps, FCISLevelMaps]:
        """The batch's inside/outside and box maps, from ``features[in_features[0]]`` (res5), or
        one set per level from each of ``in_features`` (the same layers on every level)."""
        maps = [self._maps_of(features[f]) for f in self.in_features]
        return maps[0] if self.reader.levels is None else FCISLevelMaps(maps)

    def _maps_of(self, feature: Tensor) -> Union[FCISMaps, FCISFeatureMaps]:
        conv_new = F.relu(self.conv_new(feature))  # (N, CONV_NEW_DIM, H, W)
        if self.training and self.assemble_from_features:
            io, box = self.inside_outside_maps.conv, self.box_maps.conv
            return FCISFeatureMaps(conv_new, io.weight.flatten(1), io.bias, box.weight.flatten(1), box.bias)
        return FCISMaps(inside_outside=self.inside_outside_maps(conv_new), box=self.box_maps(conv_new))

    # ---- forward ------------------------------------------------------------------------------------------
    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
        maps: Optional[FCISMaps] = None,
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """detectron2's ``ROIHeads.forward``: training -> ``(sampled proposals, losses)``
        (``loss_cls``, ``loss_mask``, ``loss_box_reg``); inference -> ``(detections, {})``.
        ``maps``: the batch's maps when the caller computed them (default: :meth:`score_maps`)."""
        del images  # RoIs carry their image sizes
        if maps is None:
            maps = self.score_maps(features)
        if self.training:
            if targets is None:
                raise ValueError("FCISROIHeads: training needs the ground-truth instances (targets)")
            proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self.losses(maps, proposals, features)
        return self.inference(maps, proposals, features), {}

    def _sample_proposals(self, matched_idxs: Tensor, matched_labels: Tensor, gt_classes: Tensor):
        """detectron2's sampling (``BATCH_SIZE_PER_IMAGE`` RoIs, at most ``POSITIVE_FRACTION``
        positive) or, with OHEM, every labelled RoI: the hard ones are chosen after the losses."""
        if not self.ohem:
            return super()._sample_proposals(matched_idxs, matched_labels, gt_classes)
        # the labelling of ROIHeads._sample_proposals, without the random subsampling
        if gt_classes.numel() > 0:
            labels = gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            labels = torch.full_like(matched_idxs, self.num_classes)
        sampled = (labels >= 0).nonzero().squeeze(1)
        return sampled, labels[sampled]

    def _rois(self, proposals: List[Instances]) -> Tensor:
        return convert_boxes_to_pooler_format([p.proposal_boxes for p in proposals]).to(self.conv_new.weight.device)

    # ---- training -----------------------------------------------------------------------------------------
    def losses(
        self, maps: FCISMaps, proposals: List[Instances], features: Optional[Dict[str, Tensor]] = None
    ) -> Dict[str, Tensor]:
        """Classification, mask and box losses of the sampled RoIs (or of the OHEM-selected ones).
        ``features``: the backbone's, read by the ``class_head`` ablation only."""
        rois = self._rois(proposals)
        inside_outside = self.reader.roi_inside_outside(maps, rois)
        if self.class_head is not None:
            class_logits = self.class_head(self._features_for_class_head(features), rois)
        else:
            class_logits = inside_outside_class_logits(inside_outside)
        deltas = self.reader.roi_box_deltas(maps, rois)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        per_roi = per_roi_losses(
            proposals, inside_outside, class_logits, deltas, self.num_classes, self.box_regression, self.mask_target_thresh
        )

        selected = torch.arange(len(rois), device=rois.device)
        if self.ohem:
            selected = ohem_select(per_roi, [len(p) for p in proposals], self.ohem_batch_size, self.loss_weights)
        num = max(len(selected), 1)
        fg_selected = selected[gt_classes[selected] < self.num_classes]
        # zero losses that still reach every parameter when there is nothing to learn from
        # (DistributedDataParallel fails on parameters without a gradient)
        zero = inside_outside.sum() * 0.0 + deltas.sum() * 0.0 + class_logits.sum() * 0.0
        loss_cls = per_roi["loss_cls"][selected].sum() / num + zero
        loss_box = per_roi["loss_box_reg"][selected].sum() / num + zero
        if not len(fg_selected):
            loss_mask = zero
        elif self.mask_loss_normalization == "pixel_mean":
            loss_mask = per_roi["loss_mask"][fg_selected].mean() + zero
        else:  # roi_batch_sum: per_roi holds each RoI's mean over its M*M pixels
            pixels = inside_outside.shape[-1] * inside_outside.shape[-2]
            loss_mask = per_roi["loss_mask"][fg_selected].sum() * pixels / num + zero

        with torch.no_grad():
            correct = class_logits.argmax(dim=1) == gt_classes
            get_event_storage().put_scalars(
                **{
                    "fcis/cls_accuracy": correct[selected].float().mean().item() if len(selected) else 0.0,
                    "fcis/fg_cls_accuracy": correct[fg_selected].float().mean().item() if len(fg_selected) else 0.0,
                    "fcis/num_fg_rois": len(fg_selected) / len(proposals),
                    "fcis/num_rois": len(selected) / len(proposals),
                }
            )
        losses = {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_box_reg": loss_box}
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def inference(
        self, maps: FCISMaps, proposals: List[Instances], features: Optional[Dict[str, Tensor]] = None
    ) -> List[Instances]:
        """Detections per image (at the network input resolution) from the RPN proposals
        (:meth:`instfcn_d2.core.fcis.FCISReader.detect`)."""
        class_logits = None
        if self.class_head is not None:
            features = self._features_for_class_head(features)
            class_logits = lambda candidates: self.class_head(features, candidates)  # noqa: E731
        detections = self.reader.detect(
            maps, self._rois(proposals), [len(p) for p in proposals], [p.image_size for p in proposals], class_logits
        )
        return [detections_to_instances(d) for d in detections]

    def _features_for_class_head(self, features: Optional[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        if features is None:
            raise ValueError("FCISROIHeads: MODEL.FCIS.CLASS_HEAD 'fc' reads the backbone features; pass them")
        return features

    def inference_candidates(self, maps: FCISMaps, proposals: List[Instances]) -> Tensor:
        """``(P, 5)`` RoIs scored at test time (``test_candidates``): the proposals and / or their
        box-regressed versions clipped to their image, rows ``(batch_index, x1, y1, x2, y2)``."""
        return self.reader.candidates(maps, self._rois(proposals), [len(p) for p in proposals], [p.image_size for p in proposals])

