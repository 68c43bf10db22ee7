"""BiSeg (Pham, Ito, Kozakaya, BMVC 2017): FCIS with a semantic-segmentation prior and fused
multi-scale position-sensitive maps, as a detectron2 meta-architecture.

Data path, top to bottom (what differs from FCIS, :mod:`..fcis.meta_arch`, is marked ``+``)::

    image -> trunk: ResNet, res5 dilated (stride 16); + res3 (stride 8) returned too
          -> RoIs: detectron2's RPN on res4
        + -> semantic branch on res5 (3x3 conv + ReLU, 1x1 conv -> C+1 maps S), softmax = P(c | X)
          -> maps: FCIS's k1 x k1 inside/outside set on res5;  + a k2 x k2 set on res3
          -> assemble per RoI: + k1 set at M/2, x2 upsampled, + k2 set at M, summed = likelihoods L
        + -> Bayesian inference: RoI crop of P(c | X) x inside maps of L (outside unchanged)
          -> class / mask / box exactly as FCIS
          -> training: FCIS's losses + L_ss (per-pixel cross-entropy, ignore_value ignored)
             inference: FCIS's detections + "sem_seg" (C+1, H, W) per image

The per-RoI part is :class:`.heads.BiSegROIHeads`; this class adds the semantic branch
through FCIS's three hooks (:meth:`score_maps`, :meth:`extra_losses`, :meth:`extra_outputs`).

Class order. The semantic branch predicts the *semantic labels* of the dataset: channel 0 is
background and channel ``c + 1`` is thing class ``c`` (the label PNGs of SBD / VOC and of this
project's datasets, whose metadata ``stuff_classes`` is ``["background"] + thing_classes``), so
its targets are the label files as they are and its ``sem_seg`` output is what detectron2's
``SemSegEvaluator`` compares with those files. FCIS's inside/outside maps put background *last*
(detectron2's convention, class ``C``); the prior handed to the heads is therefore the same
probabilities with the background channel moved to the end, so that class ``c`` of the prior
multiplies class ``c`` of the likelihoods.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import Tensor

from ...core.biseg import BiSegMaps, labels_to_fcis_order
from ..common import require_config_node
from ..fcis.meta_arch import FCIS
from .heads import BiSegROIHeads
from .semantic_prior import SemanticBranch

__all__ = ["BiSeg", "labels_to_fcis_order"]


@META_ARCH_REGISTRY.register()
class BiSeg(FCIS):
    """BiSeg (``MODEL.META_ARCHITECTURE: "BiSeg"``, ``MODEL.ROI_HEADS.NAME: "BiSegROIHeads"``).

    Inputs as :class:`FCIS`, plus ``"sem_seg"`` in training: ``(H, W)`` int64 semantic labels of
    the (augmented) image, as detectron2's ``DatasetMapper`` loads ``sem_seg_file_name``
    (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` = unlabelled). Training returns FCIS's losses plus
    ``loss_sem_seg``; inference FCIS's ``{"instances"}`` plus ``"sem_seg"``: ``(C+1, H, W)`` float
    per-pixel class probabilities at the output resolution (``height`` / ``width``), channel =
    semantic label (0 background), so ``SemSegEvaluator``'s ``argmax(dim=0)`` is the label map.
    """

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: SemanticBranch,
        sem_seg_in_feature: str,
        sem_seg_loss_weight: float = 1.0,
        ignore_value: int = 255,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head: the semantic branch (``C+1`` outputs in label order).
            sem_seg_in_feature: the backbone map it reads (res5, the map FCIS's heads read).
            sem_seg_loss_weight: weight of ``loss_sem_seg``.
            ignore_value: semantic label without a target (also the padding value of the targets).
            kwargs: :class:`FCIS` arguments; ``roi_heads`` must be a :class:`BiSegROIHeads`.
        """
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, BiSegROIHeads):
            raise ValueError(
                f"BiSeg needs BiSegROIHeads as roi_heads, got {type(self.roi_heads).__name__}: "
                'set MODEL.ROI_HEADS.NAME "BiSegROIHeads"'
            )
        if sem_seg_head.num_classes != self.roi_heads.num_classes:
            raise ValueError(
                f"BiSeg: the semantic branch has {sem_seg_head.num_classes} classes, the ROI heads "
                f"{self.roi_heads.num_classes} (MODEL.ROI_HEADS.NUM_CLASSES)"
            )
        self.sem_seg_head = sem_seg_head
        self.sem_seg_in_feature = sem_seg_in_feature
        self.sem_seg_loss_weight = sem_seg_loss_weight
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg):
        require_config_node(cfg, "BISEG")
        ret = super().from_config(cfg)  # FCIS's checks; ROI_HEADS.IN_FEATURES validated by the heads
        # the paper puts the semantic branch on conv5, the map FCIS's score maps are computed from
        in_feature = cfg.MODEL.ROI_HEADS.IN_FEATURES[0]
        shape = ret["backbone"].output_shape()[in_feature]
        ret.update(
            sem_seg_head=SemanticBranch(
                shape.channels, cfg.MODEL.ROI_HEADS.NUM_CLASSES, conv_dim=cfg.MODEL.BISEG.SEM_SEG_CONV_DIM
            ),
            sem_seg_in_feature=in_feature,
            sem_seg_loss_weight=cfg.MODEL.BISEG.SEM_SEG_LOSS_WEIGHT,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        )
        return ret

    # ---- FCIS's hooks ------------------------------------------------------------------------------
    def score_maps(self, images: ImageList, features: Dict[str, Tensor]) -> BiSegMaps:
        """The semantic branch, once per image: its logits ``(N, C+1, H, W)`` (label order) and
        the prior ``P(c | X)`` the heads read (softmax, FCIS's class order), with the heads' maps."""
        logits = self.sem_seg_head(features[self.sem_seg_in_feature])
        prior = labels_to_fcis_order(self.sem_seg_head.probabilities(logits))
        return self.roi_heads.score_maps(features, sem_seg_logits=logits, prior=prior)

    def extra_losses(self, batched_inputs: List[Dict], images: ImageList, maps: BiSegMaps) -> Dict[str, Tensor]:
        """``loss_sem_seg``: the paper's ``L_ss`` over the labelled pixels of the batch (an image
        without instances still contributes its background pixels)."""
        targets = self.sem_seg_targets(batched_inputs, images)
        loss = self.sem_seg_head.losses(maps.sem_seg_logits, targets, self.ignore_value)
        return {"loss_sem_seg": loss * self.sem_seg_loss_weight}

    def extra_outputs(self, batched_inputs: List[Dict], images: ImageList, maps: BiSegMaps, results: List[Dict]) -> None:
        """Add ``"sem_seg"`` ``(C+1, height, width)`` probabilities to each result, as detectron2's
        ``SemanticSegmentor``: upsampled to the padded input, cropped to the image, resized to the
        output resolution (``sem_seg_postprocess``)."""
        logits = maps.sem_seg_logits
        for i, (x, image_size, result) in enumerate(zip(batched_inputs, images.image_sizes, results)):
            # logits first, as in the loss; one image at a time bounds the full-resolution memory
            up = F.interpolate(logits[i : i + 1], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
            probs = self.sem_seg_head.probabilities(up)[0]
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            result["sem_seg"] = sem_seg_postprocess(probs, image_size, height, width)

    # ---- semantic targets ---------------------------------------------------------------------------
    def sem_seg_targets(self, batched_inputs: List[Dict], images: ImageList) -> Tensor:
        """``(N, H_pad, W_pad)`` int64 labels of the batch, padded with ``ignore_value`` to the
        padded image size (``ImageList.from_tensors``, as detectron2's ``SemanticSegmentor``).
        Labels outside ``[0, C]`` (0 = background, ``c + 1`` = class ``c``) that are not the ignore
        value raise a ``ValueError`` naming the image files."""
        num_classes = self.roi_heads.num_classes
        targets, out_of_range = [], []
        for x in batched_inputs:
            name = x.get("file_name", "<input without file_name>")
            if "sem_seg" not in x:
                raise ValueError(
                    f"BiSeg training needs semantic labels ('sem_seg') in every input dict; {name} has none: "
                    "use the project's InstFCNDatasetMapper, which loads 'sem_seg_file_name' or derives the labels "
                    "from the instance annotations (MODEL.BISEG.SEM_SEG_SOURCE)"
                )
            sem = x["sem_seg"]
            if tuple(sem.shape) != tuple(x["image"].shape[-2:]):
                raise ValueError(
                    f"BiSeg: 'sem_seg' of {name} has shape {tuple(sem.shape)}, its image "
                    f"{tuple(x['image'].shape[-2:])}; the label map must be (H, W) of the augmented image"
                )
            sem = sem.to(torch.int64)
            bad = (sem != self.ignore_value) & ((sem < 0) | (sem > num_classes))
            if bad.any():
                out_of_range.append(f"{name}: {torch.unique(sem[bad]).tolist()[:10]}")
            targets.append(sem.to(self.device))
        if out_of_range:
            raise ValueError(
                f"BiSeg: semantic labels ('sem_seg') out of range in {len(out_of_range)} image(s): "
                + "; ".join(out_of_range[:10])
                + f". Labels must be in [0, {num_classes}]: 0 = background, c + 1 = thing class c "
                f"(MODEL.ROI_HEADS.NUM_CLASSES = {num_classes}), or the ignore value {self.ignore_value} "
                "(MODEL.SEM_SEG_HEAD.IGNORE_VALUE); check the dataset's semantic labels (its sem_seg_file_name files)"
            )
        padded = ImageList.from_tensors(targets, self.backbone.size_divisibility, pad_value=self.ignore_value).tensor
        if padded.shape[-2:] != images.tensor.shape[-2:]:  # both padded by the same rule
            raise RuntimeError(
                f"BiSeg: padded semantic targets {tuple(padded.shape[-2:])} differ from the padded images "
                f"{tuple(images.tensor.shape[-2:])}"
            )
        return padded
