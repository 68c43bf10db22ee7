"""The Mask R-CNN baselines of the comparison tables in docs/results.md share FCIS's data, input sizes and schedule."""
import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO_ROOT, cfg_get
from instfcn_d2.config import get_instfcn_cfg

SHARED_KEYS = [
    "DATASETS.TRAIN", "DATASETS.TEST", "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.STEPS", "SOLVER.MAX_ITER",
    "SOLVER.WARMUP_ITERS", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TEST",
]  # fmt: skip


@pytest.mark.parametrize("dataset", ["shapes", "coco128"])
@pytest.mark.parametrize("arch", ["C4", "FPN"])
def test_mask_rcnn_baselines_match_the_fcis_schedule_and_build(dataset, arch):
    fcis = get_instfcn_cfg(str(REPO_ROOT / "configs" / dataset / "fcis_R18_cpu.yaml"))
    cfg = get_instfcn_cfg(str(REPO_ROOT / "configs" / dataset / f"mask_rcnn_R50_{arch}_GN_cpu.yaml"))
    for key in SHARED_KEYS:
        assert cfg_get(cfg, key) == cfg_get(fcis, key), key
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and cfg.MODEL.MASK_ON
    assert cfg.MODEL.RESNETS.DEPTH == 50
    cfg.MODEL.DEVICE = "meta"  # R50 structure without allocating its weights
    with torch.device("meta"):
        model = build_model(cfg)
    head = "Res5ROIHeads" if arch == "C4" else "StandardROIHeads"
    assert type(model.roi_heads).__name__ == head
