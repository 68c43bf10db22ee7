"""``add_instance_fcn_config(cfg)``: the ``MODEL.INSTANCE_FCN`` keys (defaults = the paper's settings).

Sizes are in feature pixels of the ``IN_FEATURE`` map unless said otherwise; the window
tolerances are fractions of the window side (see :mod:`instfcn_d2.modeling.window_labels`).
"""
from detectron2.config import CfgNode as CN


def add_instance_fcn_config(cfg: CN) -> CN:
    """Add ``MODEL.INSTANCE_FCN`` to ``cfg`` in place (no-op if present); returns ``cfg``."""
    if "INSTANCE_FCN" in cfg.MODEL:
        return cfg
    _C = cfg.MODEL.INSTANCE_FCN = CN()

    # ---- trunk -> maps
    # Backbone output the branches read; the paper uses a stride-8 map (dilated VGG-16 conv5_3).
    _C.IN_FEATURE = "res3"
    # k: the k x k grid of relative positions (k*k instance-sensitive score maps).
    _C.GROUP_SIZE = 5
    # m: side of the sliding window in feature pixels (21 -> 168 image px at stride 8).
    _C.WINDOW_SIZE = 21
    # Channels of a shared 1x1 conv + ReLU between IN_FEATURE and both branches; 0 = none (the
    # paper's VGG-16, whose conv5 already has 512). For ResNet's 2048-d res5 a 512-d reduction gives
    # the branches VGG's input width, as FCIS / R-FCN reduce res5 to 1024-d before their heads;
    # without it the objectness branch's 3x3 conv costs 4x as much.
    _C.REDUCE_DIM = 0
    # "InstanceSensitive" (InstanceFCN) | "DeepMask" (the paper's ~DeepMask baseline, Table 2).
    _C.MASK_HEAD = "InstanceSensitive"
    # Channels of the 1x1 conv of the mask branch (and of ~DeepMask's extra 1x1 conv).
    _C.MASK_BRANCH_DIM = 512
    # Channels of the 3x3 conv of the objectness branch (InstanceFCN's; see DEEPMASK.SCORE_BRANCH).
    _C.OBJECTNESS_DIM = 512
    _C.DEEPMASK = CN()
    # Each window's m x m features are RoIAligned to R x R (14: DeepMask's 224-px crop at stride 16).
    _C.DEEPMASK.POOLER_RESOLUTION = 14
    # DeepMask's mask branch: fc FC_DIM then fc M*M, a low-rank linear pair with no non-linearity
    # between (DeepMask, Pinheiro et al. 2015, Sec. 3.1); True puts a ReLU between them.
    _C.DEEPMASK.FC_DIM = 512
    _C.DEEPMASK.FC_RELU = False
    # Side of the mask predicted by the fc layer (56 x 56 in DeepMask).
    _C.DEEPMASK.MASK_SIZE = 56
    # ~DeepMask's objectness: "DeepMask", "constructed as in DeepMask" (InstanceFCN Sec. 4; DeepMask
    # Sec. 3.1: the window's pooled features, 2x2 max pooling, fc 512 and fc 1024 with ReLU and
    # dropout, fc 1), or "InstanceFCN" (its 3x3 conv branch, OBJECTNESS_DIM). With MASK_HEAD "DeepMask" only.
    _C.DEEPMASK.SCORE_BRANCH = "DeepMask"
    _C.DEEPMASK.SCORE_FC_DIMS = (512, 1024)
    _C.DEEPMASK.SCORE_DROPOUT = 0.5

    # ---- training: DeepMask's positive / negative windows, as fractions of the window side
    _C.WINDOWS_PER_IMAGE = 256
    _C.POSITIVE_FRACTION = 0.5  # at most 1:1; fewer positives -> filled with negatives
    # Target size of an object in a positive window: its larger side / window side (128 / 224).
    _C.OBJECT_SIZE_FRACTION = 128.0 / 224.0
    # Positive: object centre within this fraction of the window side from the window centre (16 / 224) ...
    _C.POSITIVE_CENTER_TOL = 16.0 / 224.0
    # ... and its larger side within this factor of the target size (2^(1/4)), fully inside the window.
    _C.POSITIVE_SCALE_TOL = 2.0 ** 0.25
    # Negative: for every object, centre offset >= this (32 / 224) or scale off by >= NEGATIVE_SCALE_TOL (2).
    _C.NEGATIVE_CENTER_TOL = 32.0 / 224.0
    _C.NEGATIVE_SCALE_TOL = 2.0
    _C.OBJECTNESS_LOSS_WEIGHT = 1.0
    _C.MASK_LOSS_WEIGHT = 1.0
    # "window_sum": the paper's Eq. 1, the per-pixel logistic loss summed over a positive window's
    # m x m pixels, both terms averaged over the sampled windows (the mask term ~m*m/2 times its
    # per-pixel mean at 1:1 sampling); "pixel_mean": the mean over the positive windows' pixels.
    _C.MASK_LOSS_REDUCTION = "window_sum"

    # ---- inference (per test scale, then merged over scales when TEST.AUG.ENABLED)
    # Windows kept by objectness before assembling (only these are assembled).
    _C.PRE_NMS_TOPK_TEST = 2000
    # Windows with objectness probability below this are dropped before assembling.
    _C.SCORE_THRESH_TEST = 0.0
    # Mask probability threshold after bilinear pasting at image resolution.
    _C.MASK_THRESH = 0.5
    # IoU threshold of the NMS on the tight boxes of the binary masks.
    _C.NMS_THRESH_TEST = 0.8
    # Where the NMS takes those tight boxes: "window" = of the binarised m x m window mask (cheap;
    # within a cell of the pasted box) or "image" = of the mask pasted at image size (exact; pastes
    # every candidate). See instfcn_d2/modeling/postprocessing.py.
    _C.NMS_BOX_RESOLUTION = "window"
    # Proposals kept per image (1000 for AR@1000). TEST.DETECTIONS_PER_IMAGE is not used.
    _C.DETECTIONS_PER_IMAGE = 1000
    return cfg
