"""FCIS's per-RoI part as a detectron2 ``ROIHeads``: ``FCISROIHeads`` (``ROI_HEADS_REGISTRY``).

Per image (fully convolutional, computed once): res5 -> ``conv_new_1`` (1x1 conv 1024 + ReLU)
-> inside/outside maps ``(N, k*k*2*(C+1), H, W)`` and class-agnostic box maps ``(N, k*k*4, H, W)``
(:class:`..score_maps.PSScoreMaps`; channel layout in :mod:`..score_maps`).

Per RoI (parameter free): the maps are assembled to ``(R, 2, C+1, M, M)`` inside/outside logits by
:meth:`FCISROIHeads.roi_inside_outside`, or to the ``(R, 2, M, M)`` logits of one class by
:meth:`FCISROIHeads.roi_inside_outside_of_class` (the two methods BiSeg overrides); everything
after uses only those tensors:

- class logits ``(R, C+1)``: per pixel ``max(inside, outside)``, averaged over the ``M x M`` RoI
  (:func:`inside_outside_class_logits`), softmax over ``C+1`` (``C`` = background, detectron2's
  convention);
- mask of class ``c``: per pixel ``softmax(inside, outside)[inside]`` (:func:`inside_outside_mask_probs`);
- box deltas ``(R, 4)``: the box maps assembled ``k x k`` and averaged (R-FCN).

Training (on RoIs matched / sampled by detectron2's ``ROIHeads.label_and_sample_proposals``):
softmax cross-entropy over ``C+1``; per-pixel cross-entropy (inside vs outside) on the
ground-truth class of positive RoIs against the ground-truth mask cropped to the RoI and resized
to ``M x M`` (``>= 0.5``); smooth-L1 on the class-agnostic deltas of positives; optional OHEM.

Inference (the official test): score the RPN RoIs and their box-regressed versions (600
candidates with 300 RoIs; class logits assembled in chunks of RoIs,
:meth:`FCISROIHeads.roi_class_logits`), per-class box NMS, mask voting, the top
``DETECTIONS_PER_IMAGE``. Masks are assembled only for the (voter, class) pairs used
(:meth:`FCISROIHeads.roi_inside_outside_of_class`), never as a ``(P, 2, C+1, M, M)`` tensor of
all candidates (686 MB for BiSeg at C = 80, M = 42). Output ``Instances`` at the network's input
resolution with ``pred_masks`` ``(K, 1, M, M)`` voted probabilities in the box frame (pasted and
binarised at ``MASK_BINARIZE_THRESH`` by the meta-architecture's ``detector_postprocess``).
"""
import logging
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, ROIHeads
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, smooth_l1_loss, weight_init
from torch import Tensor, nn

from ..layers import ps_roi_assemble
from .mask_voting import mask_voting, resample_masks_into_boxes, tight_mask_boxes, voter_union_boxes, voting_pairs
from .score_maps import PSScoreMaps, assemble_box_deltas, inside_outside_channel, split_inside_outside

__all__ = [
    "FCISROIHeads",
    "inside_outside_class_logits",
    "inside_outside_mask_probs",
    "boxes_to_rois",
]

logger = logging.getLogger(__name__)

TEST_CANDIDATES = ("rois+regressed", "regressed", "rois")
BOX_REG_LOSS_TYPES = ("smooth_l1", "giou")
CONV_NEW_INITS = ("normal", "msra")
#: ``MODEL.FCIS.MASK_VOTING_FRAME``: where the voted mask lives, see :meth:`FCISROIHeads._class_masks`.
MASK_VOTING_FRAMES = ("union", "kept_box")
#: RoIs per :meth:`FCISROIHeads.roi_class_logits` chunk. The class logits need every class of
#: every candidate, but assembling all 600 test candidates at once makes each intermediate
#: ``(P, 2, C+1, M, M)`` (686 MB for BiSeg at C = 80, M = 42: coarse, fine, their sum, the prior,
#: the product, the max...), so every op streams it through main memory. 32 RoIs keep each
#: intermediate at a few MB (9 MB for FCIS, 37 MB for BiSeg at C = 80) that stays in cache from
#: one op to the next, and are still enough RoIs per op to amortise the per-call overhead and to
#: keep the threads (or a GPU) busy.
CLASS_LOGITS_ROIS_PER_CHUNK = 32

