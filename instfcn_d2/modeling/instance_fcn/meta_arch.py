"""InstanceFCN (Dai, He, Li, Ren, Sun, ECCV 2016): class-agnostic segment proposals from
instance-sensitive score maps, as a detectron2 meta-architecture.

Data path, top to bottom in this file::

    image -> trunk (backbone, stride-8 map MODEL.INSTANCE_FCN.IN_FEATURE)
          -> maps: mask branch  (1x1 conv 512 + ReLU, 3x3 conv -> k*k instance-sensitive maps)
                   objectness   (3x3 conv 512 + ReLU, 1x1 conv -> 1 logit per position)
          -> assemble: m x m window masks copied from the k*k maps (native window_assemble)
          -> training: DeepMask-labelled windows, 256 per image (1:1), logistic losses
             inference: top windows by objectness, assemble, paste + binarise, mask-box NMS

Window convention: the objectness logit at feature position ``(y, x)`` scores the window
*centred* there, whose top-left feature pixel is ``(y - m//2, x - m//2)``; in image pixels it is
the square of side ``m * stride`` starting at ``((x - m//2) * stride, (y - m//2) * stride)``.
Windows may hang off the map (their outside pixels are 0) so an image smaller than one window
still gets proposals. Only positions whose centre lies inside the (unpadded) image are used.
See :mod:`.window_labels` for the positive / negative definition.

The test-time part after the maps (top windows, assembling, the multi-scale test, the mask-box
NMS) is the model's ``proposer``, an :class:`instfcn_d2.core.instance_fcn.WindowProposer` that
exported models run too; the model hands it its maps and its mask head's assembling.

With ``MODEL.INSTANCE_FCN.MASK_HEAD = "DeepMask"`` the mask branch is the paper's ~DeepMask
baseline (window features -> fc 512 -> fc 56^2) and, with ``DEEPMASK.SCORE_BRANCH "DeepMask"``, so
is the objectness (window features -> 2x2 max pooling -> fc 512 -> fc 1024 -> fc 1, scored window
by window); everything else is unchanged.
"""
import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...core.boxes import mask_tight_boxes
from ...core.instance_fcn import ProposalTest, WindowProposer, window_boxes, window_top_left
from ..common import init_new_layers, require_config_node
from ..instances import detections_to_instances
from .heads import build_instance_fcn_mask_head, build_objectness_head
from .window_labels import WindowLabelParams, label_windows, sample_windows, window_mask_targets

