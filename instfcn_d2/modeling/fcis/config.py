"""``add_fcis_config(cfg)``: the ``MODEL.FCIS`` keys (defaults = the FCIS paper / official code).

FCIS also reads these detectron2 keys, with their detectron2 meaning:

- ``MODEL.ROI_HEADS.NAME`` (``"FCISROIHeads"``), ``NUM_CLASSES`` (C), ``IN_FEATURES`` (one map, the
  stride-16 res5 of the dilated trunk; or consecutive FPN levels, finest first, each RoI then read
  from the level detectron2's ``ROIPooler`` would pool it from), ``IOU_THRESHOLDS`` / ``IOU_LABELS`` (RoI positive
  at IoU >= 0.5), ``POSITIVE_FRACTION`` (0.25 as FCIS), ``PROPOSAL_APPEND_GT``;
- ``MODEL.RPN.*`` and ``MODEL.ANCHOR_GENERATOR.*`` (RPN on res4; ``POST_NMS_TOPK_TEST`` = the 300
  test RoIs), ``MODEL.BACKBONE`` / ``RESNETS`` / ``DILATED_RESNET`` (the trunk).

These detectron2 keys are replaced by ``MODEL.FCIS`` keys and NOT read by FCIS:
``ROI_HEADS.BATCH_SIZE_PER_IMAGE``, ``ROI_HEADS.SCORE_THRESH_TEST``, ``ROI_HEADS.NMS_THRESH_TEST``,
``TEST.DETECTIONS_PER_IMAGE`` and the ``ROI_BOX_HEAD`` regression keys.
"""
from detectron2.config import CfgNode as CN