#: ``mask_logits(indices, class_index) -> (V, 2, M, M)``: the inside/outside logits of class
#: ``class_index`` of the candidates ``indices`` (``(V,)`` int64), as
#: :meth:`FCISROIHeads.detect_single_image` reads them.
MaskLogits = Callable[[Tensor, int], Tensor]


def inside_outside_class_logits(inside_outside: Tensor) -> Tensor:
    """``(R, 2, C+1, M, M)`` inside/outside logits -> ``(R, C+1)`` class logits: the per-pixel
    ``max(inside, outside)`` (a pixel is evidence for class c whether it is inside or outside an
    instance of c) averaged over the RoI."""
    return inside_outside.amax(dim=1).mean(dim=(-2, -1))  # amax: no argmax indices to compute


def inside_outside_mask_probs(inside_outside: Tensor) -> Tensor:
    """``(R, 2, M, M)`` inside/outside logits of one class per RoI -> ``(R, M, M)`` foreground
    probability, the per-pixel softmax over (inside, outside) taken at "inside"."""
    return torch.softmax(inside_outside, dim=1)[:, 0]


def boxes_to_rois(boxes: List[Tensor]) -> Tensor:
    """Per-image ``(R_i, 4)`` XYXY boxes -> ``(sum R_i, 5)`` rows ``(batch_index, x1, y1, x2, y2)``."""
    rows = [torch.cat([b.new_full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]
    return cat(rows, dim=0) if rows else torch.zeros((0, 5))


@ROI_HEADS_REGISTRY.register()
class FCISROIHeads(ROIHeads):
    """FCIS's position-sensitive inside/outside score maps, class scores, masks and box regression.

    Attributes used by subclasses (BiSeg): ``num_classes`` (C), ``mask_size`` (M), ``group_size``
    (k), ``in_feature`` (name of the map read), ``spatial_scale`` (1 / its stride). Per-image maps
    come from :meth:`conv_new_features`, :meth:`inside_outside_score_maps` and
    :meth:`box_score_maps`, each computed once per forward and cached in ``features`` by
    :meth:`_cached` (which subclasses use for their own maps too). Everything after
    :meth:`roi_inside_outside` / :meth:`roi_inside_outside_of_class` takes ``M`` from their
    output, so a subclass may assemble at another size. A subclass overriding
    :meth:`roi_inside_outside` should override :meth:`roi_inside_outside_of_class` to match; if
    it does not, inference reads the masks from its :meth:`roi_inside_outside` (all classes,
    sliced), which is correct but slower.
    """

    # Names under which forward() caches per-image maps in its copy of ``features``.
    CONV_NEW_KEY = "fcis_conv_new"
    INSIDE_OUTSIDE_MAPS_KEY = "fcis_inside_outside_maps"
    BOX_MAPS_KEY = "fcis_box_maps"

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        stride: int,
        conv_new_dim: int = 1024,
        conv_new_init: str = "normal",
        group_size: int = 7,
        mask_size: int = 21,
        sampling_ratio: int = 0,
        aligned: bool = True,
        ohem: bool = False,
        ohem_batch_size: int = 128,
        loss_weights: Dict[str, float] = None,
        box2box_transform: Box2BoxTransform = None,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 1.0,
        test_candidates: str = "rois+regressed",
        score_thresh: float = 0.001,
        nms_thresh: float = 0.3,
        use_mask_voting: bool = True,
        mask_voting_iou: float = 0.5,
        mask_voting_frame: str = "union",
        mask_voting_binarize_voters: bool = True,
        mask_binarize_thresh: float = 0.4,
        detections_per_image: int = 100,
        **kwargs,
    ):
        """
        Args:
            in_feature: the ``features`` entry the maps are computed from (stride 16 res5).
            in_channels, stride: its channels and stride.
            conv_new_dim: channels of ``conv_new_1``.
            conv_new_init: its initialisation, ``"normal"`` (official N(0, 0.01)) or ``"msra"``.
            group_size, mask_size: ``k`` and ``M``.
            sampling_ratio, aligned: ``ps_roi_assemble`` sampling.
            ohem, ohem_batch_size: online hard example mining, RoIs kept per image.
            loss_weights: ``{"loss_cls", "loss_mask", "loss_box_reg"}`` -> weight.
            box2box_transform, box_reg_loss_type, smooth_l1_beta: class-agnostic box regression.
            test_candidates: one of :data:`TEST_CANDIDATES`.
            score_thresh, nms_thresh, use_mask_voting, mask_voting_iou, mask_voting_frame,
                mask_voting_binarize_voters,
                mask_binarize_thresh, detections_per_image: inference, see ``MODEL.FCIS`` in
                :mod:`..fcis_config`.
            kwargs: :class:`ROIHeads` arguments (num_classes, batch_size_per_image, ...).
        """
        super().__init__(**kwargs)
        if group_size > mask_size:
            raise ValueError(
                f"MODEL.FCIS.GROUP_SIZE (k = {group_size}) must be <= MODEL.FCIS.MASK_SIZE (M = {mask_size})"
            )
        if test_candidates not in TEST_CANDIDATES:
            raise ValueError(f"MODEL.FCIS.TEST_CANDIDATES = {test_candidates!r}; expected one of {TEST_CANDIDATES}")
        if box_reg_loss_type not in BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"MODEL.FCIS.BBOX_REG_LOSS_TYPE = {box_reg_loss_type!r}; expected one of {BOX_REG_LOSS_TYPES}"
            )
        if conv_new_init not in CONV_NEW_INITS:
            raise ValueError(f"MODEL.FCIS.CONV_NEW_INIT = {conv_new_init!r}; expected one of {CONV_NEW_INITS}")
        if ohem and ohem_batch_size < 1:
            raise ValueError(f"MODEL.FCIS.OHEM_BATCH_SIZE must be >= 1 with OHEM, got {ohem_batch_size}")
        self.in_feature = in_feature
        self.stride = stride
        self.spatial_scale = 1.0 / stride
        self.group_size = group_size
        self.mask_size = mask_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.ohem = ohem
        self.ohem_batch_size = ohem_batch_size
        self.loss_weights = {"loss_cls": 1.0, "loss_mask": 1.0, "loss_box_reg": 1.0, **(loss_weights or {})}
        self.box2box_transform = box2box_transform or Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.test_candidates = test_candidates
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.use_mask_voting = use_mask_voting
        self.mask_voting_iou = mask_voting_iou
        if mask_voting_frame not in MASK_VOTING_FRAMES:
            raise ValueError(f"MODEL.FCIS.MASK_VOTING_FRAME = {mask_voting_frame!r}; expected one of {MASK_VOTING_FRAMES}")
        self.mask_voting_frame = mask_voting_frame
        self.mask_voting_binarize_voters = mask_voting_binarize_voters
        self.mask_binarize_thresh = mask_binarize_thresh
        self.detections_per_image = detections_per_image

        self.conv_new = nn.Conv2d(in_channels, conv_new_dim, kernel_size=1)
        self.conv_new_init = conv_new_init  # subclasses initialise their own conv_new-like layers alike
        if conv_new_init == "msra":
            weight_init.c2_msra_fill(self.conv_new)
        else:  # the official FCIS init of conv_new_1
            nn.init.normal_(self.conv_new.weight, std=0.01)
            nn.init.zeros_(self.conv_new.bias)
        self.inside_outside_maps = PSScoreMaps(conv_new_dim, group_size, 2 * (self.num_classes + 1))
        self.box_maps = PSScoreMaps(conv_new_dim, group_size, 4)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        if "FCIS" not in cfg.MODEL:
            raise KeyError(
                "cfg.MODEL.FCIS is missing: build the config with instfcn_d2.config.get_instfcn_cfg() "
                "or call instfcn_d2.add_instfcn_config(cfg)"
            )
        c = cfg.MODEL.FCIS
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1 or in_features[0] not in input_shape:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES = {in_features}: FCIS reads exactly one backbone map, one of "
                f"{sorted(input_shape)} (the stride-16 res5; set MODEL.RESNETS.OUT_FEATURES)"
            )
        shape = input_shape[in_features[0]]
        if shape.stride != 16:
            logger.warning("FCIS: %s has stride %s; the paper uses a stride-16 res5", in_features[0], shape.stride)
        ret = super().from_config(cfg)
        ret["batch_size_per_image"] = c.BATCH_SIZE_PER_IMAGE
        ret.update(
            in_feature=in_features[0],
            in_channels=shape.channels,
            stride=shape.stride,
            conv_new_dim=c.CONV_NEW_DIM,
            conv_new_init=c.CONV_NEW_INIT,
            group_size=c.GROUP_SIZE,
            mask_size=c.MASK_SIZE,
            sampling_ratio=c.POOLER_SAMPLING_RATIO,
            aligned=c.POOLER_ALIGNED,
            ohem=c.OHEM,
            ohem_batch_size=c.OHEM_BATCH_SIZE,
            loss_weights={
                "loss_cls": c.CLS_LOSS_WEIGHT,
                "loss_mask": c.MASK_LOSS_WEIGHT,
                "loss_box_reg": c.BOX_LOSS_WEIGHT,
            },
            box2box_transform=Box2BoxTransform(weights=tuple(c.BBOX_REG_WEIGHTS)),
            box_reg_loss_type=c.BBOX_REG_LOSS_TYPE,
            smooth_l1_beta=c.SMOOTH_L1_BETA,
            test_candidates=c.TEST_CANDIDATES,
            score_thresh=c.SCORE_THRESH_TEST,
            nms_thresh=c.NMS_THRESH_TEST,
            use_mask_voting=c.MASK_VOTING,
            mask_voting_iou=c.MASK_VOTING_IOU,
            mask_voting_frame=c.MASK_VOTING_FRAME,
            mask_voting_binarize_voters=c.MASK_VOTING_BINARIZE_VOTERS,
            mask_binarize_thresh=c.MASK_BINARIZE_THRESH,
            detections_per_image=c.DETECTIONS_PER_IMAGE,
        )
        return ret

    # ---- per-image maps ----------------------------------------------------------------------------
    def _cached(self, features: Dict[str, Tensor], key: str, compute) -> Tensor:
        # forward() hands every method its own copy of ``features``, so maps computed once per
        # image (conv_new_1 and the two map sets) are reused by both inference passes and by
        # subclasses that call super().roi_inside_outside.
        if key not in features:
            features[key] = compute()
        return features[key]

    def conv_new_features(self, features: Dict[str, Tensor]) -> Tensor:
        """``(N, CONV_NEW_DIM, H, W)``: ReLU(conv_new_1(features[in_feature]))."""
        return self._cached(features, self.CONV_NEW_KEY, lambda: F.relu(self.conv_new(features[self.in_feature])))

    def inside_outside_score_maps(self, features: Dict[str, Tensor]) -> Tensor:
        """``(N, k*k*2*(C+1), H, W)`` inside/outside position-sensitive score maps."""
        return self._cached(
            features, self.INSIDE_OUTSIDE_MAPS_KEY, lambda: self.inside_outside_maps(self.conv_new_features(features))
        )

    def box_score_maps(self, features: Dict[str, Tensor]) -> Tensor:
        """``(N, k*k*4, H, W)`` class-agnostic position-sensitive box regression maps."""
        return self._cached(features, self.BOX_MAPS_KEY, lambda: self.box_maps(self.conv_new_features(features)))

    # ---- per-RoI --------------------------------------------------------------------------------------
    def roi_inside_outside(self, features: Dict[str, Tensor], rois: Tensor) -> Tensor:
        """Assemble the inside/outside logits of each RoI.

        Args:
            features: backbone maps by name (plus whatever the meta-architecture's
                ``extra_features`` added, and maps cached here under ``*_KEY`` names).
            rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in input-image coordinates.

        Returns:
            ``(R, 2, C+1, M, M)``: ``[:, 0]`` inside logits, ``[:, 1]`` outside logits.
        """
        return split_inside_outside(self._assemble_at_mask_size(self.inside_outside_score_maps(features), rois))

    def _assemble_at_mask_size(self, maps: Tensor, rois: Tensor) -> Tensor:
        """``(N, k*k*K, H, W)`` maps of FCIS's set -> ``(R, K, M, M)`` assembled per RoI."""
        return ps_roi_assemble(
            maps, rois.to(maps.dtype), self.mask_size, self.group_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def roi_inside_outside_of_class(self, features: Dict[str, Tensor], rois: Tensor, class_index: int) -> Tensor:
        """The inside/outside logits of one class of each RoI: ``roi_inside_outside(features,
        rois)[:, :, class_index]``, assembling only that class's ``2*k*k`` maps (1/(C+1) of the work).

        Args:
            features, rois: as :meth:`roi_inside_outside`.
            class_index: ``c`` in ``0 .. C`` (``C`` = background).

        Returns:
            ``(R, 2, M, M)``: ``[:, 0]`` inside logits, ``[:, 1]`` outside logits of class ``c``.
        """
        maps = self._class_maps(self.inside_outside_score_maps(features), class_index, self.group_size)
        return self._assemble_at_mask_size(maps, rois)

    def _class_maps(self, maps: Tensor, class_index: int, group_size: int) -> Tensor:
        """The maps of one class of an inside/outside map set: ``(N, k*k*2*(C+1), H, W)`` ->
        ``(N, 2*k*k, H, W)``, the ``k*k`` inside cells of class ``c`` then its ``k*k`` outside cells.

        In the layout of :mod:`..score_maps`, assembled output channel ``o`` reads the ``k*k``
        consecutive input channels ``o*k*k + gi*k + gj`` and class ``c``'s inside / outside scores
        are output channels ``inside_outside_channel(c, outside, C)``: assembling the result gives
        ``(R, 2, M, M)``, inside then outside, as ``split_inside_outside(...)[:, :, c]`` would.
        """
        kk = group_size * group_size
        expected = kk * 2 * (self.num_classes + 1)
        if maps.dim() != 4 or maps.shape[1] != expected:
            raise ValueError(
                f"expected inside/outside maps (N, k*k*2*(C+1) = {expected}, H, W) for k = {group_size}, "
                f"C = {self.num_classes}, got {tuple(maps.shape)}"
            )
        channels = [inside_outside_channel(class_index, outside, self.num_classes) for outside in (False, True)]
        return torch.cat([maps[:, o * kk : (o + 1) * kk] for o in channels], dim=1)

    def roi_class_logits(self, features: Dict[str, Tensor], rois: Tensor) -> Tensor:
        """``(R, 5)`` RoIs -> ``(R, C+1)`` class logits,
        ``inside_outside_class_logits(roi_inside_outside(features, rois))`` computed over chunks of
        :data:`CLASS_LOGITS_ROIS_PER_CHUNK` RoIs (the same values, without ``(R, 2, C+1, M, M)``
        intermediates)."""
        # an empty rois still makes one call: (0, C+1) logits, with C from the maps
        chunks = rois.split(CLASS_LOGITS_ROIS_PER_CHUNK) if len(rois) else [rois]
        logits = [inside_outside_class_logits(self.roi_inside_outside(features, chunk)) for chunk in chunks]
        return torch.cat(logits, dim=0)

    def roi_box_deltas(self, features: Dict[str, Tensor], rois: Tensor) -> Tensor:
        """``(R, 5)`` RoIs -> ``(R, 4)`` class-agnostic box deltas (``box2box_transform`` space)."""
        return assemble_box_deltas(
            self.box_score_maps(features), rois, self.group_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    # ---- forward ------------------------------------------------------------------------------------------
    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """detectron2's ``ROIHeads.forward``: training -> ``(sampled proposals, losses)``
        (``loss_cls``, ``loss_mask``, ``loss_box_reg``); inference -> ``(detections, {})``."""
        del images  # RoIs carry their image sizes
        features = dict(features)  # our own copy: per-image maps are cached in it
        if self.training:
            if targets is None:
                raise ValueError("FCISROIHeads: training needs the ground-truth instances (targets)")
            proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self.losses(features, proposals)
        return self.inference(features, proposals), {}

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

    # ---- training -----------------------------------------------------------------------------------------
    def losses(self, features: Dict[str, Tensor], proposals: List[Instances]) -> Dict[str, Tensor]:
        """Classification, mask and box losses of the sampled RoIs (or of the OHEM-selected ones)."""
        rois = boxes_to_rois([p.proposal_boxes.tensor for p in proposals]).to(self.conv_new.weight.device)
        inside_outside = self.roi_inside_outside(features, rois)
        class_logits = inside_outside_class_logits(inside_outside)
        deltas = self.roi_box_deltas(features, rois)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        per_roi = self.per_roi_losses(proposals, inside_outside, class_logits, deltas)

        selected = torch.arange(len(rois), device=rois.device)
        if self.ohem:
            selected = self._ohem_select(per_roi, [len(p) for p in proposals])
        num = max(len(selected), 1)
        fg_selected = selected[gt_classes[selected] < self.num_classes]
        # zero losses that still reach every parameter when there is nothing to learn from
        # (DistributedDataParallel fails on parameters without a gradient)
        zero = inside_outside.sum() * 0.0 + deltas.sum() * 0.0
        loss_cls = per_roi["loss_cls"][selected].sum() / num + zero
        loss_box = per_roi["loss_box_reg"][selected].sum() / num + zero
        loss_mask = per_roi["loss_mask"][fg_selected].mean() + zero if len(fg_selected) else zero

        with torch.no_grad():
            correct = class_logits.argmax(dim=1) == gt_classes
            _put_scalars(
                {
                    "fcis/cls_accuracy": correct[selected].float().mean().item() if len(selected) else 0.0,
                    "fcis/fg_cls_accuracy": correct[fg_selected].float().mean().item() if len(fg_selected) else 0.0,
                    "fcis/num_fg_rois": len(fg_selected) / len(proposals),
                    "fcis/num_rois": len(selected) / len(proposals),
                }
            )
        losses = {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_box_reg": loss_box}
        return {k: v * self.loss_weights[k] for k, v in losses.items()}

    def per_roi_losses(
        self, proposals: List[Instances], inside_outside: Tensor, class_logits: Tensor, deltas: Tensor
    ) -> Dict[str, Tensor]:
        """``(R,)`` losses of every RoI: ``loss_cls`` (cross-entropy over C+1), ``loss_mask``
        (mean per-pixel inside/outside cross-entropy at the gt class; 0 for background RoIs),
        ``loss_box_reg`` (summed over the 4 deltas; 0 for background RoIs). Unweighted."""
        R = len(class_logits)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        fg_idx = fg.nonzero().squeeze(1)
        loss_cls = F.cross_entropy(class_logits, gt_classes, reduction="none")
        loss_mask = class_logits.new_zeros(R)
        loss_box = class_logits.new_zeros(R)
        if len(fg_idx) == 0:
            return {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_box_reg": loss_box}

        # positives of each image, in the order of fg_idx
        mask_targets, gt_boxes = [], []
        for p in proposals:
            p_fg = p[(p.gt_classes >= 0) & (p.gt_classes < self.num_classes)]
            if len(p_fg) == 0:
                continue
            masks = p_fg.gt_masks
            if isinstance(masks, Tensor):
                masks = BitMasks(masks)
            # M from the logits themselves: a subclass's roi_inside_outside defines the mask size
            mask_targets.append(masks.crop_and_resize(p_fg.proposal_boxes.tensor, inside_outside.shape[-1]))
            gt_boxes.append(p_fg.gt_boxes.tensor)
        mask_targets = cat(mask_targets, dim=0).to(inside_outside.device)  # (F, M, M) bool, >= 0.5
        gt_boxes = cat(gt_boxes, dim=0)

        fg_classes = gt_classes[fg_idx]
        mask_logits = inside_outside[fg_idx, :, fg_classes]  # (F, 2, M, M): inside / outside of the gt class
        # class 0 of the 2-way softmax is "inside"
        pixel_loss = F.cross_entropy(mask_logits, (~mask_targets).long(), reduction="none")
        loss_mask = loss_mask.index_put((fg_idx,), pixel_loss.mean(dim=(1, 2)))

        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)[fg_idx]
        if self.box_reg_loss_type == "smooth_l1":
            target = self.box2box_transform.get_deltas(proposal_boxes, gt_boxes)
            box = smooth_l1_loss(deltas[fg_idx], target, self.smooth_l1_beta, reduction="none").sum(dim=1)
        else:  # giou
            pred_boxes = self.box2box_transform.apply_deltas(deltas[fg_idx], proposal_boxes)
            box = giou_loss(pred_boxes, gt_boxes, reduction="none")
        loss_box = loss_box.index_put((fg_idx,), box)
        return {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_box_reg": loss_box}

    def _ohem_select(self, per_roi: Dict[str, Tensor], counts: List[int]) -> Tensor:
        """Indices of the ``ohem_batch_size`` RoIs of each image with the largest total loss."""
        total = sum(v.detach() for v in per_roi.values())
        selected, start = [], 0
        for n in counts:
            k = min(self.ohem_batch_size, n)
            selected.append(total[start : start + n].topk(k).indices + start)
            start += n
        return cat(selected, dim=0) if selected else total.new_zeros(0, dtype=torch.int64)

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, features: Dict[str, Tensor], proposals: List[Instances]) -> List[Instances]:
        """Detections per image (at the network input resolution) from the RPN proposals."""
        candidates = self.inference_candidates(features, proposals)
        # the class scores of every candidate, chunked; the masks later, per (candidate, class) used
        scores = torch.softmax(self.roi_class_logits(features, candidates), dim=1)
        results = []
        for i, p in enumerate(proposals):
            rows = (candidates[:, 0] == i).nonzero().squeeze(1)
            image_rois = candidates[rows]
            mask_logits = self._mask_logits_reader(features, image_rois)
            results.append(self.detect_single_image(image_rois[:, 1:], scores[rows], mask_logits, p.image_size))
        return results

    def inference_candidates(self, features: Dict[str, Tensor], proposals: List[Instances]) -> Tensor:
        """``(P, 5)`` RoIs scored at test time (``test_candidates``): the proposals and / or their
        box-regressed versions clipped to their image, rows ``(batch_index, x1, y1, x2, y2)``."""
        image_sizes = [p.image_size for p in proposals]
        rois = boxes_to_rois([p.proposal_boxes.tensor for p in proposals]).to(self.conv_new.weight.device)
        candidates = []
        if self.test_candidates in ("rois+regressed", "rois"):
            candidates.append(rois)
        if self.test_candidates in ("rois+regressed", "regressed"):
            deltas = self.roi_box_deltas(features, rois)
            regressed = self.box2box_transform.apply_deltas(deltas, rois[:, 1:])
            candidates.append(torch.cat([rois[:, :1], _clip_to_images(regressed, rois[:, 0], image_sizes)], dim=1))
        return torch.cat(candidates, dim=0)

    def _mask_logits_reader(self, features: Dict[str, Tensor], rois: Tensor) -> MaskLogits:
        """:data:`MaskLogits` of ``rois`` (``(P, 5)``, one image's candidates), assembled on demand."""
        assemble = self.roi_inside_outside_of_class
        if self._class_assembly_bypasses_override():

            def assemble(features, rois, class_index):
                return self.roi_inside_outside(features, rois)[:, :, class_index]

        def mask_logits(indices: Tensor, class_index: int) -> Tensor:
            return assemble(features, rois[indices], class_index)

        return mask_logits

    def _class_assembly_bypasses_override(self) -> bool:
        """Whether a subclass overrides :meth:`roi_inside_outside` below the class that defines the
        :meth:`roi_inside_outside_of_class` it inherits: that one would not see the override."""

        def owner(name: str) -> type:
            return next(k for k in type(self).__mro__ if name in vars(k))

        full, per_class = owner("roi_inside_outside"), owner("roi_inside_outside_of_class")
        return full is not per_class and issubclass(full, per_class)

    def detect_single_image(
        self,
        boxes: Tensor,
        scores: Tensor,
        inside_outside: Union[Tensor, MaskLogits],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Per-class NMS and mask voting over one image's candidates.

        Args:
            boxes: ``(P, 4)`` candidate boxes (the RoIs the maps were assembled in).
            scores: ``(P, C+1)`` class probabilities.
            inside_outside: ``(P, 2, C+1, M, M)`` logits, or a :data:`MaskLogits` callable giving
                the ``(V, 2, M, M)`` logits of one class for some of the ``P`` candidates
                (inference's: only the masks used are assembled).

        Returns:
            ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_masks``
            ``(K, 1, M, M)`` foreground probabilities in the box frame, highest score first.
        """
        mask_logits = _as_mask_logits(inside_outside)
        # empty boxes (regressed boxes clipped away) give no mask and would be dropped by
        # detector_postprocess anyway; non-finite values come from diverged weights
        valid = Boxes(boxes).nonempty() & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        valid_idx = valid.nonzero().squeeze(1)
        boxes, scores = boxes[valid_idx], scores[valid_idx]

        def valid_mask_logits(indices: Tensor, class_index: int) -> Tensor:  # indices into the valid ones
            return mask_logits(valid_idx[indices], class_index)

        fg_scores = scores[:, : self.num_classes]
        cand, classes = (fg_scores > self.score_thresh).nonzero(as_tuple=True)
        det_scores = fg_scores[cand, classes]
        keep = batched_nms(boxes[cand], det_scores, classes, self.nms_thresh)[: self.detections_per_image]
        cand, classes, det_scores = cand[keep], classes[keep], det_scores[keep]
        kept_boxes = boxes[cand]

        masks = None  # (K, M, M), allocated once M is known from the first logits read
        for c in classes.unique().tolist():
            members = (classes == c).nonzero().squeeze(1)
            class_masks, class_boxes = self._class_masks(c, cand[members], boxes, scores, valid_mask_logits)
            if masks is None:
                masks = boxes.new_zeros((len(cand),) + tuple(class_masks.shape[-2:]))
            masks[members] = class_masks
            kept_boxes[members] = class_boxes.to(kept_boxes.dtype)
        if masks is None:  # no detection: M from an empty read
            masks = boxes.new_zeros((0,) + tuple(valid_mask_logits(cand, 0).shape[-2:]))

        result = Instances(image_size)
        result.pred_boxes = Boxes(kept_boxes)
        result.scores = det_scores
        result.pred_classes = classes
        result.pred_masks = masks[:, None]
        return result

    def _class_masks(
        self, class_index: int, kept: Tensor, boxes: Tensor, scores: Tensor, mask_logits: MaskLogits
    ) -> Tensor:
        """``(K_c, M, M)`` foreground probabilities of the detections of one class, and the
        ``(K_c, 4)`` boxes whose frames they are in (the output boxes).

        ``mask_voting_frame "union"`` (the official FCIS ``mask_aggregation``): the voters are
        averaged over the union of their boxes, so a voted mask may reach beyond its kept box, and
        the output box is the box of the binarised voted mask (the official "clipped_box"); the
        mask is resampled into that box. ``"kept_box"``: averaged in the kept box's frame, which
        cuts what lies outside it; the output box is the kept box.

        Args:
            class_index: ``c``.
            kept: ``(K_c,)`` indices of the detections (kept by NMS) among the candidates.
            boxes, scores: ``(P, 4)`` and ``(P, C+1)`` of the candidates.
            mask_logits: :data:`MaskLogits` of the candidates.
        """
        c = class_index
        if not self.use_mask_voting:
            return inside_outside_mask_probs(mask_logits(kept, c)), boxes[kept]
        # only candidates that vote for some kept box of class c need their mask: the same result
        # as passing all P of them, without assembling and softmaxing (P, M, M) masks per class
        kept_boxes = boxes[kept]
        kept_idx, cand_idx = voting_pairs(kept_boxes, boxes, self.mask_voting_iou)
        voters, voter_idx = cand_idx.unique(return_inverse=True)  # (V,) sorted; pairs -> 0..V-1
        pairs = (kept_idx, voter_idx)
        probs = inside_outside_mask_probs(mask_logits(voters, c))  # (V, M, M)
        voter_boxes, voter_scores = boxes[voters], scores[voters, c]
        voter_threshold = self.mask_binarize_thresh if self.mask_voting_binarize_voters else None
        iou = self.mask_voting_iou
        if self.mask_voting_frame == "kept_box":
            voted = mask_voting(kept_boxes, voter_boxes, probs, voter_scores, iou, None, voter_threshold, pairs)
            return voted, kept_boxes
        frames = voter_union_boxes(kept_boxes, voter_boxes, iou, pairs)
        voted = mask_voting(kept_boxes, voter_boxes, probs, voter_scores, iou, frames, voter_threshold, pairs)
        tight = tight_mask_boxes(voted, frames, self.mask_binarize_thresh)
        return resample_masks_into_boxes(voted, frames, tight), tight


def _as_mask_logits(inside_outside: Union[Tensor, MaskLogits]) -> MaskLogits:
    """A :data:`MaskLogits` callable, or one slicing a ``(P, 2, C+1, M, M)`` logits tensor."""
    if callable(inside_outside):
        return inside_outside
    if not isinstance(inside_outside, Tensor) or inside_outside.dim() != 5:
        shape = tuple(inside_outside.shape) if isinstance(inside_outside, Tensor) else type(inside_outside).__name__
        raise ValueError(f"inside_outside must be (P, 2, C+1, M, M) logits or a mask_logits callable, got {shape}")
    return lambda indices, class_index: inside_outside[indices, :, class_index]


def _clip_to_images(boxes: Tensor, batch_index: Tensor, image_sizes: List[Tuple[int, int]]) -> Tensor:
    """Clip ``(R, 4)`` boxes to the size of the image each belongs to (as ``Boxes.clip``)."""
    if len(boxes) == 0:
        return boxes
    sizes = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), sizes[batch_index.long()])


def _put_scalars(values: Dict[str, float]) -> None:
    try:
        storage = get_event_storage()
    except AssertionError:  # called outside a trainer (tests, notebooks): nothing to log to
        return
    storage.put_scalars(**values)