__all__ = ["InstanceFCN", "WindowTraining"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowTraining:
    """How windows are labelled, sampled and weighted in training (``MODEL.INSTANCE_FCN``)."""

    label_params: WindowLabelParams = WindowLabelParams()
    windows_per_image: int = 256
    positive_fraction: float = 0.5
    objectness_loss_weight: float = 1.0
    mask_loss_weight: float = 1.0
    mask_loss_reduction: str = "window_sum"  # one of MASK_LOSS_REDUCTIONS

    def __post_init__(self):
        if self.mask_loss_reduction not in MASK_LOSS_REDUCTIONS:
            raise ValueError(
                f"MODEL.INSTANCE_FCN.MASK_LOSS_REDUCTION = {self.mask_loss_reduction!r}; expected one of {MASK_LOSS_REDUCTIONS}"
            )


#: ``MODEL.INSTANCE_FCN.MASK_LOSS_REDUCTION`` values: ``"window_sum"``, the paper's Eq. 1 (the
#: per-pixel loss summed over each positive window's pixels; both terms averaged over the sampled
#: windows, so the mask term weighs ``m*m * positives / windows`` times its per-pixel mean) or
#: ``"pixel_mean"`` (the mean over the positive windows' pixels, as light as one objectness term).
MASK_LOSS_REDUCTIONS = ("window_sum", "pixel_mean")


@META_ARCH_REGISTRY.register()
class InstanceFCN(nn.Module):
    """InstanceFCN segment proposals (``MODEL.META_ARCHITECTURE: "InstanceFCN"``).

    ``forward(batched_inputs)``: detectron2's list of dicts (``"image"`` CHW in ``INPUT.FORMAT``,
    ``"instances"`` with ``gt_masks`` in training, optional ``"height"`` / ``"width"`` of the
    output). Training returns ``{"loss_objectness", "loss_mask"}``; inference a list of
    ``{"instances": Instances}`` at the output resolution with ``pred_masks`` (bool ``(N, H, W)``),
    ``pred_boxes`` (tight boxes of the masks), ``scores`` (objectness) and ``pred_classes`` (0).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_feature: str,
        mask_head: nn.Module,
        objectness_head: nn.Module,
        window_size: int,
        feature_reduce: Optional[nn.Module] = None,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        training: WindowTraining = WindowTraining(),
        test: ProposalTest = ProposalTest(),
    ):
        """
        Args:
            backbone: returns ``in_feature`` (stride 8 in the paper).
            mask_head: a :mod:`.heads` mask head (``forward`` + ``assemble``).
            objectness_head: ``(N, C, H, W) -> (N, H, W)`` window logits, and
                ``score_windows(features, centres (P, 3)) -> (P,)`` of listed windows (training).
            feature_reduce: optional ``(N, C_in, H, W) -> (N, C, H, W)`` module between the trunk
                and both branches (``MODEL.INSTANCE_FCN.REDUCE_DIM``).
            window_size: ``m`` in feature pixels.
            training, test: the training and test settings.
        """
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        self.mask_head = mask_head
        self.objectness_head = objectness_head
        self.feature_reduce = feature_reduce
        self.window_size = window_size
        self.stride = backbone.output_shape()[in_feature].stride
        self.training_params = training
        self.proposer = WindowProposer(window_size=window_size, stride=self.stride, test_params=test)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"MODEL.PIXEL_MEAN {pixel_mean} and MODEL.PIXEL_STD {pixel_std} differ in length")

    @classmethod
    def from_config(cls, cfg):
        require_config_node(cfg, "INSTANCE_FCN")
        c = cfg.MODEL.INSTANCE_FCN
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        if c.IN_FEATURE not in shapes:
            raise ValueError(
                f"MODEL.INSTANCE_FCN.IN_FEATURE = {c.IN_FEATURE!r} is not an output of backbone "
                f"{cfg.MODEL.BACKBONE.NAME} (it returns {sorted(shapes)}); set the backbone's OUT_FEATURES"
            )
        shape = shapes[c.IN_FEATURE]
        feature_reduce = None
        if c.REDUCE_DIM < 0:
            raise ValueError(f"MODEL.INSTANCE_FCN.REDUCE_DIM must be >= 0 (0 = no reduction), got {c.REDUCE_DIM}")
        if c.REDUCE_DIM > 0:
            feature_reduce = nn.Sequential(nn.Conv2d(shape.channels, c.REDUCE_DIM, kernel_size=1), nn.ReLU(inplace=True))
            init_new_layers(feature_reduce)  # as the branches' other new layers
            shape = ShapeSpec(channels=c.REDUCE_DIM, stride=shape.stride)
        if shape.stride != 8:
            logger.warning(
                "InstanceFCN: %s has stride %s; the paper uses a stride-8 map (window = m * stride px)",
                c.IN_FEATURE,
                shape.stride,
            )
        return {
            "backbone": backbone,
            "in_feature": c.IN_FEATURE,
            "mask_head": build_instance_fcn_mask_head(cfg, shape),
            "objectness_head": build_objectness_head(cfg, shape),
            "window_size": c.WINDOW_SIZE,
            "feature_reduce": feature_reduce,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "training": WindowTraining(
                label_params=WindowLabelParams(
                    object_size_fraction=c.OBJECT_SIZE_FRACTION,
                    positive_center_tol=c.POSITIVE_CENTER_TOL,
                    negative_center_tol=c.NEGATIVE_CENTER_TOL,
                    positive_scale_tol=c.POSITIVE_SCALE_TOL,
                    negative_scale_tol=c.NEGATIVE_SCALE_TOL,
                ),
                windows_per_image=c.WINDOWS_PER_IMAGE,
                positive_fraction=c.POSITIVE_FRACTION,
                objectness_loss_weight=c.OBJECTNESS_LOSS_WEIGHT,
                mask_loss_weight=c.MASK_LOSS_WEIGHT,
                mask_loss_reduction=c.MASK_LOSS_REDUCTION,
            ),
            "test": ProposalTest(
                pre_nms_topk=c.PRE_NMS_TOPK_TEST,
                score_thresh=c.SCORE_THRESH_TEST,
                mask_thresh=c.MASK_THRESH,
                nms_thresh=c.NMS_THRESH_TEST,
                nms_box_resolution=c.NMS_BOX_RESOLUTION,
                detections_per_image=c.DETECTIONS_PER_IMAGE,
                test_min_sizes=tuple(cfg.TEST.AUG.MIN_SIZES) if cfg.TEST.AUG.ENABLED else None,
                test_max_size=cfg.TEST.AUG.MAX_SIZE,
            ),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("InstanceFCN training needs 'instances' in every input dict (from the dataset mapper)")
        images = self.preprocess_image([x["image"] for x in batched_inputs])
        features = self.branch_features(images)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        return self.losses(self.mask_head(features), features, images.image_sizes, gt_instances)

    # ---- trunk -> maps ---------------------------------------------------------------------------
    def preprocess_image(self, images: List[Tensor]) -> ImageList:
        """Normalise ``(C, H, W)`` images and pad them into a batch divisible as the backbone needs."""
        images = [(x.to(self.device) - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def branch_features(self, images: ImageList) -> Tensor:
        """-> ``(N, C, H, W)``, the map both branches read (``IN_FEATURE``, reduced by ``REDUCE_DIM``)."""
        features = self.backbone(images.tensor)[self.in_feature]
        if self.feature_reduce is not None:
            features = self.feature_reduce(features)
        return features

    def compute_maps(self, images: ImageList) -> Tuple[Tensor, Tensor]:
        """-> the mask head's maps (``(N, k*k, H, W)`` for InstanceFCN) and objectness logits ``(N, H, W)``."""
        features = self.branch_features(images)
        return self.mask_head(features), self.objectness_head(features)

    # ---- assemble -> losses (training) ----------------------------------------------------------
    def losses(
        self, mask_maps: Tensor, features: Tensor, image_sizes: List[Tuple[int, int]], gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        """Logistic loss on the objectness of the sampled windows (mean over windows) + per-pixel
        logistic loss on the assembled masks of the positive ones (``mask_loss_reduction``: summed
        over each window's pixels and averaged over the sampled windows, or the mean over their pixels)."""
        m, train = self.window_size, self.training_params
        obj_rows, obj_targets, pos_rows, mask_targets = [], [], [], []
        for i, (gt, image_size) in enumerate(zip(gt_instances, image_sizes)):
            centres = self.proposer.window_centres(image_size, features.shape[-2:], device=self.device)
            boxes = window_boxes(centres, m, self.stride)
            gt_masks, gt_boxes = _gt_masks_and_boxes(gt, self.device)
            labels, matched = label_windows(gt_boxes, boxes, train.label_params)
            pos_idx, neg_idx = sample_windows(labels, train.windows_per_image, train.positive_fraction)
            sampled = centres[torch.cat([pos_idx, neg_idx])]
            obj_rows.append(torch.cat([torch.full_like(sampled[:, :1], i), sampled], dim=1))
            obj_targets.append((torch.arange(len(sampled), device=self.device) < len(pos_idx)).to(torch.float32))
            tl = window_top_left(centres[pos_idx], m)
            pos_rows.append(torch.cat([torch.full_like(tl[:, :1], i), tl], dim=1))
            if len(pos_idx):
                mask_targets.append(
                    window_mask_targets(gt_masks, matched[pos_idx], boxes[pos_idx], self.mask_head.mask_size)
                )

        obj_targets, pos_rows = torch.cat(obj_targets), torch.cat(pos_rows)
        obj_logits = self.objectness_head.score_windows(features, torch.cat(obj_rows))
        if len(pos_rows) == 0:
            self._warn_if_images_smaller_than_a_window(image_sizes, gt_instances)
        loss_objectness = F.binary_cross_entropy_with_logits(obj_logits, obj_targets, reduction="mean")
        if len(pos_rows):
            mask_logits = self.mask_head.assemble(mask_maps, pos_rows)
            pixel_loss = F.binary_cross_entropy_with_logits(mask_logits, torch.cat(mask_targets), reduction="none")
            if train.mask_loss_reduction == "window_sum":
                loss_mask = pixel_loss.sum() / len(obj_targets)
            else:
                loss_mask = pixel_loss.mean()
        else:
            # no positive window in the batch: a zero loss that still reaches every parameter of
            # the mask branch (DistributedDataParallel fails on parameters without a gradient)
            loss_mask = mask_maps.sum() * 0.0 + sum(p.sum() * 0.0 for p in self.mask_head.parameters())
        get_event_storage().put_scalars(
            **{
                "instance_fcn/num_pos_windows": len(pos_rows) / len(gt_instances),
                "instance_fcn/num_neg_windows": (len(obj_targets) - len(pos_rows)) / len(gt_instances),
            }
        )
        return {
            "loss_objectness": loss_objectness * train.objectness_loss_weight,
            "loss_mask": loss_mask * train.mask_loss_weight,
        }

    # Seconds between two warnings of one model that its batches have no positive window.
    SMALL_IMAGE_WARNING_PERIOD = 600.0

    def _warn_if_images_smaller_than_a_window(self, image_sizes, gt_instances) -> None:
        """A batch with objects but no positive window, whose images with objects are all smaller
        than one window, trains no mask: say so (first time, then at most every
        ``SMALL_IMAGE_WARNING_PERIOD`` seconds per model), with the sizes and the keys to change."""
        window_px = self.window_size * self.stride
        sizes = [tuple(int(v) for v in size) for size, gt in zip(image_sizes, gt_instances) if len(gt)]
        if not sizes or any(max(size) >= window_px for size in sizes):
            return
        now = time.monotonic()
        last = getattr(self, "_small_image_warned_at", None)
        if last is not None and now - last < self.SMALL_IMAGE_WARNING_PERIOD:
            return
        self._small_image_warned_at = now
        shown = ", ".join(f"{h}x{w}" for h, w in sizes[:4]) + (", ..." if len(sizes) > 4 else "")
        positive_px = self.training_params.label_params.object_size_fraction * window_px
        logger.warning(
            f"InstanceFCN: no positive window in this training batch: its images ({shown} px, HxW) are "
            f"smaller than one window of {window_px} px (MODEL.INSTANCE_FCN.WINDOW_SIZE {self.window_size} x "
            f"stride {self.stride}), and a positive window needs an object of about {positive_px:.0f} px, so the "
            "mask branch gets no training signal. Use a smaller MODEL.INSTANCE_FCN.WINDOW_SIZE or larger input "
            "scales (INPUT.MIN_SIZE_TRAIN / INPUT.MAX_SIZE_TRAIN). (Repeated at most every "
            f"{self.SMALL_IMAGE_WARNING_PERIOD:.0f} s.)"
        )

    # ---- assemble -> proposals (inference) --------------------------------------------------------
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Proposals per image, merged over the test scales (``TEST.AUG``) before the mask-box NMS
        (:meth:`instfcn_d2.core.instance_fcn.WindowProposer.multi_scale_proposals` on this model's
        maps, assembled by its mask head)."""
        output_sizes = [
            (int(x.get("height", x["image"].shape[-2])), int(x.get("width", x["image"].shape[-1])))
            for x in batched_inputs
        ]
        images = [x["image"].to(self.device) for x in batched_inputs]  # resized for the scales on the device
        proposals = self.proposer.multi_scale_proposals(images, output_sizes, self.maps_of, self.mask_head.assemble)
        return [{"instances": detections_to_instances(p)} for p in proposals]

    def maps_of(self, images: List[Tensor]) -> Tuple[Tensor, Tensor, List[Tuple[int, int]]]:
        """:data:`instfcn_d2.core.instance_fcn.inference.MapsOf` of this model: ``(C, h, w)`` images normalised and padded into
        one batch, the maps of the batch and the images' sizes before padding."""
        batch = self.preprocess_image(images)
        mask_maps, objectness = self.compute_maps(batch)
        return mask_maps, objectness, batch.image_sizes


def _gt_masks_and_boxes(gt: Instances, device: torch.device):
    """The image's non-empty instance masks and their tight boxes ``(G, 4)``."""
    if len(gt) == 0:
        # detectron2's mapper adds no gt_masks field to an image without annotations
        return None, torch.zeros((0, 4), device=device)
    if not gt.has("gt_masks"):
        raise ValueError(
            "InstanceFCN needs instance masks ('gt_masks'): use a dataset with 'segmentation' annotations "
            "and MODEL.MASK_ON True (detectron2's DatasetMapper loads masks only then)"
        )
    masks = gt.gt_masks
    if isinstance(masks, Tensor):
        masks = BitMasks(masks)
    if not isinstance(masks, (BitMasks, PolygonMasks)):
        raise TypeError(f"InstanceFCN: gt_masks must be BitMasks, PolygonMasks or a tensor, got {type(masks).__name__}")
    masks = masks[masks.nonempty()]
    if isinstance(masks, BitMasks):
        boxes = mask_tight_boxes(masks.tensor)
    else:
        boxes = masks.get_bounding_boxes().tensor.to(device)
    return masks, boxes

