"""FCIS (Li, Qi, Dai, Ji, Wei, CVPR 2017): fully convolutional instance-aware semantic
segmentation, as a detectron2 meta-architecture.

Data path, top to bottom::

    image -> trunk: ResNet, res5 dilated (stride 16)   build_resnet_dilated_backbone, RES5_DILATION 2
          -> RoIs: detectron2's RPN on res4               300 RoIs at test
          -> maps: res5 -> conv_new_1 (1x1, 1024) + ReLU -> k*k*2*(C+1) inside/outside maps
                                                          + k*k*4 box maps (FCISROIHeads)
          -> assemble per RoI to (R, 2, C+1, M, M)        native ps_roi_assemble, k = 7, M = 21
          -> class: max(inside, outside) averaged, softmax over C+1
             mask:  softmax(inside, outside) of the class
          -> training: cls CE + mask CE (gt class, positives) + smooth-L1 (positives) [+ OHEM]
             inference: RoIs + regressed RoIs scored, per-class NMS 0.3, mask voting, top 100

This class is detectron2's ``GeneralizedRCNN`` (backbone + proposal generator + ROI heads) plus
ground-truth checks, the mask binarisation threshold of FCIS (0.4) and three hooks for models
that add a branch on the shared features (BiSeg's semantic segmentation): :meth:`FCIS.score_maps`
(the per-image maps handed to the heads), :meth:`FCIS.extra_losses`, :meth:`FCIS.extra_outputs`.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import BitMasks, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ..common import require_config_node
from ...core.fcis import FCISMaps
from .heads import FCISROIHeads

__all__ = ["FCIS", "fcis_postprocess"]


@META_ARCH_REGISTRY.register()
class FCIS(GeneralizedRCNN):
    """FCIS (``MODEL.META_ARCHITECTURE: "FCIS"``, ``MODEL.ROI_HEADS.NAME: "FCISROIHeads"``).

    ``forward(batched_inputs)``: detectron2's list of dicts (``"image"`` CHW in ``INPUT.FORMAT``,
    ``"instances"`` with ``gt_boxes``, ``gt_classes`` and ``gt_masks`` in training, optional
    ``"height"`` / ``"width"`` of the output). Training returns the RPN losses and ``loss_cls``,
    ``loss_mask``, ``loss_box_reg`` (plus :meth:`extra_losses`); inference a list of
    ``{"instances": Instances}`` at the output resolution with ``pred_masks`` (bool ``(K, H, W)``),
    ``pred_boxes``, ``scores`` and ``pred_classes``, so ``DefaultPredictor``, ``Visualizer`` and
    ``COCOEvaluator`` work unchanged.
    """

    @configurable
    def __init__(self, *, mask_threshold: float = 0.4, **kwargs):
        """
        Args:
            mask_threshold: mask probability threshold when pasting into the image (FCIS: 0.4).
            kwargs: ``GeneralizedRCNN`` arguments; ``roi_heads`` must be an :class:`FCISROIHeads`.
        """
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, FCISROIHeads):
            raise ValueError(
                f"FCIS needs FCISROIHeads (or a subclass) as roi_heads, got {type(self.roi_heads).__name__}: "
                'set MODEL.ROI_HEADS.NAME "FCISROIHeads"'
            )
        self.mask_threshold = mask_threshold

    @classmethod
    def from_config(cls, cfg):
        if not cfg.MODEL.MASK_ON:
            raise ValueError(
                "FCIS predicts masks: set MODEL.MASK_ON True (detectron2's DatasetMapper loads the "
                "ground-truth masks only then)"
            )
        require_config_node(cfg, "FCIS")
        ret = super().from_config(cfg)
        ret["mask_threshold"] = cfg.MODEL.FCIS.MASK_BINARIZE_THRESH
        return ret

    # ---- hooks for subclasses (BiSeg) ----------------------------------------------------------------
    def score_maps(self, images: ImageList, features: Dict[str, Tensor]) -> FCISMaps:
        """The per-image maps the ROI heads read, computed once per forward. FCIS: the heads' own
        (:meth:`.heads.FCISROIHeads.score_maps`)."""
        return self.roi_heads.score_maps(features)

    def extra_losses(self, batched_inputs: List[Dict], images: ImageList, maps: FCISMaps) -> Dict[str, Tensor]:
        """Losses added to the training losses, from :meth:`score_maps`' output. FCIS: none."""
        return {}

    def extra_outputs(self, batched_inputs: List[Dict], images: ImageList, maps: FCISMaps, results: List[Dict]) -> None:
        """Add outputs to each post-processed result dict (``results[i]`` has ``"instances"``),
        from :meth:`score_maps`' output. FCIS: nothing."""

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = self.ground_truth(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self._proposals(batched_inputs, images, features, gt_instances)
        maps = self.score_maps(images, features)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances, maps=maps)
        if self.vis_period > 0:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)

        losses = {**detector_losses, **proposal_losses}
        extra = self.extra_losses(batched_inputs, images, maps)
        clash = sorted(set(extra) & set(losses))
        if clash:
            raise ValueError(f"{type(self).__name__}.extra_losses returns {clash}, names already used by FCIS")
        losses.update(extra)
        return losses

    def inference(self, batched_inputs: List[Dict], detected_instances=None, do_postprocess: bool = True):
        """Detections per image; with ``do_postprocess=False`` the raw ``Instances`` at the network
        input resolution (``pred_masks`` ``(K, 1, M, M)`` probabilities) and no extra outputs.
        ``detected_instances`` (GeneralizedRCNN's given-box mode) must be ``None``."""
        assert not self.training
        if detected_instances is not None:
            raise NotImplementedError(
                "FCIS.inference: detected_instances is not supported; FCIS's masks come from its own "
                "scored candidates and mask voting, not from given boxes"
            )
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, _ = self._proposals(batched_inputs, images, features, None)
        maps = self.score_maps(images, features)
        results, _ = self.roi_heads(images, features, proposals, None, maps=maps)
        if not do_postprocess:
            return results
        processed = fcis_postprocess(results, batched_inputs, images.image_sizes, self.mask_threshold)
        self.extra_outputs(batched_inputs, images, maps, processed)
        return processed

    def _proposals(self, batched_inputs, images, features, gt_instances):
        if self.proposal_generator is not None:
            return self.proposal_generator(images, features, gt_instances)
        if any("proposals" not in x for x in batched_inputs):
            raise ValueError("FCIS without a proposal generator needs precomputed 'proposals' in every input dict")
        return [x["proposals"].to(self.device) for x in batched_inputs], {}

    def ground_truth(self, batched_inputs: List[Dict]) -> List[Instances]:
        """The inputs' ``instances`` on the model's device, checked: class ids in
        ``[0, NUM_CLASSES)`` and masks present (a tensor of masks becomes ``BitMasks``)."""
        C = self.roi_heads.num_classes
        out = []
        for x in batched_inputs:
            name = x.get("file_name", "<input without file_name>")
            if "instances" not in x:
                raise ValueError(f"FCIS training needs 'instances' in every input dict; {name} has none")
            gt = x["instances"].to(self.device)
            if len(gt) == 0:  # an image without objects: background RoIs only
                out.append(gt)
                continue
            bad = gt.gt_classes[(gt.gt_classes < 0) | (gt.gt_classes >= C)]
            if len(bad):
                raise ValueError(
                    f"FCIS: ground-truth class id {int(bad[0])} of {name} is out of range [0, {C}) "
                    f"(MODEL.ROI_HEADS.NUM_CLASSES = {C}); check the dataset's category mapping"
                )
            if not gt.has("gt_masks"):
                raise ValueError(
                    f"FCIS needs instance masks ('gt_masks'), {name} has none: use a dataset with "
                    "'segmentation' annotations and MODEL.MASK_ON True"
                )
            if isinstance(gt.gt_masks, Tensor):
                gt.gt_masks = BitMasks(gt.gt_masks)
            out.append(gt)
        return out


def fcis_postprocess(
    instances: List[Instances],
    batched_inputs: List[Dict],
    image_sizes: Sequence[Tuple[int, int]],
    mask_threshold: float = 0.4,
) -> List[Dict[str, Instances]]:
    """detectron2's ``detector_postprocess`` at each input's ``height`` / ``width``: boxes rescaled,
    the ``(K, 1, M, M)`` mask probabilities pasted at the output resolution and binarised at
    ``mask_threshold`` -> ``[{"instances": Instances}]`` with bool ``pred_masks`` ``(K, H, W)``."""
    processed = []
    for result, x, image_size in zip(instances, batched_inputs, image_sizes):
        height = x.get("height", image_size[0])
        width = x.get("width", image_size[1])
        r = detector_postprocess(result, height, width, mask_threshold=mask_threshold)
        # detectron2 pastes zero masks as uint8; keep one dtype for consumers
        r.pred_masks = r.pred_masks.to(torch.bool)
        processed.append({"instances": r})
    return processed