def add_fcis_config(cfg: CN) -> CN:
    """Add ``MODEL.FCIS`` to ``cfg`` in place (no-op if present); returns ``cfg``."""
    if "FCIS" in cfg.MODEL:
        return cfg
    _C = cfg.MODEL.FCIS = CN()

    # ---- maps
    # Channels of conv_new_1, the 1x1 conv (+ ReLU) on res5 that both score map sets read.
    _C.CONV_NEW_DIM = 1024
    # Initialisation of conv_new_1: "normal" (the official N(0, 0.01), made for an ImageNet
    # trunk) or "msra" (detectron2's c2_msra_fill, He init). From scratch, "normal" leaves both
    # score-map layers at 0.01-scale and they barely learn (measured: an overfit of 3 images is
    # still wrong after 150 steps; with "msra" it is right after 60).
    _C.CONV_NEW_INIT = "normal"
    # k: position-sensitive cells per RoI side (k*k*2*(C+1) inside/outside maps, k*k*4 box maps).
    _C.GROUP_SIZE = 7
    # M: side of the assembled per-RoI inside/outside maps (and of the predicted masks); M >= k.
    _C.MASK_SIZE = 21
    # ps_roi_assemble sampling: samples per bin side (<= 0: adaptive, ceil(roi_size / M)) and the
    # half-pixel RoIAlign alignment (True: detectron2's ROIAlign(aligned=True); the official
    # kernel averages integer bins, alignment is worth ~3 AP in Mask R-CNN Table 2c).
    _C.POOLER_SAMPLING_RATIO = 0
    _C.POOLER_ALIGNED = True
    # Where the class scores come from: "assembled" (the paper's joint formulation: the assembled
    # inside/outside maps, max per cell, averaged) or "fc" (an ablation: Mask R-CNN's box head,
    # MODEL.ROI_BOX_HEAD.NUM_FC / FC_DIM / POOLER_RESOLUTION, which detectron2 defaults to no fc layer,
    # on RoIAlign features of CLASS_HEAD_IN_FEATURES, empty: the maps' levels; masks and boxes still
    # from the maps; not exportable).
    _C.CLASS_HEAD = "assembled"
    _C.CLASS_HEAD_IN_FEATURES = []
    # Training reads the sampled RoIs' assembled maps from the conv_new features and the map convs'
    # weights (FCISFeatureMaps: the same values to float rounding, the maps never made) instead of
    # making the maps: cheaper when the maps are large and the RoIs few (maps at stride 4 with
    # several classes), dearer for small maps. Inference always makes the maps. FCIS only.
    _C.ASSEMBLE_FROM_FEATURES = False

    # ---- training: the official recipe (msracver/FCIS, experiments/fcis/cfgs/*.yaml and
    # fcis/symbols/resnet_v1_101_fcis.py) is the default; the CPU configs that train from scratch
    # set their own where a measurement chose another value (they say so).
    # RoIs sampled per image for the losses (replaces ROI_HEADS.BATCH_SIZE_PER_IMAGE): official
    # TRAIN.BATCH_ROIS 128 (VOC, no OHEM); with OHEM every labelled RoI of the 300 goes through
    # the heads (COCO: BATCH_ROIS -1) and OHEM_BATCH_SIZE are kept. BiSeg: 64.
    _C.BATCH_SIZE_PER_IMAGE = 128
    # Online hard example mining: the OHEM_BATCH_SIZE RoIs per image with the largest weighted
    # cls + mask + box loss are kept and the losses use only them (official ENABLE_OHEM: true in
    # the COCO config, false in the VOC one; TRAIN.BATCH_ROIS_OHEM 128).
    _C.OHEM = False
    _C.OHEM_BATCH_SIZE = 128
    # Loss weights: official TRAIN.LOSS_WEIGHT (1, 10, 1) for cls, mask, box in both configs.
    _C.CLS_LOSS_WEIGHT = 1.0
    _C.MASK_LOSS_WEIGHT = 10.0
    _C.BOX_LOSS_WEIGHT = 1.0
    # How the per-pixel mask loss is reduced: "roi_batch_sum" (official: summed over the positive
    # RoIs' pixels and divided by the number of RoIs in the loss, the SoftmaxOutput of seg_prob with
    # normalization 'null' and grad_scale LOSS_WEIGHT[1] / BATCH_ROIS) or "pixel_mean" (the mean
    # over those pixels; per pixel M*M * positives / RoIs times lighter, ~110x at 32 of 128).
    _C.MASK_LOSS_NORMALIZATION = "roi_batch_sum"
    # The resized ground-truth mask of a RoI is inside where it is >= this (official
    # TRAIN.BINARY_THRESH 0.4; detectron2's Mask R-CNN uses 0.5).
    _C.MASK_TARGET_THRESH = 0.4
    # Learning-rate factor of conv_new_1 (official TRAIN.CONVNEW3: true, lr_mult 3).
    _C.CONV_NEW_LR_MULTIPLIER = 3.0
    # Class-agnostic box regression: Box2BoxTransform weights, 1 / the official TRAIN.BBOX_STDS
    # (0.2, 0.2, 0.5, 0.5) of both experiment configs; loss "smooth_l1" (official, sigma 1) or
    # "giou"; smooth-L1 beta (1.0 = sigma 1). The box loss is summed over positives and divided by
    # the RoI count (official grad_scale LOSS_WEIGHT[2] / BATCH_ROIS).
    _C.BBOX_REG_WEIGHTS = (5.0, 5.0, 2.0, 2.0)
    _C.BBOX_REG_LOSS_TYPE = "smooth_l1"
    _C.SMOOTH_L1_BETA = 1.0

    # ---- inference (the official test: RoIs from RPN POST_NMS_TOPK_TEST, 300)
    # Candidates scored at test time: "rois+regressed" (official: the RPN RoIs and their
    # box-regressed versions, each assembled and scored, 600 candidates), "regressed" (only the
    # regressed boxes) or "rois" (only the RPN RoIs; box regression unused).
    _C.TEST_CANDIDATES = "rois+regressed"
    # Candidate (box, class) pairs with a class probability <= this are dropped before NMS
    # (official: 1e-3).
    _C.SCORE_THRESH_TEST = 0.001
    # Per-class box NMS IoU threshold.
    _C.NMS_THRESH_TEST = 0.3
    # Mask voting: each kept detection's mask = the class-score-weighted average of the masks of
    # all candidates with box IoU >= MASK_VOTING_IOU (False: its own mask only).
    _C.MASK_VOTING = True
    _C.MASK_VOTING_IOU = 0.5
    # Where the voted mask is averaged: "union" (official mask_aggregation: over the union of the
    # voters' boxes, output box = the box of the binarised voted mask) or "kept_box" (in the kept
    # box's frame, output box = the kept box; cuts what a voter has outside the kept box).
    _C.MASK_VOTING_FRAME = "union"
    # Binarise each voter's mask at MASK_BINARIZE_THRESH before averaging (official
    # mask_aggregation: the voted mask is the score-weighted fraction of voters covering a pixel);
    # False averages the voters' probabilities.
    _C.MASK_VOTING_BINARIZE_VOTERS = True
    # Mask probability threshold when pasting into the image.
    _C.MASK_BINARIZE_THRESH = 0.4
    # Candidates narrower or lower than this many network-input pixels are dropped before NMS and
    # voting (official TEST.MIN_DROP_SIZE: 16 in the VOC config, 2 in the COCO one; 0 keeps all).
    _C.MIN_SIZE_TEST = 16.0
    # Detections kept per image, highest scores first (replaces TEST.DETECTIONS_PER_IMAGE).
    _C.DETECTIONS_PER_IMAGE = 100
    return cfg
