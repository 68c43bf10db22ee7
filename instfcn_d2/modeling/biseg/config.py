"""``add_biseg_config(cfg)``: the ``MODEL.BISEG`` keys (defaults = the BiSeg paper's settings).

BiSeg is FCIS plus a semantic branch, so a BiSeg config is an FCIS config (every ``MODEL.FCIS``
key keeps its meaning; see :mod:`..fcis.config`) with ``MODEL.META_ARCHITECTURE "BiSeg"``,
``MODEL.ROI_HEADS.NAME "BiSegROIHeads"`` and these keys. It also reads detectron2's
``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` (label of unlabelled pixels, 255) with detectron2's meaning;
no other ``SEM_SEG_HEAD`` key is read (the branch has ``NUM_CLASSES + 1`` outputs).

The paper's ablation rows (its Tables 1 and 2) as settings:

=============================  ===============  ======  ================
row                            PRIOR_MODE       FUSE    GROUP_SIZE_FINE
=============================  ===============  ======  ================
naive multi-task               "none"           False   (unused)
BiSeg, single PS score map     "product"        False   (unused)
BiSeg, fused (7, k2)           "product"        True    7, 9 (default), 11
=============================  ===============  ======  ================
"""
from detectron2.config import CfgNode as CN


def add_biseg_config(cfg: CN) -> CN:
    """Add ``MODEL.BISEG`` to ``cfg`` in place (no-op if present); returns ``cfg``."""
    if "BISEG" in cfg.MODEL:
        return cfg
    _C = cfg.MODEL.BISEG = CN()

    # ---- semantic branch (FCN on the conv5 map FCIS reads, MODEL.ROI_HEADS.IN_FEATURES[0])
    # Channels of its 3x3 conv (then ReLU and a 1x1 conv to NUM_CLASSES + 1 score maps); 0: no
    # 3x3 conv, only the 1x1 score layer on conv5 (FCN's; the R50 / R101 configs' choice for speed).
    _C.SEM_SEG_CONV_DIM = 512
    # Weight of the per-pixel cross-entropy L_ss (the paper's Eq. 3 sums the losses: 1).
    _C.SEM_SEG_LOSS_WEIGHT = 1.0
    # Where the training labels of the semantic branch come from (instfcn_d2.data.dataset_mapper):
    # "auto": a record's label file (sem_seg_file_name) when it has one, else derived from its
    # instance annotations (instfcn_d2.data.semantic_from_instances: c + 1 inside an instance of
    # class c, 0 elsewhere, MODEL.SEM_SEG_HEAD.IGNORE_VALUE on crowd regions, the smaller instance
    # on top); "files": the label files, required; "instances": always derived. The mean IU of the
    # evaluation is measured against the same labels (instfcn_d2.engine.trainer.build_evaluators).
    _C.SEM_SEG_SOURCE = "auto"

    # ---- Bayesian combination of the semantic prior with the inside likelihoods
    # "product": the paper's, inside * prior (exact); "log": inside + log(prior), Bayes in log
    # space; "none": no combination (the paper's "naive multi-task": the semantic branch is
    # trained on the shared trunk but does not touch the instance masks). See
    # instfcn_d2.modeling.biseg.semantic_prior.combine_prior for why the log form exists.
    _C.PRIOR_MODE = "product"

    # ---- fusion of two position-sensitive map sets
    # True: a second inside/outside set (k2 x k2 cells) on FINE_IN_FEATURE (stride 8); the RoI
    # is assembled on FCIS's set (k1 = MODEL.FCIS.GROUP_SIZE, stride 16) at MASK_SIZE / 2 and on
    # the second at MASK_SIZE, the first upsampled x2 and the two summed (the paper's Fig. 4).
    # False: FCIS's single set, assembled at MASK_SIZE.
    _C.FUSE = True
    # k2, cells per RoI side of the stride-8 set (the paper's default 9; Table 2: 7, 9, 11).
    _C.GROUP_SIZE_FINE = 9
    # The stride-8 map the second set is computed from (conv3; must be in RESNETS.OUT_FEATURES).
    _C.FINE_IN_FEATURE = "res3"
    # Channels of a 1x1 conv + ReLU on FINE_IN_FEATURE before the fine maps; 0: none, the 1x1 map
    # conv reads res3 directly. The paper creates the second set "in the same way" as the first,
    # which FCIS makes from conv_new_1 (2048 -> 1024, half); 256 is that half of res3's 512 and
    # makes the stride-8 maps 1.7x cheaper (512*256 + 256*2k2^2(C+1) vs 512*2k2^2(C+1) per pixel).
    _C.FINE_CONV_NEW_DIM = 0
    # M, side of the fused likelihood maps (and of the predicted masks). 0: 2 * MODEL.FCIS.MASK_SIZE
    # with FUSE (FCIS's set is then assembled exactly as in FCIS, 21 x 21, and upsampled to 42),
    # MODEL.FCIS.MASK_SIZE without. With FUSE it must be even with MASK_SIZE / 2 >= k1 and MASK_SIZE >= k2.
    _C.MASK_SIZE = 0
    return cfg
