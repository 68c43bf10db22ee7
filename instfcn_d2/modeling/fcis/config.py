"""``add_fcis_config(cfg)``: the ``MODEL.FCIS`` keys (defaults = the FCIS paper / official code).

FCIS also reads these detectron2 keys, with their detectron2 meaning:

- ``MODEL.ROI_HEADS.NAME`` (``"FCISROIHeads"``), ``NUM_CLASSES`` (C), ``IN_FEATURES`` (exactly one
  map, the stride-16 res5 of the dilated trunk), ``IOU_THRESHOLDS`` / ``IOU_LABELS`` (RoI positive
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

    # ---- training
    # RoIs sampled per image for the losses (replaces ROI_HEADS.BATCH_SIZE_PER_IMAGE); the paper:
    # 128 (selected by OHEM from the 300 RPN RoIs); BiSeg: 64.
    _C.BATCH_SIZE_PER_IMAGE = 128
    # Online hard example mining: every labelled RoI goes through the heads, the OHEM_BATCH_SIZE
    # RoIs per image with the largest cls + mask + box loss are kept and the losses use only
    # them (as the official code). BATCH_SIZE_PER_IMAGE is then not used.
    _C.OHEM = False
    _C.OHEM_BATCH_SIZE = 128
    _C.CLS_LOSS_WEIGHT = 1.0
    _C.MASK_LOSS_WEIGHT = 1.0
    _C.BOX_LOSS_WEIGHT = 1.0
    # Class-agnostic box regression: Box2BoxTransform weights (1 / the official BBOX_STDS
    # 0.1, 0.1, 0.2, 0.2), loss "smooth_l1" (the official one) or "giou", smooth-L1 beta (1.0 =
    # Fast R-CNN's sigma 1). The box loss is summed over positives and divided by the RoI count.
    _C.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
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
    # Detections kept per image, highest scores first (replaces TEST.DETECTIONS_PER_IMAGE).
    _C.DETECTIONS_PER_IMAGE = 100
    return cfg
